"""k-NN manifold metrics on Inception pool3 features.

- Precision / recall: Kynkäänniemi et al., "Improved Precision and Recall Metric for Assessing Generative Models",
  NeurIPS 2019 (k = 3). Precision = share of generated samples inside at least one real k-NN ball; recall = share
  of real samples inside at least one generated k-NN ball.
- Density / coverage: Naeem et al., "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020
  (k = 5). Density = mean number of real balls containing each generated sample / k; coverage = share of real
  balls that contain at least one generated sample.

The papers use VGG16 fc2 features (P/R) or either VGG16 or Inception (D/C). ganops computes all four on the same
2048-d Inception pool3 features as FID, so values are not comparable with papers' VGG16 numbers.
A k-NN ball around x has radius = distance to x's k-th nearest neighbour in its own set (x itself excluded).
"""

from __future__ import annotations

import numpy as np
import torch


def _pairwise_distances(x: np.ndarray, y: np.ndarray, chunk_rows: int = 1024) -> np.ndarray:
    xt, yt = torch.from_numpy(np.asarray(x, np.float64)), torch.from_numpy(np.asarray(y, np.float64))
    return torch.cat([torch.cdist(xt[i:i + chunk_rows], yt) for i in range(0, xt.shape[0], chunk_rows)]).numpy()


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """(N,) distance of each row to its k-th nearest other row. Raises ValueError when N <= k."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {n}")
    dist = _pairwise_distances(features, features)
    return np.partition(dist, k, axis=1)[:, k]  # column 0 of the sorted row is the point itself (distance 0)


def _check(real: np.ndarray, fake: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (N, d) features with equal d, got {real.shape} and {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError("features contain NaN or inf; no precision/recall computed")
    return real, fake


def precision_recall(real: np.ndarray, fake: np.ndarray, *, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019). Returns {"precision", "recall"} in [0, 1]."""
    real, fake = _check(real, fake)
    real_radii, fake_radii = knn_radii(real, k), knn_radii(fake, k)
    dist = _pairwise_distances(real, fake)  # (N_real, N_fake)
    precision = (dist <= real_radii[:, None]).any(axis=0).mean()
    recall = (dist <= fake_radii[None, :]).any(axis=1).mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> dict[str, float]:
    """Density (>= 0, ~1 when fake matches real) and coverage in [0, 1] (Naeem et al. 2020)."""
    real, fake = _check(real, fake)
    real_radii = knn_radii(real, k)
    inside = _pairwise_distances(real, fake) <= real_radii[:, None]  # (N_real, N_fake)
    return {"density": float(inside.sum() / (k * fake.shape[0])), "coverage": float(inside.any(axis=1).mean())}


def inception_score(probs: np.ndarray, *, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split; (mean, std) over splits.

    Args:
        probs: (N, K) softmax class probabilities from the full Inception network (rows sum to 1), N >= num_splits.
    """
    probs = np.asarray(probs, np.float64)
    if probs.ndim != 2 or probs.shape[0] < num_splits:
        raise ValueError(f"need (N, K) probabilities with N >= num_splits={num_splits}, got {probs.shape}")
    scores = []
    for part in np.array_split(probs, num_splits):
        kl = part * (np.log(part + 1e-30) - np.log(part.mean(axis=0, keepdims=True) + 1e-30))
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
