"""Read the prepared data directory written by :func:`ganops.data.prepare.prepare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ganops.data.errors import DataError

SPLITS = ("train", "test")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path} not found: the prepare stage has not been run for {path.parent} "
            "(run `ganops prepare` or `dvc repro prepare`)"
        )
    return path


def load_split(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one split.

    Args:
        prepared_dir: ``prepare.out_dir``.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: images uint8 (N, C, H, W) 0..255, labels int64 (N,) in 0..K-1 (all 0 if unlabeled).

    Raises:
        ValueError: ``split`` is not one of ``train``, ``test``.
        DataError: the file is missing (prepare not run) or its arrays do not have the contract's dtypes/shapes.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = _require(Path(prepared_dir) / f"{split}.npz")
    with np.load(path, allow_pickle=False) as npz:
        missing = {"images", "labels"} - set(npz.files)
        if missing:
            raise DataError(f"{path}: missing arrays {sorted(missing)}; re-run prepare")
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        raise DataError(
            f"{path}: expected images uint8 (N, C, H, W) and labels int64 (N,), got images {images.dtype} "
            f"{images.shape} and labels {labels.dtype} {labels.shape}; re-run prepare"
        )
    return images, labels


def load_summary(prepared_dir: str | Path) -> dict:
    """The ``summary.json`` of a prepared directory (keys: source, resolution, channels, num_classes, class_names,
    counts, dataset_sha256, skipped).

    Raises:
        DataError: the file is missing (prepare not run).
    """
    return json.loads(_require(Path(prepared_dir) / "summary.json").read_text())


def load_metadata(prepared_dir: str | Path):
    """The ``metadata.parquet`` table as a pandas DataFrame (one row per image; see ``ganops.data.prepare``).

    Raises:
        DataError: the file is missing (prepare not run).
    """
    import pandas as pd

    return pd.read_parquet(_require(Path(prepared_dir) / "metadata.parquet"))
