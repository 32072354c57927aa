"""Building blocks shared by the architectures: resolution plan, DCGAN init, conditional BN, projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _sn


def resolution_plan(resolution: int) -> tuple[int, int]:
    """Split ``resolution`` into ``(base, num_doublings)`` with ``base * 2**num_doublings == resolution``.

    Takes the most doublings that keep ``base >= 4``: 28 -> (7, 2) (7->14->28), 32 -> (4, 3), 64 -> (4, 4),
    8 -> (4, 1).

    Raises:
        ValueError: ``resolution`` < 8 or odd (no doubling possible); pick 8, 16, 28, 32, 64, ... in prepare.
    """
    if resolution < 8 or resolution % 2:
        raise ValueError(
            f"resolution {resolution} px is not supported: need an even size >= 8 (e.g. 28, 32, 64); "
            "set prepare.resolution"
        )
    base, n = resolution, 0
    while base % 2 == 0 and base // 2 >= 4:
        base, n = base // 2, n + 1
    return base, n


def dcgan_init_(module: nn.Module) -> None:
    """DCGAN init (Radford et al. 2016, sec. 4): conv/linear weights ~ N(0, 0.02), BN scale ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
            nn.init.normal_(_raw_weight(m), 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _raw_weight(m: nn.Module) -> torch.Tensor:
    # Under spectral norm ``m.weight`` is recomputed on access; initialise the stored (pre-normalisation) tensor.
    if parametrize.is_parametrized(m, "weight"):
        return m.parametrizations.weight.original
    return m.weight


def xavier_init_(module: nn.Module) -> None:
    """Xavier-uniform weights, zero biases (as SNGAN's reference code); embeddings and BN left as set up."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(_raw_weight(m))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def maybe_sn(layer: nn.Module, enabled: bool) -> nn.Module:
    """Wrap ``layer`` with spectral normalisation (Miyato et al. 2018) when ``enabled``."""
    return _sn(layer) if enabled else layer


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose scale and shift are looked up per class (de Vries et al. 2017; used by Miyato & Koyama 2018).

    ``forward(x, c)``: x float (N, C, H, W), c int64 (N,) in 0..num_classes-1.
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(num_classes, num_features)
        self.beta = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        return h * self.gamma(c)[:, :, None, None] + self.beta(c)[:, :, None, None]


def latent_input(z: torch.Tensor, c: torch.Tensor | None, z_dim: int, num_classes: int,
                 embed: nn.Module | None) -> torch.Tensor:
    """Validate a generator's inputs and return its latent input: z float (N, z_dim), or ``[z, embed(c)]``
    (N, 2 * z_dim) for a conditional G (class embedding concatenated to z).

    Raises:
        ValueError: z not (N, z_dim), or bad labels (see :func:`check_labels`).
    """
    if z.dim() != 2 or z.shape[1] != z_dim:
        raise ValueError(f"z must have shape (N, {z_dim}) (N latent vectors of z_dim {z_dim}), got "
                         f"{tuple(z.shape)}; draw it as torch.randn(N, G.z_dim)")
    check_labels(c, num_classes, z.shape[0])
    return torch.cat([z, embed(c)], dim=1) if embed is not None else z


def check_labels(c: torch.Tensor | None, num_classes: int, n: int) -> None:
    """Validate class labels against a network's ``num_classes`` (0 = unconditional).

    Raises:
        ValueError: labels missing for a conditional network, given to an unconditional one, wrong shape, or out
            of range.
    """
    if num_classes == 0:
        if c is not None:
            raise ValueError("class labels given to an unconditional network (num_classes=0); pass c=None")
        return
    if c is None:
        raise ValueError(f"conditional network (num_classes={num_classes}) needs int64 labels of shape ({n},)")
    if c.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(c.shape)}")
    if c.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # the range check reads the host; a captured training step's labels come from the checked data
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {int(c.min())}..{int(c.max())}")


class ProjectionHead(nn.Module):
    """Projection discriminator output (Miyato & Koyama 2018): ``logit = psi(phi) + <embed(c), phi>``.

    ``forward(phi, c)``: phi float (N, F) features or a (N, C, H, W) map with C*H*W = F (flattened in NCHW order, the
    order of the weights), c int64 (N,) or None; returns (N,) logits. A channels_last map is read in its memory
    order (NHWC) against weights permuted to match: no copy of the activations, and the gradient comes back in
    channels_last (a plain flatten would copy and send an NCHW gradient into the channels_last layers, whose
    mixed-format backward is ~10x slower).

    Raises:
        ValueError: phi does not hold F features per sample.
    """

    def __init__(self, num_features: int, num_classes: int, sn: bool):
        super().__init__()
        self.linear = maybe_sn(nn.Linear(num_features, 1), sn)
        self.embed = maybe_sn(nn.Embedding(num_classes, num_features), sn) if num_classes > 0 else None

    def forward(self, phi: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        chw = None  # set when phi is read in NHWC order
        if phi.dim() == 4:
            n, C, H, W = phi.shape
            if phi.is_contiguous(memory_format=torch.channels_last) and not phi.is_contiguous():
                chw, phi = (C, H, W), phi.permute(0, 2, 3, 1).reshape(n, H * W * C)  # a view
            else:
                phi = phi.reshape(n, C * H * W)
        if phi.dim() != 2 or phi.shape[1] != self.linear.in_features:
            raise ValueError(f"the projection head takes {self.linear.in_features} features per sample, got phi of "
                             f"shape {tuple(phi.shape) if chw is None else (n, *chw)}")
        out = F.linear(phi, _rows_in_order(self.linear.weight, chw), self.linear.bias).squeeze(1)
        if self.embed is not None:
            out = out + (F.embedding(c, _rows_in_order(self.embed.weight, chw)) * phi).sum(dim=1)
        return out


def _rows_in_order(w: torch.Tensor, chw: tuple[int, int, int] | None) -> torch.Tensor:
    """(rows, C*H*W) weights in NCHW feature order -> NHWC order when ``chw`` is given (a small copy)."""
    if chw is None:
        return w
    C, H, W = chw
    return w.view(-1, C, H, W).permute(0, 2, 3, 1).reshape(w.shape[0], H * W * C)
