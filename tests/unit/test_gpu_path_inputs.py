"""The GPU entry points on a machine without CUDA (torch.cuda.is_available() patched False, so these run the same
on a GPU machine): each refuses up front, with a message naming the option, before any training or any write."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.scripts import load_benchmark


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_in_training_fid_on_cuda_without_gpu_is_refused_when_the_metric_is_built(no_cuda, tmp_path):
    # `ganops train` builds the metric before training: the refusal used to come at the first eval interval, after
    # minutes of training (and with checkpoints already written).
    from ganops.config import ConfigError, EvaluateConfig
    from ganops.metrics.api import make_metric_fn

    cfg = EvaluateConfig(num_samples=4, device="cuda", ref_stats_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"evaluate\.device is 'cuda' but no CUDA device is available"):
        make_metric_fn(cfg, prepared_dir=tmp_path / "prepared", seed=0)
    assert not (tmp_path / "cache").exists()
    assert callable(make_metric_fn(cfg.model_copy(update={"device": "auto"}), prepared_dir=tmp_path, seed=0))


def test_bench_train_cuda_refuses_before_running_the_other_sections(no_cuda, monkeypatch):
    bench = load_benchmark("bench_train")
    ran = []
    monkeypatch.setattr(bench, "bench_variants", lambda *a, **k: ran.append("variants") or {})
    monkeypatch.setattr(bench, "machine", lambda: {})
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--variants", "--cuda"])
    with pytest.raises(SystemExit, match="--cuda: no CUDA device is available"):
        bench.main()
    assert ran == []  # the variants section (minutes) used to run first, and its figures were then lost


@pytest.fixture
def gpu_check():
    return load_benchmark("gpu_check")


@pytest.mark.parametrize(("argv", "flag", "why"), [
    (["--total-kimg", "0"], "--total-kimg", "must be > 0"),
    (["--total-kimg", "nan"], "--total-kimg", "must be > 0"),
    (["--agreement-samples", "1"], "--agreement-samples", "must be >= 2"),
    (["--graph-check", "-3"], "--graph-check", "must be >= 0"),
])
def test_gpu_check_bad_numbers_are_refused_at_parse_time(gpu_check, capsys, tmp_path, argv, flag, why):
    with pytest.raises(SystemExit) as info:  # (a missing params file and a scratch --work: nothing can train)
        gpu_check.main(["--device", "cpu", "--params", str(tmp_path / "none.yaml"), "--work", str(tmp_path / "w"),
                        *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and why in err


def test_gpu_check_missing_params_file_is_a_message_not_a_traceback(gpu_check, tmp_path):
    with pytest.raises(SystemExit, match=r"gpu_check: parameter file not found: .*nope\.yaml"):
        gpu_check.main(["--device", "cpu", "--params", str(tmp_path / "nope.yaml"), "--work", str(tmp_path / "w")])


def test_gpu_check_does_not_delete_a_work_dir_it_did_not_make(gpu_check, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(f"prepare:\n  out_dir: {tmp_path / 'prepared'}\n")
    work = tmp_path / "mine"
    (work / "train").mkdir(parents=True)
    (work / "train" / "training-state.pt").write_bytes(b"a real run")
    with pytest.raises(SystemExit, match=r"--work .*mine is not empty and was not written by gpu_check"):
        gpu_check.main(["--device", "cpu", "--params", str(params), "--work", str(work)])
    assert (work / "train" / "training-state.pt").read_bytes() == b"a real run"
