"""Generator / discriminator architectures, looked up by name.

Every generator maps ``z`` float32 (N, z_dim) (+ int64 class labels (N,) when ``num_classes > 0``) to float32
images (N, C, H, W) in [-1, 1]; every discriminator maps images (N, C, H, W) (+ labels) to one float32 logit per
image, shape (N,). Both expose ``resolution``, ``channels`` and ``num_classes``; generators also ``z_dim``.

Registered names:
    ``dcgan``:  Radford et al. 2016, "Unsupervised Representation Learning with Deep Convolutional GANs".
    ``resnet``: SNGAN ResNet pair, Miyato et al. 2018, "Spectral Normalization for GANs" (appendix B).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ganops.config import ConfigError
from ganops.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganops.models.resnet import ResNetDiscriminator, ResNetGenerator

ARCHS: dict[str, tuple[Callable[..., nn.Module], Callable[..., nn.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "resnet": (ResNetGenerator, ResNetDiscriminator),
}


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


__all__ = ["ARCHS", "build_D", "build_G", "check_arch"]
