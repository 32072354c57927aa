"""Prefect flow: a parameter sweep as DVC experiments, then register only the best one.

For each parameter set (a :class:`pipeline.PipelineOverrides`, e.g. ``{"train": {"lr_g": 1e-4}}``):

1. params.yaml is reset to what it held when the sweep started, and the persisted training directory
   (``train.run_dir``) is removed together with the ``train`` entry of the workspace's dvc.lock (else DVC checks
   that directory out again before running), so every point trains from scratch instead of resuming the previous
   point's (or the baseline's) training state; that state stays in the DVC cache, in git and in the experiments;
2. ``dvc exp run evaluate --name <name> -S key=value ...`` runs prepare -> validate -> train -> evaluate as a named
   DVC experiment (the register stage is not run, so nothing is registered yet);
3. the experiment's metrics file (``evaluate.out``: FID, KID) is read.

The point with the lowest ``metric`` (FID by default) is then brought into the workspace with ``dvc exp apply`` and
the register stage runs once (``dvc repro --single-item register``), so exactly one model version is registered:
the best. A table artifact (key ``ganops-sweep``) compares all points. Afterwards the workspace holds the best
experiment (params.yaml, dvc.lock, outputs); commit it or ``dvc exp apply`` another.

Every experiment is its own MLflow run (started by its train stage), tagged ``ganops.sweep`` and
``ganops.dvc_exp``; ``dvc exp show`` lists the experiments side by side.

    python flows/sweep.py -p '{"train": {"lr_g": 0.0002}}' -p '{"train": {"lr_g": 0.0001}}'
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline import (  # the sibling flows/pipeline.py (Prefect and `python flows/sweep.py` put flows/ on sys.path)
    ConfigError, Params, PipelineOverrides, StageFailed, check_params_path, parse_overrides, run_stage, stage_env,
    validate_overrides,
)
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

PROJECT_DIR = Path(__file__).resolve().parents[1]
SWEEP_TABLE_KEY = "ganops-sweep"
# DVC experiment names become git refs: letters, digits, '.', '_', '-'; no leading '-' or '.'.
_EXP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")


@dataclass
class PointResult:
    """One sweep point: its DVC experiment name, overrides (dotted, validated) and metrics."""

    name: str
    overrides: dict[str, Any]
    ok: bool
    fid: float | None = None
    kid_mean: float | None = None
    num_samples: int | None = None
    snapshot_sha256: str | None = None
    mlflow_run_id: str | None = None
    wall_time_s: float = 0.0
    error: str | None = None


def dvc_set_args(typed: dict[str, Any]) -> list[str]:
    """``{"train.loss": "hinge", "train.betas_g": [0.0, 0.99]}`` -> ``["-S", 'train.loss="hinge"', "-S",
    "train.betas_g=[0.0, 0.99]"]``. Values are JSON, which DVC's (Hydra) override parser reads back unchanged;
    strings are quoted so commas (``translation,color``) are not read as a Hydra sweep."""
    out: list[str] = []
    for key, value in typed.items():
        out += ["-S", f"{key}={json.dumps(value)}"]
    return out


def _git_ready(project: Path) -> None:
    proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{project} is not a git repository with a commit; DVC experiments need one "
                         "(git init && git add -A && git commit -m init)")


def _forget_training(project: Path, params: Params) -> None:
    """Remove ``train.run_dir`` and dvc.lock's ``train`` entry: the next train stage starts from scratch."""
    lock = project / "dvc.lock"
    if lock.is_file():
        doc = yaml.safe_load(lock.read_text()) or {}
        if isinstance(doc.get("stages"), dict) and doc["stages"].pop("train", None) is not None:
            lock.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.rmtree(project / params.train.run_dir, ignore_errors=True)


def _run(cmd: list[str], project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=project, env=stage_env(None), capture_output=True, text=True)


@task(cache_policy=NO_CACHE, task_run_name="dvc-exp-{name}")
def run_experiment(name: str, typed: dict[str, Any], params: Params, project_dir: str,
                   baseline_params: str, sweep_id: str) -> PointResult:
    """Reset params.yaml, clear the persisted training directory, ``dvc exp run evaluate`` with the overrides,
    read the metrics. A failed experiment is returned with ``ok=False`` and the error (the sweep goes on)."""
    logger = get_run_logger()
    project = Path(project_dir)
    t0 = time.perf_counter()
    (project / "params.yaml").write_text(baseline_params)
    _forget_training(project, params)
    (project / params.evaluate.out).unlink(missing_ok=True)  # never read a previous point's metrics
    proc = _run([sys.executable, "-m", "dvc", "exp", "run", "evaluate", "--name", name, *dvc_set_args(typed)], project)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        logger.error("experiment %s failed (dvc exit %d):\n%s", name, proc.returncode, tail)
        return PointResult(name, typed, ok=False, wall_time_s=wall, error=tail)
    ev = json.loads((project / params.evaluate.out).read_text())
    run_file = project / params.train.run_dir / "mlflow_run.json"
    run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    if run_id:
        from mlflow import MlflowClient

        from ganops.tracking import tracking_uri

        uri = tracking_uri(project)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.set_tag(run_id, "ganops.sweep", sweep_id)
        client.set_tag(run_id, "ganops.dvc_exp", name)
    logger.info("experiment %s: FID %.4g (%.0f s)", name, ev["fid"], wall)
    return PointResult(name, typed, ok=True, fid=float(ev["fid"]), kid_mean=ev.get("kid_mean"),
                       num_samples=ev.get("num_generated"), snapshot_sha256=ev.get("snapshot_sha256"),
                       mlflow_run_id=run_id, wall_time_s=wall)


def _checkout_failures(output: str) -> list[str]:
    """The targets DVC lists after "Checkout failed for following targets:" (empty when there is no such list)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "Checkout failed for following targets" in line:
            return [t.strip() for t in lines[i + 1:] if t.strip() and not t.startswith(("Is your cache", "<http"))]
    return []


@task(cache_policy=NO_CACHE, task_run_name="dvc-exp-apply-{name}")
def apply_experiment(name: str, project_dir: str, params: Params, snapshot_sha256: str | None) -> None:
    """``dvc exp apply <name>``: the experiment's params, dvc.lock and outputs into the workspace.

    The experiments stop before ``register``, so when the baseline's dvc.lock has no register entry DVC cannot
    check out ``register.out`` and exits non-zero; that one missing file is expected (the register stage writes it
    next). Any other checkout failure raises :class:`StageFailed`, and so does a training snapshot in the
    workspace that is not the experiment's (``snapshot_sha256`` from its metrics).
    """
    from ganops.io import sha256_file

    project = Path(project_dir)
    proc = _run([sys.executable, "-m", "dvc", "exp", "apply", name], project)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        failed = _checkout_failures(output)
        if not failed or any(Path(t) != Path(params.register_.out) for t in failed):
            raise StageFailed(f"exp apply {name}", proc.returncode, output)
        get_run_logger().info("dvc exp apply %s: %s is not in the experiment (register runs next)", name, failed)
    snapshot = project / params.train.run_dir / "network-snapshot.pt"
    if snapshot_sha256 and (not snapshot.is_file() or sha256_file(snapshot) != snapshot_sha256):
        raise StageFailed(f"exp apply {name}", proc.returncode,
                          f"{output}\n{snapshot} is not experiment {name}'s evaluated snapshot {snapshot_sha256}")


def comparison_table(results: list[PointResult], best: str | None, metric: str,
                     registration: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per point for the ``ganops-sweep`` table artifact (JSON-safe values)."""
    rows = []
    for r in results:
        rows.append({
            "experiment": r.name, "overrides": json.dumps(r.overrides, sort_keys=True),
            "status": "ok" if r.ok else "failed", "fid": r.fid, "kid_mean": r.kid_mean, "num_samples": r.num_samples,
            "best": r.name == best,
            "registered": (f"{registration['model_name']} v{registration['version']} @{registration['alias']}"
                           if registration and r.name == best else ""),
            "wall_time_s": round(r.wall_time_s, 1),
        })
    return rows


@flow(name="ganops-sweep", log_prints=True)
def ganops_sweep(points: list[PipelineOverrides], names: list[str] | None = None, project_dir: str | None = None,
                 metric: Literal["fid", "kid_mean"] = "fid") -> dict[str, Any]:
    """Run each parameter set as a DVC experiment (up to evaluate), register only the one with the lowest metric.

    Args:
        points: params.yaml overrides per point, e.g. ``[{"train": {"lr_g": 2e-4}}, {"train": {"lr_g": 1e-4}}]``
            (dotted keys also work). All are validated with the project's params.yaml before any experiment runs.
        names: DVC experiment names, one per point (letters, digits, ``._-``; unused in the repository); default
            ``sweep-<UTC time>-<i>``.
        project_dir: the ganops checkout, a git repository with a commit (default: the one holding this file).
        metric: ``fid`` or ``kid_mean`` from ``evaluate.out`` (lower is better); ties go to the earlier point.

    Returns:
        ``{"experiments": [PointResult as dict, ...], "best": name, "registration": registration.json}``.

    Raises:
        ConfigError: a point has an invalid override (the message names the point and the field); nothing ran.
        ValueError: no points, names of the wrong count / duplicated / not usable as git refs, or no git commit.
        RuntimeError: every experiment failed (their errors are in the flow log and the table artifact).
        StageFailed: ``dvc exp apply`` or the register stage failed.
    """
    project = Path(project_dir).resolve() if project_dir else PROJECT_DIR
    params_file = check_params_path(project, "params.yaml")
    if not points:
        raise ValueError("points is empty; give at least one parameter set, e.g. [{\"train\": {\"lr_g\": 1e-4}}]")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    names = list(names) if names else [f"sweep-{stamp}-{i}" for i in range(len(points))]
    if len(names) != len(points):
        raise ValueError(f"{len(names)} names for {len(points)} points; give one name per point or none")
    bad = [n for n in names if not _EXP_NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique and match {_EXP_NAME.pattern}; got {names}")
    typed_points: list[tuple[dict[str, Any], Params]] = []
    for i, point in enumerate(points):
        try:
            params, typed = validate_overrides(params_file, parse_overrides(point).dotted())
        except ConfigError as err:
            raise ConfigError(f"sweep point {i} ({names[i]}): {err}") from None
        typed_points.append((typed, params))
    _git_ready(project)

    logger = get_run_logger()
    baseline = params_file.read_text()
    sweep_id = str(flow_run.get_id() or f"local-{stamp}")
    results = [run_experiment(name, typed, params, str(project), baseline, sweep_id)
               for name, (typed, params) in zip(names, typed_points)]

    def score(r: PointResult) -> float:
        value = getattr(r, metric) if r.ok else None
        return value if value is not None and math.isfinite(value) else math.inf

    ranked = [r for r in results if math.isfinite(score(r))]
    if not ranked:
        create_table_artifact(comparison_table(results, None, metric, None), key=SWEEP_TABLE_KEY,
                              description="ganops sweep: every experiment failed")
        raise RuntimeError(f"every sweep experiment failed: {[r.name for r in results]}; see the flow log")
    best = min(ranked, key=score)  # min keeps the first of equal scores
    logger.info("best experiment: %s (%s %.4g); registering it", best.name, metric, score(best))
    best_params = typed_points[names.index(best.name)][1]
    apply_experiment(best.name, str(project), best_params, best.snapshot_sha256)
    run_stage("register", str(project), None)
    registration = json.loads((project / best_params.register_.out).read_text())
    create_table_artifact(comparison_table(results, best.name, metric, registration), key=SWEEP_TABLE_KEY,
                          description=f"ganops sweep {sweep_id}: {metric} per DVC experiment; only the best is "
                                      "registered")
    return {"experiments": [asdict(r) for r in results], "best": best.name, "registration": registration}


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Sweep parameter sets as DVC experiments; register only the best.")
    cli.add_argument("-p", "--point", action="append", required=True, metavar="JSON",
                     help='one parameter set, e.g. \'{"train": {"lr_g": 0.0001}}\' (repeat per point)')
    cli.add_argument("-n", "--name", action="append", default=None, help="experiment name per point (optional)")
    cli.add_argument("--metric", choices=("fid", "kid_mean"), default="fid")
    args = cli.parse_args()
    try:
        parsed = [parse_overrides(json.loads(p)) for p in args.point]
        out = ganops_sweep(points=parsed, names=args.name, metric=args.metric)
    except (json.JSONDecodeError, ValueError, RuntimeError, StageFailed) as err:
        print(f"ganops sweep failed: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out, indent=2, default=str))
