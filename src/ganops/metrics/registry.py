"""Metrics registered by protocol name (``fid2k_test``, ``kid2k_test``, ...), StyleGAN ``metric_main`` style.

A metric is a function ``(MetricContext) -> dict`` of results. The same registry serves ``ganops evaluate``,
in-training evaluation (``training_loop(metric_fn=...)``) and ad hoc use; unknown names list the valid ones.
Names encode the protocol: number of generated samples, and the real split compared against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ganops.metrics import defaults
from ganops.metrics.fid import FeatureStats, frechet_distance
from ganops.metrics.inception import FeatureExtractor
from ganops.metrics.kid import kernel_inception_distance
from ganops.metrics.prdc import density_coverage, inception_score, precision_recall
from ganops.metrics.preprocess import quantize_to_uint8

MetricFn = Callable[["MetricContext"], dict]
_METRICS: dict[str, MetricFn] = {}


@dataclass
class MetricContext:
    """What a metric needs.

    generate(num, seed) yields float32 [-1, 1] (B, C, H, W) batches; real(split) returns uint8 (N, C, H, W);
    real_stats(split, num, max_kept) may return cached FeatureStats-like objects (see ganops.evaluate).
    """

    extractor: FeatureExtractor
    generate: Callable[[int, int], Iterator[torch.Tensor]]
    real_stats: Callable[[str, int, int], object]
    protocol: str = defaults.PROTOCOL
    batch_size: int = defaults.BATCH_SIZE
    seed: int = defaults.SEED
    kid_subsets: int = defaults.KID_SUBSETS
    kid_subset_size: int = defaults.KID_SUBSET_SIZE
    cache: dict = field(default_factory=dict)

    def fake_stats(self, num: int, max_kept: int = 0) -> FeatureStats:
        """Streaming statistics of ``num`` generated samples (memoised per (num, max_kept) within the context)."""
        key = ("fake", num, max_kept)
        if key not in self.cache:
            stats = FeatureStats(max_kept=max_kept)
            for batch in self.generate(num, self.seed):
                stats.append(self.extractor.features(quantize_to_uint8(batch), self.protocol, self.batch_size))
            self.cache[key] = stats
        return self.cache[key]


def register_metric(fn: MetricFn) -> MetricFn:
    """Decorator: register ``fn`` under its function name. Raises ValueError on a duplicate name."""
    if fn.__name__ in _METRICS:
        raise ValueError(f"metric {fn.__name__!r} is already registered")
    _METRICS[fn.__name__] = fn
    return fn


def list_metrics() -> list[str]:
    return sorted(_METRICS)


def get_metric(name: str) -> MetricFn:
    """Raises ValueError listing the valid names when ``name`` is unknown."""
    if name not in _METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {', '.join(list_metrics())}")
    return _METRICS[name]


def compute_metric(name: str, ctx: MetricContext) -> dict:
    """Run a registered metric; the result carries the protocol and the Inception weights' sha256."""
    result = get_metric(name)(ctx)
    return {"metric": name, "protocol": ctx.protocol, "weights_sha256": ctx.extractor.weights_sha256, **result}


def _fid(ctx: MetricContext, num: int, split: str) -> dict:
    fake, real = ctx.fake_stats(num), ctx.real_stats(split, num, 0)
    return {"fid": frechet_distance(fake.mean, fake.cov, real.mu, real.sigma), "num_generated": fake.n,
            "num_real": real.n}


def _kept(num: int) -> int:
    return min(num, defaults.MAX_KEPT_FEATURES)


def _kid(ctx: MetricContext, num: int, split: str) -> dict:
    fake, real = ctx.fake_stats(num, _kept(num)), ctx.real_stats(split, num, _kept(num))
    mean, std = kernel_inception_distance(fake.kept_features, real.features, num_subsets=ctx.kid_subsets,
                                          subset_size=ctx.kid_subset_size, seed=ctx.seed)
    return {"kid_mean": mean, "kid_std": std, "num_generated": fake.n, "num_real": real.n}


def _prdc(ctx: MetricContext, num: int, split: str) -> dict:
    fake, real = ctx.fake_stats(num, _kept(num)), ctx.real_stats(split, num, _kept(num))
    return {**precision_recall(real.features, fake.kept_features, k=defaults.PR_K),
            **density_coverage(real.features, fake.kept_features, k=defaults.DC_K),
            "num_generated": fake.n, "num_real": real.n, "features": "inception_pool3"}


@register_metric
def fid2k_test(ctx: MetricContext) -> dict:
    return _fid(ctx, 2000, "test")


@register_metric
def fid10k_test(ctx: MetricContext) -> dict:
    return _fid(ctx, 10000, "test")


@register_metric
def fid50k_train(ctx: MetricContext) -> dict:
    return _fid(ctx, 50000, "train")


@register_metric
def kid2k_test(ctx: MetricContext) -> dict:
    return _kid(ctx, 2000, "test")


@register_metric
def pr2k_test(ctx: MetricContext) -> dict:
    return _prdc(ctx, 2000, "test")


@register_metric
def is2k(ctx: MetricContext) -> dict:
    """Inception Score of 2000 samples (10 splits); only with NVIDIA's full network, else marked not available."""
    if not ctx.extractor.has_classifier:
        return {"is_mean": None, "is_std": None,
                "status": "not available: the Inception weights have no classifier head (default_1.pt); "
                          "set evaluate.inception_path to NVIDIA's inception-2015-12-05.pt"}
    feats = ctx.fake_stats(2000, 2000).kept_features
    mean, std = inception_score(ctx.extractor.class_probabilities(np.asarray(feats, np.float64)))
    return {"is_mean": mean, "is_std": std, "status": "ok"}
