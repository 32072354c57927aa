"""``evaluate`` stage: FID and KID of G_ema samples against the prepared test split.

Samples G_ema with ``iter_samples`` (seeded), quantizes them to uint8 the NVIDIA way, and compares Inception pool3
features with those of the first ``min(num_samples, N_test)`` test images. Reference statistics are cached under
``cfg.ref_stats_dir`` keyed by protocol, weights sha256, dataset hash, split, count, precision and the device type
the Inception network runs on (``ganops.metrics.ref_stats``).

FID statistics stream (memory O(2048^2), flat in num_samples); KID uses the first
``ganops.metrics.defaults.MAX_KEPT_FEATURES`` (10k) feature rows of each side, which bounds memory at 50k samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ganops.config import EvaluateConfig
from ganops.io import sha256_file, write_json
from ganops.metrics import defaults, ref_stats
from ganops.metrics.fid import FeatureStats, frechet_distance
from ganops.metrics.inception import FEATURE_DIM, FeatureExtractor, exact_fp32, image_stats, load_feature_extractor
from ganops.metrics.kid import kernel_inception_distance
from ganops.metrics.preprocess import quantize_to_uint8
from ganops.progress import progress_bar
from ganops.tracking import Logger, NullLogger

log = logging.getLogger(__name__)
SNAPSHOT_NAME = "network-snapshot.pt"


def _extractor(cfg: EvaluateConfig) -> FeatureExtractor:
    """The Inception extractor on ``cfg.device`` (``auto``: CUDA when available). Raises ConfigError for ``cuda``
    without a GPU."""
    from ganops.training.device import resolve_device

    device = resolve_device(cfg.device, "evaluate.device")
    return load_feature_extractor(cfg.inception_path, precision=cfg.precision, device=str(device))


def real_reference(extractor: FeatureExtractor, cfg: EvaluateConfig, prepared_dir: str | Path,
                   split: str = "test", num_images: int | None = None) -> ref_stats.RefStats:
    """Statistics (and kept features) of the first ``num_images`` images of a prepared split, cached.

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
    """Streaming statistics of ``cfg.num_samples`` G samples (features kept for KID)."""
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
    kid_mean, kid_std = kernel_inception_distance(fake.kept_features, real.features, num_subsets=cfg.kid_subsets,
                                                  subset_size=cfg.kid_subset_size, seed=seed)
    return {"fid": frechet_distance(fake.mean, fake.cov, real.mu, real.sigma), "kid_mean": kid_mean,
            "kid_std": kid_std, "num_generated": fake.n, "num_real": real.n}


def make_metric_fn(cfg: EvaluateConfig, *, prepared_dir: str | Path, seed: int) -> Callable[[torch.nn.Module], dict]:
    """A ``G_ema -> {"fid", "kid_mean", "kid_std", ...}`` callable for ``training_loop(metric_fn=...)``.

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
            state["extractor"] = _extractor(cfg)
            state["real"] = real_reference(state["extractor"], cfg, prepared_dir)
        return fid_kid(generated_stats(G, state["extractor"], cfg, seed), state["real"], cfg, seed)

    return metric_fn


class SnapshotDataMismatchError(ValueError):
    """The snapshot's generator makes images of another resolution or channel count than the prepared data."""


def _check_snapshot_matches_data(snapshot: Path, meta: dict, prepared_dir: str | Path) -> None:
    """Refuse to compare a generator with real images of another size or channel count (the FID would be
    computed, and be meaningless)."""
    from ganops.data.dataset import load_summary

    summary = load_summary(prepared_dir)
    diffs = [f"{k} {meta.get(k)} vs {summary.get(k)}" for k in ("resolution", "channels")
             if summary.get(k) is not None and meta.get(k) is not None and int(meta[k]) != int(summary[k])]
    if diffs:
        raise SnapshotDataMismatchError(
            f"{snapshot} generates other images than {prepared_dir} holds ({', '.join(diffs)}): "
            "evaluate the snapshot against the data it was trained on, or retrain on this data")


def evaluate(cfg: EvaluateConfig, *, run_dir: str | Path, prepared_dir: str | Path, seed: int,
             logger: Logger = NullLogger()) -> dict:
    """Evaluate ``run_dir/network-snapshot.pt`` and write ``cfg.out``.

    Returns:
        The eval.json dict: fid, kid_mean, kid_std, num_generated, num_real, protocol, precision, device (cpu or
        cuda: where G sampled and Inception ran), weights_sha256,
        snapshot_sha256, kimg, seed, wall_time_s.
    Raises:
        FileNotFoundError: no snapshot in run_dir (run train first) or no Inception weights.
        ConfigError: evaluate.device is ``cuda`` but no CUDA device is available.
        ValueError: the generator produced NaN/inf images, or too few samples, or its resolution/channels differ
            from the prepared data's.
    """
    from ganops.training.snapshot import load_generator

    t0 = time.time()
    snapshot = Path(run_dir) / SNAPSHOT_NAME
    if not snapshot.is_file():
        raise FileNotFoundError(f"no {SNAPSHOT_NAME} in {run_dir}; run `ganops train` first")
    G, meta = load_generator(snapshot)
    _check_snapshot_matches_data(snapshot, meta, prepared_dir)
    extractor = _extractor(cfg)
    G = G.to(extractor.device)
    real = real_reference(extractor, cfg, prepared_dir)
    result = fid_kid(generated_stats(G, extractor, cfg, seed), real, cfg, seed)
    result.update(protocol=cfg.protocol, precision=cfg.precision, device=extractor.device.type,
                  weights_sha256=extractor.weights_sha256,
                  snapshot_sha256=sha256_file(snapshot), kimg=float(meta.get("kimg", 0.0)), seed=seed,
                  wall_time_s=round(time.time() - t0, 3))
    if not np.isfinite(result["fid"]):
        raise ValueError(f"FID is not finite ({result['fid']}); refusing to write {cfg.out}")
    write_json(cfg.out, result)
    logger.log_metrics({k: result[k] for k in ("fid", "kid_mean", "kid_std")})
    logger.log_artifact(cfg.out, "metrics")
    return result
