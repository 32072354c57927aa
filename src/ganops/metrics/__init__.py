"""Generative metrics: FID, KID, precision/recall, density/coverage, IS on TF-Inception (2015-12-05) features.

Light entry points are imported here; the network (``inception``), the reference cache and ``api`` (the one path
the evaluate stage, in-training evaluation and ``ganops fid`` use) load on demand.
"""

from ganops.metrics.fid import FeatureStats, fid_from_features, frechet_distance, trace_sqrt_product
from ganops.metrics.kid import kernel_inception_distance
from ganops.metrics.prdc import density_coverage, inception_score, precision_recall
from ganops.metrics.preprocess import PROTOCOLS, quantize_to_uint8, to_inception_input

__all__ = [
    "PROTOCOLS", "FeatureStats", "density_coverage", "fid_from_features", "frechet_distance", "inception_score",
    "kernel_inception_distance", "precision_recall", "quantize_to_uint8", "to_inception_input", "trace_sqrt_product",
]
