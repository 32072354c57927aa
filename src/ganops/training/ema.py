"""Generator EMA (Karras et al. 2018 / StyleGAN2-ADA ``ema_kimg``): G_ema weights track G with a half-life in kimg."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch_size: int, halflife_kimg: float) -> float:
    """Per-step decay ``0.5 ** (batch_size / (halflife_kimg * 1000))``; 0 when ``halflife_kimg == 0`` (copy).

    After ``halflife_kimg * 1000 / batch_size`` steps an old weight's share has halved.

    Raises:
        ValueError: negative half-life or non-positive batch size.
    """
    if halflife_kimg < 0 or batch_size <= 0:
        raise ValueError(f"need halflife_kimg >= 0 and batch_size > 0, got {halflife_kimg}, {batch_size}")
    return 0.0 if halflife_kimg == 0 else 0.5 ** (batch_size / (halflife_kimg * 1000.0))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for parameters; buffers (BN statistics, spectral-norm vectors)
    are copied from G. ``beta = 0`` makes G_ema an exact copy of G."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        if beta == 0.0:
            p_ema.copy_(p)
        else:
            p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)
