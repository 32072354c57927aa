"""benchmarks/proxy_fid.py: the screening proxy is zero for the real images themselves and grows for wrong ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.scripts import load_benchmark


@pytest.fixture()
def proxy():
    return load_benchmark("proxy_fid")


class _Replay(nn.Module):
    """A 'generator' that returns fixed images (float in [-1, 1]) in order, whatever the latents."""

    z_dim = 4

    def __init__(self, images_u8: np.ndarray):
        super().__init__()
        self.images, self.pos = torch.from_numpy(images_u8).float() / 127.5 - 1, 0

    def forward(self, z):
        x = self.images[self.pos:self.pos + len(z)]
        self.pos += len(z)
        return x


def test_proxy_is_zero_for_the_real_images_and_larger_for_others(proxy):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (300, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 300)
    clf = proxy.train_classifier(images, labels, epochs=1)
    assert not clf.training
    real = proxy.features(clf, torch.from_numpy(images))
    assert real.shape == (300, 128) and real.dtype == np.float64

    # 500 samples per batch: the replayed set is the real one, repeated to fill the batch and cut to 300
    same = proxy.proxy_fid(clf, _Replay(np.concatenate([images, images])), real, num_samples=300)
    assert abs(same) < 1e-6
    dark = proxy.proxy_fid(clf, _Replay(np.concatenate([images // 4] * 2)), real, num_samples=300)
    assert dark > 0.1  # darker images: a different feature distribution


def test_missing_snapshot_stops_with_its_name(proxy, tmp_path):
    with pytest.raises(SystemExit, match="snapshot.*not found.*nope.pt"):
        proxy.main([str(tmp_path / "nope.pt")])


@pytest.fixture()
def snapshot(tmp_path):
    from ganops.models import build_G
    from ganops.training.snapshot import save_snapshot

    G_kwargs = dict(z_dim=8, ngf=8, resolution=28, channels=1, num_classes=0)
    path = tmp_path / "t00060.pt"
    save_snapshot(path, build_G("dcgan", **G_kwargs).eval(), dict(arch="dcgan", G_kwargs=G_kwargs, **G_kwargs,
                                                                   kimg=1.0, step=16))
    return path


@pytest.mark.parametrize("case,message", [
    ("few_samples", "--num-samples must be at least 500"),
    ("not_a_snapshot", "is not a G_ema snapshot"),
    ("bad_classifier", "is not a proxy classifier"),
])
def test_bad_input_stops_with_a_message(proxy, snapshot, tmp_path, case, message):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"")
    argv = {"few_samples": [str(snapshot), "--num-samples", "7"],
            "not_a_snapshot": [str(snapshot), str(bad)],
            "bad_classifier": [str(snapshot), "--classifier", str(bad)]}[case]
    with pytest.raises(SystemExit, match=message):
        proxy.main(argv)
    assert bad.read_bytes() == b""  # nothing overwritten
