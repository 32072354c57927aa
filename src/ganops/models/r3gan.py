"""A modern, normalization-free ResNet G/D pair in the style of R3GAN.

Source: Huang, Gokaslan, Kuleshov & Tompkin 2024, "The GAN is dead; long live the GAN! A Modern GAN Baseline"
(NeurIPS 2024; reference code github.com/brownvc/R3GAN), sec. 3 ("Config E"):

- no normalization layers (no BN, no spectral norm); R1 + R2 penalties keep D well behaved instead;
- residual blocks ``x + conv1x1(act(grouped_conv3x3(act(conv1x1(x)))))``: an inverted bottleneck (the 1x1 layers
  widen by ``expansion``) with a grouped 3x3 convolution (``group_size`` channels per group), leaky ReLU(0.2);
- fix-up style initialisation: the last layer of every residual branch starts at zero and the others are scaled by
  ``L ** (-1 / (2 * m - 2))`` for L blocks of m = 3 layers (Zhang et al. 2019, "Fixup Initialization"), so every
  block starts as the identity and training starts stable without normalization;
- bilinear resampling between stages (up: x2 bilinear interpolation; down: bilinear x0.5 with half-pixel centres,
  which for a factor of 2 is the 2x2 average ``avg_pool2d(2)``), with a 1x1 convolution changing the width.

Resolutions: 28 px (stages 7 -> 14 -> 28) and every power of two from 8 to 1024 (stages from 4 px up), with any
channel count. Widths: ``width * 2**k`` at the stage k doublings below full resolution, capped at ``max_width``; depth:
``blocks_per_stage`` residual blocks per stage. Conditional variants concatenate a class embedding to z (G) and use
a projection head (D, Miyato & Koyama 2018).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models.layers import ProjectionHead, check_labels, latent_input, resolution_plan

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0 / (1.0 + LRELU_SLOPE**2))  # He gain for leaky ReLU(0.2)


def stage_widths(resolution: int, width: int, max_width: int = 512) -> list[int]:
    """Channel widths of the stages from the base resolution (index 0) up to full resolution (last index).

    ``resolution_plan``: 28 -> 3 stages (7, 14, 28 px); 32 -> 4 stages (4, 8, 16, 32 px). Stage k doublings below
    full resolution has ``min(width * 2**k, max_width)`` channels.

    Raises:
        ValueError: unsupported resolution (from ``resolution_plan``) or a width < 1.
    """
    if width < 1 or max_width < 1:
        raise ValueError(f"widths must be >= 1, got width={width}, max_width={max_width}")
    _, n = resolution_plan(resolution)
    return [min(width * 2 ** (n - i), max_width) for i in range(n + 1)]


def _groups(channels: int, group_size: int) -> int:
    # As many groups of group_size channels as divide the layer; 1 group (a dense conv) for narrow layers.
    return max(1, channels // group_size) if channels % group_size == 0 else 1


class ResidualBlock(nn.Module):
    """``x + conv1x1(lrelu(grouped_conv3x3(lrelu(conv1x1(lrelu(x))))))`` (R3GAN's block, shape-preserving).

    ``forward(x)``: float (N, C, H, W) -> float (N, C, H, W).
    """

    def __init__(self, channels: int, expansion: int, group_size: int, num_blocks_total: int):
        super().__init__()
        hidden = channels * expansion
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, groups=_groups(hidden, group_size))
        self.conv3 = nn.Conv2d(hidden, channels, 1)
        scale = num_blocks_total ** (-1.0 / (2 * 3 - 2))  # Fixup: L ** (-1 / (2m - 2)), m = 3 layers per branch
        for conv in (self.conv1, self.conv2):
            fan_in = conv.weight[0].numel()
            nn.init.normal_(conv.weight, 0.0, LRELU_GAIN / math.sqrt(fan_in) * scale)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv3.weight)  # the branch starts at zero: the block is the identity at init
        nn.init.zeros_(self.conv3.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, LRELU_SLOPE))
        h = self.conv2(F.leaky_relu(h, LRELU_SLOPE))
        return x + self.conv3(F.leaky_relu(h, LRELU_SLOPE))


def _conv1x1(c_in: int, c_out: int, gain: float = 1.0) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 1)
    nn.init.normal_(conv.weight, 0.0, gain / math.sqrt(c_in))
    nn.init.zeros_(conv.bias)
    return conv


class R3GANGenerator(nn.Module):
    """R3GAN-style generator. ``forward(z, c=None)``: z float32 (N, z_dim), c int64 (N,) when conditional ->
    float32 (N, channels, resolution, resolution), clamped to [-1, 1] (the output layer is linear, as in R3GAN; the
    clamp keeps the images in the pixel range the rest of ganops expects).

    Args:
        ngf: width of the full-resolution stage (wider by 2x per halving, up to ``max_width``).
        blocks_per_stage: residual blocks per stage (depth). expansion: inverted-bottleneck widening.
        group_size: channels per group of the 3x3 convolutions.
    Raises:
        ValueError: unsupported resolution; at forward time, z not (N, z_dim) or bad labels.
    """

    def __init__(self, z_dim: int = 64, ngf: int = 32, resolution: int = 28, channels: int = 1, num_classes: int = 0,
                 blocks_per_stage: int = 1, expansion: int = 2, group_size: int = 16, max_width: int = 512):
        super().__init__()
        self.z_dim, self.resolution, self.channels, self.num_classes = z_dim, resolution, channels, num_classes
        base, _ = resolution_plan(resolution)
        widths = stage_widths(resolution, ngf, max_width)
        total_blocks = blocks_per_stage * len(widths)
        self.embed = nn.Embedding(num_classes, z_dim) if num_classes else None
        in_dim = z_dim * (2 if num_classes else 1)
        self.base, self.width0 = base, widths[0]
        self.basis = nn.Linear(in_dim, widths[0] * base * base)  # z -> (width0, base, base)
        nn.init.normal_(self.basis.weight, 0.0, 1.0 / math.sqrt(in_dim))
        nn.init.zeros_(self.basis.bias)
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()  # before stage i > 0: 1x1 conv (width change) then x2 bilinear up
        for i, w in enumerate(widths):
            if i > 0:
                self.transitions.append(_conv1x1(widths[i - 1], w, LRELU_GAIN))
            self.stages.append(nn.Sequential(*(ResidualBlock(w, expansion, group_size, total_blocks)
                                               for _ in range(blocks_per_stage))))
        self.to_image = _conv1x1(widths[-1], channels, LRELU_GAIN)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        z = latent_input(z, c, self.z_dim, self.num_classes, self.embed)
        x = self.basis(z).view(-1, self.width0, self.base, self.base)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.interpolate(self.transitions[i - 1](F.leaky_relu(x, LRELU_SLOPE)), scale_factor=2,
                                  mode="bilinear", align_corners=False)
            x = stage(x)
        return self.to_image(F.leaky_relu(x, LRELU_SLOPE)).clamp(-1.0, 1.0)


class R3GANDiscriminator(nn.Module):
    """R3GAN-style discriminator. ``forward(x, c=None)``: x float (N, channels, resolution, resolution) in [-1, 1],
    c int64 (N,) when conditional -> float32 logits (N,).

    From image to logit: 1x1 conv to the full-resolution width, then per stage ``blocks_per_stage`` residual blocks
    and a transition (2x2 average = bilinear x0.5, 1x1 conv wider); at the base resolution a per-channel (grouped)
    ``base x base`` convolution pools the map to a vector, and a linear or projection head gives the logit.
    ``spectral_norm`` is accepted for the common D interface and must be False (R3GAN uses none).

    Raises:
        ValueError: unsupported resolution, ``spectral_norm=True``; at forward time, another image shape or bad labels.
    """

    def __init__(self, ndf: int = 32, resolution: int = 28, channels: int = 1, num_classes: int = 0,
                 spectral_norm: bool = False, blocks_per_stage: int = 1, expansion: int = 2, group_size: int = 16,
                 max_width: int = 512):
        super().__init__()
        if spectral_norm:
            raise ValueError("the r3gan discriminator uses no spectral norm (R1/R2 regularise it); set "
                             "train.spectral_norm=false")
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        base, _ = resolution_plan(resolution)
        widths = stage_widths(resolution, ndf, max_width)[::-1]  # full resolution first
        total_blocks = blocks_per_stage * len(widths)
        self.from_image = _conv1x1(channels, widths[0])
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()  # after stage i < last: 2x2 average then 1x1 conv
        for i, w in enumerate(widths):
            self.stages.append(nn.Sequential(*(ResidualBlock(w, expansion, group_size, total_blocks)
                                               for _ in range(blocks_per_stage))))
            if i < len(widths) - 1:
                self.transitions.append(_conv1x1(w, widths[i + 1], LRELU_GAIN))
        w = widths[-1]
        self.pool = nn.Conv2d(w, w, base, groups=w)  # R3GAN's basis: a learned per-channel spatial pooling
        nn.init.normal_(self.pool.weight, 0.0, LRELU_GAIN / base)
        nn.init.zeros_(self.pool.bias)
        self.head = ProjectionHead(w, num_classes, False)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"images must have shape (N, {self.channels}, {self.resolution}, {self.resolution}) for "
                             f"this discriminator, got {tuple(x.shape)}; resize them as prepare.resolution does")
        check_labels(c, self.num_classes, x.shape[0])
        h = self.from_image(x)
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i < len(self.transitions):
                h = self.transitions[i](F.avg_pool2d(F.leaky_relu(h, LRELU_SLOPE), 2))
        h = self.pool(F.leaky_relu(h, LRELU_SLOPE))  # (N, w, 1, 1)
        return self.head(F.leaky_relu(h, LRELU_SLOPE).flatten(1), c)


__all__ = ["R3GANDiscriminator", "R3GANGenerator", "ResidualBlock", "stage_widths"]
