"""Tracking against a real ``mlflow server`` (SQL backend, artifact serving on 127.0.0.1), and a server lost mid-run.

- The pipeline (prepare -> train -> evaluate -> register through the ``ganops`` CLI) logs and registers through the
  server; everything is checked back through the server's REST API.
- The server is SIGKILLed while training runs: training finishes, what could not be sent waits in
  ``<run_dir>/mlflow_pending.jsonl``, and after a restart ``upload_pending`` delivers every step.
- Without any server: the pending file keeps order, rejects what can never succeed, and system metrics work on a
  local SQLite store without leaving threads behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from ganops.config import Params
from ganops.tracking import (PENDING_ARTIFACTS, PENDING_FILE, REJECTED_FILE, MlflowLogger, TrackingUnavailableError,
                             pending_entries, read_run_id, stage_logger, upload_pending)
from ganops.training.loop import training_loop
from tests.e2e.conftest import REPO, TINY_PARAMS, _merge, project_env
from tests.mlflow_server import free_port, running_mlflow_server
from tests.model.conftest import write_prepared

SYSTEM_CPU = "system/cpu_utilization_percentage"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, migrated_mlflow_db):
    """One real server for the module (~20 s to start on 2 busy cores); the lost-server test kills and restarts it."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), migrated_mlflow_db) as server:
        yield server


def _monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor" and t.is_alive()]


def _loss_steps(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "stats.jsonl").read_text().splitlines()
    return {e["step"]: e["loss_G"] for e in map(json.loads, lines) if "loss_G" in e}


# ---- the whole pipeline through the server ---------------------------------------------------------------------

# TINY_PARAMS (tests/e2e) made smaller still: this test is about where things are logged, not model quality.
SERVER_PARAMS = _merge(TINY_PARAMS, {
    "experiment": "ganops-server",
    "prepare": {"max_train": 200, "max_test": 40},
    "train": {"total_kimg": 0.2, "sample_every_kimg": 0.1, "checkpoint_every_kimg": 0.1, "num_threads": 1},
    "evaluate": {"num_samples": 16, "batch_size": 16, "kid_subsets": 2, "kid_subset_size": 8},
})


@pytest.mark.e2e
def test_pipeline_logs_and_registers_through_tracking_server(mlflow_server, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), SERVER_PARAMS)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**project_env(), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    timings = {}
    for stage in ("prepare", "train", "evaluate", "register"):
        t0 = time.monotonic()
        proc = subprocess.run(["ganops", stage], cwd=project, env=env, capture_output=True, text=True, timeout=600)
        timings[stage] = round(time.monotonic() - t0, 1)
        assert proc.returncode == 0, f"ganops {stage} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    print(json.dumps({"stage_wall_s": timings}))
    assert not (project / "mlflow.db").exists(), "a stage wrote to a local store instead of the server"
    assert not (project / "runs/train" / PENDING_FILE).exists(), "the server was up, yet entries were deferred"

    client = mlflow_server.client()
    run_id = read_run_id(project / "runs/train")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {run.data.tags[f"ganops.status.{s}"] for s in ("train", "evaluate", "register")} == {"ok"}
    assert run.data.params["train.ngf"] == "16" and run.data.params["evaluate.num_samples"] == "16"
    steps = _loss_steps(project / "runs/train")
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss_G")) == sorted(steps)
    assert client.get_metric_history(run_id, SYSTEM_CPU), "no system metrics on the train run"

    # Artifacts go through the server's artifact proxy into its --artifacts-destination, not a client-side path.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    assert "samples/fakes-latest.png" in {f.path for f in client.list_artifacts(run_id, "samples")}
    evaluated = [f.path for f in client.list_artifacts(run_id, "evaluation")]
    assert len(evaluated) == 1 and evaluated[0].endswith(".png")
    grid = client.download_artifacts(run_id, "samples/fakes-latest.png", str(tmp_path / "dl"))
    assert Path(grid).read_bytes() == (project / "runs/train/fakes-latest.png").read_bytes()
    assert list(mlflow_server.artifacts.rglob("fakes-latest.png")), "artifact not stored by the server"

    ev = json.loads((project / "metrics/eval.json").read_text())
    reg = json.loads((project / "reports/registration.json").read_text())
    assert run.data.metrics["fid"] == pytest.approx(ev["fid"])
    mv = client.get_model_version_by_alias(reg["model_name"], "champion")
    assert int(mv.version) == reg["version"] and mv.run_id == run_id
    assert float(mv.tags["fid"]) == pytest.approx(ev["fid"])
    assert mv.tags["snapshot_sha256"] == ev["snapshot_sha256"]


# ---- server lost mid-run ----------------------------------------------------------------------------------------


class _KillServerAt:
    """Wraps the stage's logger; at ``step`` it flushes (as a periodic flush would) and SIGKILLs the server."""

    def __init__(self, inner, step: int, server) -> None:
        self.inner, self.step, self.server = inner, step, server
        self.killed_at: float | None = None
        self.steps_on_server_before_kill = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def log_metrics(self, metrics, step=None):
        self.inner.log_metrics(metrics, step)
        if self.killed_at is None and step is not None and step >= self.step:
            self.inner.flush()
            history = self.server.client().get_metric_history(self.inner.run_id, "loss_G")
            self.steps_on_server_before_kill = len(history)
            self.server.kill()
            self.killed_at = time.monotonic()


@pytest.mark.e2e
def test_server_lost_mid_training_keeps_training_and_loses_nothing(mlflow_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    prepared = write_prepared(tmp_path / "prepared", resolution=16)
    run_dir = tmp_path / "runs" / "train"
    params = Params.model_validate({
        "experiment": "lost-server",
        "prepare": {"out_dir": str(prepared), "resolution": 16},
        "train": dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.32, sample_every_kimg=0.08,
                      checkpoint_every_kimg=0.16, log_every_steps=1, grid_size=2, mode_collapse_num_images=8,
                      num_threads=1, device="cpu", run_dir=str(run_dir)),
    })
    with stage_logger(params, "train") as logger:
        killer = _KillServerAt(logger, step=15, server=mlflow_server)
        result = training_loop(params.train, prepared_dir=prepared, seed=0, logger=killer, progress=False)
    after_kill_s = time.monotonic() - killer.killed_at
    print(json.dumps({"stage_seconds_after_kill": round(after_kill_s, 1)}))

    # Training went on to the end and wrote its outputs; the stage closed cleanly and promptly.
    assert result["step"] == 40 and (run_dir / "train.json").is_file() and (run_dir / "network-snapshot.pt").is_file()
    assert 0 < killer.steps_on_server_before_kill < 40
    assert after_kill_s < 60, f"the stage needed {after_kill_s:.0f} s after the server died"
    assert mlflow.active_run() is None and not _monitor_threads()

    # What could not be sent is on disk, in order, including the run's end.
    entries = pending_entries(run_dir)
    kinds = [e["kind"] for e in entries]
    assert {"metrics", "artifact", "tags"} <= set(kinds) and kinds[-1] == "terminate"
    assert entries[-1]["status"] == "FINISHED"
    pending_steps = {row[3] for e in entries if e["kind"] == "metrics" for row in e["metrics"] if row[0] == "loss_G"}
    assert pending_steps and min(pending_steps) > 15

    with pytest.raises(TrackingUnavailableError):  # still down: nothing sent, nothing dropped
        upload_pending(run_dir)
    assert pending_entries(run_dir) == entries

    mlflow_server.start()  # same port, same backend store and artifact folder
    counts = upload_pending(run_dir)
    assert counts == {"sent": len(entries), "remaining": 0, "rejected": 0}
    assert not (run_dir / PENDING_FILE).exists() and not (run_dir / PENDING_ARTIFACTS).exists()

    client = mlflow_server.client()
    run_id = read_run_id(run_dir)
    steps = _loss_steps(run_dir)
    assert len(steps) == 40
    history = client.get_metric_history(run_id, "loss_G")
    assert {m.step: m.value for m in history} == pytest.approx(steps) and len(history) == len(steps)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ganops.status.train"] == "ok"
    assert {"samples/fakes-latest.png", "samples/fakes000000.png"} <= {
        f.path for f in client.list_artifacts(run_id, "samples")}
    assert "train/train.json" in {f.path for f in client.list_artifacts(run_id, "train")}
    assert client.get_metric_history(run_id, SYSTEM_CPU), "system metrics sampled before the loss are missing"


# ---- without a server ------------------------------------------------------------------------------------------


def test_pending_file_replays_in_order_and_sets_aside_what_can_never_succeed(mlflow_project, monkeypatch):
    from mlflow import MlflowClient

    sqlite_uri = f"sqlite:///{mlflow_project / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=sqlite_uri)
    run_id = store.create_run(store.create_experiment("pending")).info.run_id
    run_dir = mlflow_project / "runs" / "train"
    (mlflow_project / "grid.png").write_bytes(b"\x89PNG not really")

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for k, v in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items():
        monkeypatch.setenv(k, v)
    logger = MlflowLogger(MlflowClient(tracking_uri=dead), run_id, flush_every=4, pending_dir=run_dir)
    t0 = time.monotonic()
    logger.log_params({"lr": 0.1})
    for step in range(10):
        logger.log_metrics({"loss": float(step), "nan_is_kept": float("nan")}, step=step)
    logger.log_artifact(mlflow_project / "grid.png", "samples")
    (mlflow_project / "grid.png").unlink()  # a temporary file: the pending copy must not depend on it
    logger.set_tags({"ganops.status.train": "ok"})
    logger.flush()
    logger.terminate("FINISHED")
    assert time.monotonic() - t0 < 30 and logger.offline
    assert [e["kind"] for e in pending_entries(run_dir)] == (
        ["params"] + ["metrics"] * 5 + ["artifact", "tags", "terminate"])

    with open(run_dir / PENDING_FILE, "a") as f:  # a run the store does not know, and a line cut by a kill
        f.write(json.dumps({"run_id": "0" * 32, "kind": "tags", "tags": {"a": "b"}}) + "\n")
        f.write('{"run_id": "' + run_id + '", "kind": "met')

    with pytest.raises(TrackingUnavailableError):
        upload_pending(run_dir, dead)
    counts = upload_pending(run_dir, sqlite_uri)
    assert counts == {"sent": 9, "remaining": 0, "rejected": 2}
    assert not (run_dir / PENDING_FILE).exists() and not (run_dir / PENDING_ARTIFACTS).exists()
    assert len((run_dir / REJECTED_FILE).read_text().splitlines()) == 2

    run = store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert run.data.tags["ganops.status.train"] == "ok"
    assert sorted((m.step, m.value) for m in store.get_metric_history(run_id, "loss")) == [
        (s, float(s)) for s in range(10)]
    assert len(store.get_metric_history(run_id, "nan_is_kept")) == 10
    assert [f.path for f in store.list_artifacts(run_id, "samples")] == ["samples/grid.png"]
    assert upload_pending(run_dir, sqlite_uri) == {"sent": 0, "remaining": 0, "rejected": 0}


def test_train_stage_logs_system_metrics_offline_and_stops_its_thread(mlflow_project, monkeypatch):
    params = Params.model_validate({"experiment": "sysmetrics", "train": {"run_dir": "runs/train"}})
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{mlflow_project / 'mlflow.db'}")

    with stage_logger(params, "train") as logger:
        assert len(_monitor_threads()) == 1
        logger.log_metrics({"loss_G": 1.0}, step=1)
    run_id = read_run_id(mlflow_project / "runs/train")
    assert not _monitor_threads(), "the system-metrics thread outlived the stage"
    metrics = client.get_run(run_id).data.metrics
    assert SYSTEM_CPU in metrics and "system/system_memory_usage_megabytes" in metrics

    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")  # the user's opt-out is respected
    with stage_logger(params, "train") as logger:
        assert not _monitor_threads()
    off_run = read_run_id(mlflow_project / "runs/train")
    assert off_run != run_id and not any(k.startswith("system/") for k in client.get_run(off_run).data.metrics)
    assert os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") is None  # the stage's HTTP bounds do not leak
