"""Reference statistics cache: feature moments (and kept features) of a real image set, keyed by what made them.

A cache file is reused only when every key field matches (protocol, weights sha256, dataset hash, split, number of
images, precision, device type); any mismatch recomputes, so stale statistics are never silently reused. The key's
digest is part of the file name, so statistics under another key (e.g. files written before the device field existed)
get a file of their own and the old file is left in place; a file whose stored key disagrees with its name, or that
cannot be read (truncated, not an .npz, fields missing), is recomputed and overwritten. The device is part of the key
because CPU and GPU Inception features differ in the last bits (~1e-6), so a FID is always computed from two sides
measured on the same device.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ganops.io import atomic_write
from ganops.metrics.fid import FeatureStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefStatsKey:
    protocol: str
    weights_sha256: str
    dataset_sha256: str
    split: str
    num_images: int
    precision: str
    device: str  # torch device type of the Inception forward: "cpu" | "cuda"

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RefStats:
    """mu (d,), sigma (d, d) float64; n images; features: kept raw features (float32, maybe empty)."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    features: np.ndarray
    key: RefStatsKey

    @classmethod
    def from_stats(cls, stats: FeatureStats, key: RefStatsKey) -> "RefStats":
        return cls(stats.mean, stats.cov, stats.n, stats.kept_features, key)


def cache_path(cache_dir: str | Path, key: RefStatsKey) -> Path:
    return Path(cache_dir) / f"{key.split}-{key.num_images}-{key.protocol}-{key.digest()}.npz"


def save(path: str | Path, ref: RefStats) -> None:
    with atomic_write(path, "wb") as f:
        np.savez(f, mu=ref.mu, sigma=ref.sigma, n=ref.n, features=ref.features,
                 key=json.dumps(asdict(ref.key), sort_keys=True), protocol=ref.key.protocol,
                 weights_sha256=ref.key.weights_sha256, dataset_sha256=ref.key.dataset_sha256)


def stored_key(z: np.lib.npyio.NpzFile) -> dict | None:
    """The key fields an open cache file was written under (``asdict(RefStatsKey)``), or None when it has none
    (statistics made elsewhere). Raises ValueError (JSONDecodeError) for a torn key."""
    return json.loads(str(z["key"])) if "key" in z else None


def load(path: str | Path, key: RefStatsKey) -> RefStats | None:
    """The cached statistics when ``path`` exists and its stored key equals ``key``; otherwise None.

    A file that cannot be read as a cache file (truncated, empty, not an .npz, a torn key, a field missing) is
    logged as a warning and also gives None: it is only a cache, so the caller recomputes and overwrites it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            if stored_key(z) != asdict(key):
                return None
            return RefStats(z["mu"], z["sigma"], int(z["n"]), z["features"], key)
    except (EOFError, ValueError, KeyError, zipfile.BadZipFile) as err:  # ValueError covers JSONDecodeError
        log.warning("unreadable reference-statistics cache file %s (%s: %s); recomputing it", path,
                    type(err).__name__, str(err)[:200])
        return None


def get_or_compute(cache_dir: str | Path, key: RefStatsKey, compute: Callable[[], FeatureStats]) -> tuple[RefStats, bool]:
    """Cached statistics for ``key``, or ``compute()`` them and write the cache. Returns (stats, was_cached)."""
    path = cache_path(cache_dir, key)
    cached = load(path, key)
    if cached is not None:
        return cached, True
    ref = RefStats.from_stats(compute(), key)
    save(path, ref)
    return ref, False
