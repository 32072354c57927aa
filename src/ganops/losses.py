"""Adversarial losses (a registry by name) and gradient regularisers.

Every loss maps discriminator logits float32 (N,) to a scalar to *minimise*:
``d_loss(real_logits, fake_logits)`` for D and ``g_loss(fake_logits, real_logits)`` for G (``real_logits`` is read
only by relativistic losses, ``uses_real_in_g``; the others take None).

Registered names:
    ``non_saturating``: Goodfellow et al. 2014, sec. 3 (G maximises log D(G(z))). Default.
    ``minimax``:        Goodfellow et al. 2014, eq. 1 (G minimises log(1 - D(G(z)))).
    ``hinge``:          Lim & Ye 2017; Miyato et al. 2018.
    ``wgan_gp``:        Gulrajani et al. 2017 (critic loss; add :func:`gradient_penalty` * lambda).
    ``lsgan``:          Mao et al. 2017, eq. 9 with a=0, b=1, c=1 (factor 1/2).
    ``rpgan``:          relativistic pairing GAN (Jolicoeur-Martineau 2019, "The relativistic discriminator";
                        Sun et al. 2020), as in R3GAN (Huang et al. 2024, eq. 2): fake i is paired with real i,
                        ``L_D = E[softplus(D(fake) - D(real))]``, ``L_G = E[softplus(D(real) - D(fake))]``.
                        Pair it with :func:`r1_penalty` and :func:`r2_penalty` (R3GAN's RpGAN + R1 + R2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ganops.config import ConfigError


@dataclass(frozen=True)
class GANLoss:
    """A named pair of D and G objectives; ``needs_gradient_penalty`` marks WGAN-GP, ``uses_real_in_g`` a loss
    whose G objective reads D's logits on the real batch (relativistic)."""

    name: str
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g_loss: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_gradient_penalty: bool = False
    uses_real_in_g: bool = False


def _d_logistic(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # -log sigmoid(r) - log(1 - sigmoid(f)) == softplus(-r) + softplus(f), numerically stable.
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _rp_pairs(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if real.shape != fake.shape:
        raise ValueError(f"the relativistic pairing loss pairs real and fake logits one to one; got shapes "
                         f"{tuple(real.shape)} and {tuple(fake.shape)}")
    return real, fake


def _rpgan_d(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    real, fake = _rp_pairs(real, fake)
    return F.softplus(fake - real).mean()


def _rpgan_g(fake: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
    if real is None:
        raise ValueError("the rpgan G loss needs D's logits on the real batch (real_logits)")
    real, fake = _rp_pairs(real.detach(), fake)
    return F.softplus(real - fake).mean()


LOSSES: dict[str, GANLoss] = {
    "non_saturating": GANLoss("non_saturating", _d_logistic, lambda fake, real=None: F.softplus(-fake).mean()),
    # log(1 - sigmoid(f)) == -softplus(f)
    "minimax": GANLoss("minimax", _d_logistic, lambda fake, real=None: -F.softplus(fake).mean()),
    "hinge": GANLoss(
        "hinge",
        lambda real, fake: F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean(),
        lambda fake, real=None: -fake.mean(),
    ),
    "wgan_gp": GANLoss("wgan_gp", lambda real, fake: fake.mean() - real.mean(), lambda fake, real=None: -fake.mean(),
                       True),
    "lsgan": GANLoss(
        "lsgan",
        lambda real, fake: 0.5 * ((real - 1.0) ** 2).mean() + 0.5 * (fake**2).mean(),
        lambda fake, real=None: 0.5 * ((fake - 1.0) ** 2).mean(),
    ),
    "rpgan": GANLoss("rpgan", _rpgan_d, _rpgan_g, uses_real_in_g=True),
}


def get_loss(name: str) -> GANLoss:
    """Look up a loss by name.

    Raises:
        ConfigError (a ValueError): unknown name; the message lists the valid ones.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; valid: {', '.join(sorted(LOSSES))} (set train.loss)")
    return LOSSES[name]


def r1_penalty(D: nn.Module, reals: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9 without gamma/2): mean over images of ``||grad_x D(x)||^2`` on real data.

    Args:
        D: discriminator, ``D(x, c) -> (N,)`` logits.
        reals: float (N, C, H, W) real images (after augmentation, as D sees them).
        c: int64 (N,) labels or None.
    Returns:
        scalar float32 tensor, differentiable w.r.t. D's parameters. The caller weights it by ``gamma / 2``
        (times ``r1_interval`` for lazy regularisation, Karras et al. 2020 StyleGAN2 sec. 3.1).
    """
    x = reals.detach().requires_grad_(True)
    logits = D(x, c)
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean()


def r2_penalty(D: nn.Module, fakes: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """R2 (Roth et al. 2017; R3GAN, Huang et al. 2024, eq. 4): R1's ``||grad_x D(x)||^2`` at generated images.

    Args:
        D: discriminator, ``D(x, c) -> (N,)`` logits.
        fakes: float (N, C, H, W) generated images as D sees them (detached here: only D is regularised).
        c: int64 (N,) labels or None.
    Returns:
        scalar float32 tensor, differentiable w.r.t. D's parameters; the caller weights it by ``gamma / 2``.
    """
    return r1_penalty(D, fakes, c)


def gradient_penalty(
    D: nn.Module,
    reals: torch.Tensor,
    fakes: torch.Tensor,
    c: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017, alg. 1): ``mean((||grad_xhat D(xhat)||_2 - 1)^2)`` at random
    interpolates ``xhat = eps * x + (1 - eps) * G(z)``, eps ~ U[0, 1) per image.

    Args:
        reals, fakes: float (N, C, H, W) of the same shape.
        c: int64 (N,) labels or None (the same labels are used for both sides).
        generator: optional torch.Generator for eps (global RNG otherwise).
    Returns:
        scalar float32 tensor, differentiable w.r.t. D's parameters; multiply by lambda (10 in the paper).
    Raises:
        ValueError: shapes of ``reals`` and ``fakes`` differ.
    """
    if reals.shape != fakes.shape:
        raise ValueError(f"reals and fakes must have the same shape, got {tuple(reals.shape)} vs {tuple(fakes.shape)}")
    eps = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device, generator=generator, dtype=reals.dtype)
    x = (eps * reals.detach() + (1.0 - eps) * fakes.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x, c).sum(), x, create_graph=True)
    norms = grad.float().flatten(1).norm(dim=1)
    return (norms - 1.0).square().mean()


__all__ = ["GANLoss", "LOSSES", "get_loss", "gradient_penalty", "r1_penalty", "r2_penalty"]
