"""SNGAN ResNet generator / discriminator (Miyato et al. 2018, appendix B; projection: Miyato & Koyama 2018).

G: z -> linear to (ngf * 2**(n-1), base, base) -> n up-blocks (BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1 shortcut)
-> BN-ReLU-conv3 -> tanh. Conditional G uses class-conditional BN. D: an "optimised" first down-block, n-1 further
down-blocks (ReLU-conv3-ReLU-conv3-avgpool + conv1-avgpool shortcut), ReLU, global sum pooling, projection head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganops.models.layers import (
    ConditionalBatchNorm2d,
    ProjectionHead,
    check_labels,
    maybe_sn,
    resolution_plan,
    xavier_init_,
)


class _GBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, num_classes: int):
        super().__init__()
        self.cond = num_classes > 0
        self.bn1 = ConditionalBatchNorm2d(c_in, num_classes) if self.cond else nn.BatchNorm2d(c_in)
        self.bn2 = ConditionalBatchNorm2d(c_out, num_classes) if self.cond else nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def _bn(self, bn: nn.Module, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return bn(x, c) if self.cond else bn(x)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self._bn(self.bn1, x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self._bn(self.bn2, self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class ResNetGenerator(nn.Module):
    """SNGAN ResNet generator. ``forward(z, c=None)``: z float32 (N, z_dim), c int64 (N,) when conditional
    -> float32 (N, channels, resolution, resolution) in [-1, 1].

    Raises:
        ValueError: unsupported resolution (see ``resolution_plan``), bad labels at forward time.
    """

    def __init__(self, z_dim: int = 128, ngf: int = 64, resolution: int = 32, channels: int = 3, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.resolution, self.channels, self.num_classes = z_dim, resolution, channels, num_classes
        self.base, n = resolution_plan(resolution)
        self.width = ngf * 2 ** (n - 1)
        self.fc = nn.Linear(z_dim, self.base * self.base * self.width)
        widths = [self.width // 2**i for i in range(n + 1)]
        self.blocks = nn.ModuleList(_GBlock(widths[i], widths[i + 1], num_classes) for i in range(n))
        self.bn_out = nn.BatchNorm2d(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], channels, 3, 1, 1)
        xavier_init_(self)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(c, self.num_classes, z.shape[0])
        h = self.fc(z).view(z.shape[0], self.width, self.base, self.base)
        for block in self.blocks:
            h = block(h, c)
        return torch.tanh(self.conv_out(F.relu(self.bn_out(h))))


class _DBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, sn: bool, first: bool):
        super().__init__()
        self.first = first
        self.conv1 = maybe_sn(nn.Conv2d(c_in, c_out, 3, 1, 1), sn)
        self.conv2 = maybe_sn(nn.Conv2d(c_out, c_out, 3, 1, 1), sn)
        self.shortcut = maybe_sn(nn.Conv2d(c_in, c_out, 1), sn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The first block skips the leading ReLU (its input is the image) and pools before the 1x1 shortcut.
        h = x if self.first else F.relu(x)
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        s = self.shortcut(F.avg_pool2d(x, 2)) if self.first else F.avg_pool2d(self.shortcut(x), 2)
        return h + s


class ResNetDiscriminator(nn.Module):
    """SNGAN ResNet discriminator with a projection head. ``forward(x, c=None)``: x float (N, channels, resolution,
    resolution) in [-1, 1], c int64 (N,) when conditional -> float32 logits (N,)."""

    def __init__(self, ndf: int = 64, resolution: int = 32, channels: int = 3, num_classes: int = 0,
                 spectral_norm: bool = False):
        super().__init__()
        self.resolution, self.channels, self.num_classes = resolution, channels, num_classes
        _, n = resolution_plan(resolution)
        widths = [channels] + [ndf * 2**i for i in range(n)]
        self.blocks = nn.Sequential(*(_DBlock(widths[i], widths[i + 1], spectral_norm, i == 0) for i in range(n)))
        self.head = ProjectionHead(widths[-1], num_classes, spectral_norm)
        xavier_init_(self)

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(c, self.num_classes, x.shape[0])
        phi = F.relu(self.blocks(x)).sum(dim=(2, 3))
        return self.head(phi, c)
