"""Hyper-parameter schedules in images shown to D: cosine decay (R3GAN) and the G_ema half-life ramp-up
(StyleGAN2-ADA).

Every schedule is a pure function of ``cur_nimg`` (images shown to D so far), so a resumed run reproduces it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ganops.training.ema import ema_beta


def cosine(start: float, end: float | None, cur_nimg: int, horizon_kimg: float) -> float:
    """Cosine from ``start`` (at 0 images) to ``end`` (at ``horizon_kimg`` and after); ``start`` when ``end`` is
    None or the horizon is 0.

    ``end + (start - end) * (1 + cos(pi * t)) / 2`` with ``t = min(cur_nimg / (horizon_kimg * 1000), 1)``, the
    decay R3GAN (Huang et al. 2024, sec. 4 and its configs) uses for the learning rate, gamma, Adam beta2 and the
    EMA length.
    """
    if end is None or horizon_kimg <= 0:
        return start
    t = min(max(cur_nimg, 0) / (horizon_kimg * 1000.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def ema_halflife_nimg(halflife_kimg: float, cur_nimg: int, rampup: float | None) -> float:
    """G_ema half-life in images: ``halflife_kimg * 1000``, capped at ``cur_nimg * rampup`` when ``rampup`` is set.

    StyleGAN2-ADA ``training_loop`` (``ema_rampup``, 0.05 there): early in training the half-life is a fixed share
    of the images seen so far, so G_ema does not keep averaging in the first, poor weights.
    """
    nimg = halflife_kimg * 1000.0
    if rampup is not None and rampup > 0:
        nimg = min(nimg, cur_nimg * rampup)
    return nimg


def ema_step_beta(batch_size: int, halflife_kimg: float, cur_nimg: int, rampup: float | None) -> float:
    """Per-step G_ema decay ``0.5 ** (batch_size / halflife_nimg)`` with the ramp-up of :func:`ema_halflife_nimg`;
    0 (G_ema = G) when the half-life is 0 (ramp-up at step 0: G_ema starts as a copy of G)."""
    nimg = ema_halflife_nimg(halflife_kimg, cur_nimg, rampup)
    return 0.0 if nimg <= 0 else ema_beta(batch_size, nimg / 1000.0)


@dataclass(frozen=True)
class StepHyper:
    """The hyper-parameters of one training step, read off the schedules at ``cur_nimg`` (units as in params)."""

    lr_g: float
    lr_d: float
    beta2_g: float
    beta2_d: float
    r1_gamma: float
    r2_gamma: float
    ema_halflife_kimg: float  # after the ramp-up cap
    ema_beta: float


def step_hyper(cfg, cur_nimg: int) -> StepHyper:
    """:class:`StepHyper` of a ``TrainConfig`` at ``cur_nimg``: the cosine schedules (``*_end`` values reached at
    ``schedule_kimg``; None = constant) and the G_ema decay with ramp-up."""
    h = cfg.schedule_kimg
    halflife = cosine(cfg.ema_halflife_kimg, cfg.ema_halflife_kimg_end, cur_nimg, h)
    return StepHyper(
        lr_g=cosine(cfg.lr_g, cfg.lr_g_end, cur_nimg, h),
        lr_d=cosine(cfg.lr_d, cfg.lr_d_end, cur_nimg, h),
        beta2_g=cosine(cfg.betas_g[1], cfg.beta2_end, cur_nimg, h),
        beta2_d=cosine(cfg.betas_d[1], cfg.beta2_end, cur_nimg, h),
        r1_gamma=cosine(cfg.r1_gamma, cfg.r1_gamma_end, cur_nimg, h),
        r2_gamma=cosine(cfg.r2_gamma, cfg.r2_gamma_end, cur_nimg, h),
        ema_halflife_kimg=ema_halflife_nimg(halflife, cur_nimg, cfg.ema_rampup) / 1000.0,
        ema_beta=ema_step_beta(cfg.batch_size, halflife, cur_nimg, cfg.ema_rampup),
    )


__all__ = ["StepHyper", "cosine", "ema_halflife_nimg", "ema_step_beta", "step_hyper"]
