"""Prepare and training run under a memory cap smaller than the decoded dataset.

The cap is ``RLIMIT_DATA`` (Linux >= 4.7), set in each subprocess before it starts: it bounds the process's private
writable memory (heap, anonymous maps, thread stacks), which is where a loaded split would have to live, and not
read-only file maps or the kernel's page cache, through which the streamed rows pass.

Sizes, measured on the project's 2-core CPU machine (2026-12-06) with ``VmData`` sampled from ``/proc``: the
``ganops train`` process of a tiny run on a tiny folder peaks at ~470 MB of data (torch, MLflow), ``ganops
prepare`` at ~210 MB (with ``ARROW_DEFAULT_MEMORY_POOL=system``: Arrow's default jemalloc pool reserves ~1 GB of
address space up front, which RLIMIT_DATA would count though it is never touched). The cap is 768 MB, and the
dataset decodes to 4,500 x 3 x 256 x 256 bytes = 885 MB: more than the cap itself, so neither stage could hold the
split even with nothing else loaded. The negative control trains the same data with the split resident
(``resident_data_mb`` above its size): copying it into memory fails with MemoryError under the same cap.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ganops.data.dataset import load_split, load_summary

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA counts anonymous maps on Linux"),
]

CAP_BYTES = 768 * 2**20
N_IMAGES, RESOLUTION, CHANNELS = 4500, 256, 3
DECODED_BYTES = N_IMAGES * CHANNELS * RESOLUTION * RESOLUTION


def _folder(root: Path) -> Path:
    """N_IMAGES tiny 8x8 RGB PNGs in two class folders; prepare upsamples them to RESOLUTION."""
    rng = np.random.default_rng(0)
    for k in range(2):
        (root / f"c{k}").mkdir(parents=True)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:05d}.png")
    return root


def _params(tmp: Path, resident_data_mb: float) -> Path:
    path = tmp / f"params-{resident_data_mb:g}.yaml"
    path.write_text(yaml.safe_dump({
        "prepare": {"source": "folder", "folder": str(tmp / "images"), "resolution": RESOLUTION,
                    "channels": CHANNELS, "out_dir": str(tmp / "prepared")},
        "train": {"z_dim": 8, "ngf": 4, "ndf": 4, "batch_size": 4, "total_kimg": 0.012, "sample_every_kimg": 1000,
                  "checkpoint_every_kimg": 1000, "grid_size": 2, "mode_collapse_num_images": 4, "device": "cpu",
                  "num_threads": 1, "channels_last": False, "eval_every_kimg": 0,
                  "resident_data_mb": resident_data_mb, "run_dir": str(tmp / f"run-{resident_data_mb:g}")},
    }))
    return path


def _capped(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP_BYTES, CAP_BYTES))

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "OMP_NUM_THREADS": "1",
           "ARROW_DEFAULT_MEMORY_POOL": "system", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, preexec_fn=limit, capture_output=True,
                          text=True, timeout=600)


def test_prepare_and_streamed_training_run_under_a_cap_smaller_than_the_data(tmp_path):
    assert DECODED_BYTES > CAP_BYTES
    _folder(tmp_path / "images")
    streamed = _params(tmp_path, 0)

    prepared = _capped("-m", "ganops.cli", "prepare", "--params", str(streamed), cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    images, labels = load_split(tmp_path / "prepared", "train")
    n_test = load_split(tmp_path / "prepared", "test")[0].shape[0]
    assert images.shape[1:] == (CHANNELS, RESOLUTION, RESOLUTION) and images.shape[0] + n_test == N_IMAGES
    assert load_summary(tmp_path / "prepared")["counts"] == {"train": images.shape[0], "test": n_test}

    trained = _capped("-m", "ganops.cli", "train", "--params", str(streamed), cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads((tmp_path / "run-0" / "training_options.json").read_text())["data_streamed"] is True
    assert (tmp_path / "run-0" / "network-snapshot.pt").is_file()

    # Negative control: the same training with the split resident needs it in memory, which the cap refuses.
    resident = _capped("-m", "ganops.cli", "train", "--params", str(_params(tmp_path, 1024)), cwd=tmp_path)
    assert resident.returncode != 0
    assert "MemoryError" in resident.stderr or "Unable to allocate" in resident.stderr, resident.stderr[-3000:]
