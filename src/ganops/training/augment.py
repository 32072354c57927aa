"""DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transforms are applied to real and fake images before D (each call draws fresh
parameters per image), so gradients flow through them to G. Images are float (N, C, H, W) in [-1, 1]; outputs
keep shape and dtype. Randomness comes from ``generator`` when given, else from the global torch RNG (which the
training loop seeds and checkpoints).

Policies: ``translation`` (shift by up to 1/8 of the size, zero fill), ``cutout`` (one zeroed square of half the
size), ``color`` (brightness for every image; saturation and contrast only for 3-channel images).
"""

from __future__ import annotations

import torch

POLICIES = ("translation", "cutout", "color")


def parse_policy(policy: str) -> tuple[str, ...]:
    """``"color, translation"`` -> ``("color", "translation")``.

    Raises:
        ValueError: an unknown name (message lists the valid ones).
    """
    names = tuple(n.strip() for n in policy.split(",") if n.strip())
    bad = [n for n in names if n not in POLICIES]
    if bad:
        raise ValueError(f"unknown DiffAugment policy {bad}; valid: {', '.join(POLICIES)}")
    return names


def _rand(n: int, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, 1, 1, 1, device=x.device, dtype=x.dtype, generator=generator)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness shift U[-0.5, 0.5); for C=3 also saturation x U[0, 2) and contrast x U[0.5, 1.5)."""
    n = x.shape[0]
    x = x + (_rand(n, x, generator) - 0.5)
    if x.shape[1] == 3:
        mean_c = x.mean(dim=1, keepdim=True)
        x = (x - mean_c) * (_rand(n, x, generator) * 2.0) + mean_c
        mean_all = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean_all) * (_rand(n, x, generator) + 0.5) + mean_all
    return x


def translation(x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each image by integers in [-s, s] per axis (s = round(size * ratio)); vacated pixels become 0."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (n, 1, 1), device=x.device, generator=generator)
    dx = torch.randint(-sx, sx + 1, (n, 1, 1), device=x.device, generator=generator)
    # Output pixel (i, j) reads padded input (i + sy - dy, j + sx - dx): content moves by (+dy, +dx).
    gy = (torch.arange(h, device=x.device)[None, :, None] + sy - dy).expand(n, h, w)
    gx = (torch.arange(w, device=x.device)[None, None, :] + sx - dx).expand(n, h, w)
    padded = torch.nn.functional.pad(x, (sx, sx, sy, sy)).permute(0, 2, 3, 1)  # (N, H+2sy, W+2sx, C)
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
    return padded[batch, gy, gx].permute(0, 3, 1, 2).contiguous()


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one (round(H * ratio), round(W * ratio)) rectangle per image, centred uniformly (clipped at borders)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    inside = ((ys - (cy - ch // 2)) >= 0) & ((ys - (cy - ch // 2)) < ch) & ((xs - (cx - cw // 2)) >= 0) & (
        (xs - (cx - cw // 2)) < cw
    )
    return x * (~inside).to(x.dtype)[:, None]


_FNS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the comma-separated ``policy`` in the order color -> translation -> cutout (as the reference code).

    Args:
        x: float (N, C, H, W) in [-1, 1] (may require grad).
        policy: e.g. ``"translation,cutout,color"``; empty = identity.
        generator: optional torch.Generator (global RNG otherwise).
    Raises:
        ValueError: unknown policy name.
    """
    names = parse_policy(policy) if isinstance(policy, str) else policy
    for name in POLICIES:
        if name in names:
            x = _FNS[name](x, generator=generator)
    return x


__all__ = ["POLICIES", "color", "cutout", "diff_augment", "parse_policy", "translation"]
