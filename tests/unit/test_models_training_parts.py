"""EMA, DiffAugment, sampling and snapshot helpers used by the training loop."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from ganops.models import build_G
from ganops.training.augment import color, cutout, diff_augment, parse_policy, translation
from ganops.training.ema import ema_beta, update_ema
from ganops.training.sampling import (
    Z_CHUNK,
    diversity_ratio,
    iter_samples,
    latents,
    mean_pairwise_distance,
    save_grid,
    to_uint8,
)
from ganops.training.snapshot import load_generator, save_snapshot


def test_ema_beta_known_values():
    assert ema_beta(64, 0.064) == pytest.approx(0.5)  # one step = one half-life
    assert ema_beta(32, 0.064) == pytest.approx(0.5**0.5)
    assert ema_beta(64, 0.0) == 0.0
    with pytest.raises(ValueError):
        ema_beta(64, -1.0)


def test_update_ema_average_and_copy():
    torch.manual_seed(0)
    G = build_G("dcgan", z_dim=4, ngf=4, resolution=8, channels=1)
    G_ema = build_G("dcgan", z_dim=4, ngf=4, resolution=8, channels=1)
    p_old = [p.clone() for p in G_ema.parameters()]
    with torch.no_grad():
        G.net[1].running_mean.fill_(3.0)
    update_ema(G_ema, G, 0.25)
    for pe, po, p in zip(G_ema.parameters(), p_old, G.parameters()):
        torch.testing.assert_close(pe, 0.25 * po + 0.75 * p)
    assert torch.equal(G_ema.net[1].running_mean, G.net[1].running_mean)
    update_ema(G_ema, G, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(G_ema.parameters(), G.parameters()))


def test_parse_policy():
    assert parse_policy(" color ,cutout") == ("color", "cutout")
    with pytest.raises(ValueError, match="valid: translation, cutout, color"):
        parse_policy("flip")


def test_translation_moves_a_pixel_within_bounds():
    x = -torch.ones(16, 1, 16, 16)
    x[:, :, 8, 8] = 1.0
    out = translation(x + 1, generator=torch.Generator().manual_seed(0)) - 1  # shift (x+1) so padding is "-1"
    pos = (out == 1.0).nonzero()
    assert len(pos) == 16  # the pixel survives (shift <= 2 px from the centre)
    assert ((pos[:, 2] - 8).abs() <= 2).all() and ((pos[:, 3] - 8).abs() <= 2).all()
    assert len({(int(a), int(b)) for a, b in pos[:, 2:]}) > 1  # shifts differ between images


def test_cutout_zeroes_one_half_size_square_at_most():
    out = cutout(torch.ones(32, 2, 8, 8), generator=torch.Generator().manual_seed(0))
    zeros = (out[:, 0] == 0).sum(dim=(1, 2))
    assert (zeros > 0).all() and (zeros <= 16).all()  # 4x4 square, clipped at borders
    assert torch.equal(out[:, 0], out[:, 1])  # same mask for every channel


def test_color_grey_is_brightness_only_rgb_changes_more():
    x = torch.rand(8, 1, 4, 4) * 2 - 1
    d = color(x, generator=torch.Generator().manual_seed(0)) - x
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d))  # one constant shift per image
    assert (d[:, 0, 0, 0].abs() <= 0.5).all()
    rgb = torch.rand(8, 3, 4, 4) * 2 - 1
    d3 = color(rgb, generator=torch.Generator().manual_seed(0)) - rgb
    assert not torch.allclose(d3, d3[:, :, :1, :1].expand_as(d3))


def test_diff_augment_is_differentiable_and_seeded():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    policy = "translation,cutout,color"
    a = diff_augment(x, policy, torch.Generator().manual_seed(1))
    b = diff_augment(x, policy, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.equal(diff_augment(x, ""), x)


def test_latents_prefix_and_chunking():
    z = latents(Z_CHUNK + 5, 3, seed=2)
    assert z.shape == (Z_CHUNK + 5, 3)
    assert torch.equal(latents(7, 3, seed=2), z[:7])
    assert not torch.equal(latents(7, 3, seed=3), z[:7])


def test_iter_samples_batch_size_independent_and_labels():
    torch.manual_seed(0)
    G = build_G("dcgan", z_dim=4, ngf=4, resolution=8, channels=1, num_classes=3).eval()
    a = list(iter_samples(G, 10, seed=5, batch_size=3))
    b = list(iter_samples(G, 10, seed=5, batch_size=10))
    assert [t.shape[0] for t in a] == [3, 3, 3, 1] and a[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat(a), torch.cat(b), rtol=0, atol=1e-6)
    # class_labels=None cycles 0..K-1: same as passing that sequence explicitly.
    c = torch.cat(list(iter_samples(G, 10, seed=5, class_labels=[i % 3 for i in range(10)])))
    torch.testing.assert_close(torch.cat(b), c, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        next(iter_samples(G, 2, seed=0, class_labels=5))
    with pytest.raises(ValueError, match="one per sample"):
        next(iter_samples(G, 2, seed=0, class_labels=[0]))


def test_save_grid_tiles_row_major(tmp_path):
    imgs = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 2, 3).contiguous()
    save_grid(imgs, 2, tmp_path / "g.png")
    arr = np.asarray(Image.open(tmp_path / "g.png"))
    assert arr.shape == (4, 9)
    expected = to_uint8(imgs)[:, 0, 0, 0].reshape(2, 3)
    assert (arr[::2, ::3] == expected).all()
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]


def test_diversity_ratio():
    x = torch.randn(6, 1, 4, 4)
    assert diversity_ratio(x, x) == pytest.approx(1.0)
    assert diversity_ratio(x[:1].expand(6, 1, 4, 4), x) == 0.0
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]]).view(2, 1, 1, 2)
    assert mean_pairwise_distance(two) == pytest.approx(5.0)


def test_snapshot_round_trip_weights_only(tmp_path):
    torch.manual_seed(0)
    kw = dict(z_dim=4, ngf=4, resolution=8, channels=3, num_classes=0)
    G = build_G("resnet", **kw).eval()
    meta = dict(arch="resnet", G_kwargs=kw, **kw, kimg=1.5, step=3)
    save_snapshot(tmp_path / "s.pt", G, meta)
    blob = torch.load(tmp_path / "s.pt", weights_only=True)
    assert blob["metadata"]["kimg"] == 1.5
    G2, meta2 = load_generator(tmp_path / "s.pt")
    assert meta2 == meta and not G2.training
    z = torch.randn(2, 4)
    assert torch.equal(G(z), G2(z))
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a ganops network snapshot"):
        load_generator(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="ganops train"):
        load_generator(tmp_path / "missing.pt")
