"""Fréchet Inception Distance and the streaming feature statistics behind it.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS
2017) = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

tr sqrt(S1 S2) is computed without a general matrix square root: for any F with F F^T = S1, F^T S2 F is
symmetric PSD and similar to S1 S2, so tr sqrt(S1 S2) = sum_i sqrt(lambda_i(F^T S2 F)). F is the Cholesky factor
when S1 is positive definite, else the symmetric square root from ``eigh``; the eigenvalues come from ``eigvalsh``.
This replaces scipy's Schur-based ``sqrtm``: exact to float64 rounding, never complex, and eigenvalues at the
rounding floor of rank-deficient covariances (n < d) are set to 0 instead of giving NaN or sqrt(noise).
"""

from __future__ import annotations

import numpy as np


def _check_stats(mu: np.ndarray, sigma: np.ndarray, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{which}: expected mu (d,) and sigma (d, d), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{which}: mean or covariance contains NaN/inf; the features are broken, no FID computed")
    return mu, sigma


def _clamp_eigvals(w: np.ndarray) -> np.ndarray:
    # Eigenvalues below the rounding floor of eigh (d * eps * largest) are zeros of a rank-deficient matrix
    # (n < d samples); left in, sqrt would turn their ~1e-16 noise into ~1e-8 errors per eigenvalue.
    tol = w.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(w).max(initial=0.0)), np.finfo(np.float64).tiny)
    return np.where(w > tol, w, 0.0)


def _sym_sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(_clamp_eigvals(w))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric PSD (d, d) float64 matrices (Cholesky or eigh, then eigvalsh).

    Equal to ``np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real`` where sqrtm is accurate (to ~1e-10
    relative), and finite on singular inputs where sqrtm returns NaN/complex values.
    """
    try:  # positive definite sigma1: S1 = L L^T and L^T S2 L is similar to S1 S2; Cholesky is ~10x cheaper than eigh
        factor = np.linalg.cholesky((sigma1 + sigma1.T) / 2)
    except np.linalg.LinAlgError:  # singular (n <= d samples): symmetric square root, clamped
        factor = _sym_sqrt_psd(sigma1)
    middle = factor.T @ sigma2 @ factor
    eigvals = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(_clamp_eigvals(eigvals)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: (d,) means (float64; for FID, 2048-d Inception pool3 feature means).
        sigma1, sigma2: (d, d) symmetric PSD covariances (ddof=1 in the FID convention).
    Returns:
        The distance as a Python float (squared feature units); >= 0 up to float rounding (~1e-8 * trace).
    Raises:
        ValueError: shapes disagree, or any input holds NaN/inf.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


class FeatureStats:
    """Streaming mean and covariance (ddof=1) of (N, d) features, float64, memory O(d^2) independent of N.

    Sums are taken of features minus a shift (the first batch's mean) so that large feature means do not cancel
    digits out of the covariance. Optionally keeps the first ``max_kept`` raw features (float32) for KID and
    precision/recall, which need samples rather than moments.
    """

    def __init__(self, dim: int | None = None, *, max_kept: int = 0) -> None:
        """dim: feature dimension d (None = taken from the first batch); max_kept: raw rows to keep."""
        self.dim, self.max_kept, self.n = dim, max_kept, 0
        self._shift: np.ndarray | None = None
        self._sum: np.ndarray | None = None
        self._sum_outer: np.ndarray | None = None
        self._kept: list[np.ndarray] = []
        self._num_kept = 0

    def append(self, features: np.ndarray) -> None:
        """Add a (B, d) batch. Raises ValueError on a wrong shape or NaN/inf features."""
        x = np.asarray(features, dtype=np.float64)
        if self.dim is None and x.ndim == 2:
            self.dim = x.shape[1]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (B, {self.dim}), got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or inf (broken input images or network); no metric computed")
        if self._shift is None:
            self._shift = x.mean(axis=0)
            self._sum = np.zeros(self.dim, dtype=np.float64)
            self._sum_outer = np.zeros((self.dim, self.dim), dtype=np.float64)
        centred = x - self._shift
        self._sum += centred.sum(axis=0)
        self._sum_outer += centred.T @ centred
        self.n += x.shape[0]
        if self._num_kept < self.max_kept:
            take = x[: self.max_kept - self._num_kept].astype(np.float32)
            self._kept.append(take)
            self._num_kept += take.shape[0]

    def _need(self, n_min: int) -> None:
        if self.n < n_min:
            raise ValueError(f"need at least {n_min} samples for mean/covariance statistics, got {self.n}")

    @property
    def mean(self) -> np.ndarray:
        """(d,) float64 mean."""
        self._need(1)
        return self._shift + self._sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """(d, d) float64 covariance with ddof=1 (np.cov convention). Raises ValueError when n < 2."""
        self._need(2)
        m = self._sum / self.n
        return (self._sum_outer - self.n * np.outer(m, m)) / (self.n - 1)

    @property
    def kept_features(self) -> np.ndarray:
        """(min(n, max_kept), d) float32 raw features in arrival order."""
        if not self._kept:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return np.concatenate(self._kept)


def stats_from_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) features -> (mu (d,), sigma (d, d)), float64, ddof=1. Raises ValueError when N < 2 or non-finite."""
    stats = FeatureStats()
    stats.append(features)
    return stats.mean, stats.cov


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two (N, d) feature sets (each N >= 2)."""
    return frechet_distance(*stats_from_features(features1), *stats_from_features(features2))
