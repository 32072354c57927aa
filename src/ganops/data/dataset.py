"""Read the prepared data directory written by :func:`ganops.data.prepare.prepare`.

A split is two ``.npy`` files, ``<split>-images.npy`` uint8 (N, C, H, W) and ``<split>-labels.npy`` int64 (N,);
:func:`load_split` maps the images read-only, so opening a split costs its header, not its size. A directory from
before this format (``<split>.npz``) still loads, into memory, with a warning to re-run prepare.
"""

from __future__ import annotations

import json
import zipfile
import logging
from pathlib import Path

import numpy as np

from ganops.data.errors import DataError

SPLITS = ("train", "test")
log = logging.getLogger(__name__)


def images_file(split: str) -> str:
    return f"{split}-images.npy"


def labels_file(split: str) -> str:
    return f"{split}-labels.npy"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(
            f"{path} not found: the prepare stage has not been run for {path.parent} "
            "(run `ganops prepare` or `dvc repro prepare`)"
        )
    return path


def load_split(prepared_dir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Open one split for random access.

    Args:
        prepared_dir: ``prepare.out_dir``.
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: images uint8 (N, C, H, W) 0..255, a read-only :class:`numpy.memmap` (rows are read
        from disk when indexed; ``np.array(images)`` would load them all), labels int64 (N,) in 0..K-1 in memory
        (all 0 if unlabeled). A directory in the old format (``<split>.npz``) is loaded into memory, with a warning.

    Raises:
        ValueError: ``split`` is not one of ``train``, ``test``.
        DataError: the files are missing (prepare not run), truncated, or their arrays do not have the contract's
            dtypes/shapes; the message says to re-run prepare.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    prepared_dir = Path(prepared_dir)
    images_path, labels_path = prepared_dir / images_file(split), prepared_dir / labels_file(split)
    if not images_path.exists() and (prepared_dir / f"{split}.npz").is_file():
        images, labels = _load_npz(prepared_dir / f"{split}.npz")
        path = prepared_dir / f"{split}.npz"
    else:
        path = images_path
        images = _load_npy(_require(images_path), mmap_mode="r")
        labels = _load_npy(_require(labels_path))
        if labels.dtype != np.int64 or labels.ndim != 1:
            raise DataError(f"{labels_path}: expected labels int64 (N,), got {labels.dtype} {labels.shape}; "
                            "re-run prepare")
    if images.dtype != np.uint8 or images.ndim != 4 or labels.dtype != np.int64 or labels.shape != images.shape[:1]:
        raise DataError(
            f"{path}: expected images uint8 (N, C, H, W) and labels int64 (N,), got images {images.dtype} "
            f"{images.shape} and labels {labels.dtype} {labels.shape}; re-run prepare"
        )
    return images, labels


def _load_npy(path: Path, mmap_mode: str | None = None) -> np.ndarray:
    """One ``.npy`` array; DataError naming the file when it is truncated, has a bad header or is not an .npy."""
    try:
        arr = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # a truncated file, a bad header, pickled objects
        raise DataError(f"{path}: cannot be read ({err}); re-run prepare") from None
    if not isinstance(arr, np.ndarray):  # np.load opens zip content as an NpzFile whatever the file is called
        arr.close()
        raise DataError(f"{path}: not an .npy array (a zip archive?); re-run prepare")
    return arr


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    log.warning("%s is the old prepared format (whole arrays in one .npz, loaded into memory); re-run prepare "
                "(`ganops prepare` or `dvc repro prepare`) to get memory-mapped %s / %s", path,
                images_file(path.stem), labels_file(path.stem))
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = {"images", "labels"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing arrays {sorted(missing)}; re-run prepare")
            return npz["images"], npz["labels"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:  # torn archive, pickled objects
        raise DataError(f"{path}: cannot be read ({err}); re-run prepare") from None


def save_split(prepared_dir: str | Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one in-memory split in the prepared format (tests and benchmarks; ``prepare`` streams instead).

    Args:
        images: uint8 (N, C, H, W), written as given. labels: integer (N,), stored as int64.
    """
    prepared_dir = Path(prepared_dir)
    prepared_dir.mkdir(parents=True, exist_ok=True)
    np.save(prepared_dir / images_file(split), np.ascontiguousarray(images))
    np.save(prepared_dir / labels_file(split), np.asarray(labels, dtype=np.int64))


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
