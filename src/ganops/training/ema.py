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
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float, *, weight: torch.Tensor | None = None) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for parameters, in place (one ``_foreach_lerp_`` call over all
    of them); buffers (BN statistics, spectral-norm vectors) are copied from G. ``beta = 0`` makes G_ema an exact
    copy of G. ``weight``, when given, replaces ``1 - beta``: a 0-d float32 tensor on the parameters' device holding
    ``1 - beta`` (computed in float64, as the float path does, so both give bit-identical results); a captured CUDA
    graph reads its current value at every replay (the G_ema ramp-up changes it every step).

    Raises:
        ValueError: G_ema and G have different numbers of parameters (not the same architecture).
    """
    ema_params, params = list(G_ema.parameters()), [p.detach() for p in G.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"G_ema has {len(ema_params)} parameters, G {len(params)}: not the same architecture")
    if weight is not None:
        torch._foreach_lerp_(ema_params, params, weight)  # weight 1 (beta 0) gives exactly p
    elif beta == 0.0:
        torch._foreach_copy_(ema_params, params)
    else:
        torch._foreach_lerp_(ema_params, params, 1.0 - beta)
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b)
