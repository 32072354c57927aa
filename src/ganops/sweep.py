"""A parameter sweep as DVC experiments: run one point, pick the best, bring it into the workspace, compare all.

Each point is a set of ``params.yaml`` overrides run as a named ``dvc exp run evaluate`` from scratch
(:func:`run_point`); :func:`best_point` picks the lowest finite metric, :func:`apply_point` checks the chosen
experiment out with ``dvc exp apply``, and :func:`comparison_table` lists every point. DVC runs in child processes
(``python -m dvc``); this module does not import it.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ganops.config import ConfigError, Params
from ganops.overrides import parse_overrides, validate_overrides
from ganops.rundir import RunDir
from ganops.stage_runner import StageFailed, stage_env

# DVC experiment names become git refs: letters, digits, '.', '_', '-'; no leading '-' or '.'.
EXP_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
OUTPUT_TAIL_CHARS = 3000


@dataclass
class PointResult:
    """One sweep point: its DVC experiment name, overrides (dotted, validated) and metrics.

    ``fid`` and ``kid_mean`` are unitless distances (lower is better), ``wall_time_s`` seconds; ``error`` holds the
    tail of DVC's output when ``ok`` is False. A fanned-out sweep also fills ``status`` (``ok``, ``failed``,
    ``crashed``, ``cancelled`` or ``stopped``), ``note`` (e.g. why a point stopped early), the point's
    ``workspace`` and Prefect ``flow_run_id``, and ``started`` / ``ended`` (ISO 8601 UTC).
    """

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
    status: str | None = None
    note: str = ""
    workspace: str | None = None
    flow_run_id: str | None = None
    started: str | None = None
    ended: str | None = None


def experiment_names(names: list[str] | None, count: int, stamp: str) -> list[str]:
    """``names`` checked, or ``sweep-<stamp>-<i>`` for ``i`` in ``range(count)`` when ``names`` is empty.

    Raises:
        ValueError: not ``count`` names, a duplicate, or a name unusable as a git ref (see :data:`EXP_NAME`).
    """
    names = list(names) if names else [f"sweep-{stamp}-{i}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"{len(names)} names for {count} points; give one name per point or none")
    bad = [n for n in names if not EXP_NAME.match(n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique and match {EXP_NAME.pattern}; got {names}")
    return names


def validate_points(params_file: Path, points: list[Any], names: list[str]) -> list[tuple[dict[str, Any], Params]]:
    """Each point's ``(typed dotted overrides, merged Params)``, validated with the whole ``params_file``.

    Raises:
        ConfigError: a point is invalid; the message names the point (index and name) and the field.
    """
    out: list[tuple[dict[str, Any], Params]] = []
    for i, point in enumerate(points):
        try:
            params, typed = validate_overrides(params_file, parse_overrides(point).dotted())
        except ConfigError as err:
            raise ConfigError(f"sweep point {i} ({names[i]}): {err}") from None
        out.append((typed, params))
    return out


def check_git_commit(project: Path) -> None:
    """Raises ValueError unless ``project`` is a git repository with a commit (DVC experiments need one)."""
    proc = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"{project} is not a git repository with a commit; DVC experiments need one "
                         "(git init && git add -A && git commit -m init)")


def dvc_set_args(typed: dict[str, Any]) -> list[str]:
    """``{"train.loss": "hinge", "train.betas_g": [0.0, 0.99]}`` -> ``["-S", 'train.loss="hinge"', "-S",
    "train.betas_g=[0.0, 0.99]"]``. Values are JSON, which DVC's (Hydra) override parser reads back unchanged;
    strings are quoted so commas (``translation,color``) are not read as a Hydra sweep."""
    out: list[str] = []
    for key, value in typed.items():
        out += ["-S", f"{key}={json.dumps(value)}"]
    return out


def forget_training(project: Path, params: Params) -> None:
    """Remove ``train.run_dir`` and dvc.lock's ``train`` entry: the next train stage starts from scratch.

    Without the lock entry DVC does not check the directory out again before running; the removed state stays in
    the DVC cache, in git and in the experiments.
    """
    lock = project / "dvc.lock"
    if lock.is_file():
        doc = yaml.safe_load(lock.read_text()) or {}
        if isinstance(doc.get("stages"), dict) and doc["stages"].pop("train", None) is not None:
            lock.write_text(yaml.safe_dump(doc, sort_keys=False))
    shutil.rmtree(RunDir(project / params.train.run_dir).path, ignore_errors=True)


def run_dvc(cmd: list[str], project: Path, run_id: str | None = None) -> subprocess.CompletedProcess[str]:
    """``cmd`` in ``project`` with the stage environment (:func:`ganops.stage_runner.stage_env`; ``run_id`` is the
    MLflow run the stages log into, None for their own), output captured."""
    return subprocess.run(cmd, cwd=project, env=stage_env(run_id), capture_output=True, text=True)


def _tag_run(project: Path, run_id: str, sweep_id: str, name: str) -> None:
    from mlflow import MlflowClient

    from ganops.tracking import tracking_uri

    uri = tracking_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_tag(run_id, "ganops.sweep", sweep_id)
    client.set_tag(run_id, "ganops.dvc_exp", name)


def run_point(name: str, typed: dict[str, Any], params: Params, project: Path, baseline_params: str,
              sweep_id: str, run_id: str | None = None) -> PointResult:
    """Run one point as DVC experiment ``name`` (prepare -> validate -> train -> evaluate) and read its metrics.

    ``params.yaml`` is reset to ``baseline_params`` and the training state is forgotten (:func:`forget_training`)
    first, so the point trains from scratch; its MLflow run is tagged ``ganops.sweep`` = ``sweep_id`` and
    ``ganops.dvc_exp`` = ``name``.

    Args:
        name: the DVC experiment name.
        typed: the point's dotted overrides (validated).
        params: the merged parameters of the point (output paths).
        project: the DVC project.
        baseline_params: the text of ``params.yaml`` when the sweep started.
        sweep_id: identifies the sweep in the tags.
        run_id: an MLflow run every stage logs into (``$GANOPS_MLFLOW_RUN_ID``); None: the train stage starts one.

    Returns:
        The :class:`PointResult`; a failed ``dvc exp run`` gives ``ok=False`` and the output's tail in ``error``.
    """
    t0 = time.perf_counter()
    (project / "params.yaml").write_text(baseline_params)
    forget_training(project, params)
    (project / params.evaluate.out).unlink(missing_ok=True)  # never read a previous point's metrics
    proc = run_dvc([sys.executable, "-m", "dvc", "exp", "run", "evaluate", "--name", name, *dvc_set_args(typed)],
                   project, run_id)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return PointResult(name, typed, ok=False, wall_time_s=wall,
                           error=(proc.stdout + proc.stderr)[-OUTPUT_TAIL_CHARS:])
    from ganops.tracking import read_run_id

    ev = json.loads((project / params.evaluate.out).read_text())
    run_id = read_run_id(RunDir(project / params.train.run_dir).path)
    if run_id:
        _tag_run(project, run_id, sweep_id, name)
    return PointResult(name, typed, ok=True, fid=float(ev["fid"]), kid_mean=ev.get("kid_mean"),
                       num_samples=ev.get("num_generated"), snapshot_sha256=ev.get("snapshot_sha256"),
                       mlflow_run_id=run_id, wall_time_s=wall)


def best_point(results: list[PointResult], metric: str) -> PointResult | None:
    """The successful point with the lowest finite ``metric`` (``"fid"`` or ``"kid_mean"``); ties go to the earlier
    point. None when no point has a finite value."""
    def score(r: PointResult) -> float:
        value = getattr(r, metric) if r.ok else None
        return value if value is not None and math.isfinite(value) else math.inf

    ranked = [r for r in results if math.isfinite(score(r))]
    return min(ranked, key=score) if ranked else None  # min keeps the first of equal scores


def checkout_failures(output: str) -> list[str]:
    """The targets DVC lists after "Checkout failed for following targets:" (empty when there is no such list)."""
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "Checkout failed for following targets" in line:
            return [t.strip() for t in lines[i + 1:] if t.strip() and not t.startswith(("Is your cache", "<http"))]
    return []


def apply_point(name: str, project: Path, params: Params, snapshot_sha256: str | None) -> list[str]:
    """``dvc exp apply <name>``: the experiment's params, dvc.lock and outputs into the workspace.

    The experiments stop before ``register``, so when the baseline's dvc.lock has no register entry DVC cannot
    check out ``register.out`` and exits non-zero; that one missing file is expected (the register stage writes it
    next).

    Returns:
        The targets DVC could not check out (``[]`` or ``[register.out]``).

    Raises:
        StageFailed: any other checkout failure, or a training snapshot in the workspace that is not the
            experiment's (``snapshot_sha256`` from its metrics).
    """
    from ganops.io import sha256_file

    proc = run_dvc([sys.executable, "-m", "dvc", "exp", "apply", name], project)
    output = proc.stdout + proc.stderr
    failed: list[str] = []
    if proc.returncode != 0:
        failed = checkout_failures(output)
        if not failed or any(Path(t) != Path(params.register_.out) for t in failed):
            raise StageFailed(f"exp apply {name}", proc.returncode, output)
    snapshot = RunDir(project / params.train.run_dir).snapshot
    if snapshot_sha256 and (not snapshot.is_file() or sha256_file(snapshot) != snapshot_sha256):
        raise StageFailed(f"exp apply {name}", proc.returncode,
                          f"{output}\n{snapshot} is not experiment {name}'s evaluated snapshot {snapshot_sha256}")
    return failed


def comparison_table(results: list[PointResult], best: str | None, metric: str,
                     registration: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per point (JSON-safe values): experiment, overrides, status, FID, KID, samples, whether it is
    ``best``, the registered version (best point only), wall time in seconds and a note (e.g. "stopped early at
    0.2 kimg (FID 312)"). ``metric`` is the one ranked on."""
    rows = []
    for r in results:
        rows.append({
            "experiment": r.name, "overrides": json.dumps(r.overrides, sort_keys=True),
            "status": r.status or ("ok" if r.ok else "failed"), "fid": r.fid, "kid_mean": r.kid_mean, "num_samples": r.num_samples,
            "best": r.name == best,
            "registered": (f"{registration['model_name']} v{registration['version']} @{registration['alias']}"
                           if registration and r.name == best else ""),
            "wall_time_s": round(r.wall_time_s, 1), "note": r.note,
        })
    return rows


__all__ = ["EXP_NAME", "PointResult", "apply_point", "best_point", "check_git_commit", "checkout_failures",
           "comparison_table", "dvc_set_args", "experiment_names", "forget_training", "run_dvc", "run_point",
           "validate_points"]
