"""benchmarks/run_all.py (make bench) refuses bad input before the first ~15-minute section runs, and never leaves a
half-written results.json. ``run_section`` is replaced by a recorder: nothing is benchmarked here."""

from __future__ import annotations

import json
import sys

import pytest

from tests.scripts import load_benchmark


@pytest.fixture()
def run_all(tmp_path, monkeypatch):
    mod = load_benchmark("run_all")
    monkeypatch.setattr(mod, "QUALITY_RESULTS", tmp_path / "quality_results.json", raising=False)
    mod.ran = []
    monkeypatch.setattr(mod, "run_section", lambda argv, timeout_s: mod.ran.append(argv) or {"wall_s": 0.0})
    return mod


def _main(mod, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["run_all.py", *argv])
    mod.main()


@pytest.mark.parametrize("only", [",", " , "])
def test_only_naming_no_section_is_refused(run_all, tmp_path, monkeypatch, capsys, only):
    with pytest.raises(SystemExit) as info:  # used to run the whole suite
        _main(run_all, monkeypatch, "--only", only, "--out-dir", str(tmp_path / "out"))
    assert info.value.code == 2 and "names no section" in capsys.readouterr().err
    assert run_all.ran == []


def test_only_with_an_unknown_name(run_all, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"unknown section\(s\) \['bogus'\]; valid: train_reference"):
        _main(run_all, monkeypatch, "--only", "metrics, bogus", "--out-dir", str(tmp_path / "out"))
    assert run_all.ran == []


def test_out_dir_that_cannot_be_created_fails_before_any_section(run_all, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit, match=r"--out-dir .*a_file/out: cannot create it"):
        _main(run_all, monkeypatch, "--only", "metrics", "--out-dir", str(blocker / "out"))
    assert run_all.ran == []


def test_corrupt_results_json_with_only_is_named(run_all, tmp_path, monkeypatch):
    (tmp_path / "results.json").write_text('{"date": ')
    with pytest.raises(SystemExit, match=r"results.json is not valid JSON .*--only would merge into it"):
        _main(run_all, monkeypatch, "--only", "metrics", "--out-dir", str(tmp_path))
    assert run_all.ran == [] and (tmp_path / "results.json").read_text() == '{"date": '


@pytest.mark.parametrize("text", ['{"lucic": {"fid": 19', '{"lucic": {"evaluate_wall_s": 1.0}}', "[1]"])
def test_broken_quality_results_are_reported_before_the_suite(run_all, tmp_path, monkeypatch, text):
    (tmp_path / "quality_results.json").write_text(text)
    with pytest.raises(SystemExit, match=r"quality_results.json is not a JSON object of bench_quality.py results"):
        _main(run_all, monkeypatch, "--only", "metrics", "--out-dir", str(tmp_path / "out"))
    assert run_all.ran == []


def test_missing_out_dir_is_created_and_results_written_whole(run_all, tmp_path, monkeypatch):
    out = tmp_path / "new" / "dir"
    monkeypatch.setattr(run_all, "plot", lambda res, path: path.write_bytes(b"png"))
    _main(run_all, monkeypatch, "--only", "orchestration", "--out-dir", str(out))
    assert len(run_all.ran) == 1
    res = json.loads((out / "results.json").read_text())
    assert res["orchestration"] == {"wall_s": 0.0} and "targets" in res
    assert (out / "results.md").is_file() and not list(out.glob(".*.tmp"))


def test_gpu_figures_join_the_targets_only_when_a_gpu_run_is_on_record(run_all, tmp_path):
    missing = tmp_path / "gpu_results.json"
    assert run_all.gpu_targets(missing) == []
    missing.write_text(json.dumps({"device": "GPU X", "date": "d", "train_cuda": {"rows": [
        {"batch_size": 256, "speedup_ganops_fp32": 9.0},
        {"batch_size": 64, "speedup_ganops_fp32": 1.2, "speedup_ganops_amp_bf16": 2.0}]},
        "pipeline": {"fid_agreement": {"num_samples": 500, "abs_diff": 0.02}}}))
    rows = run_all.gpu_targets(missing)
    assert [(r["value"], r["ok"]) for r in rows] == [(1.2, False), (2.0, True), (0.02, False)]  # batch 64's row
    assert "GPU X, d" in rows[0]["what"]


def test_gpu_suite_refuses_a_machine_without_cuda(run_all, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--gpu needs a CUDA GPU"):
        _main(run_all, monkeypatch, "--gpu")
    assert run_all.ran == []


def test_a_failed_gpu_section_leaves_the_gpu_record_on_file(run_all, tmp_path, monkeypatch):
    import torch

    record = tmp_path / "gpu_results.json"
    record.write_text('{"device": "old"}')
    monkeypatch.setattr(run_all, "GPU_RESULTS", record)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "GPU X")
    monkeypatch.setattr(run_all, "run_section", lambda argv, timeout_s: (
        {"error": "exit code 1", "wall_s": 1.0} if "gpu_check.py" in argv[0] else {"cuda": {"rows": []}}))
    with pytest.raises(SystemExit, match=r"section\(s\) \['pipeline'\] failed .*gpu_results.json left as it was"):
        _main(run_all, monkeypatch, "--gpu")
    assert record.read_text() == '{"device": "old"}'
    assert json.loads((tmp_path / "gpu_results.failed.json").read_text())["pipeline"]["error"] == "exit code 1"
