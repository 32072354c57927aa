"""Numerical contracts of ganops.metrics without the Inception network (cases F1-F3, F6-F8 and protocol facts)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from ganops.metrics import (
    FeatureStats,
    density_coverage,
    fid_from_features,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
    quantize_to_uint8,
    trace_sqrt_product,
)
from ganops.metrics.fid import stats_from_features
from ganops.metrics.preprocess import resize_clean, resize_legacy_tensorflow, to_inception_input


def _np_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


# ---- FID: F1, F2, F3, F6, F8 --------------------------------------------------------------------------------------

def test_f1_unit_mean_shift_identity_covariance():
    d = 2048
    assert abs(frechet_distance(np.zeros(d), np.eye(d), np.ones(d), np.eye(d)) - 2048.0) <= 1e-9


def test_f2_four_by_four_known_value():
    rs = np.random.RandomState(1)
    x1 = rs.randn(4, 4)
    x2 = rs.randn(4, 4)
    assert abs(frechet_distance(*_np_stats(x1), *_np_stats(x2)) - 4.753837617472) <= 1e-9


def test_f3_self_fid_singular_covariance_is_zero():
    x = np.random.RandomState(0).rand(400, 512) * 5000
    mu, sigma = _np_stats(x)
    fid = frechet_distance(mu, sigma, mu, sigma)
    assert np.isfinite(fid) and abs(fid) <= 1e-8 * np.trace(sigma)


def test_trace_sqrt_matches_scipy_sqrtm_on_full_rank():
    rs = np.random.RandomState(3)
    a, b = rs.randn(200, 64), rs.randn(200, 64) @ rs.randn(64, 64)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-10)


def test_fid_closed_form_for_commuting_diagonal_covariances():
    # Diagonal covariances: tr sqrt(S1 S2) = sum sqrt(a_i b_i), so FID = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 0) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-12)


def test_fid_symmetric_and_order_independent_f8():
    rs = np.random.RandomState(5)
    x, y = rs.randn(300, 40), rs.randn(250, 40) * 1.3 + 0.2
    fid = fid_from_features(x, y)
    assert fid_from_features(x, y) == fid  # deterministic
    assert fid_from_features(y, x) == pytest.approx(fid, rel=1e-9)
    perm = np.random.RandomState(6).permutation(x.shape[0])
    assert fid_from_features(x[perm], y[::-1]) == pytest.approx(fid, rel=1e-9)


@pytest.mark.parametrize("bad", ["nan_mu", "inf_sigma", "shape"])
def test_f6_fid_rejects_broken_statistics(bad):
    mu, sigma = np.zeros(3), np.eye(3)
    mu2, sigma2 = mu.copy(), sigma.copy()
    if bad == "nan_mu":
        mu2[0] = np.nan
    elif bad == "inf_sigma":
        sigma2[1, 1] = np.inf
    else:
        sigma2 = np.eye(4)
    with pytest.raises(ValueError, match="NaN|expected mu"):
        frechet_distance(mu, sigma, mu2, sigma2)


def test_f6_fewer_than_two_samples_and_nan_features():
    with pytest.raises(ValueError, match="at least 2 samples"):
        stats_from_features(np.ones((1, 8)))
    feats = np.ones((4, 8))
    feats[2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        stats_from_features(feats)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(np.ones((1, 8)), np.ones((5, 8)))


# ---- streaming statistics -----------------------------------------------------------------------------------------

def test_streaming_stats_equal_numpy_and_batch_split():
    x = np.random.RandomState(7).rand(103, 17) * 1000 + 5e4  # large mean: tests the shifted accumulation
    stats = FeatureStats(17, max_kept=50)
    for chunk in np.array_split(x, [1, 10, 60]):
        stats.append(chunk)
    mu, sigma = _np_stats(x)
    np.testing.assert_allclose(stats.mean, mu, rtol=1e-12)
    np.testing.assert_allclose(stats.cov, sigma, rtol=1e-9, atol=1e-9 * np.abs(sigma).max())
    assert stats.n == 103
    np.testing.assert_array_equal(stats.kept_features, x[:50].astype(np.float32))


# ---- KID: F7 ------------------------------------------------------------------------------------------------------

def _kid_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 by explicit double loops (independent of the vectorised code)."""
    d, m = x.shape[1], x.shape[0]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_full_subset_equals_explicit_unbiased_mmd():
    rs = np.random.RandomState(8)
    x, y = rs.rand(7, 5), rs.rand(7, 5) + 0.3
    mean, std = kernel_inception_distance(x, y, num_subsets=3, subset_size=7)
    assert mean == pytest.approx(_kid_reference(x, y), rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-15)  # every subset is the whole set, shuffled


def test_f7_self_kid_near_zero_and_small_sets_clamp_with_warning():
    rs = np.random.RandomState(9)
    x = rs.rand(6, 16)
    with pytest.warns(UserWarning, match="clamping the subset size to 6"):
        mean, std = kernel_inception_distance(x, x, num_subsets=10, subset_size=1000)
    # Against itself the unbiased estimator is legitimately negative: the cross term keeps k(x_i, x_i), the
    # within terms drop it. The value must equal the explicit formula, not be forced to zero.
    assert np.isfinite(std) and mean == pytest.approx(_kid_reference(x, x), rel=1e-12) and mean < 0
    big = rs.rand(400, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, _ = kernel_inception_distance(big, big.copy(), num_subsets=20, subset_size=100, seed=1)
    assert abs(mean) < 5e-3  # unbiased estimate of 0: small, either sign allowed
    shifted, _ = kernel_inception_distance(big, big + 0.5, num_subsets=20, subset_size=100, seed=1)
    assert shifted > 100 * abs(mean)


def test_kid_seeded_deterministic():
    rs = np.random.RandomState(10)
    x, y = rs.rand(50, 8), rs.rand(60, 8)
    assert kernel_inception_distance(x, y, subset_size=20, seed=3) == kernel_inception_distance(x, y, subset_size=20, seed=3)


# ---- precision / recall, density / coverage, IS ---------------------------------------------------------------------

def test_precision_recall_density_coverage_hand_computed_1d():
    # Real points 0,1,2,3 on a line, k=1: each real ball has radius 1. Fake at 0.5 (inside) and 10 (outside).
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[0.5], [10.0], [10.5]])
    pr = precision_recall(real, fake, k=1)
    assert pr["precision"] == pytest.approx(1 / 3)
    # fake radii (k=1): 0.5 -> 9.5, 10 -> 0.5, 10.5 -> 0.5; real points within 9.5 of 0.5: all four.
    assert pr["recall"] == pytest.approx(1.0)
    dc = density_coverage(real, fake, k=1)
    # 0.5 lies in the balls of 0 and 1 (radius 1): density = 2 / (1 * 3); covered real points: 0 and 1.
    assert dc["density"] == pytest.approx(2 / 3)
    assert dc["coverage"] == pytest.approx(0.5)


def test_inception_score_bounds():
    k = 10
    uniform_conf = np.eye(k)[np.arange(100) % k]  # confident and balanced: IS = K
    assert inception_score(uniform_conf, num_splits=10)[0] == pytest.approx(k, rel=1e-9)
    assert inception_score(np.full((100, k), 1 / k))[0] == pytest.approx(1.0)  # uninformative: IS = 1


# ---- quantization and resizing ------------------------------------------------------------------------------------

def test_quantize_nvidia_rounding():
    x = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.99, 1.0, 2.0])
    # (x * 127.5 + 128) truncated: -1 -> 0.5 -> 0; 0 -> 128; 0.5 -> 191.75 -> 191; 0.99 -> 254.225 -> 254; 1 -> 255
    assert quantize_to_uint8(x).tolist() == [0, 0, 0, 128, 191, 254, 255, 255]
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_to_uint8(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="float"):
        quantize_to_uint8(torch.tensor([1, 2]))


def test_legacy_tensorflow_resize_by_hand():
    # 1x1x2x2 -> 3x3. TF1 (no half-pixel): src = dst * 2/3 -> 0, 0.667, 1.333 (clamped neighbour at the edge).
    img = torch.tensor([[[[0.0, 30.0], [60.0, 90.0]]]])
    out = resize_legacy_tensorflow(img, size=3)[0, 0]
    f = 2.0 / 3.0
    row = lambda a, b: [a, a + (b - a) * f, b]  # noqa: E731  column 2: src 1.333 -> floor 1, neighbour clamped
    top, bottom = row(0.0, 30.0), row(60.0, 90.0)
    expected = [top, [t + (b - t) * f for t, b in zip(top, bottom)], bottom]
    np.testing.assert_allclose(out.numpy(), np.array(expected), rtol=0, atol=1e-5)


def test_clean_resize_matches_pil_directly():
    rs = np.random.RandomState(11)
    img = rs.randint(0, 256, (1, 3, 9, 7), dtype=np.uint8)
    out = resize_clean(torch.from_numpy(img), size=20).numpy()
    for c in range(3):
        pil = Image.fromarray(img[0, c].astype(np.float32)).resize((20, 20), Image.Resampling.BICUBIC)
        np.testing.assert_array_equal(out[0, c], np.clip(np.asarray(pil), 0, 255))


@pytest.mark.parametrize("protocol", ["legacy_tensorflow", "clean"])
def test_grayscale_input_equals_repeated_rgb(protocol):
    gray = torch.randint(0, 256, (2, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a, b = to_inception_input(gray, protocol), to_inception_input(gray.repeat(1, 3, 1, 1), protocol)
    assert a.shape == (2, 3, 299, 299)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(a.min()) >= -1 and float(a.max()) < 1


def test_bad_images_and_protocol_are_named():
    with pytest.raises(ValueError, match="uint8"):
        to_inception_input(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        to_inception_input(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="valid protocols: legacy_tensorflow, clean"):
        to_inception_input(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "bilinear")
