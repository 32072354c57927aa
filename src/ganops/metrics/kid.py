"""Kernel Inception Distance (Bińkowski et al., "Demystifying MMD GANs", ICLR 2018).

Unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x·y / d + 1)^3, averaged over random subsets, as in
the reference TF code and NVIDIA's StyleGAN metrics. Values near 0 may be slightly negative: the estimator is
unbiased, so a negative KID is legitimate and is reported as is.
"""

from __future__ import annotations

import warnings

import numpy as np


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between (m, d) and (m, d) float64 samples under the cubic polynomial kernel (m >= 2)."""
    m = x.shape[0]
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation (ddof=0, as torch-fidelity) over ``num_subsets`` subsets.

    Each subset draws ``subset_size`` rows without replacement from each side (numpy RandomState(seed)).

    Args:
        features_a, features_b: (N_a, d), (N_b, d) features (float32/64), N >= 2 each.
    Returns:
        (kid_mean, kid_std), in squared feature units.
    Raises:
        ValueError: fewer than 2 samples on a side, mismatched d, or NaN/inf features.
    Warns:
        UserWarning: min(N_a, N_b) < subset_size; the subset size is clamped to min(N_a, N_b) (then every subset
        holds all of the smaller set, and the estimate has more variance than the standard protocol).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs (N, d) features with the same d on both sides, got {a.shape} and {b.shape}")
    n = min(a.shape[0], b.shape[0])
    if n < 2:
        raise ValueError(f"KID needs at least 2 samples on each side, got {a.shape[0]} and {b.shape[0]}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or inf; no KID computed")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets} and {subset_size}")
    m = subset_size
    if n < m:
        warnings.warn(f"KID subset size {m} exceeds the number of samples ({n}); clamping the subset size to {n}",
                      stacklevel=2)
        m = n
    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]
        y = b[rng.choice(b.shape[0], m, replace=False)]
        values[i] = mmd2_unbiased(x, y)
    return float(values.mean()), float(values.std())
