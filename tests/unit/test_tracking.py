"""ganops.tracking: which MLflow run each stage logs into, what lands there, and failure marking."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ganops.config import Params
from ganops.tracking import ENV_RUN_ID, RUN_ID_FILE, NullLogger, read_run_id, stage_logger, tracking_uri


@pytest.fixture()
def project(mlflow_project):
    """An empty project root as cwd with its own SQLite store; params pointing inside it."""
    return mlflow_project, Params.model_validate({"experiment": "unit", "train": {"run_dir": "runs/train"}})


def _client():
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri())


def test_tracking_uri_defaults_to_sqlite_in_cwd_and_honours_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    assert tracking_uri(tmp_path) == "http://tracking.example:5000"


def test_prepare_without_pipeline_run_logs_nowhere(project):
    _, params = project
    with stage_logger(params, "prepare") as logger:
        assert isinstance(logger, NullLogger)
    assert _client().get_experiment_by_name(params.experiment) is None  # no experiment, no run created


def test_unknown_stage_lists_valid_ones(project):
    _, params = project
    with pytest.raises(ValueError, match="prepare, validate, train, evaluate, register"):
        with stage_logger(params, "deploy"):
            pass


def test_train_then_evaluate_share_one_run_with_params_metrics_artifacts(project):
    root, params = project
    run_dir = root / "runs" / "train"
    with stage_logger(params, "train") as logger:
        for step in range(3):
            logger.log_metrics({"Loss/G": 1.0 + step, "Loss/D": 0.5 * step}, step=step)
        (run_dir / "fakes-latest.png").write_bytes(b"\x89PNG fake")
        logger.log_image(run_dir / "fakes-latest.png")
    run_id = read_run_id(run_dir)
    assert run_id and json.loads((run_dir / RUN_ID_FILE).read_text())["run_id"] == run_id

    with stage_logger(params, "evaluate") as logger:
        logger.log_metrics({"fid": 12.5})

    client = _client()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((root / "mlartifacts").resolve().as_uri())
    assert run.data.params["train.z_dim"] == "100" and run.data.params["seed"] == "0"
    assert "evaluate.num_samples" in run.data.params  # logged by the evaluate stage into the same run
    assert run.data.tags["ganops.status.train"] == "ok" and run.data.tags["ganops.status.evaluate"] == "ok"
    history = client.get_metric_history(run_id, "Loss/G")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert run.data.metrics["fid"] == 12.5
    samples = {f.path for f in client.list_artifacts(run_id, "samples")}
    assert "samples/fakes-latest.png" in samples


def test_failed_stage_marks_run_failed_and_reraises(project):
    _, params = project
    with pytest.raises(RuntimeError, match="diverged"):
        with stage_logger(params, "train") as logger:
            logger.log_metrics({"Loss/G": math.nan}, step=7)
            raise RuntimeError("diverged")
    run = _client().get_run(read_run_id(params.train.run_dir))
    assert run.info.status == "FAILED"
    assert run.data.tags["ganops.status.train"] == "failed"
    assert math.isnan(run.data.metrics["Loss/G"])  # buffered metrics are still flushed on failure


def test_pipeline_run_id_from_env_is_used_by_every_stage(project, monkeypatch):
    _, params = project
    from ganops.tracking import configure_mlflow

    client, exp_id = configure_mlflow(params.experiment)
    run_id = client.create_run(exp_id).info.run_id
    monkeypatch.setenv(ENV_RUN_ID, run_id)
    for stage in ("prepare", "validate", "train"):
        with stage_logger(params, stage) as logger:
            logger.set_tags({f"seen.{stage}": "1"})
    tags = client.get_run(run_id).data.tags
    assert {"seen.prepare", "seen.validate", "seen.train"} <= set(tags)
    assert read_run_id(params.train.run_dir) == run_id
    assert len(client.search_runs([exp_id])) == 1


def test_changed_param_is_recorded_as_tag_not_error(project):
    _, params = project
    with stage_logger(params, "train"):
        pass
    changed = Params.model_validate({**params.model_dump(by_alias=True), "evaluate": {"num_samples": 50}})
    with stage_logger(params, "evaluate"):
        pass
    with stage_logger(changed, "evaluate"):
        pass
    run = _client().get_run(read_run_id(params.train.run_dir))
    assert run.data.params["evaluate.num_samples"] == "2000"
    assert run.data.tags["ganops.param_update.evaluate.num_samples"] == "50"


def test_export_loss_csv_keeps_only_loss_lines(tmp_path):
    from ganops.rundir.export import export_loss_csv

    lines = [{"step": 1, "kimg": 0.064, "loss_G": 1.5, "loss_D": 0.7, "D_real": 0.1},
             {"step": 1, "kimg": 0.064, "diversity_ratio": 0.9},
             {"step": 2, "kimg": 0.128, "loss_G": 1.25, "loss_D": 0.5}]
    (tmp_path / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = export_loss_csv(tmp_path)
    assert out.read_text() == "step,kimg,loss_G,loss_D\n1,0.064,1.5,0.7\n2,0.128,1.25,0.5\n"
    assert export_loss_csv(tmp_path / "missing") is None


def test_stale_run_ids_new_run_from_file_error_from_env(project, monkeypatch):
    _, params = project
    from ganops.io import write_json

    write_json(f"{params.train.run_dir}/{RUN_ID_FILE}", {"run_id": "0" * 32})  # e.g. mlflow.db was deleted
    with stage_logger(params, "evaluate") as logger:
        fresh = logger.run_id
    assert fresh != "0" * 32 and _client().get_run(fresh).info.status == "FINISHED"
    monkeypatch.setenv(ENV_RUN_ID, "f" * 32)
    with pytest.raises(ValueError, match="GANOPS_MLFLOW_RUN_ID"):
        with stage_logger(params, "train"):
            pass


def test_run_holds_resolved_config_fid_plot_and_evaluated_grid(project):
    import yaml
    from PIL import Image

    root, params = project
    run_dir = root / "runs" / "train"
    with stage_logger(params, "train"):
        run_dir.mkdir(parents=True, exist_ok=True)
        lines = [{"step": 1, "kimg": 0.1, "loss_G": 1.0, "loss_D": 1.0},
                 {"step": 2, "kimg": 0.2, "metric/fid": 80.0}, {"step": 4, "kimg": 0.4, "metric/fid": 55.0}]
        (run_dir / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        Image.new("L", (8, 8), 3).save(run_dir / "fakes-latest.png")
    (root / "metrics").mkdir()
    (root / "metrics" / "eval.json").write_text(json.dumps({"fid": 50.0, "kimg": 0.4, "snapshot_sha256": "ab" * 32}))
    with stage_logger(params, "evaluate"):
        pass

    client, run_id = _client(), read_run_id(run_dir)
    local = root / "dl"
    # The resolved config: the whole params.yaml with defaults filled in, loadable as Params again.
    cfg_path = client.download_artifacts(run_id, "config/params.resolved.yaml", str(local))
    assert Params.model_validate(yaml.safe_load(open(cfg_path))) == params
    plot = Image.open(client.download_artifacts(run_id, "train/fid_over_training.png", str(local)))
    assert plot.size == (600, 400)
    evaluated = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert evaluated == {"evaluation/fakes-kimg0000.400-abababab.png"}


def test_fid_plot_only_when_stats_hold_fid(tmp_path):
    from ganops.rundir.export import plot_fid_over_training

    assert plot_fid_over_training(tmp_path, tmp_path / "p.png") is None  # no stats.jsonl
    (tmp_path / "stats.jsonl").write_text(json.dumps({"step": 1, "kimg": 0.1, "loss_G": 1.0}) + "\n")
    assert plot_fid_over_training(tmp_path, tmp_path / "p.png") is None and not (tmp_path / "p.png").exists()


def test_export_fid_csv_keeps_only_evaluation_lines(tmp_path):
    from ganops.rundir.export import export_fid_csv

    lines = [{"step": 1, "kimg": 0.064, "loss_G": 1.5, "loss_D": 0.7},
             {"step": 10, "kimg": 0.64, "metric/fid": 80.5, "metric/kid_mean": 0.04, "metric/kid_std": 0.001,
              "metric/num_generated": 500.0},
             {"step": 20, "kimg": 1.28, "metric/fid": 60.25, "metric/kid_mean": 0.03, "metric/kid_std": 0.002,
              "metric/num_generated": 500.0}]
    (tmp_path / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert export_fid_csv(tmp_path).read_text() == (
        "step,kimg,fid,kid_mean,kid_std,num_generated\n10,0.64,80.5,0.04,0.001,500.0\n20,1.28,60.25,0.03,0.002,500.0\n")
    (tmp_path / "stats.jsonl").write_text(json.dumps(lines[0]) + "\n")  # in-training evaluation off
    assert export_fid_csv(tmp_path).read_text() == "step,kimg,fid,kid_mean,kid_std,num_generated\n"
    assert export_fid_csv(tmp_path / "missing") is None


def test_dvc_plots_show_renders_the_loss_and_fid_curves(tmp_path):
    """The project's dvc.yaml plots section, on the CSVs the train stage exports: both curves with their rows."""
    import shutil
    import subprocess
    import sys

    from ganops.rundir.export import export_fid_csv, export_loss_csv

    repo = Path(__file__).resolve().parents[2]
    shutil.copy(repo / "dvc.yaml", tmp_path / "dvc.yaml")
    run_dir = tmp_path / "runs" / "train"
    run_dir.mkdir(parents=True)
    lines = [{"step": s, "kimg": s * 0.064, "loss_G": 1.0 / s, "loss_D": 0.5} for s in range(1, 4)]
    lines.append({"step": 3, "kimg": 0.192, "metric/fid": 70.0, "metric/kid_mean": 0.05})
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    export_loss_csv(run_dir)
    export_fid_csv(run_dir)
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env)
    out = subprocess.run([dvc, "plots", "show", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)["data"]
    assert len(data["runs/train/loss.csv"][0]["content"]["data"]["values"]) == 6  # 3 steps x (loss_G, loss_D)
    fid_values = data["runs/train/fid.csv"][0]["content"]["data"]["values"]
    assert [float(v["fid"]) for v in fid_values] == [70.0]


def test_mlflow_command_points_at_this_environments_cli(tmp_path, monkeypatch):
    # The summary / run report tell the user how to start the UI: a bare `mlflow` is not on PATH without an
    # activated venv, so the command names the executable next to the running interpreter.
    import sys

    from ganops.tracking import mlflow_command

    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path)
    assert mlflow_command() == "mlflow"  # no mlflow executable there: the plain name
    (bin_dir / "mlflow").write_text("#!/bin/sh\n")
    assert mlflow_command() == ".venv/bin/mlflow"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the venv is not below the working directory: the absolute path
    assert mlflow_command() == str(bin_dir / "mlflow")
