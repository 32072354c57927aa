"""A fanned-out sweep for real: a Prefect server, an MLflow server and two process workers on 127.0.0.1 run a 4-point
tiny sweep (flows/sweep.py --deployment ganops-sweep-point/sweep-point), and one worker dies mid-point.

Checked: two points train at the same time; the killed point (its worker and its flow-run process SIGKILLed, as
when a machine dies) ends crashed, found by its missing flow-run heartbeats, while the other three complete in
their own workspaces, each with its MLflow run and FID; exactly one model version is registered, from the best
completed point's run; the completed experiments reach the checkout (``dvc exp push``); the table artifact says
what happened to each point.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from ganops.rundir import RunDir
from tests.e2e.sweep_harness import SweepCluster, commit_tiny_params, tiny_sweep_points


pytestmark = pytest.mark.e2e

HEARTBEAT_S, STALE_AFTER_S = 30, 75  # Prefect's minimum heartbeat interval; > 2 missed heartbeats = lost
SWEEP_TIMEOUT_S = 1500


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _started(run: dict) -> bool:
    return run["start_time"] is not None and run["state_type"] in ("RUNNING", "COMPLETED", "FAILED", "CRASHED")


def _kill_third_point(cluster: SweepCluster, deadline: float) -> tuple[str, str]:
    """Once a worker has taken its second point (the third to start) and run it for 20 s, SIGKILL that worker's and
    that flow run's process groups. Returns (point name, worker name)."""
    while time.monotonic() < deadline:
        started = sorted((r for r in cluster.point_runs() if _started(r)), key=lambda r: r["start_time"])
        if len(started) >= 3 and started[2]["infrastructure_pid"]:
            third = started[2]
            age_s = (datetime.now().astimezone() - datetime.fromisoformat(third["start_time"])).total_seconds()
            if age_s >= 20 and third["state_type"] == "RUNNING":
                flow_pid = int(third["infrastructure_pid"].rsplit(":", 1)[-1])
                (worker_name, worker), = [(n, w) for n, w in cluster.workers.items() if w.pid == _ppid(flow_pid)]
                for pgid in (worker.pid, flow_pid):
                    os.killpg(pgid, signal.SIGKILL)
                worker.wait(timeout=30)
                return third["name"], worker_name
        time.sleep(2)
    raise AssertionError(f"no third point started in time:\n{cluster.logs()}")


@pytest.fixture()
def cluster(tiny_project, tmp_path, migrated_mlflow_db):
    commit_tiny_params(tiny_project)
    c = SweepCluster(tiny_project, tmp_path / "cluster", migrated_mlflow_db, heartbeat_s=HEARTBEAT_S)
    try:
        yield c
    finally:
        c.stop()


def test_two_workers_run_points_in_parallel_and_a_lost_worker_fails_only_its_point(cluster):
    t0 = time.perf_counter()
    start_s = cluster.start()
    for name in ("w1", "w2"):
        cluster.start_worker(name)
    points, names = tiny_sweep_points()
    sweep = cluster.start_sweep(points, names, "--stale-after", str(STALE_AFTER_S))
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    killed, killed_worker = _kill_third_point(cluster, deadline)
    out = cluster.sweep_output(sweep, timeout_s=max(60.0, deadline - time.monotonic()))
    wall_s = time.perf_counter() - t0

    exps = {e["name"]: e for e in out["experiments"]}
    assert list(exps) == names
    # The killed point ended crashed (its heartbeats stopped); nothing else failed.
    assert exps[killed]["status"] == "crashed" and not exps[killed]["ok"], exps[killed]
    assert "no heartbeat" in exps[killed]["note"]
    done = {n: e for n, e in exps.items() if n != killed}
    assert all(e["ok"] and e["status"] == "ok" for e in done.values()), done
    # Points overlapped in time: some two completed points ran at once.
    spans = [(datetime.fromisoformat(e["started"]), datetime.fromisoformat(e["ended"])) for e in done.values()]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:]), spans

    # Each completed point: its own workspace and MLflow run (in the shared server) with its FID.
    ml = cluster.mlflow.client()
    workspaces = {e["workspace"] for e in done.values()}
    assert len(workspaces) == 3 and all(Path(w).parent.parent == cluster.sweep_dir for w in workspaces)
    for name, e in done.items():
        assert math.isfinite(e["fid"])
        run = ml.get_run(e["mlflow_run_id"])
        assert run.data.metrics["fid"] == pytest.approx(e["fid"])
        assert run.data.tags["ganops.dvc_exp"] == name and run.data.tags["prefect.flow_run_id"] == e["flow_run_id"]
        ws = Path(e["workspace"])
        assert json.loads((ws / "metrics" / "eval.json").read_text())["fid"] == e["fid"]
        assert RunDir(ws / "runs" / "train").snapshot.is_file()
    assert len({e["snapshot_sha256"] for e in done.values()}) == 3
    # The killed point's MLflow run was ended, not left running.
    assert ml.get_run(exps[killed]["mlflow_run_id"]).info.status == "KILLED"

    # Exactly one model version, registered from the best completed point's run.
    best = min(done.values(), key=lambda e: e["fid"])
    reg = out["registration"]
    assert out["best"] == best["name"] and reg["run_id"] == best["mlflow_run_id"]
    versions = ml.search_model_versions(f"name='{reg['model_name']}'")
    assert [(v.run_id, v.tags["snapshot_sha256"]) for v in versions] == [(best["mlflow_run_id"],
                                                                           best["snapshot_sha256"])]

    # The completed experiments were pushed into the checkout the workspaces were cloned from.
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=cluster.project,
                          capture_output=True, text=True, check=True).stdout
    assert all(any(r.endswith(f"/{n}") for r in refs.split()) for n in done), refs

    # The table artifact: one row per point, the crash noted, the registered version on the best row.
    (artifact,) = [a for a in cluster.prefect.api("POST", "/artifacts/filter",
                                                   json={"artifacts": {"key": {"any_": ["ganops-sweep"]}}})]
    rows = {r["experiment"]: r for r in json.loads(artifact["data"])}
    assert rows[killed]["status"] == "crashed" and rows[best["name"]]["registered"].endswith("@champion")
    print(json.dumps({"sweep_fanout_e2e_wall_s": round(wall_s, 1), "cluster_start_s": round(start_s, 1),
                      "killed": [killed, killed_worker], "fid": {n: e["fid"] for n, e in done.items()},
                      "spans": {n: [e["started"], e["ended"]] for n, e in exps.items()}}))
