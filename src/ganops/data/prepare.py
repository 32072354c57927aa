"""``prepare`` stage: read a source and write the prepared data directory (the contract other stages read).

``cfg.out_dir`` afterwards holds exactly:

- ``train-images.npy``, ``test-images.npy``: uint8 (N, C, H, W) 0..255, C order; read them with
  :func:`ganops.data.dataset.load_split`, which memory-maps them (random access without loading the split).
- ``train-labels.npy``, ``test-labels.npy``: int64 (N,) in 0..K-1.
- ``metadata.parquet``: one row per image: ``index`` (position within its split's arrays), ``split``, ``label``,
  ``mean``, ``std`` (population std), ``min``, ``max`` (pixel values 0..255), ``sha256`` (hex digest of the
  image's C-contiguous (C, H, W) uint8 bytes); folder sources add ``path`` (relative to the folder),
  ``orig_mode``, ``orig_width``, ``orig_height`` (pixels).
- ``summary.json``: ``source, resolution, channels, num_classes, class_names, counts {train, test},
  dataset_sha256, skipped`` (``[{path, reason}]`` of refused files; empty unless ``on_bad_image=skip``).

The images stream from the source to disk in chunks (``CHUNK_IMAGES`` images, at most ``CHUNK_BYTES``): the
decoded pixels of a split are never in memory at once (a folder is decoded in order into a scratch file, then copied
into the splits row by row), and the per-image metadata and the dataset hash are computed chunk by chunk. What stays
in memory is O(N) but small: the labels, and the metadata table (~0.3 KB per image for a folder).

Everything is written into a temporary sibling directory which then replaces ``out_dir`` by rename, so a failure
never leaves partial output, and a previous ``out_dir`` stays intact until the new one is complete. A full disk or
a permission problem raises :class:`ganops.io.OutputWriteError` naming ``out_dir`` and what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ganops.config import PrepareConfig
from ganops.data import source_fashion_mnist as fmnist
from ganops.data.dataset import images_file, labels_file
from ganops.data.errors import DataError
from ganops.data.npy import RowReader, write_header
from ganops.data.source_folder import BadImage, FolderImage, center_crop_resize, decode_files, discover
from ganops.io import atomic_write, output_error, write_json
from ganops.progress import progress_bar

SPLITS = ("train", "test")
CHUNK_IMAGES = 1024  # images decoded, written and hashed at a time, at most ...
CHUNK_BYTES = 64 * 2**20  # ... and at most this many decoded bytes (256 x 256 RGB: 341 images)
_STATS_VALUES = 2**22  # pixel values converted to float64 at a time for the statistics (32 MB)


@dataclass
class _Split:
    """One split to write: ``labels`` int64 (n,) and its images as an iterator of ``(uint8 (k, C, H, W), extra
    metadata columns or None)`` chunks in row order, ``shape`` (C, H, W)."""

    labels: np.ndarray
    chunks: Iterator[tuple[np.ndarray, pd.DataFrame | None]]
    shape: tuple[int, int, int]


def prepare(cfg: PrepareConfig, *, seed: int = 0) -> dict:
    """Read ``cfg.source`` and write the prepared data directory (see the module docstring).

    Args:
        cfg: the ``prepare`` section.
        seed: seeds the train/test permutation of folder sources (Fashion-MNIST keeps its official split).

    Returns:
        The ``summary.json`` content.

    Raises:
        DataError: the source is missing, malformed, empty, or holds bad images with ``on_bad_image=fail``;
            ``out_dir`` is untouched.
        OutputWriteError: ``out_dir`` cannot be written (disk full, permissions, a parent that is a file); the
            previous ``out_dir`` is intact.
    """
    out_dir = Path(cfg.out_dir)
    if cfg.source == "fashion_mnist":
        raw = fmnist.load_fashion_mnist(fmnist.find_fashion_mnist_dir(cfg.fashion_mnist_dir))
    else:
        folder = discover(cfg.folder)
    with _staging_dir(out_dir) as tmp:
        if cfg.source == "fashion_mnist":
            splits, class_names, skipped = _from_fashion_mnist(cfg, raw), fmnist.CLASS_NAMES, []
        else:
            splits, class_names, skipped = _from_folder(cfg, seed, folder, tmp / ".decoded.u8")
        hasher = hashlib.sha256()
        metadata = pd.concat([_write_split(tmp, s, splits[s], hasher) for s in SPLITS], ignore_index=True)
        (tmp / ".decoded.u8").unlink(missing_ok=True)
        summary = {
            "source": cfg.source,
            "resolution": cfg.resolution,
            "channels": cfg.channels,
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "counts": {s: len(splits[s].labels) for s in SPLITS},
            "dataset_sha256": hasher.hexdigest(),
            "skipped": [{"path": b.path, "reason": b.reason} for b in skipped],
        }
        with atomic_write(tmp / "metadata.parquet") as f:
            metadata.to_parquet(f, index=False)
        write_json(tmp / "summary.json", summary)
    return summary


# --- sources -----------------------------------------------------------------------------------------------------


def _from_fashion_mnist(cfg: PrepareConfig, raw: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, _Split]:
    # The IDX arrays are Fashion-MNIST's fixed 55 MB; what can grow (resized, 3-channel) output goes out in chunks.
    limits = {"train": cfg.max_train, "test": cfg.max_test}
    splits = {}
    for split, (images, labels) in raw.items():
        images, labels = images[: limits[split]], labels[: limits[split]]
        chunks = _converted_chunks(images, resolution=cfg.resolution, channels=cfg.channels)
        splits[split] = _Split(labels.astype(np.int64), chunks, (cfg.channels, cfg.resolution, cfg.resolution))
    return splits


def _converted_chunks(images: np.ndarray, *, resolution: int, channels: int):
    step = chunk_images((channels, resolution, resolution))
    for lo in range(0, len(images), step):
        yield to_nchw(images[lo : lo + step], resolution=resolution, channels=channels), None


def chunk_images(shape: tuple[int, ...]) -> int:
    """Images per chunk for images of ``shape`` (C, H, W) uint8: ``CHUNK_IMAGES``, fewer for large images."""
    return int(np.clip(CHUNK_BYTES // max(int(np.prod(shape)), 1), 1, CHUNK_IMAGES))


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


def _from_folder(cfg: PrepareConfig, seed: int, folder, scratch: Path) -> tuple[dict[str, _Split], list, list]:
    """Decode the folder in sorted path order into ``scratch`` (good images only, raw rows), then split it."""
    class_names, files, bad = folder
    shape = (cfg.channels, cfg.resolution, cfg.resolution)
    good: list[FolderImage] = []  # pixels dropped: only the file facts stay in memory
    with open(scratch, "wb") as raw, progress_bar(total=len(files), desc="prepare: decode", unit="img") as bar:
        for chunk in decode_files(cfg.folder, files, resolution=cfg.resolution, channels=cfg.channels,
                                  max_image_pixels=cfg.max_image_pixels, chunk_size=chunk_images(shape)):
            for r in chunk:
                if isinstance(r, BadImage):
                    bad.append(r)
                    continue
                raw.write(r.pixels.tobytes())
                good.append(dataclasses.replace(r, pixels=None))
            bar.update(len(chunk))
    bad = sorted(bad, key=lambda b: b.path)
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
    limits = {"train": cfg.max_train, "test": cfg.max_test}
    splits = {}
    for split, mask in (("train", ~test_mask), ("test", test_mask)):
        rows = np.flatnonzero(mask)[: limits[split]]
        splits[split] = _Split(labels[rows], _scratch_chunks(scratch, shape, rows, good), shape)
    return splits, class_names, bad


def _scratch_chunks(scratch: Path, shape: tuple[int, int, int], rows: np.ndarray, good: list[FolderImage]):
    """The images at ``rows`` of the scratch file with their folder columns, one chunk at a time."""
    reader = RowReader(np.memmap(scratch, np.uint8, "r", shape=(len(good), *shape)))
    step = chunk_images(shape)
    try:
        for lo in range(0, len(rows), step):
            chunk = rows[lo : lo + step]
            yield reader(chunk), _folder_columns([good[i] for i in chunk])
    finally:
        reader.close()


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
    rows = max(1, _STATS_VALUES // max(flat.shape[1], 1))  # per-row results: the same for any chunking
    for lo in range(0, len(flat), rows):
        chunk = flat[lo : lo + rows].astype(np.float64)
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


def _chunk_metadata(split: str, first_index: int, images: np.ndarray, labels: np.ndarray,
                    extra: pd.DataFrame | None) -> pd.DataFrame:
    df = pd.DataFrame({
        "index": np.arange(first_index, first_index + len(images), dtype=np.int64),
        "split": split,
        "label": labels.astype(np.int64),
    })
    for name, values in pixel_stats(images).items():
        df[name] = values
    df["sha256"] = image_sha256(images)
    if extra is not None:
        df = pd.concat([df, extra.reset_index(drop=True)], axis=1)
    return df


def dataset_sha256(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """SHA-256 over, for ``train`` then ``test``: the split name, the images' shape ``N,C,H,W``, the image bytes
    (C order) and the labels as little-endian int64 bytes. Equal digests = identical prepared data. ``prepare``
    computes the same digest chunk by chunk while it writes (``summary.json`` ``dataset_sha256``)."""
    h = hashlib.sha256()
    for split in SPLITS:
        images, labels = splits[split]
        h.update(f"{split}:{','.join(map(str, images.shape))}:".encode())
        h.update(np.ascontiguousarray(images).tobytes())
        h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


# --- output ------------------------------------------------------------------------------------------------------


def _write_split(tmp: Path, split: str, data: _Split, hasher) -> pd.DataFrame:
    """Write ``<split>-images.npy`` / ``<split>-labels.npy`` chunk by chunk, feeding ``hasher`` as
    :func:`dataset_sha256` does; return the split's metadata rows."""
    n = len(data.labels)
    hasher.update(f"{split}:{','.join(map(str, (n, *data.shape)))}:".encode())
    parts, done = [], 0
    with atomic_write(tmp / images_file(split)) as f:
        write_header(f, np.uint8, (n, *data.shape))
        for images, extra in data.chunks:
            images = np.ascontiguousarray(images, dtype=np.uint8)
            f.write(images.data)
            hasher.update(images.data)
            parts.append(_chunk_metadata(split, done, images, data.labels[done : done + len(images)], extra))
            done += len(images)
        if done != n:
            raise RuntimeError(f"prepare wrote {done} {split} images but announced {n}; this is a bug")
    labels = np.ascontiguousarray(data.labels, dtype="<i8")
    hasher.update(labels.tobytes())
    with atomic_write(tmp / labels_file(split)) as f:
        np.save(f, labels)
    empty = np.zeros((0, *data.shape), np.uint8)
    return pd.concat(parts, ignore_index=True) if parts else _chunk_metadata(split, 0, empty, data.labels, None)


@contextlib.contextmanager
def _staging_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to write into; swapped in for ``out_dir`` when the block succeeds, removed
    when it fails.

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
        yield tmp
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
