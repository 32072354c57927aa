"""Deterministic sampling from a generator, sample grids, and a headless mode-collapse signal."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ganops.io import atomic_write

Z_CHUNK = 1024  # z is drawn in fixed chunks of this many rows, so results do not depend on batch_size


def latents(num_samples: int, z_dim: int, seed: int) -> torch.Tensor:
    """float32 (num_samples, z_dim) ~ N(0, 1) on CPU; row i depends only on (seed, i, z_dim).

    Rows are drawn from one ``torch.Generator(seed)`` in full chunks of ``Z_CHUNK`` rows, so a prefix of a longer
    request equals a shorter request.
    """
    g = torch.Generator().manual_seed(seed)
    chunks = [torch.randn(Z_CHUNK, z_dim, generator=g) for _ in range(-(-num_samples // Z_CHUNK))]
    return torch.cat(chunks)[:num_samples] if chunks else torch.empty(0, z_dim)


def _labels(num_samples: int, num_classes: int, class_labels: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor | None:
    if num_classes == 0:
        if class_labels is not None:
            raise ValueError("class_labels given but the generator is unconditional (num_classes=0)")
        return None
    if class_labels is None:
        return torch.arange(num_samples) % num_classes
    if isinstance(class_labels, int):
        labels = torch.full((num_samples,), class_labels, dtype=torch.int64)
    else:
        labels = torch.as_tensor(class_labels, dtype=torch.int64).flatten()
        if labels.numel() != num_samples:
            raise ValueError(f"class_labels has {labels.numel()} entries, need one per sample ({num_samples})")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"class_labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}")
    return labels


@torch.no_grad()
def iter_samples(
    G: nn.Module,
    num_samples: int,
    *,
    seed: int,
    batch_size: int = 256,
    class_labels: int | Sequence[int] | torch.Tensor | None = None,
    device: str | torch.device = "cpu",
) -> Iterator[torch.Tensor]:
    """Yield float32 batches (B, C, H, W) in [-1, 1] (last batch may be smaller), ``num_samples`` in total.

    z for sample i is fixed by ``(seed, i)`` (see :func:`latents`), so the concatenated output does not depend on
    ``batch_size`` (up to float rounding of batched convolutions). For a conditional G (``G.num_classes > 0``)
    ``class_labels=None`` cycles 0..K-1; an int gives every sample that class; a sequence gives one label per sample.
    G should be in eval mode (``load_generator`` returns it so).

    Raises:
        ValueError: num_samples < 0, batch_size < 1, or labels that do not fit the generator.
    """
    if num_samples < 0 or batch_size < 1:
        raise ValueError(f"need num_samples >= 0 and batch_size >= 1, got {num_samples}, {batch_size}")
    labels = _labels(num_samples, int(getattr(G, "num_classes", 0)), class_labels)
    z = latents(num_samples, G.z_dim, seed)
    for start in range(0, num_samples, batch_size):
        zb = z[start : start + batch_size].to(device)
        cb = None if labels is None else labels[start : start + batch_size].to(device)
        yield G(zb, cb).float()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [-1, 1] (N, C, H, W) -> uint8 numpy, NVIDIA rounding ``(x * 127.5 + 128).clamp(0, 255)`` truncated."""
    return (x.detach().float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def save_grid(images: torch.Tensor, rows: int, path: str | Path) -> None:
    """Tile float (rows * cols, C, H, W) images in [-1, 1] row-major into one PNG (grey for C=1, RGB for C=3).

    Raises:
        ValueError: the image count is not a multiple of ``rows`` or C is not 1 or 3.
    """
    n, c, h, w = images.shape
    if n % rows or c not in (1, 3):
        raise ValueError(f"cannot tile {n} images of {c} channels into {rows} rows")
    cols = n // rows
    arr = to_uint8(images).reshape(rows, cols, c, h, w).transpose(0, 3, 1, 4, 2).reshape(rows * h, cols * w, c)
    img = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    with atomic_write(path, "wb") as f:
        img.save(f, format="PNG")


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean Euclidean distance between all distinct pairs of flattened images (N >= 2), float64 accumulate."""
    flat = x.detach().double().flatten(1)
    if flat.shape[0] < 2:
        raise ValueError("need at least 2 images for a pairwise distance")
    d = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")
    n = flat.shape[0]
    return float(d.sum() / (n * (n - 1)))


def diversity_ratio(fakes: torch.Tensor, reals: torch.Tensor) -> float:
    """Mode-collapse signal: mean pairwise distance of generated images / that of real images.

    ~1 when samples are as spread out as data; near 0 when G maps many z to (nearly) one image.
    """
    return mean_pairwise_distance(fakes) / max(mean_pairwise_distance(reals), 1e-12)


__all__ = ["diversity_ratio", "iter_samples", "latents", "mean_pairwise_distance", "save_grid", "to_uint8"]
