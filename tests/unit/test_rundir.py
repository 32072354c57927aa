"""ganops.rundir: the run directory's file names, the one stats.jsonl reader, and its exports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ganops.rundir import RunDir
from ganops.rundir.export import FID_CSV, LOSS_CSV, export_fid_csv, export_loss_csv, plot_fid_over_training


def _write_stats(run_dir: Path, text: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stats.jsonl").write_text(text)


def test_file_names_are_the_ones_the_training_loop_writes(tmp_path):
    rd = RunDir(str(tmp_path))  # a str is accepted and kept as a Path
    assert rd.path == tmp_path
    assert rd.options == tmp_path / "training_options.json"
    assert rd.stats == tmp_path / "stats.jsonl"
    assert rd.state == tmp_path / "training-state.pt"
    assert rd.snapshot == tmp_path / "network-snapshot.pt"
    assert rd.snapshot_latest == tmp_path / "network-snapshot-latest.pt"
    assert rd.summary == tmp_path / "train.json"
    assert rd.fakes_latest == tmp_path / "fakes-latest.png"
    assert rd.fakes(12) == tmp_path / "fakes000012.png"
    assert (RunDir.LOSS_CSV, RunDir.FID_CSV) == ("loss.csv", "fid.csv") == (LOSS_CSV, FID_CSV)


def test_read_stats_skips_blank_torn_and_non_object_lines(tmp_path):
    _write_stats(tmp_path, "\n".join([
        json.dumps({"step": 1, "loss_G": 1.0}),
        "",
        "   ",
        "[1, 2]",
        "42",
        json.dumps({"step": 2, "metric/fid": 80.0}),
        '{"step": 3, "loss_G": 0.',  # torn by a kill mid-write
    ]) + "\n")
    assert RunDir(tmp_path).read_stats() == [{"step": 1, "loss_G": 1.0}, {"step": 2, "metric/fid": 80.0}]


def test_read_stats_key_filter_and_absent_file(tmp_path):
    _write_stats(tmp_path, "".join(json.dumps(x) + "\n" for x in
                                   [{"step": 1, "loss_G": 1.0}, {"step": 2, "metric/fid": 80.0},
                                    {"step": 3, "loss_G": 0.5}]))
    rd = RunDir(tmp_path)
    assert [e["step"] for e in rd.read_stats("loss_G")] == [1, 3]
    assert rd.read_stats("metric/fid") == [{"step": 2, "metric/fid": 80.0}]
    assert rd.read_stats("nowhere") == []
    assert list(rd.iter_stats("loss_G")) == rd.read_stats("loss_G")
    assert RunDir(tmp_path / "missing").read_stats() == []


def test_read_json_names_the_file_when_it_is_not_a_json_object(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.read_json(RunDir.SUMMARY) == {}  # absent
    rd.summary.write_text('{"step": 3')
    with pytest.raises(ValueError, match=r"train\.json is not valid JSON"):
        rd.read_json(RunDir.SUMMARY)
    rd.options.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"training_options\.json must hold a JSON object"):
        rd.read_json(RunDir.OPTIONS)
    rd.summary.write_text(json.dumps({"step": 3}))
    assert rd.read_json(RunDir.SUMMARY) == {"step": 3}


def test_discard_training_outputs_keeps_other_files(tmp_path):
    rd = RunDir(tmp_path)
    written = [rd.state, rd.stats, rd.summary, rd.snapshot, rd.snapshot_latest, rd.fakes(0), rd.fakes_latest]
    kept = [tmp_path / "mlflow_run.json", tmp_path / "mlflow_pending.jsonl", rd.options, tmp_path / LOSS_CSV]
    for p in written + kept:
        p.write_text("x")
    rd.discard_training_outputs()
    assert not any(p.exists() for p in written)
    assert all(p.is_file() for p in kept)
    RunDir(tmp_path / "missing").discard_training_outputs()  # nothing there: nothing to do


def test_exports_skip_torn_lines_and_write_next_to_stats(tmp_path):
    _write_stats(tmp_path, json.dumps({"step": 1, "kimg": 0.1, "loss_G": 1.5, "loss_D": 0.5}) + "\n"
                 + json.dumps({"step": 2, "kimg": 0.2, "metric/fid": 70.0}) + "\n" + '{"step": 3, "loss_G"')
    assert export_loss_csv(tmp_path) == tmp_path / LOSS_CSV
    assert (tmp_path / LOSS_CSV).read_text() == "step,kimg,loss_G,loss_D\n1,0.1,1.5,0.5\n"
    assert export_fid_csv(tmp_path) == tmp_path / FID_CSV
    assert (tmp_path / FID_CSV).read_text() == "step,kimg,fid,kid_mean,kid_std,num_generated\n2,0.2,70.0,,,\n"


def test_fid_plot_is_a_png_when_stats_hold_fid(tmp_path):
    from PIL import Image

    _write_stats(tmp_path, "".join(json.dumps({"step": s, "kimg": s / 10, "metric/fid": 90.0 - s}) + "\n"
                                   for s in (1, 2, 3)))
    out = plot_fid_over_training(tmp_path, tmp_path / "fid.png")
    assert out == tmp_path / "fid.png"
    assert Image.open(out).size == (600, 400)
