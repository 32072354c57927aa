"""The one source of metric defaults, shared by ``ganops fid`` (CLI) and :func:`ganops.metrics.api.compare`."""

from __future__ import annotations

PROTOCOL = "legacy_tensorflow"
BATCH_SIZE = 64
PRECISION = "fp32"
DEVICE = "cpu"
SEED = 0
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# Raw features kept per side for KID / precision-recall (float32, 8 KiB each); FID statistics stream regardless.
MAX_KEPT_FEATURES = 10_000
PR_K = 3
DC_K = 5
INCEPTION_PATH_ENV = "GANOPS_INCEPTION_PATH"
