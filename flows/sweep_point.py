"""Prefect flow: one point of a fanned-out sweep, in its own workspace, on whichever worker picks it up.

``flows/sweep.py`` submits every point as a run of this flow's deployment (``prefect.yaml``:
``ganops-sweep-point/sweep-point`` on the process work pool ``ganops-sweep``). Each run:

1. clones the worker's checkout (``$GANOPS_CHECKOUT``, default: the checkout holding this file) at the sweep's base
   commit into ``$GANOPS_SWEEP_DIR/<sweep id>/<point>`` (default ``<checkout>-sweeps/``), sharing the checkout's DVC
   cache (DVC's run-cache then restores ``prepare`` / ``validate`` outputs another point already produced);
2. opens one MLflow run in the sweep's tracking store, tagged ``ganops.sweep`` / ``ganops.dvc_exp``, and has every
   stage log into it;
3. writes the point's overrides into the workspace's ``params.yaml`` and runs ``dvc exp run evaluate --name <point>``
   there (prepare -> validate -> train -> evaluate; nothing is registered), then ``dvc exp push origin <point>`` (experiment refs into the checkout, outputs into its default
   DVC remote) when ``push`` is set;
4. stores its :class:`ganops.sweep.PointResult` on the MLflow run (tag ``ganops.sweep.result``), where the sweep reads
   it, and returns it.

A point whose worker dies leaves its workspace and MLflow run behind; no other point shares them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true")):
    os.environ.setdefault(_key, _value)

from prefect import flow, get_run_logger  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from ganops.overrides import PipelineOverrides, apply_overrides, resolve_overrides  # noqa: E402
from ganops.sweep import run_point  # noqa: E402
from ganops.sweep_fanout import (  # noqa: E402
    TAG_FLOW_RUN, TAG_POINT, TAG_RESULT, TAG_SWEEP, TAG_WORKSPACE, checkout_dir, make_workspace, push_experiment,
    result_tag, sweep_root,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]


def _use_tracking_uri(uri: str | None, checkout: Path) -> str:
    """Export the sweep's tracking URI to this process (and so to every stage); default: the checkout's store.

    Raises:
        FileNotFoundError: ``uri`` is a SQLite store that does not exist on this machine (points on several machines
            need a shared MLflow server).
    """
    from ganops.tracking import tracking_uri

    if uri and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"the sweep's MLflow store {uri} is not on {socket.gethostname()}; run points on "
                                "several machines against a shared MLflow server (MLFLOW_TRACKING_URI=http://...)")
    os.environ["MLFLOW_TRACKING_URI"] = uri or tracking_uri(checkout)
    return os.environ["MLFLOW_TRACKING_URI"]


@flow(name="ganops-sweep-point", log_prints=True)
def ganops_sweep_point(name: str, sweep_id: str, commit: str, overrides: PipelineOverrides | None = None,
                       tracking_uri: str | None = None, push: bool = True) -> dict[str, Any]:
    """Train and evaluate one sweep point as DVC experiment ``name`` in its own workspace.

    Args:
        name: the point's DVC experiment name (also its workspace folder and MLflow run name).
        sweep_id: the sweep (the parent flow run's id); workspaces go to ``<sweep dir>/<sweep_id>/<name>``.
        commit: the git commit every point starts from; it must be in ``$GANOPS_CHECKOUT``.
        overrides: ``params.yaml`` overrides of this point (typed like the pipeline flow's).
        tracking_uri: the sweep's MLflow store (default: ``$MLFLOW_TRACKING_URI``, else the checkout's
            ``mlflow.db``).
        push: ``dvc exp push origin <name>`` after a successful run; a failed push is logged and noted, not fatal.

    Returns:
        The :class:`ganops.sweep.PointResult` as a dict (FID/KID unitless, ``wall_time_s`` in seconds).

    Raises:
        ConfigError: an override is invalid for the workspace's ``params.yaml``.
        RuntimeError: the workspace could not be made, or ``dvc exp run`` failed (its output's tail is in the
            message and in the MLflow run's ``ganops.sweep.result`` tag).
        FileNotFoundError: ``tracking_uri`` is a SQLite store missing on this machine.
    """
    from ganops.tracking import configure_mlflow

    logger = get_run_logger()
    checkout = checkout_dir(PROJECT_DIR)
    workspace = make_workspace(checkout, sweep_root(checkout) / sweep_id / name, commit)
    logger.info("point %s: workspace %s (from %s at %s)", name, workspace, checkout, commit[:12])
    params_file, params, typed = resolve_overrides(workspace, "params.yaml", overrides)
    _use_tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"), checkout)
    client, exp_id = configure_mlflow(params.experiment, root=checkout)
    run_id = client.create_run(exp_id, run_name=name, tags={
        TAG_SWEEP: sweep_id, TAG_POINT: name, TAG_WORKSPACE: str(workspace), TAG_FLOW_RUN: str(flow_run.get_id()),
        "ganops.source": "sweep", "ganops.host": socket.gethostname()}).info.run_id

    # Written into params.yaml rather than passed as `-S`: DVC's `-S` refuses keys the file does not list yet.
    apply_overrides(params_file, typed)
    result = run_point(name, {}, params, workspace, params_file.read_text(), sweep_id, run_id=run_id)
    result.overrides = typed
    result.workspace, result.flow_run_id, result.mlflow_run_id = str(workspace), str(flow_run.get_id()), run_id
    if result.ok and push:
        failure = push_experiment(workspace, name, dict(os.environ))
        if failure:
            logger.warning("dvc exp push origin %s failed (the experiment stays in %s):\n%s", name, workspace, failure)
            result.note = "dvc exp push failed"
    client.set_tag(run_id, TAG_RESULT, result_tag(result))
    if not result.ok:
        client.set_terminated(run_id, status="FAILED")
        raise RuntimeError(f"sweep point {name} failed in {workspace}:\n{result.error}")
    logger.info("point %s: FID %.4g in %.0f s", name, result.fid, result.wall_time_s)
    return asdict(result)
