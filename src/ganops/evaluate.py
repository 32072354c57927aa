"""``evaluate`` stage: FID and KID of the run directory's G_ema snapshot against the prepared test split.

Loads ``network-snapshot.pt``, checks that it generates images of the prepared data's size, and measures it through
the one metrics path (``ganops.metrics.api.evaluate_generator``: seeded samples quantized to uint8 the NVIDIA way,
Inception pool3 features, cached reference statistics of the first ``min(num_samples, N_test)`` test images).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ganops.config import REPORTED_METRICS, EvaluateConfig
from ganops.io import sha256_file, write_json
from ganops.metrics.api import evaluate_generator, stage_extractor
from ganops.rundir import RunDir
from ganops.tracking import Logger, NullLogger

log = logging.getLogger(__name__)


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
    snapshot = RunDir(run_dir).snapshot
    if not snapshot.is_file():
        raise FileNotFoundError(f"no {snapshot.name} in {run_dir}; run `ganops train` first")
    G, meta = load_generator(snapshot)
    _check_snapshot_matches_data(snapshot, meta, prepared_dir)
    extractor = stage_extractor(cfg)
    result = evaluate_generator(G.to(extractor.device), extractor, cfg, prepared_dir, seed)
    result.update(protocol=cfg.protocol, precision=cfg.precision, device=extractor.device.type,
                  weights_sha256=extractor.weights_sha256,
                  snapshot_sha256=sha256_file(snapshot), kimg=float(meta.get("kimg", 0.0)), seed=seed,
                  wall_time_s=round(time.time() - t0, 3))
    if not np.isfinite(result["fid"]):
        raise ValueError(f"FID is not finite ({result['fid']}); refusing to write {cfg.out}")
    write_json(cfg.out, result)
    logger.log_metrics({k: result[k] for k in REPORTED_METRICS})
    logger.log_artifact(cfg.out, "metrics")
    return result
