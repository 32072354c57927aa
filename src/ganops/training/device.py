"""Where and at what precision training and evaluation run: device and autocast resolution."""

from __future__ import annotations

import torch

from ganops.config import ConfigError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given.

    Raises:
        ConfigError (a ValueError): ``cuda`` without a CUDA device (``key`` names the parameter in the message).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto``: bf16 on CUDA when supported, else fp16 (with a GradScaler); fp32 on CPU (bf16 was measured slower
    on the project CPU, see benchmarks/bench_train.py).

    Raises:
        ValueError: fp16 on CPU (CPU autocast supports bf16 only).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ConfigError("train.precision=fp16 needs CUDA (CPU autocast supports bf16 only); use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


__all__ = ["resolve_device", "resolve_precision"]
