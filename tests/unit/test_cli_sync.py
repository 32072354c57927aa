"""``ganops sync``: sends what a stage queued in ``<run_dir>/mlflow_pending.jsonl`` while the server was gone."""

from __future__ import annotations

from mlflow import MlflowClient
from typer.testing import CliRunner

from ganops.cli import app
from ganops.tracking import PENDING_FILE, MlflowLogger
from tests.mlflow_server import free_port


def test_sync_reports_a_dead_server_then_delivers_everything(mlflow_project, monkeypatch):
    sqlite_uri = f"sqlite:///{mlflow_project / 'mlflow.db'}"
    store = MlflowClient(tracking_uri=sqlite_uri)
    run_id = store.create_run(store.create_experiment("sync")).info.run_id
    run_dir = mlflow_project / "runs" / "train"
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    logger = MlflowLogger(MlflowClient(tracking_uri=dead), run_id, flush_every=2, pending_dir=run_dir)
    for step in range(6):
        logger.log_metrics({"loss_G": 0.5 * step}, step=step)
    logger.flush()
    assert (run_dir / PENDING_FILE).is_file()

    runner = CliRunner()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    down = runner.invoke(app, ["sync", "--run-dir", str(run_dir)])
    assert down.exit_code == 1 and "ganops sync: error" in down.output
    assert (run_dir / PENDING_FILE).is_file()  # nothing lost while the server is down

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    up = runner.invoke(app, ["sync", "--run-dir", str(run_dir)])
    assert up.exit_code == 0, up.output
    assert "still pending 0" in up.output and not (run_dir / PENDING_FILE).exists()
    assert sorted((m.step, m.value) for m in store.get_metric_history(run_id, "loss_G")) == [
        (s, 0.5 * s) for s in range(6)]
