"""Experiment tracking behind a small protocol, so the training loop knows nothing about MLflow.

The package's public API, one job per module:

- :mod:`~ganops.tracking.logger`: the :class:`Logger` protocol library code reports through, :class:`NullLogger`,
  and :class:`MlflowLogger` (one MLflow run, surviving a lost tracking server);
- :mod:`~ganops.tracking.server`: tracking URI, artifact location, experiment set-up, reachability check, bounded
  HTTP retries (:data:`HTTP_ENV`);
- :mod:`~ganops.tracking.outbox`: what could not reach the server (``<train.run_dir>/mlflow_pending.jsonl``),
  re-sent in order by the next successful call, the next stage, or :func:`upload_pending` (``ganops sync``);
- :mod:`~ganops.tracking.sysmetrics`: the train stage's system metrics;
- :mod:`~ganops.tracking.stages`: :func:`stage_logger`, which run each stage logs into and what it attaches.

``mlflow`` is imported lazily everywhere because it costs seconds.
"""

from __future__ import annotations

from ganops.tracking.logger import RETRY_AFTER_MAX_S, RETRY_AFTER_S, Logger, MlflowLogger, NullLogger
from ganops.tracking.outbox import PENDING_ARTIFACTS, PENDING_FILE, REJECTED_FILE, pending_entries, upload_pending
from ganops.tracking.server import (HTTP_ENV, TrackingUnavailableError, artifact_location, check_reachable,
                                    configure_mlflow, mlflow_command, redact_uri, tracking_uri)
from ganops.tracking.stages import (ENV_RUN_ID, RUN_ID_FILE, STAGE_POLICIES, STAGES, STATUS_TAG, StagePolicy,
                                    read_run_id, stage_logger)
from ganops.tracking.sysmetrics import SYSTEM_METRICS_INTERVAL_S

__all__ = [
    "ENV_RUN_ID", "HTTP_ENV", "PENDING_ARTIFACTS", "PENDING_FILE", "REJECTED_FILE", "RETRY_AFTER_MAX_S",
    "RETRY_AFTER_S", "RUN_ID_FILE", "STAGES", "STAGE_POLICIES", "STATUS_TAG", "SYSTEM_METRICS_INTERVAL_S", "Logger",
    "MlflowLogger", "NullLogger", "StagePolicy", "TrackingUnavailableError", "artifact_location", "check_reachable",
    "configure_mlflow", "mlflow_command", "pending_entries", "read_run_id", "redact_uri", "stage_logger",
    "tracking_uri", "upload_pending",
]
