"""The fanned-out half of ``flows/sweep.py``: submit every point to a deployment, watch them, stop and register.

Each point is a run of the point deployment (``flows/sweep_point.py``), created with
``prefect.deployments.run_deployment(..., timeout=0)`` so all are queued at once and Prefect's workers on the
deployment's work pool run them in parallel, one per worker (``--limit 1``). The sweep then polls the runs' states:

- a point whose run stays RUNNING without a flow-run heartbeat (``prefect.flow-run.heartbeat`` events), or
  PENDING, for ``stale_after_s`` lost its worker; its run is set to Crashed and the point counts as failed (points
  still SCHEDULED wait for a free worker);
- with halving rungs, the in-training FIDs (the point's ``stats.jsonl`` when its workspace is on this machine, else
  the MLflow metric ``metric/fid``) decide which running points to stop (:func:`ganops.sweep_fanout.halving_stops`);
  their runs are set to Cancelling, which the worker carries out (it kills the point's process group).

Results come from the points' MLflow runs (tag ``ganops.sweep.result``). The best point is registered once, by the
register stage in its workspace, which must be reachable from this process (same machine or a shared
``$GANOPS_SWEEP_DIR``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.states import Cancelling, Crashed

from ganops.config import Params
from ganops.stage_runner import repro_stage
from ganops.sweep import PointResult
from ganops.sweep_fanout import TAG_RESULT, halving_stops, point_fid_history, point_runs, result_from_tag

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"
STATUS_BY_STATE = {"COMPLETED": "ok", "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled"}


def nested(typed: dict[str, Any]) -> dict[str, Any]:
    """``{"train.lr_g": 1e-4, "seed": 1}`` -> ``{"train": {"lr_g": 1e-4}, "seed": 1}`` (the deployment's schema)."""
    out: dict[str, Any] = {}
    for key, value in typed.items():
        section, _, field = key.partition(".")
        if field:
            out.setdefault(section, {})[field] = value
        else:
            out[key] = value
    return out


def submit_points(deployment: str, names: list[str], typed_points: list[dict[str, Any]], sweep_id: str,
                  commit: str, uri: str, push: bool) -> dict[str, str]:
    """One run of ``deployment`` per point, returned at once (``timeout=0``): ``{point: flow run id}``."""
    runs = {}
    for name, typed in zip(names, typed_points):
        fr = run_deployment(deployment, timeout=0, flow_run_name=name, tags=["ganops-sweep"], parameters={
            "name": name, "sweep_id": sweep_id, "commit": commit, "overrides": nested(typed), "tracking_uri": uri,
            "push": push})
        runs[name] = str(fr.id)
    return runs


def last_heartbeat(client: Any, flow_run_id: str, since: dt.datetime) -> dt.datetime | None:
    """When the flow run last sent a heartbeat event (after ``since``), or None."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    page = client.read_events(EventFilter(
        occurred=EventOccurredFilter(since=since, until=dt.datetime.now(dt.timezone.utc)),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"])), limit=1)
    return page.events[0].occurred if page.events else None


def lost_reason(client: Any, fr: Any, stale_after_s: float) -> str | None:
    """Why a flow run that is not final counts as lost, or None: RUNNING without a heartbeat (or, before the first
    one, since it started) for ``stale_after_s`` seconds, or PENDING (taken by a worker, not started) that long."""
    now = dt.datetime.now(dt.timezone.utc)
    if fr.state.is_running() and fr.start_time is not None:
        seen = last_heartbeat(client, str(fr.id), fr.start_time) or fr.start_time
        if (now - seen).total_seconds() > stale_after_s:
            return f"no heartbeat for {stale_after_s:.0f} s: worker lost"
    elif fr.state.is_pending() and (now - fr.state.timestamp).total_seconds() > stale_after_s:
        return f"pending for {stale_after_s:.0f} s: worker lost while starting it"
    return None


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.timezone.utc).isoformat() if value else None


def watch_points(runs: dict[str, str], params: dict[str, Params], ml: Any, experiment_id: str, sweep_id: str,
                 log: Callable[[str], None], *, rungs_kimg: list[float] | None = None, eta: int = 2,
                 stale_after_s: float = 600.0, poll_s: float = 5.0) -> dict[str, dict[str, Any]]:
    """Poll the point runs until every one is final; stop lost and halved points on the way.

    ``ml`` is an ``MlflowClient`` on the sweep's tracking store (read for the in-training FIDs of halving).

    Returns:
        ``{point: {"state": "COMPLETED" | "FAILED" | "CRASHED" | "CANCELLED", "message", "started", "ended",
        "note"}}`` (times ISO 8601 UTC).
    """
    final: dict[str, dict[str, Any]] = {}
    notes: dict[str, str] = {}
    judged: dict[float, dict[str, float]] = {}
    while len(final) < len(runs):
        running: dict[str, Any] = {}
        with get_client(sync_client=True) as client:
            for name, fr_id in runs.items():
                if name in final:
                    continue
                fr = client.read_flow_run(fr_id)
                if fr.state is not None and fr.state.is_final():
                    final[name] = {"state": fr.state.type.value, "message": fr.state.message or "",
                                   "started": _iso(fr.start_time), "ended": _iso(fr.end_time or fr.state.timestamp),
                                   "note": notes.get(name, "")}
                    log(f"point {name}: {fr.state.type.value}")
                elif fr.state is not None and (reason := lost_reason(client, fr, stale_after_s)):
                    notes[name] = reason
                    client.set_flow_run_state(fr_id, Crashed(message=reason), force=True)
                    log(f"point {name}: {reason}; marked crashed")
                elif fr.state is not None and fr.state.is_running():
                    running[name] = fr
            if rungs_kimg and running:
                by_run = point_runs(ml, experiment_id, sweep_id)
                histories = {n: point_fid_history(ml, r, params[n].train.run_dir, params[n].train.batch_size)
                             for n, r in by_run.items() if n in runs}
                for stop in halving_stops(histories, rungs_kimg, eta, judged, set(running)):
                    notes[stop.name] = f"stopped early at {stop.rung_kimg:g} kimg (FID {stop.fid:.4g})"
                    client.set_flow_run_state(runs[stop.name], Cancelling(message=notes[stop.name]), force=True)
                    log(f"point {stop.name}: {notes[stop.name]}")
        if len(final) < len(runs):
            time.sleep(poll_s)
    return final


def collect_results(runs: dict[str, str], states: dict[str, dict[str, Any]], typed: dict[str, dict[str, Any]],
                    ml: Any, experiment_id: str, sweep_id: str) -> list[PointResult]:
    """One :class:`PointResult` per point (submission order) from its MLflow run's result tag and its final state.

    Only a COMPLETED run keeps ``ok=True``; a point without a result tag (lost before it finished) gets the state's
    message as ``error``. The MLflow run of a point that did not complete ends KILLED when it was left RUNNING, or
    FINISHED by the last stage that ended before the point was lost (a FAILED run stays FAILED).
    ``ml`` is an ``MlflowClient`` on the sweep's tracking store.
    """
    by_run = point_runs(ml, experiment_id, sweep_id)
    results = []
    for name in runs:
        state, run = states[name], by_run.get(name)
        tag = run.data.tags.get(TAG_RESULT) if run is not None else None
        result = result_from_tag(tag) if tag else PointResult(name, typed[name], ok=False, error=state["message"])
        stopped = state["state"] == "CANCELLED" and state["note"]
        result.status = "stopped" if stopped else STATUS_BY_STATE.get(state["state"], state["state"].lower())
        result.ok = result.ok and state["state"] == "COMPLETED"
        result.note = "; ".join(x for x in (state["note"], result.note) if x)
        result.flow_run_id, result.started, result.ended = runs[name], state["started"], state["ended"]
        if run is not None:
            result.mlflow_run_id = run.info.run_id
            if run.info.status in ("RUNNING", "FINISHED") and not result.ok:
                ml.set_terminated(run.info.run_id, status="KILLED")
        results.append(result)
    return results


@contextlib.contextmanager
def tracking_env(uri: str) -> Iterator[None]:
    """``$MLFLOW_TRACKING_URI`` = ``uri`` while the block runs (the register stage logs there)."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def register_in_workspace(best: PointResult, params: Params, uri: str, log: Callable[[str], None]) -> dict[str, Any]:
    """``dvc repro --single-item register`` in the best point's workspace; returns its registration.json.

    Raises:
        FileNotFoundError: the workspace is not reachable from this machine (run the sweep where
            ``$GANOPS_SWEEP_DIR`` is shared, or run the register stage in that workspace by hand).
        StageFailed: the register stage failed.
    """
    workspace = Path(best.workspace or "")
    if not best.workspace or not (workspace / "dvc.yaml").is_file():
        raise FileNotFoundError(f"the best point {best.name}'s workspace {best.workspace} is not on this machine; "
                                "run `dvc repro --single-item register` there, or share GANOPS_SWEEP_DIR")
    with tracking_env(uri):
        repro_stage("register", workspace, None, lambda line: log(f"[register] {line}"))
    return json.loads((workspace / params.register_.out).read_text())
