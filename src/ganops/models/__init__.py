"""Generator / discriminator architectures, looked up by name.

Every generator maps ``z`` float32 (N, z_dim) (+ int64 class labels (N,) when ``num_classes > 0``) to float32
images (N, C, H, W) in [-1, 1]; every discriminator maps images (N, C, H, W) (+ labels) to one float32 logit per
image, shape (N,). Both expose ``resolution``, ``channels`` and ``num_classes``; generators also ``z_dim``.

Registered names:
    ``dcgan``:  Radford et al. 2016, "Unsupervised Representation Learning with Deep Convolutional GANs".
    ``resnet``: SNGAN ResNet pair, Miyato et al. 2018, "Spectral Normalization for GANs" (appendix B).
    ``r3gan``:  normalization-free ResNet pair with grouped inverted bottlenecks, Huang et al. 2024, "The GAN is
                dead; long live the GAN! A Modern GAN Baseline" (extra kwargs: blocks_per_stage, expansion,
                group_size; see :data:`ARCH_KWARGS`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ganops.config import ConfigError
from ganops.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganops.models.r3gan import R3GANDiscriminator, R3GANGenerator
from ganops.models.resnet import ResNetDiscriminator, ResNetGenerator

ARCHS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "resnet": (ResNetGenerator, ResNetDiscriminator),
    "r3gan": (R3GANGenerator, R3GANDiscriminator),
}
# train.* keys an architecture takes beyond the common ones (passed to both G and D, recorded in snapshots).
ARCH_KWARGS: dict[str, tuple[str, ...]] = {"r3gan": ("blocks_per_stage", "expansion", "group_size")}


def arch_kwargs(arch: str, cfg) -> dict:
    """The architecture-specific kwargs of ``arch`` read off a ``TrainConfig`` (empty for dcgan / resnet)."""
    return {k: getattr(cfg, k) for k in ARCH_KWARGS.get(arch, ())}


def check_arch(arch: str) -> None:
    """Raise ``ConfigError`` (a ValueError) naming the valid architectures when ``arch`` is not registered."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(ARCHS))} (set train.arch)")


def build_G(arch: str, **G_kwargs) -> nn.Module:
    """Build the generator registered as ``arch`` (kwargs: z_dim, ngf, resolution, channels, num_classes).

    Raises:
        ValueError: unknown ``arch`` (message lists valid names) or a resolution the architecture cannot make.
    """
    check_arch(arch)
    return ARCHS[arch][0](**G_kwargs)


def build_D(arch: str, **D_kwargs) -> nn.Module:
    """Build the discriminator registered as ``arch`` (kwargs: ndf, resolution, channels, num_classes,
    spectral_norm).

    Raises:
        ValueError: unknown ``arch`` (message lists valid names) or a resolution the architecture cannot take.
    """
    check_arch(arch)
    return ARCHS[arch][1](**D_kwargs)


__all__ = ["ARCHS", "ARCH_KWARGS", "arch_kwargs", "build_D", "build_G", "check_arch"]
