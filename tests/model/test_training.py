"""Training-loop behaviour on tiny configs: run-directory contract, determinism, resume, divergence guard."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganops.io import sha256_file
from ganops.training import loop as loop_mod
from ganops.training import step as step_mod
from ganops.training.loop import training_loop
from ganops.training.snapshot import ResumeMismatchError, TrainingDivergedError, load_generator, load_torch

from .conftest import tiny_cfg, write_prepared


def _state(run_dir: Path) -> dict:
    return load_torch(run_dir / "training-state.pt")


def _assert_same_weights(a: dict, b: dict) -> None:
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"


def test_run_directory_contract(tmp_path, prepared):
    run = tmp_path / "run"
    out = training_loop(tiny_cfg(run), prepared_dir=prepared, seed=0, progress=False)
    for name in ("training_options.json", "stats.jsonl", "fakes000000.png", "fakes-latest.png", "training-state.pt",
                 "network-snapshot.pt", "network-snapshot-latest.pt", "train.json"):
        assert (run / name).is_file(), name
    # 0.04 kimg at batch 8 = 5 steps, 40 images.
    assert (out["step"], out["cur_nimg"]) == (5, 40)
    assert json.loads((run / "train.json").read_text()) == json.loads(json.dumps(out))
    assert out["snapshot_sha256"] == sha256_file(run / "network-snapshot.pt")
    step_lines = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
    assert [e["step"] for e in step_lines] == [1, 2, 3, 4, 5]
    for key in ("kimg", "loss_D", "D_real", "D_fake", "grad_norm_D", "grad_norm_G", "sec_per_step", "images_per_s"):
        assert np.isfinite(step_lines[-1][key]), key
    assert step_lines[-1]["loss_G"] == pytest.approx(out["loss_G"])
    # Grid: grid_size x grid_size tiles of 8 px, greyscale.
    img = Image.open(run / "fakes-latest.png")
    assert (img.size, img.mode) == ((16, 16), "L")
    # The snapshot loads with weights_only and rebuilds G_ema exactly.
    G, meta = load_generator(run / "network-snapshot.pt")
    assert (meta["arch"], meta["z_dim"], meta["resolution"], meta["channels"], meta["num_classes"]) == (
        "dcgan", 8, 8, 1, 0)
    assert meta["step"] == 5 and not G.training
    state = _state(run)
    for k, v in G.state_dict().items():
        assert torch.equal(v, state["G_ema"][k])
    options = json.loads((run / "training_options.json").read_text())
    assert options["G_kwargs"] == meta["G_kwargs"] and options["seed"] == 0
    assert out["cuda_graph"] is False  # CPU: eager steps (the CUDA-graph step is for CUDA devices only)


def test_cuda_graph_option_changes_where_it_runs_not_the_experiment(tmp_path, prepared):
    # A run may resume with cuda_graph flipped even under on_config_change=restart (like device / precision).
    run = tmp_path / "run"
    training_loop(tiny_cfg(run, cuda_graph=False), prepared_dir=prepared, seed=0, progress=False)
    out = training_loop(tiny_cfg(run, cuda_graph=True, total_kimg=0.08, on_config_change="restart"),
                        prepared_dir=prepared, seed=0, progress=False)
    assert (out["resumed_from_step"], out["step"]) == (5, 10)


def test_same_seed_bit_identical_other_seed_differs(tmp_path, prepared):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        training_loop(tiny_cfg(tmp_path / name, diffaugment="translation,cutout,color"), prepared_dir=prepared,
                      seed=seed, progress=False)
    _assert_same_weights(_state(tmp_path / "a"), _state(tmp_path / "b"))
    a, c = _state(tmp_path / "a"), _state(tmp_path / "c")
    assert not all(torch.equal(a["G"][k], c["G"][k]) for k in a["G"])


def test_resume_extends_total_kimg_bit_identically(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path / "full", total_kimg=0.08), prepared_dir=prepared, seed=1, progress=False)
    training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.04), prepared_dir=prepared, seed=1, progress=False)
    out = training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.08), prepared_dir=prepared, seed=1, progress=False)
    assert out["resumed_from_step"] == 5 and out["step"] == 10
    _assert_same_weights(_state(tmp_path / "full"), _state(tmp_path / "split"))
    steps = [json.loads(x)["step"] for x in (tmp_path / "split" / "stats.jsonl").read_text().splitlines()
             if "loss_G" in x]
    assert steps == list(range(1, 11))


_KILL_SCRIPT = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests_dir!r})
    from model.conftest import tiny_cfg
    from ganops.training.loop import training_loop
    cfg = tiny_cfg({run!r}, total_kimg=4.0, checkpoint_every_kimg=0.016, sample_every_kimg=1.0, num_threads=1)
    training_loop(cfg, prepared_dir={prepared!r}, seed=7, progress=False)
""")


def test_sigkill_then_resume_is_bit_identical(tmp_path, prepared):
    run = tmp_path / "killed"
    script = _KILL_SCRIPT.format(tests_dir=str(Path(__file__).parents[1]), run=str(run), prepared=str(prepared))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (run / "training-state.pt").is_file():
            assert proc.poll() is None, f"trainer exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.02)
        time.sleep(0.3)  # let it run past the first checkpoint, possibly into a write
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _state(run)["step"]
    total = 0.4  # 50 steps; the kill must land before the end for the test to mean anything
    assert killed_at < 50
    out = training_loop(tiny_cfg(run, total_kimg=total, checkpoint_every_kimg=0.016, sample_every_kimg=1.0,
                                 num_threads=1), prepared_dir=prepared, seed=7, progress=False)
    assert out["resumed_from_step"] == killed_at
    training_loop(tiny_cfg(tmp_path / "ref", total_kimg=total, checkpoint_every_kimg=0.016, sample_every_kimg=1.0,
                           num_threads=1), prepared_dir=prepared, seed=7, progress=False)
    _assert_same_weights(_state(tmp_path / "ref"), _state(run))
    a, b = _state(tmp_path / "ref"), _state(run)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"]) and torch.equal(a["rng"]["data"], b["rng"]["data"])
    for k in a["opt_G"]["state"]:
        assert torch.equal(a["opt_G"]["state"][k]["exp_avg"], b["opt_G"]["state"][k]["exp_avg"])


def test_resume_refuses_architecture_change(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path / "r"), prepared_dir=prepared, seed=0, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"ngf: 8 -> 16.*Delete"):
        training_loop(tiny_cfg(tmp_path / "r", ngf=16, total_kimg=0.08), prepared_dir=prepared, seed=0,
                      progress=False)
    with pytest.raises(ResumeMismatchError, match="loss: 'non_saturating' -> 'hinge'"):
        training_loop(tiny_cfg(tmp_path / "r", loss="hinge", total_kimg=0.08), prepared_dir=prepared, seed=0,
                      progress=False)


def test_grad_norm_limit_raises_before_any_write(tmp_path, prepared):
    with pytest.raises(TrainingDivergedError, match=r"diverged in step 1: grad_norm_D = .* exceeds grad_norm_limit"):
        training_loop(tiny_cfg(tmp_path / "d", grad_norm_limit=1e-9), prepared_dir=prepared, seed=0, progress=False)
    assert not (tmp_path / "d" / "training-state.pt").exists()


def test_nan_loss_keeps_last_good_state(tmp_path, prepared, monkeypatch):
    run = tmp_path / "n"
    training_loop(tiny_cfg(run), prepared_dir=prepared, seed=0, progress=False)
    before = {n: sha256_file(run / n) for n in ("training-state.pt", "network-snapshot.pt", "train.json")}

    good = loop_mod.get_loss("non_saturating")
    calls = {"n": 0}

    def g_loss_nan_on_third(fake):
        calls["n"] += 1
        out = good.g_loss(fake)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(loop_mod, "get_loss", lambda name: type(good)(good.name, good.d_loss, g_loss_nan_on_third))
    with pytest.raises(TrainingDivergedError, match=r"diverged in step 8: loss_G is nan"):
        training_loop(tiny_cfg(run, total_kimg=0.2, checkpoint_every_kimg=0.008), prepared_dir=prepared, seed=0,
                      progress=False)
    # Resumed after 5 steps; steps 6 and 7 (counted from 1) finished and were checkpointed (interval = 1 step) ->
    # state at step 7; the third step of this call (step 8) produced NaN and never reached the disk.
    assert _state(run)["step"] == 7
    assert before["train.json"] == sha256_file(run / "train.json")
    assert torch.isfinite(torch.cat([v.flatten().float() for v in _state(run)["G"].values()])).all()


def test_nonfinite_weights_stop_before_any_grid_stat_or_state_is_written(tmp_path, prepared, monkeypatch):
    # A NaN that slips past the loss/gradient guards (here put into G_ema after step 3) must not reach the disk:
    # not as a sample grid, not as a diversity line in stats.jsonl (NaN is not JSON), not as a checkpoint.
    real_update = step_mod.update_ema
    calls = {"n": 0}

    def nan_on_third(G_ema, G, beta, **kwargs):
        calls["n"] += 1
        real_update(G_ema, G, beta, **kwargs)
        if calls["n"] == 3:
            with torch.no_grad():
                next(G_ema.parameters()).fill_(float("nan"))

    monkeypatch.setattr(step_mod, "update_ema", nan_on_third)
    run = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="non-finite weights in G_ema after step 3"):
        training_loop(tiny_cfg(run, checkpoint_every_kimg=0.008, sample_every_kimg=0.008), prepared_dir=prepared,
                      seed=0, progress=False)
    def strict(constant: str) -> None:
        pytest.fail(f"stats.jsonl holds {constant}, which is not JSON")

    lines = [json.loads(x, parse_constant=strict) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lines if "diversity_ratio" in e] == [1, 2]
    assert _state(run)["step"] == 2
    # The latest grid is still step 2's: the same bytes as a clean run that stops after 2 steps (CPU runs are
    # bit-identical for a seed).
    monkeypatch.setattr(step_mod, "update_ema", real_update)
    clean = tmp_path / "clean"
    training_loop(tiny_cfg(clean, total_kimg=0.016, checkpoint_every_kimg=0.008, sample_every_kimg=0.008),
                  prepared_dir=prepared, seed=0, progress=False)
    assert sha256_file(run / "fakes-latest.png") == sha256_file(clean / "fakes-latest.png")


def test_batch_larger_than_the_dataset_warns_and_trains(tmp_path, caplog):
    prepared = write_prepared(tmp_path / "small", n=6)
    with caplog.at_level(logging.WARNING, logger="ganops.training.loop"):
        out = training_loop(tiny_cfg(tmp_path / "run", batch_size=8, total_kimg=0.016), prepared_dir=prepared, seed=0,
                            progress=False)
    assert out["step"] == 2
    assert any("train.batch_size=8 is larger than the 6 training images" in r.getMessage() for r in caplog.records)


def test_partial_writes_of_a_killed_run_are_removed_on_the_next_start(tmp_path, prepared):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".fakes-latest.png.k2j_9x0q.tmp", run / ".training-state.pt.abcdefgh.tmp"]
    keep = [run / ".notes.tmp", run / "mine.tmp", run / ".fakes-latest.png.TOOLONG123.tmp"]
    for p in stale + keep:
        p.write_bytes(b"partial")
    training_loop(tiny_cfg(run), prepared_dir=prepared, seed=0, progress=False)
    assert not any(p.exists() for p in stale)
    assert all(p.read_bytes() == b"partial" for p in keep)


# The modern recipe: RpGAN + R1/R2 on the R3GAN-style pair, cosine schedules, G_ema ramp-up and ADA, all at once.
_MODERN = dict(arch="r3gan", group_size=4, loss="rpgan", r1_gamma=0.5, r2_gamma=0.5, r1_interval=2,
               betas_g=(0.0, 0.9), betas_d=(0.0, 0.9), schedule_kimg=0.06, lr_g_end=5e-5, lr_d_end=5e-5,
               beta2_end=0.99, r1_gamma_end=0.05, r2_gamma_end=0.05, ema_halflife_kimg=0.05,
               ema_halflife_kimg_end=0.1, ema_rampup=0.5, ada_target=0.05, ada_kimg=0.1, ada_interval=1,
               ada_policy="translation,cutout")


def test_modern_recipe_resume_keeps_ada_p_and_schedules_bit_exact(tmp_path, prepared):
    full = training_loop(tiny_cfg(tmp_path / "full", total_kimg=0.08, **_MODERN), prepared_dir=prepared, seed=3,
                         progress=False)
    training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.04, **_MODERN), prepared_dir=prepared, seed=3,
                  progress=False)
    half = _state(tmp_path / "split")["augment"]["ada"]
    out = training_loop(tiny_cfg(tmp_path / "split", total_kimg=0.08, **_MODERN), prepared_dir=prepared, seed=3,
                        progress=False)
    assert out["resumed_from_step"] == 5 and out["step"] == 10
    assert 0 < half["p"] and full["ada_p"] == out["ada_p"] > 0  # ADA moved p, and the resumed run moved it alike
    _assert_same_weights(_state(tmp_path / "full"), _state(tmp_path / "split"))
    for run in ("full", "split"):
        lines = [json.loads(x) for x in (tmp_path / run / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
        assert [e["step"] for e in lines] == list(range(1, 11))
        assert {"r1", "r2", "lr_G", "ada_p"} <= set().union(*lines)
    stats = lambda run: [x for x in (tmp_path / run / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("sec_per_step", "images_per_s")}
                           for x in lines]
    assert strip(stats("full")) == strip(stats("split"))  # losses, lr, gamma, p: the same at every step
    lr = [json.loads(x)["lr_G"] for x in stats("full")]
    assert lr[0] > lr[-1] == pytest.approx(5e-5)  # the cosine reached its end value at schedule_kimg


def test_modern_recipe_dcgan_pair_trains_with_r1_and_r2(tmp_path, prepared):
    out = training_loop(tiny_cfg(tmp_path / "m", loss="rpgan", r1_gamma=1.0, r2_gamma=1.0, r1_interval=1,
                                 spectral_norm=True), prepared_dir=prepared, seed=0, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "m" / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
    assert all(e["r1"] > 0 and e["r2"] > 0 for e in lines) and out["step"] == 5


def test_a_penalty_scheduled_up_from_zero_is_applied_once_its_weight_is_positive(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path / "ramp", r1_gamma=0.0, r1_gamma_end=10.0, schedule_kimg=0.016, r1_interval=1),
                  prepared_dir=prepared, seed=0, progress=False)
    lines = [json.loads(x) for x in (tmp_path / "ramp" / "stats.jsonl").read_text().splitlines() if "loss_G" in x]
    assert "r1" not in lines[0] and lines[0]["r1_gamma"] == 0.0  # weight 0 at step 1: no penalty computed
    assert all("r1" in e for e in lines[1:]) and lines[-1]["r1_gamma"] == pytest.approx(10.0)
