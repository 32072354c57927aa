"""train.on_config_change: an incompatible training state is refused by default, restarted from scratch on request.

``restart`` exists for DVC experiments (``dvc exp run -S train.loss=hinge``): runs/train is a persisted DVC output,
so the new experiment finds the previous experiment's training state in its run directory.
"""

from __future__ import annotations

import json

import pytest
import torch

from ganops.training.loop import training_loop
from ganops.training.snapshot import ResumeMismatchError, load_torch

from .conftest import tiny_cfg


def test_refuse_names_the_restart_option(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path / "r"), prepared_dir=prepared, seed=0, progress=False)
    before = (tmp_path / "r" / "training-state.pt").read_bytes()
    with pytest.raises(ResumeMismatchError, match=r"loss: 'non_saturating' -> 'hinge'.*on_config_change=restart"):
        training_loop(tiny_cfg(tmp_path / "r", loss="hinge"), prepared_dir=prepared, seed=0, progress=False)
    assert (tmp_path / "r" / "training-state.pt").read_bytes() == before  # refused before touching anything


def test_restart_equals_a_fresh_run_and_keeps_foreign_files(tmp_path, prepared):
    run = tmp_path / "r"
    training_loop(tiny_cfg(run, total_kimg=0.08, sample_every_kimg=0.01), prepared_dir=prepared, seed=0,
                  progress=False)
    (run / "mlflow_run.json").write_text(json.dumps({"run_id": "abc"}))  # the tracker's file, not the loop's

    out = training_loop(tiny_cfg(run, loss="hinge", on_config_change="restart"), prepared_dir=prepared, seed=0,
                        progress=False)
    ref = training_loop(tiny_cfg(tmp_path / "fresh", loss="hinge"), prepared_dir=prepared, seed=0, progress=False)

    assert out["resumed_from_step"] is None and (out["step"], out["cur_nimg"]) == (ref["step"], ref["cur_nimg"]) == (5, 40)
    a, b = load_torch(run / "training-state.pt"), load_torch(tmp_path / "fresh" / "training-state.pt")
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs from a fresh hinge run"
    assert a["arch_config"]["loss"] == "hinge"
    # stats.jsonl holds only the new run's steps; the sample grid is the fresh run's.
    steps = [json.loads(x)["step"] for x in (run / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
    assert steps == [1, 2, 3, 4, 5]
    assert (run / "fakes-latest.png").read_bytes() == (tmp_path / "fresh" / "fakes-latest.png").read_bytes()
    assert json.loads((run / "mlflow_run.json").read_text()) == {"run_id": "abc"}


def test_restart_still_resumes_a_compatible_state(tmp_path, prepared):
    run = tmp_path / "r"
    training_loop(tiny_cfg(run, on_config_change="restart"), prepared_dir=prepared, seed=0, progress=False)
    out = training_loop(tiny_cfg(run, total_kimg=0.08, on_config_change="restart"), prepared_dir=prepared, seed=0,
                        progress=False)
    assert out["resumed_from_step"] == 5 and out["step"] == 10


def test_restart_retrains_when_a_hyper_parameter_changed(tmp_path, prepared):
    """``dvc exp run -S train.lr_g=...`` restores the persisted run dir: with ``restart`` a changed learning rate
    trains from scratch (bit-equal to a fresh run) instead of continuing, or silently returning, the old run."""
    run = tmp_path / "r"
    training_loop(tiny_cfg(run, on_config_change="restart"), prepared_dir=prepared, seed=0, progress=False)
    out = training_loop(tiny_cfg(run, lr_g=1e-4, on_config_change="restart"), prepared_dir=prepared, seed=0,
                        progress=False)
    ref = training_loop(tiny_cfg(tmp_path / "fresh", lr_g=1e-4), prepared_dir=prepared, seed=0, progress=False)
    assert out["resumed_from_step"] is None and out["step"] == ref["step"] == 5
    a, b = load_torch(run / "training-state.pt"), load_torch(tmp_path / "fresh" / "training-state.pt")
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    assert a["options"]["lr_g"] == 1e-4


def test_refuse_resumes_a_changed_hyper_parameter_as_asked(tmp_path, prepared):
    """The refuse policy only guards the architecture: resuming with another learning rate is allowed (warned)."""
    run = tmp_path / "r"
    training_loop(tiny_cfg(run), prepared_dir=prepared, seed=0, progress=False)
    out = training_loop(tiny_cfg(run, lr_g=1e-4, total_kimg=0.08), prepared_dir=prepared, seed=0, progress=False)
    assert out["resumed_from_step"] == 5 and out["step"] == 10


def test_resume_past_a_shortened_total_kimg_with_the_progress_bar(tmp_path, prepared):
    """A run dir already past the new total_kimg (``-S train.total_kimg`` lowered, a shorter ablation re-run) returns
    its state; the CLI's progress bar (initial > total by >= 0.5 kimg) used to crash it with a tqdm TypeError."""
    run = tmp_path / "r"
    cfg = dict(batch_size=128, sample_every_kimg=1.0, checkpoint_every_kimg=1.0)
    training_loop(tiny_cfg(run, total_kimg=0.6, **cfg), prepared_dir=prepared, seed=0, progress=False)
    out = training_loop(tiny_cfg(run, total_kimg=0.04, **cfg), prepared_dir=prepared, seed=0, progress=True)
    assert out["resumed_from_step"] == 5 and out["step"] == 5 and out["cur_nimg"] == 640
