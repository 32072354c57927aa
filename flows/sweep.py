"""Prefect flow: a parameter sweep as DVC experiments, then register only the best one.

For each parameter set (a :data:`ganops.overrides.PipelineOverrides`, e.g. ``{"train": {"lr_g": 1e-4}}``):

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

With ``deployment`` (``--deployment ganops-sweep-point/sweep-point``) the points fan out instead: each becomes a run
of that deployment, taken by whichever of the work pool's workers is free, trained in its own workspace and tracked
in the shared MLflow store (``flows/sweep_point.py``, ``flows/fanout.py``); optional successive halving stops the
worst points early on their in-training FID. The best point is registered once, in its workspace.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from ganops.config import Params
from ganops.overrides import PipelineOverrides, check_params_path, parse_overrides
from ganops.stage_runner import StageFailed, StageResult, repro_stage, retry_if_transient
from ganops.sweep import (
    PointResult, apply_point, best_point, check_git_commit, comparison_table, experiment_names, run_point,
    validate_points,
)
from ganops.sweep_fanout import head_commit

if str(Path(__file__).resolve().parent) not in sys.path:  # flows/fanout.py, also when loaded by path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
import fanout  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
SWEEP_TABLE_KEY = "ganops-sweep"


@task(cache_policy=NO_CACHE, task_run_name="dvc-exp-{name}")
def run_experiment(name: str, typed: dict[str, Any], params: Params, project_dir: str,
                   baseline_params: str, sweep_id: str) -> PointResult:
    """One point as a DVC experiment (:func:`ganops.sweep.run_point`); a failed one is returned with ``ok=False``
    and logged (the sweep goes on)."""
    logger = get_run_logger()
    result = run_point(name, typed, params, Path(project_dir), baseline_params, sweep_id)
    if result.ok:
        logger.info("experiment %s: FID %.4g (%.0f s)", name, result.fid, result.wall_time_s)
    else:
        logger.error("experiment %s failed:\n%s", name, result.error)
    return result


@task(cache_policy=NO_CACHE, task_run_name="dvc-exp-apply-{name}")
def apply_experiment(name: str, project_dir: str, params: Params, snapshot_sha256: str | None) -> None:
    """``dvc exp apply <name>`` (:func:`ganops.sweep.apply_point`); raises :class:`StageFailed` when the workspace
    does not end up holding the experiment."""
    missing = apply_point(name, Path(project_dir), params, snapshot_sha256)
    if missing:
        get_run_logger().info("dvc exp apply %s: %s is not in the experiment (register runs next)", name, missing)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE,
      task_run_name="dvc-repro-register")
def register_best(project_dir: str) -> StageResult:
    """``dvc repro --single-item register``: registers the applied experiment; raises :class:`StageFailed`."""
    logger = get_run_logger()
    return repro_stage("register", project_dir, None, lambda line: logger.info("[register] %s", line))


def _best_or_raise(results: list, metric: str, what: str, listing: list, logger: Any):
    """The point with the lowest finite ``metric``; when there is none, the table artifact of the failures and a
    RuntimeError naming them (``what``: "point" or "experiment"; ``listing``: what the error lists of each)."""
    best = best_point(results, metric)
    if best is None:
        create_table_artifact(comparison_table(results, None, metric, None), key=SWEEP_TABLE_KEY,
                              description=f"ganops sweep: every {what} failed")
        raise RuntimeError(f"every sweep {what} failed: {listing}; see the flow log")
    logger.info("best %s: %s (%s %.4g); registering it", what, best.name, metric, getattr(best, metric))
    return best


def fan_out(deployment: str, names: list[str], typed_points: list[tuple[dict[str, Any], Params]], project: Path,
            sweep_id: str, metric: str, halving_rungs_kimg: list[float] | None, halving_eta: int,
            stale_after_s: float, push: bool) -> dict[str, Any]:
    """The points as runs of ``deployment`` (see ``flows/fanout.py``); registers the best in its workspace.

    Raises:
        RuntimeError: every point failed. FileNotFoundError / StageFailed: see :func:`fanout.register_in_workspace`.
    """
    from ganops.tracking import configure_mlflow, tracking_uri

    logger = get_run_logger()
    params = {n: p for n, (_, p) in zip(names, typed_points)}
    ml, exp_id = configure_mlflow(typed_points[0][1].experiment, root=project)  # creates the experiment once
    uri = tracking_uri(project)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "params.yaml", "dvc.yaml", "src"], cwd=project,
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        logger.warning("points start from the last commit; these uncommitted changes are not in them:\n%s", dirty)
    runs = fanout.submit_points(deployment, names, [t for t, _ in typed_points], sweep_id, head_commit(project), uri,
                                push)
    logger.info("submitted %d points to %s: %s", len(runs), deployment, runs)
    states = fanout.watch_points(runs, params, ml, exp_id, sweep_id, logger.info, rungs_kimg=halving_rungs_kimg,
                                 eta=halving_eta, stale_after_s=stale_after_s)
    results = fanout.collect_results(runs, states, {n: t for n, (t, _) in zip(names, typed_points)}, ml, exp_id,
                                     sweep_id)
    best = _best_or_raise(results, metric, "point", [(r.name, r.status) for r in results], logger)
    registration = fanout.register_in_workspace(best, params[best.name], uri, logger.info)
    create_table_artifact(comparison_table(results, best.name, metric, registration), key=SWEEP_TABLE_KEY,
                          description=f"ganops sweep {sweep_id} on {deployment}: {metric} per point; only the best "
                                      "is registered")
    return {"experiments": [asdict(r) for r in results], "best": best.name, "registration": registration}


@flow(name="ganops-sweep", log_prints=True)
def ganops_sweep(points: list[PipelineOverrides], names: list[str] | None = None, project_dir: str | None = None,
                 metric: Literal["fid", "kid_mean"] = "fid", deployment: str | None = None,
                 halving_rungs_kimg: list[float] | None = None, halving_eta: int = 2, stale_after_s: float = 600.0,
                 push: bool = True) -> dict[str, Any]:
    """Run each parameter set as a DVC experiment (up to evaluate), register only the one with the lowest metric.

    Args:
        points: params.yaml overrides per point, e.g. ``[{"train": {"lr_g": 2e-4}}, {"train": {"lr_g": 1e-4}}]``
            (dotted keys also work). All are validated with the project's params.yaml before any experiment runs.
        names: DVC experiment names, one per point (letters, digits, ``._-``; unused in the repository); default
            ``sweep-<UTC time>-<i>``.
        project_dir: the ganops checkout, a git repository with a commit (default: the one holding this file).
        metric: ``fid`` or ``kid_mean`` from ``evaluate.out`` (lower is better); ties go to the earlier point.
        deployment: ``<flow>/<deployment>`` of ``flows/sweep_point.py`` (e.g. ``ganops-sweep-point/sweep-point``):
            fan the points out to its work pool's workers, each in its own workspace (None: one after another in
            ``project_dir``). Points start from ``project_dir``'s HEAD commit, which the workers' checkouts need.
        halving_rungs_kimg: fan-out only: successive-halving rungs in kimg, e.g. ``[0.5, 1.0]``; needs in-training
            FID (``train.eval_every_kimg`` > 0) at those lengths. A running point whose FID at a rung is not among the
            best ``1/halving_eta`` seen there is cancelled ("stopped early" in the table). None: no halving.
        halving_eta: keep 1 in ``halving_eta`` points per rung (>= 2).
        stale_after_s: fan-out only: a running point without a Prefect flow-run heartbeat for this many seconds
            lost its worker; it is marked crashed and counts as failed. Keep it above 2x the workers'
            ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (default 180 s).
        push: fan-out only: each point runs ``dvc exp push origin <name>`` (refs into the worker's checkout,
            outputs into its default DVC remote).

    Returns:
        ``{"experiments": [PointResult as dict, ...], "best": name, "registration": registration.json}``.

    Raises:
        ConfigError: a point has an invalid override (the message names the point and the field); nothing ran.
        ValueError: no points, names of the wrong count / duplicated / not usable as git refs, no git commit, or
            halving rungs without a deployment or with ``halving_eta`` < 2.
        RuntimeError: every experiment failed (their errors are in the flow log and the table artifact).
        StageFailed: ``dvc exp apply`` or the register stage failed.
        FileNotFoundError: fan-out: the best point's workspace is not on this machine (nothing registered).
    """
    project = Path(project_dir).resolve() if project_dir else PROJECT_DIR
    params_file = check_params_path(project, "params.yaml")
    if not points:
        raise ValueError("points is empty; give at least one parameter set, e.g. [{\"train\": {\"lr_g\": 1e-4}}]")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    names = experiment_names(names, len(points), stamp)
    if halving_rungs_kimg and (not deployment or halving_eta < 2):
        raise ValueError("successive halving needs a deployment (fan-out) and halving_eta >= 2; got "
                         f"deployment={deployment!r}, halving_eta={halving_eta}")
    typed_points = validate_points(params_file, points, names)
    check_git_commit(project)

    logger = get_run_logger()
    baseline = params_file.read_text()
    sweep_id = str(flow_run.get_id() or f"local-{stamp}")
    if halving_rungs_kimg and any(p.train.eval_every_kimg <= 0 for _, p in typed_points):
        logger.warning("halving rungs %s, but train.eval_every_kimg is 0 for some points: they report no "
                       "in-training FID and are never stopped early", halving_rungs_kimg)
    if deployment:
        return fan_out(deployment, names, typed_points, project, sweep_id, metric, halving_rungs_kimg, halving_eta,
                       stale_after_s, push)
    results = [run_experiment(name, typed, params, str(project), baseline, sweep_id)
               for name, (typed, params) in zip(names, typed_points)]
    best = _best_or_raise(results, metric, "experiment", [r.name for r in results], logger)
    best_params = typed_points[names.index(best.name)][1]
    apply_experiment(best.name, str(project), best_params, best.snapshot_sha256)
    register_best(str(project))
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
    cli.add_argument("--deployment", default=None, metavar="FLOW/DEPLOYMENT",
                     help="fan out: each point as a run of this deployment, e.g. ganops-sweep-point/sweep-point")
    cli.add_argument("--halving-rung", action="append", type=float, default=None, metavar="KIMG",
                     help="fan-out: successive-halving rung in kimg (repeat per rung; needs train.eval_every_kimg)")
    cli.add_argument("--halving-eta", type=int, default=2, help="keep 1 in ETA points per rung (default 2)")
    cli.add_argument("--stale-after", type=float, default=600.0, metavar="S",
                     help="fan-out: seconds without a flow-run heartbeat before a point counts as lost")
    cli.add_argument("--no-push", action="store_true", help="fan-out: skip `dvc exp push origin <point>`")
    args = cli.parse_args()
    try:
        parsed = [parse_overrides(json.loads(p)) for p in args.point]
        out = ganops_sweep(points=parsed, names=args.name, metric=args.metric, deployment=args.deployment,
                           halving_rungs_kimg=args.halving_rung, halving_eta=args.halving_eta,
                           stale_after_s=args.stale_after, push=not args.no_push)
    except (json.JSONDecodeError, ValueError, RuntimeError, StageFailed, FileNotFoundError) as err:
        print(f"ganops sweep failed: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(out, indent=2, default=str))
