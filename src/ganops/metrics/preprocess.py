"""Image handling before the Inception network: quantization, channel repeat, resize protocols, scaling.

Protocols (how a uint8 (N, C, H, W) image becomes the network's 299x299 input):

- ``legacy_tensorflow``: TF1 ``tf.image.resize_bilinear(align_corners=False)`` without half-pixel centres:
  source coordinate = destination index * in_size / out_size, bilinear between floor and floor + 1 (clamped to
  the last pixel). This is what the original TF FID code, NVIDIA's StyleGAN metrics and torch-fidelity do.
- ``clean``: PIL bicubic on float32 values of each channel (mode ``F``), clipped to 0..255, as clean-fid does by
  default (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN Evaluation", CVPR 2022).

Both then scale to (x - 128) / 128, the input range of the TF graph.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

PROTOCOLS = ("legacy_tensorflow", "clean")
INCEPTION_SIZE = 299


def check_protocol(protocol: str) -> str:
    """Raises ValueError naming the valid protocols when ``protocol`` is unknown."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown resize protocol {protocol!r}; valid protocols: {', '.join(PROTOCOLS)}")
    return protocol


def quantize_to_uint8(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Generated images in [-1, 1] -> uint8 0..255 the NVIDIA way: ``(x * 127.5 + 128).clamp(0, 255)`` truncated.

    Args:
        x: float tensor or array of any shape (usually (N, C, H, W) float32 in [-1, 1]); values outside are clipped.
    Returns:
        torch.uint8 tensor of the same shape (on x's device).
    Raises:
        ValueError: x is not floating point, or holds NaN/inf (a diverged generator must not yield a score).
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        raise ValueError(f"quantize_to_uint8 expects float images in [-1, 1], got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("generated images contain NaN or inf; the generator has diverged - no metric computed")
    return (x * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def check_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate uint8 (N, C, H, W) images with C in {1, 3}; returns a torch.uint8 tensor.

    Raises:
        ValueError: wrong dtype, rank or channel count (the message says what was given and what is expected).
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:  # e.g. a read-only memory-mapped split
        images = np.array(images)
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 0..255 (N, C, H, W), got dtype {images.dtype}; quantize generated "
                         "[-1, 1] images with ganops.metrics.quantize_to_uint8 first")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    return images


def _tf_bilinear_axis(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """Resize one axis of a float tensor with TF1 bilinear (align_corners=False, no half-pixel centres)."""
    in_size = x.shape[dim]
    # float32 arithmetic, as TF1's kernel computes `in = out_index * (float)in_size / out_size`
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = torch.arange(out_size, dtype=torch.float32) * scale
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo.float()
    shape = [1] * x.ndim
    shape[dim] = out_size
    a, b = x.index_select(dim, lo.to(x.device)), x.index_select(dim, hi.to(x.device))
    return a + (b - a) * frac.to(x.device).reshape(shape)


def resize_legacy_tensorflow(x: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """float32 (N, C, H, W) -> (N, C, size, size) with TF1 bilinear (columns first, then rows, as TF does)."""
    return _tf_bilinear_axis(_tf_bilinear_axis(x.float(), size, 3), size, 2)


def resize_clean(images: torch.Tensor, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (N, C, size, size): PIL bicubic per channel on float32 ('F'), clip 0..255."""
    arr = images.cpu().numpy().astype(np.float32)
    out = np.empty((arr.shape[0], arr.shape[1], size, size), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            resized = Image.fromarray(arr[i, c]).resize((size, size), resample=Image.Resampling.BICUBIC)
            out[i, c] = np.asarray(resized, dtype=np.float32)
    return torch.from_numpy(np.clip(out, 0, 255)).to(images.device)


def to_inception_input(images: torch.Tensor, protocol: str = "legacy_tensorflow") -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, 299, 299) in [-1, 1) = (resized - 128) / 128.

    Grayscale is resized once and repeated to 3 channels (identical to resizing three equal channels).

    Raises:
        ValueError: bad images (see :func:`check_images`) or unknown protocol.
    """
    images = check_images(images)
    check_protocol(protocol)
    if images.shape[2:] == (INCEPTION_SIZE, INCEPTION_SIZE):
        x = images.float()  # both resamplers are the identity at 299 -> 299
    elif protocol == "legacy_tensorflow":
        x = resize_legacy_tensorflow(images.float())
    else:
        x = resize_clean(images)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x - 128) / 128
