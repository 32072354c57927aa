"""ganops.report: the FID history over training and the pipeline run's markdown report."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ganops.config import load_params
from ganops.report import fid_history, mlflow_run_url, summary_markdown
from ganops.stage_runner import StageResult

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


# ---- Report and FID history ---------------------------------------------------------------------------------------

def _fake_run(project: Path, with_training_evals: bool) -> None:
    import json

    run_dir = project / "runs" / "train"
    run_dir.mkdir(parents=True)
    lines = [{"step": 5, "kimg": 0.16, "loss_G": 1.0, "loss_D": 1.2},
             {"step": 5, "kimg": 0.16, "diversity_ratio": 0.9}]
    if with_training_evals:
        lines += [{"step": 5, "kimg": 0.16, "metric/fid": 301.5, "metric/kid_mean": 0.31, "metric/kid_std": 0.01},
                  {"step": 10, "kimg": 0.32, "metric/fid": 250.25, "metric/kid_mean": 0.25, "metric/kid_std": 0.01}]
    (run_dir / "stats.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 11, "kim')
    (run_dir / "training_options.json").write_text(json.dumps({"eval_num_samples": 8}))
    (project / "metrics").mkdir()
    (project / "metrics" / "eval.json").write_text(json.dumps(
        {"fid": 240.0, "kid_mean": 0.2, "kid_std": 0.01, "num_generated": 16, "num_real": 16, "kimg": 0.32,
         "protocol": "legacy_tensorflow"}))
    (project / "reports" / "validation").mkdir(parents=True)
    (project / "reports" / "validation" / "result.json").write_text(json.dumps(
        {"success": True, "data_docs": "reports/validation/data_docs/index.html"}))
    (project / "reports" / "registration.json").write_text(json.dumps(
        {"model_name": "m", "version": 3, "alias": "champion", "reason": "first", "model_uri": "models:/m@champion"}))


def test_fid_history_reads_in_training_evaluations_then_the_evaluate_stage(project):
    _fake_run(project, with_training_evals=True)
    params = load_params(project / "params.yaml")
    rows = fid_history(project, params)
    assert rows == [
        {"source": "training", "step": 5, "kimg": 0.16, "fid": 301.5, "kid_mean": 0.31, "num_samples": 8},
        {"source": "training", "step": 10, "kimg": 0.32, "fid": 250.25, "kid_mean": 0.25, "num_samples": 8},
        {"source": "evaluate", "step": None, "kimg": 0.32, "fid": 240.0, "kid_mean": 0.2, "num_samples": 16},
    ]
    md = summary_markdown(project, params, "abc123", "7", [StageResult("train", True, 2.0)])
    assert "| training | 10 | 0.32 | 250.2 | 0.25 | 8 |" in md and "| evaluate |  | 0.32 | 240 | 0.2 | 16 |" in md
    assert "| fid | 240.0 |" in md
    assert "version **3**, alias **@champion**" in md
    assert "(http://127.0.0.1:5000/#/experiments/7/runs/abc123)" in md and "mlflow ui --backend-store-uri" in md
    assert f"({(project / 'runs/train/fakes-latest.png').as_uri()})" in md
    assert f"({(project / 'reports/validation/data_docs/index.html').as_uri()})" in md
    assert "No in-training evaluations" not in md


def test_report_without_training_evaluations_or_outputs_says_so(project):
    params = load_params(project / "params.yaml")
    md = summary_markdown(project, params, "r", "1", [])
    assert fid_history(project, params) == []
    assert "No FID yet" in md and "Nothing registered in this run." in md
    _fake_run(project, with_training_evals=False)
    assert [r["source"] for r in fid_history(project, params)] == ["evaluate"]
    assert "No in-training evaluations" in summary_markdown(project, params, "r", "1", [])


def test_mlflow_link_uses_a_tracking_server_when_configured(project, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    md = summary_markdown(project, load_params(project / "params.yaml"), "r1", "2", [])
    assert "(http://127.0.0.1:5055/#/experiments/2/runs/r1)" in md and "mlflow ui" not in md


def test_fid_history_reads_what_the_training_loop_writes(project):
    """The real loop (tiny, CPU) with a stand-in metric: the history has its evaluations in order, as it logged them
    (the FID values come from the stand-in; computing real ones needs the Inception network, see tests/e2e)."""
    import json

    import numpy as np

    from ganops.config import TrainConfig, parse_params
    from ganops.training.loop import training_loop

    prepared = project / "prepared"
    prepared.mkdir()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (32, 1, 8, 8)).astype(np.uint8), np.arange(32) % 2
    np.savez(prepared / "train.npz", images=images, labels=labels)
    np.savez(prepared / "test.npz", images=images[:8], labels=labels[:8])
    (prepared / "summary.json").write_text(json.dumps({
        "source": "synthetic", "resolution": 8, "channels": 1, "num_classes": 2, "class_names": ["a", "b"],
        "counts": {"train": 32, "test": 8}, "dataset_sha256": "synthetic"}))
    fids = iter([300.0, 250.0, 275.0, 260.0])
    train = dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.032, sample_every_kimg=0.016,
                 checkpoint_every_kimg=0.016, eval_every_kimg=0.016, eval_num_samples=6, log_every_steps=1,
                 grid_size=2, mode_collapse_num_images=8, device="cpu", channels_last=False, num_threads=1,
                 run_dir=str(project / "runs" / "train"))
    training_loop(TrainConfig(**train), prepared_dir=prepared, seed=0, progress=False,
                  metric_fn=lambda G: {"fid": next(fids), "kid_mean": 0.1})
    params = parse_params({"train": {**train, "run_dir": "runs/train"}})
    rows = fid_history(project, params)
    assert [r["source"] for r in rows] == ["training"] * len(rows) and len(rows) >= 2
    assert [r["fid"] for r in rows] == [300.0, 250.0, 275.0, 260.0][:len(rows)]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[-1]["kimg"] == pytest.approx(0.032)
    assert {r["num_samples"] for r in rows} == {6} and {r["kid_mean"] for r in rows} == {0.1}


def test_report_link_to_the_mlflow_run_never_carries_a_password():
    url = mlflow_run_url("https://alice:s3cr3t@mlflow.example.org:5000/", "7", "abc123")
    assert url == "https://alice:***@mlflow.example.org:5000/#/experiments/7/runs/abc123"
    assert mlflow_run_url("sqlite:////tmp/mlflow.db", "1", "r").startswith("http://127.0.0.1:5000/#/")
