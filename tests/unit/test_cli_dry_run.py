"""``ganops <stage> --dry-run``: prints the stage's validated section and, for train/evaluate, the device that
``auto`` picks on this machine; writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ganops.cli import app


def _params(tmp_path, text: str = "") -> str:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_dry_run_shows_the_device_auto_resolves_to(tmp_path, stage, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a stage writes relative to the working directory (runs/, mlflow.db, metrics/)
    result = CliRunner().invoke(app, [stage, "--dry-run", "--params", _params(tmp_path)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out[stage]["device"] == "auto"
    assert out["resolved"] == {f"{stage}.device": "cuda" if torch.cuda.is_available() else "cpu"}
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_dry_run_refuses_cuda_without_a_gpu(tmp_path):
    params = _params(tmp_path, "evaluate:\n  device: cuda\n")
    result = CliRunner().invoke(app, ["evaluate", "--dry-run", "--params", params])
    assert result.exit_code == 1
    assert "evaluate.device is 'cuda' but no CUDA device is available" in result.output


def test_dry_run_of_other_stages_prints_their_section_only(tmp_path):
    result = CliRunner().invoke(app, ["prepare", "--dry-run", "--params", _params(tmp_path, "seed: 3\n")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["seed"] == 3 and out["prepare"]["source"] == "fashion_mnist" and "resolved" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("text, message", [
    # In-training FID runs Inception on evaluate.device: `ganops train` refuses cuda there before training.
    ("train:\n  eval_every_kimg: 1\nevaluate:\n  device: cuda\n", "evaluate.device is 'cuda' but no CUDA device"),
    ("train:\n  precision: fp16\n", "train.precision=fp16 needs CUDA"),
])
def test_train_dry_run_refuses_what_the_run_refuses_without_a_gpu(tmp_path, text, message):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--params", _params(tmp_path, text)])
    assert result.exit_code == 1, result.output
    assert message in result.output


def test_train_dry_run_resolves_the_in_training_fid_device_only_when_it_runs(tmp_path):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    on = CliRunner().invoke(app, ["train", "--dry-run", "--params", _params(tmp_path, "train:\n  eval_every_kimg: 1\n")])
    assert on.exit_code == 0, on.output
    assert json.loads(on.output)["resolved"] == {"train.device": expected, "evaluate.device": expected}
    # With in-training FID off (the default) evaluate.device plays no part in train, so cuda there is no error.
    off = CliRunner().invoke(app, ["train", "--dry-run", "--params", _params(tmp_path, "evaluate:\n  device: cuda\n")])
    assert off.exit_code == 0, off.output
    assert json.loads(off.output)["resolved"] == {"train.device": expected}


def test_params_pointing_at_a_directory_is_named_as_such(tmp_path):
    result = CliRunner().invoke(app, ["train", "--dry-run", "--params", str(tmp_path)])
    assert result.exit_code == 1
    assert "is a directory, not a parameter file" in result.output and "not found" not in result.output
