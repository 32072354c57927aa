"""``prepare`` stage: read a source and write the prepared data directory (the contract other stages read).

``cfg.out_dir`` afterwards holds exactly:

- ``train.npz``, ``test.npz``: ``images`` uint8 (N, C, H, W) 0..255, ``labels`` int64 (N,) in 0..K-1.
- ``metadata.parquet``: one row per image: ``index`` (position within its split's arrays), ``split``, ``label``,
  ``mean``, ``std`` (population std), ``min``, ``max`` (pixel values 0..255), ``sha256`` (hex digest of the
  image's C-contiguous (C, H, W) uint8 bytes); folder sources add ``path`` (relative to the folder),
  ``orig_mode``, ``orig_width``, ``orig_height`` (pixels).
- ``summary.json``: ``source, resolution, channels, num_classes, class_names, counts {train, test},
  dataset_sha256, skipped`` (``[{path, reason}]`` of refused files; empty unless ``on_bad_image=skip``).

Everything is written into a temporary sibling directory which then replaces ``out_dir`` by rename, so a failure
never leaves partial output, and a previous ``out_dir`` stays intact until the new one is complete. A full disk or
a permission problem raises :class:`ganops.io.OutputWriteError` naming ``out_dir`` and what to do.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ganops.config import PrepareConfig
from ganops.data import source_fashion_mnist as fmnist
from ganops.data.errors import DataError
from ganops.data.source_folder import BadImage, FolderImage, center_crop_resize, load_folder
from ganops.io import atomic_write, output_error, write_json

SPLITS = ("train", "test")
_STATS_CHUNK = 8192  # images per chunk when computing float64 pixel statistics


def prepare(cfg: PrepareConfig, *, seed: int = 0) -> dict:
    """Read ``cfg.source`` and write the prepared data directory (see the module docstring).

    Args:
        cfg: the ``prepare`` section.
        seed: seeds the train/test permutation of folder sources (Fashion-MNIST keeps its official split).

    Returns:
        The ``summary.json`` content.

    Raises:
        DataError: the source is missing, malformed, empty, or holds bad images with ``on_bad_image=fail``;
            nothing is written.
        OutputWriteError: ``out_dir`` cannot be written (disk full, permissions, a parent that is a file); the
            previous ``out_dir`` is intact.
    """
    if cfg.source == "fashion_mnist":
        splits, class_names, extra, skipped = _from_fashion_mnist(cfg)
    else:
        splits, class_names, extra, skipped = _from_folder(cfg, seed)
    limits = {"train": cfg.max_train, "test": cfg.max_test}
    splits = {s: (x[: limits[s]], y[: limits[s]]) for s, (x, y) in splits.items()}
    extra = {s: df.iloc[: limits[s]].reset_index(drop=True) for s, df in extra.items()}
    metadata = pd.concat([_split_metadata(s, *splits[s], extra.get(s)) for s in SPLITS], ignore_index=True)
    summary = {
        "source": cfg.source,
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "counts": {s: int(splits[s][0].shape[0]) for s in SPLITS},
        "dataset_sha256": dataset_sha256(splits),
        "skipped": [{"path": b.path, "reason": b.reason} for b in skipped],
    }
    _write_out_dir(Path(cfg.out_dir), splits, metadata, summary)
    return summary


# --- sources -----------------------------------------------------------------------------------------------------


def _from_fashion_mnist(cfg: PrepareConfig):
    directory = fmnist.find_fashion_mnist_dir(cfg.fashion_mnist_dir)
    raw = fmnist.load_fashion_mnist(directory)
    limits = {"train": cfg.max_train, "test": cfg.max_test}
    splits = {}
    for split, (images, labels) in raw.items():
        # Subset before resizing: resizing 70k images only to keep a few would be wasted time.
        images, labels = images[: limits[split]], labels[: limits[split]]
        splits[split] = (to_nchw(images, resolution=cfg.resolution, channels=cfg.channels), labels)
    return splits, fmnist.CLASS_NAMES, {}, []


def to_nchw(images: np.ndarray, *, resolution: int, channels: int) -> np.ndarray:
    """uint8 (N, H, W) gray images -> uint8 (N, channels, resolution, resolution).

    Square inputs of another size are Lanczos-resized with Pillow (non-square ones are centre-cropped first);
    ``channels=3`` replicates the gray channel.
    """
    if images.shape[1:] != (resolution, resolution):
        # ~0.1 ms per 28->32 Lanczos resize: 70k images take ~7 s (threads did not help on 2 cores).
        resized = [np.asarray(center_crop_resize(Image.fromarray(im), resolution)) for im in images]
        images = np.stack(resized) if resized else np.zeros((0, resolution, resolution), np.uint8)
    return np.ascontiguousarray(np.repeat(images[:, None], channels, axis=1))


def _from_folder(cfg: PrepareConfig, seed: int):
    class_names, good, bad = load_folder(
        cfg.folder, resolution=cfg.resolution, channels=cfg.channels, max_image_pixels=cfg.max_image_pixels
    )
    if bad and cfg.on_bad_image == "fail":
        raise DataError(
            f"{len(bad)} bad file(s) in image folder {cfg.folder}:\n"
            + "\n".join(f"  - {b.path}: {b.reason}" for b in bad)
            + "\nFix or remove them, or set prepare.on_bad_image=skip to leave them out (they are then listed in "
            "summary.json under 'skipped')."
        )
    if not good:
        raise DataError(f"image folder {cfg.folder}: no usable images ({len(bad)} refused: {_first_paths(bad)})")
    labels = np.array([g.label for g in good], dtype=np.int64)
    test_mask = stratified_test_mask(labels, test_fraction=cfg.test_fraction, seed=seed)
    if not test_mask.any():
        raise DataError(
            f"image folder {cfg.folder}: too few images ({len(good)}) to hold any out for the test split; "
            "each class needs at least 2 images"
        )
    splits, extra = {}, {}
    for split, mask in (("train", ~test_mask), ("test", test_mask)):
        chosen = [g for g, m in zip(good, mask) if m]
        splits[split] = (np.stack([g.pixels for g in chosen]), labels[mask])
        extra[split] = _folder_columns(chosen)
    return splits, class_names, extra, bad


def _first_paths(bad: list[BadImage], n: int = 5) -> str:
    return ", ".join(b.path for b in bad[:n]) + (" ..." if len(bad) > n else "")


def _folder_columns(images: list[FolderImage]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [g.path for g in images],
            "orig_mode": [g.orig_mode for g in images],
            "orig_width": np.array([g.orig_width for g in images], dtype=np.int64),
            "orig_height": np.array([g.orig_height for g in images], dtype=np.int64),
        }
    )


def stratified_test_mask(labels: np.ndarray, *, test_fraction: float, seed: int) -> np.ndarray:
    """Choose the test split per class with a seeded permutation.

    Each class with n >= 2 images gives ``clip(round(n * test_fraction), 1, n - 1)`` images to test (so both
    splits see every class); a class with one image stays in train.

    Returns:
        bool (N,) mask, True = test. Deterministic for (labels, test_fraction, seed).
    """
    rng = np.random.default_rng(seed)
    mask = np.zeros(labels.shape, dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        n_test = int(np.clip(round(len(members) * test_fraction), 1, len(members) - 1))
        mask[rng.permutation(members)[:n_test]] = True
    return mask


# --- metadata, hashes --------------------------------------------------------------------------------------------


def pixel_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``mean``, ``std`` (population, float64) and ``min``, ``max`` (int64) of uint8 (N, ...) images."""
    flat = images.reshape(len(images), -1)
    mean, std = np.empty(len(flat)), np.empty(len(flat))
    for lo in range(0, len(flat), _STATS_CHUNK):
        chunk = flat[lo : lo + _STATS_CHUNK].astype(np.float64)
        mean[lo : lo + len(chunk)] = chunk.mean(axis=1)
        std[lo : lo + len(chunk)] = chunk.std(axis=1)
    empty = flat.shape[1] == 0 or len(flat) == 0
    mins = flat.min(axis=1).astype(np.int64) if not empty else np.zeros(len(flat), np.int64)
    maxs = flat.max(axis=1).astype(np.int64) if not empty else np.zeros(len(flat), np.int64)
    return {"mean": mean, "std": std, "min": mins, "max": maxs}


def image_sha256(images: np.ndarray) -> list[str]:
    """Hex SHA-256 of each image's C-contiguous bytes; equal digests = byte-identical images."""
    images = np.ascontiguousarray(images)
    return [hashlib.sha256(im.tobytes()).hexdigest() for im in images]


def _split_metadata(split: str, images: np.ndarray, labels: np.ndarray, extra: pd.DataFrame | None) -> pd.DataFrame:
    df = pd.DataFrame(
        {"index": np.arange(len(images), dtype=np.int64), "split": split, "label": labels.astype(np.int64)}
    )
    for name, values in pixel_stats(images).items():
        df[name] = values
    df["sha256"] = image_sha256(images)
    if extra is not None:
        df = pd.concat([df, extra.reset_index(drop=True)], axis=1)
    return df


def dataset_sha256(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """SHA-256 over, for ``train`` then ``test``: the split name, the images' shape ``N,C,H,W``, the image bytes
    (C order) and the labels as little-endian int64 bytes. Equal digests = identical prepared data."""
    h = hashlib.sha256()
    for split in SPLITS:
        images, labels = splits[split]
        h.update(f"{split}:{','.join(map(str, images.shape))}:".encode())
        h.update(np.ascontiguousarray(images).tobytes())
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


# --- output ------------------------------------------------------------------------------------------------------


def _write_out_dir(out_dir: Path, splits, metadata: pd.DataFrame, summary: dict) -> None:
    """Write everything into a temporary sibling of ``out_dir``, then swap it in.

    Raises:
        DataError: ``out_dir`` exists and is not a directory.
        OutputWriteError: disk full, permission denied or a parent that is a file (message names ``out_dir``);
            the previous ``out_dir`` is intact and no temporary directory is left.
    """
    try:
        exists_as_file = out_dir.exists() and not out_dir.is_dir()
    except OSError as err:
        raise output_error(err, out_dir) from err
    if exists_as_file:
        raise DataError(f"prepare.out_dir {out_dir} exists and is not a directory; remove it or choose another path")
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    except OSError as err:
        raise output_error(err, out_dir) from err
    try:
        for split, (images, labels) in splits.items():
            with atomic_write(tmp / f"{split}.npz") as f:
                np.savez(f, images=images, labels=labels.astype(np.int64))
        with atomic_write(tmp / "metadata.parquet") as f:
            metadata.to_parquet(f, index=False)
        write_json(tmp / "summary.json", summary)
        _replace_dir(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise output_error(err, out_dir) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old ``target`` (if any) is moved aside first and deleted after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        os.replace(target, old / "d")
    try:
        os.replace(new, target)
    except OSError:
        if old is not None:
            os.replace(old / "d", target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
