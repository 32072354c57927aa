"""The train split streamed from disk trains exactly as the device-resident copy does (``train.resident_data_mb``)."""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from ganops.training.loop import training_loop
from ganops.training.snapshot import load_torch

from .conftest import tiny_cfg, write_prepared


def _weights(run_dir):
    state = load_torch(run_dir / "training-state.pt")
    return {net: state[net] for net in ("G", "D", "G_ema")}


def _assert_bit_identical(a: dict, b: dict) -> None:
    for net in a:
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"


def test_streamed_and_resident_train_bit_identically(tmp_path, prepared, caplog):
    # Conditional, so the labels of each batch go through the data source too.
    caplog.set_level(logging.INFO, logger="ganops.training.loop")
    outs = {}
    for name, mb in (("resident", 1024.0), ("streamed", 0.0)):
        caplog.clear()
        outs[name] = training_loop(tiny_cfg(tmp_path / name, conditional=True, resident_data_mb=mb),
                                   prepared_dir=prepared, seed=0, progress=False)
        expected = "streamed from disk" if mb == 0 else "resident on cpu"
        assert any(expected in r.getMessage() for r in caplog.records), name
        options = json.loads((tmp_path / name / "training_options.json").read_text())
        assert options["data_streamed"] is (mb == 0)
    assert outs["resident"]["step"] == outs["streamed"]["step"] == 5
    assert outs["resident"]["loss_G"] == outs["streamed"]["loss_G"]
    _assert_bit_identical(_weights(tmp_path / "resident"), _weights(tmp_path / "streamed"))


def test_threshold_is_the_split_size_in_mb(tmp_path, caplog):
    # 64 images of 1x8x8 = 4096 bytes: resident at 0.0041 MB, streamed at 0.004 MB.
    prepared = write_prepared(tmp_path / "p")
    caplog.set_level(logging.INFO, logger="ganops.training.loop")
    for mb, expected in ((0.0041, "resident"), (0.004, "streamed")):
        caplog.clear()
        training_loop(tiny_cfg(tmp_path / f"r{mb}", total_kimg=0.008, resident_data_mb=mb), prepared_dir=prepared,
                      seed=0, progress=False)
        assert any(expected in r.getMessage() for r in caplog.records), mb


def test_resume_with_resident_data_mb_changed_continues_bit_identically(tmp_path, prepared):
    # resident_data_mb changes where the data lives, not the math: a run resumes across it even under restart.
    training_loop(tiny_cfg(tmp_path / "full", total_kimg=0.08), prepared_dir=prepared, seed=1, progress=False)
    training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.04), prepared_dir=prepared, seed=1, progress=False)
    out = training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.08, resident_data_mb=0, on_config_change="restart"),
                        prepared_dir=prepared, seed=1, progress=False)
    assert (out["resumed_from_step"], out["step"]) == (5, 10)
    _assert_bit_identical(_weights(tmp_path / "full"), _weights(tmp_path / "split"))


def test_old_npz_prepared_dir_still_trains_with_a_re_run_prepare_warning(tmp_path, prepared, caplog):
    old = tmp_path / "old"
    old.mkdir()
    for split in ("train", "test"):
        images = np.load(prepared / f"{split}-images.npy")
        labels = np.load(prepared / f"{split}-labels.npy")
        np.savez(old / f"{split}.npz", images=images, labels=labels)
    (old / "summary.json").write_text((prepared / "summary.json").read_text())
    caplog.set_level(logging.WARNING)
    for name, mb in (("new", 1024.0), ("old", 1024.0), ("old-streamed", 0.0)):
        training_loop(tiny_cfg(tmp_path / name, resident_data_mb=mb), prepared_dir=prepared if name == "new" else old,
                      seed=0, progress=False)
    assert any("old prepared format" in r.getMessage() and "re-run prepare" in r.getMessage()
               for r in caplog.records)
    _assert_bit_identical(_weights(tmp_path / "new"), _weights(tmp_path / "old"))
    _assert_bit_identical(_weights(tmp_path / "new"), _weights(tmp_path / "old-streamed"))
