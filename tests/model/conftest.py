"""Fixtures for training-behaviour tests: a tiny prepared directory (per the data contract) and tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ganops.config import TrainConfig
from ganops.data.dataset import save_split


def write_prepared(out_dir: Path, *, n: int = 64, resolution: int = 8, channels: int = 1, num_classes: int = 4,
                   seed: int = 0) -> Path:
    """Write the train and test splits and summary.json like ``ganops prepare``: class k has a bright quadrant k."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % num_classes).astype(np.int64)
    images = rng.integers(0, 40, (n, channels, resolution, resolution)).astype(np.uint8)
    half = resolution // 2
    for k in range(num_classes):
        y, x = (k // 2 % 2) * half, (k % 2) * half
        images[labels == k, :, y:y + half, x:x + half] += 200
    save_split(out_dir, "train", images, labels)
    save_split(out_dir, "test", images[: n // 4], labels[: n // 4])
    (out_dir / "summary.json").write_text(json.dumps({
        "source": "synthetic", "resolution": resolution, "channels": channels, "num_classes": num_classes,
        "class_names": [f"c{k}" for k in range(num_classes)], "counts": {"train": n, "test": n // 4},
        "dataset_sha256": f"synthetic-{seed}-{n}-{resolution}-{channels}",
    }))
    return out_dir


def tiny_cfg(run_dir: Path, **overrides) -> TrainConfig:
    """A config that trains in well under a second: 8 px, widths 8, batch 8, 5 steps, one thread (tiny tensors:
    a second OpenMP thread only adds sync cost, and a lot of it on a busy machine)."""
    base = dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.04, sample_every_kimg=0.02,
                checkpoint_every_kimg=0.02, log_every_steps=1, grid_size=2, mode_collapse_num_images=8,
                device="cpu", channels_last=False, num_threads=1, run_dir=str(run_dir),
                on_config_change="refuse")  # the resume tests exercise the guarding policy unless they ask for restart
    return TrainConfig(**{**base, **overrides})


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_prepared(tmp_path / "prepared")


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
