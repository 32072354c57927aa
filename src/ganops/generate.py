"""``ganops generate``: draw images from a registered model or a local snapshot and save a grid or a folder.

A registered model is loaded through MLflow's pyfunc interface exactly as a user outside ganops would load it
(``mlflow.pyfunc.load_model(uri).predict(DataFrame)``); a snapshot path uses ganops' own loader. Both return the
same uint8 images for the same seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ganops.io import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _request(num_images: int, seed: int, class_label: int | None):  # -> pandas.DataFrame
    import pandas as pd

    row = {"num_images": [num_images], "seed": [seed]}
    if class_label is not None:
        row["class_label"] = [class_label]
    return pd.DataFrame(row)


def generate(source: str, *, num_images: int, seed: int = 0, class_label: int | None = None) -> np.ndarray:
    """Draw ``num_images`` images.

    Args:
        source: an MLflow model URI (``models:/name@alias``, ``runs:/...``) or a path to ``network-snapshot.pt``.
        class_label: class of every image (conditional models only).
    Returns:
        uint8 (N, H, W, C) images, 0..255.
    Raises:
        FileNotFoundError: a snapshot path that does not exist.
        ValueError: num_images < 1, or a class label the model does not accept.
    """
    if num_images < 1:
        raise ValueError(f"--n must be >= 1, got {num_images}")
    request = _request(num_images, seed, class_label)
    if "://" in source or source.startswith("models:/") or source.startswith("runs:/"):
        import mlflow.pyfunc

        return np.asarray(mlflow.pyfunc.load_model(source).predict(request), dtype=np.uint8)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no generator snapshot at {path} (train first, or pass --model-uri models:/NAME@ALIAS)")
    from ganops.pyfunc_model import generate_images
    from ganops.training.snapshot import load_generator

    G, meta = load_generator(path)
    return generate_images(G, meta, request)


def tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """Tile uint8 (N, H, W, C) images row-major into one (rows*H, cols*W, C) image; empty cells stay black."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * cols, h, w, c), dtype=np.uint8)
    canvas[:n] = images
    return canvas.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def _to_pil(arr: np.ndarray):  # -> PIL.Image.Image
    from PIL import Image

    return Image.fromarray(arr[:, :, 0], mode="L") if arr.shape[2] == 1 else Image.fromarray(arr, mode="RGB")


def save_images(images: np.ndarray, out: str | Path) -> list[Path]:
    """Save uint8 (N, H, W, C) images as one grid (``out`` ends in .png/.jpg) or as numbered PNGs in folder ``out``.

    Returns the written paths. Each file is written atomically.
    """
    out = Path(out)
    if out.suffix.lower() in IMAGE_SUFFIXES:
        fmt = "PNG" if out.suffix.lower() == ".png" else "JPEG"
        with atomic_write(out) as f:
            _to_pil(tile(images)).save(f, format=fmt)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = out / f"{i:06d}.png"
        with atomic_write(p) as f:
            _to_pil(img).save(f, format="PNG")
        paths.append(p)
    return paths
