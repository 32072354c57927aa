"""Stand-ins shared by several test modules."""

from __future__ import annotations

import numpy as np
import torch


class ChannelMeanFeatures:
    """A stand-in for the Inception feature extractor (``ganops.metrics.inception``), for tests about files, shards
    and statistics rather than Inception's numbers.

    ``features`` maps uint8 (N, C, H, W) images to float64 (N, dim) numpy "features", float32 values as the real
    extractor returns them: a fixed random projection (seed 0) of the channel mean scaled to [0, 1]. A small ``dim``
    keeps the covariance algebra in microseconds; the statistics code takes d from the data.
    """

    has_classifier = False
    precision = "fp32"
    device = torch.device("cpu")  # evaluate samples G where the extractor runs

    def __init__(self, dim: int = 16, weights_sha256: str = "f" * 64) -> None:
        self.dim, self.weights_sha256 = dim, weights_sha256

    def features(self, images, protocol: str = "legacy_tensorflow", batch_size: int = 64) -> np.ndarray:
        x = torch.as_tensor(np.asarray(images)).double().mean(dim=1).flatten(1) / 255  # (N, H*W)
        proj = torch.randn(x.shape[1], self.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        return (x @ proj).float().double().numpy()
