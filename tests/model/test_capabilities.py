"""Issue-4 capabilities on tiny configs: losses, archs, SN, R1, WGAN-GP, TTUR, EMA, DiffAugment, conditional,
bf16, in-training evaluation with best-by-FID snapshots, mode-collapse signal, and a does-it-learn check."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from ganops.training.loop import training_loop
from ganops.training.sampling import iter_samples
from ganops.training.snapshot import load_generator, load_torch

from .conftest import tiny_cfg, write_prepared


def _stats(run):
    return [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["non_saturating", "minimax", "hinge", "wgan_gp", "lsgan"])
def test_every_loss_trains_finite(tmp_path, prepared, loss):
    out = training_loop(tiny_cfg(tmp_path, loss=loss, total_kimg=0.016), prepared_dir=prepared, seed=0,
                        progress=False)
    assert out["step"] == 2 and all(map(torch.isfinite, torch.tensor([out["loss_G"], out["loss_D"]])))
    last = [e for e in _stats(tmp_path) if "loss_G" in e][-1]
    assert ("gp" in last) == (loss == "wgan_gp")


def test_resnet_spectral_norm_r1(tmp_path):
    prepared = write_prepared(tmp_path / "p", resolution=16, channels=3)
    run = tmp_path / "run"
    training_loop(tiny_cfg(run, arch="resnet", spectral_norm=True, r1_gamma=1.0, r1_interval=2, total_kimg=0.024),
                  prepared_dir=prepared, seed=0, progress=False)
    lines = [e for e in _stats(run) if "loss_G" in e]
    # Lazy R1 runs on steps 0 and 2 (logged at steps 1 and 3), not on step 1.
    assert ["r1" in e for e in lines] == [True, False, True]
    state = load_torch(run / "training-state.pt")
    assert any(k.endswith("parametrizations.weight.original") for k in state["D"])
    assert Image.open(run / "fakes-latest.png").mode == "RGB"


def test_ttur_learning_rates_reach_optimizers(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path, lr_g=1e-4, lr_d=4e-4, betas_g=(0.0, 0.9), betas_d=(0.0, 0.99)),
                  prepared_dir=prepared, seed=0, progress=False)
    state = load_torch(tmp_path / "training-state.pt")
    g, d = state["opt_G"]["param_groups"][0], state["opt_D"]["param_groups"][0]
    assert (g["lr"], tuple(g["betas"]), d["lr"], tuple(d["betas"])) == (1e-4, (0.0, 0.9), 4e-4, (0.0, 0.99))


def test_ema_zero_copies_G_and_positive_halflife_lags(tmp_path, prepared):
    training_loop(tiny_cfg(tmp_path / "copy", ema_halflife_kimg=0.0), prepared_dir=prepared, seed=0, progress=False)
    s = load_torch(tmp_path / "copy" / "training-state.pt")
    assert all(torch.equal(s["G"][k], s["G_ema"][k]) for k in s["G"])
    training_loop(tiny_cfg(tmp_path / "ema", ema_halflife_kimg=1.0), prepared_dir=prepared, seed=0, progress=False)
    s = load_torch(tmp_path / "ema" / "training-state.pt")
    w = "net.0.weight"
    # beta = 0.5 ** (8 / 1000) ~ 0.9945: after 5 steps G_ema is still ~97% the initial weights, G has moved.
    assert not torch.equal(s["G"][w], s["G_ema"][w])
    drift_ema = (s["G_ema"][w] - s["G"][w]).abs().mean()
    assert drift_ema > 0
    # BN running statistics are copied, not averaged.
    assert torch.equal(s["G"]["net.1.running_mean"], s["G_ema"]["net.1.running_mean"])


def test_conditional_grid_has_one_row_per_class_and_samples_by_class(tmp_path, prepared):
    run = tmp_path / "c"
    training_loop(tiny_cfg(run, conditional=True, grid_size=3, diffaugment="translation,color"),
                  prepared_dir=prepared, seed=0, progress=False)
    img = Image.open(run / "fakes-latest.png")
    assert img.size == (3 * 8, 4 * 8)  # 4 classes x grid_size columns
    G, meta = load_generator(run / "network-snapshot.pt")
    assert meta["num_classes"] == 4 and meta["class_names"] == ["c0", "c1", "c2", "c3"]
    a = torch.cat(list(iter_samples(G, 4, seed=0, class_labels=0)))
    b = torch.cat(list(iter_samples(G, 4, seed=0, class_labels=[1, 1, 1, 1])))
    assert a.shape == (4, 1, 8, 8) and not torch.equal(a, b)


def test_conditional_needs_labels(tmp_path):
    prepared = write_prepared(tmp_path / "p", num_classes=1)
    with pytest.raises(ValueError, match="needs labelled data"):
        training_loop(tiny_cfg(tmp_path / "r", conditional=True), prepared_dir=prepared, seed=0, progress=False)


def test_bf16_autocast_on_cpu_trains_and_fp16_is_refused(tmp_path, prepared):
    out = training_loop(tiny_cfg(tmp_path / "bf16", precision="bf16", channels_last=True), prepared_dir=prepared,
                        seed=0, progress=False)
    assert torch.isfinite(torch.tensor(out["loss_G"]))
    opts = json.loads((tmp_path / "bf16" / "training_options.json").read_text())
    assert opts["autocast_dtype"] == "bfloat16"
    with pytest.raises(ValueError, match="fp16 needs CUDA"):
        training_loop(tiny_cfg(tmp_path / "fp16", precision="fp16"), prepared_dir=prepared, seed=0, progress=False)


def test_metric_fn_keeps_best_snapshot_by_fid(tmp_path, prepared):
    fids = iter([5.0, 3.0, 4.0])
    seen_steps = []

    def metric_fn(G_ema):
        assert not G_ema.training
        torch.randn(100)  # consuming the global RNG here must not change training (fork_rng)
        seen_steps.append(1)
        return {"fid": next(fids), "kid": 0.1}

    run = tmp_path / "m"
    # 0.048 kimg = 6 steps; eval every 2 steps (16 images) -> evaluations after steps 2, 4, 6.
    training_loop(tiny_cfg(run, total_kimg=0.048, eval_every_kimg=0.016, checkpoint_every_kimg=0.016),
                  prepared_dir=prepared, seed=0, metric_fn=metric_fn, progress=False)
    evals = [e for e in _stats(run) if "metric/fid" in e]
    assert [(e["step"], e["metric/fid"]) for e in evals] == [(2, 5.0), (4, 3.0), (6, 4.0)]
    best, meta_best = load_generator(run / "network-snapshot.pt")
    latest, meta_latest = load_generator(run / "network-snapshot-latest.pt")
    assert (meta_best["step"], meta_best["best_fid"], meta_latest["step"]) == (4, 3.0, 6)
    assert json.loads((run / "train.json").read_text())["best_fid"] == 3.0
    # Same training without the metric: identical final weights.
    training_loop(tiny_cfg(tmp_path / "plain", total_kimg=0.048, checkpoint_every_kimg=0.016),
                  prepared_dir=prepared, seed=0, progress=False)
    a, b = load_torch(run / "training-state.pt"), load_torch(tmp_path / "plain" / "training-state.pt")
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def test_metric_fn_without_fid_is_an_error(tmp_path, prepared):
    with pytest.raises(ValueError, match="'fid' key"):
        training_loop(tiny_cfg(tmp_path, eval_every_kimg=0.02), prepared_dir=prepared, seed=0,
                      metric_fn=lambda G: {"kid": 1.0}, progress=False)


def test_mode_collapse_signal_logged_and_warns(tmp_path, prepared, caplog):
    caplog.set_level(logging.WARNING, logger="ganops.training.loop")
    training_loop(tiny_cfg(tmp_path, mode_collapse_threshold=10.0), prepared_dir=prepared, seed=0, progress=False)
    ratios = [e["diversity_ratio"] for e in _stats(tmp_path) if "diversity_ratio" in e]
    assert len(ratios) == 2 and all(0 <= r < 10 for r in ratios)  # sample interval 0.02 kimg + end
    assert "possible mode collapse" in caplog.text


def test_generator_learns_the_data_mean_image(tmp_path):
    # One class: every image has the same bright quadrant (+ noise). G_ema's mean image must get much closer to
    # the data's mean image than the untrained G's is.
    import numpy as np

    from ganops.models import build_G

    prepared = write_prepared(tmp_path / "p", num_classes=1, n=64)
    data_mean_img = torch.from_numpy(np.load(prepared / "train-images.npy")).float().mean(0) / 127.5 - 1
    training_loop(tiny_cfg(tmp_path / "r", total_kimg=4.0, batch_size=16, lr_g=1e-3, lr_d=1e-3,
                           sample_every_kimg=10, checkpoint_every_kimg=10, log_every_steps=25),
                  prepared_dir=prepared, seed=0, progress=False)
    G, meta = load_generator(tmp_path / "r" / "network-snapshot.pt")
    G0 = build_G("dcgan", **meta["G_kwargs"]).eval()

    def mse(gen):
        return float((torch.cat(list(iter_samples(gen, 256, seed=1))).mean(0) - data_mean_img).square().mean())

    assert mse(G) < 0.1 * mse(G0), (mse(G), mse(G0))
