"""Builders for tiny data sources: gzipped IDX files and image folders, made with numpy/Pillow in tmp_path."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from ganops.data.source_fashion_mnist import FILES


def idx_bytes(array: np.ndarray, *, dims: tuple[int, ...] | None = None) -> bytes:
    """IDX encoding of a uint8 array; ``dims`` overrides the header's dimensions (to forge a bad header)."""
    assert array.dtype == np.uint8
    dims = array.shape if dims is None else dims
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def write_idx_gz(path: Path, array: np.ndarray, **kw) -> Path:
    path.write_bytes(gzip.compress(idx_bytes(array, **kw)))
    return path


def synthetic_split(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)  # balanced classes
    return images, labels


def make_fashion_dir(root: Path, n_train: int = 40, n_test: int = 20, size: int = 28) -> dict[str, tuple]:
    """Write the four Fashion-MNIST-named IDX .gz files; returns the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train": synthetic_split(n_train, 1, size), "test": synthetic_split(n_test, 2, size)}
    for split, (img_name, lbl_name) in FILES.items():
        write_idx_gz(root / img_name, arrays[split][0])
        write_idx_gz(root / lbl_name, arrays[split][1])
    return arrays


@pytest.fixture
def fashion_dir(tmp_path: Path) -> tuple[Path, dict]:
    d = tmp_path / "fmnist"
    return d, make_fashion_dir(d)


def png_with_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (1-bit gray) followed by a tiny IDAT: opening it reads the header
    only, decoding it would need width*height pixels. Costs a few hundred bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path
