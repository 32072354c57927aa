"""System metrics of the train stage: MLflow's sampler, started and stopped so that a lost server cannot hang it.

``system/cpu_utilization_percentage``, memory, disk, network and GPU (when ``pynvml`` is present) are sampled every
:data:`SYSTEM_METRICS_INTERVAL_S` seconds (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides;
``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off). When the stage ends the sampler's last samples go
through the stage's :class:`~ganops.tracking.logger.MlflowLogger`, so they reach the outbox when the server is gone.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ganops.tracking.logger import MlflowLogger

log = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL_S = 2.0  # MLflow's default (10 s) leaves short runs with one sample or none


def start_system_metrics(run_id: str, uri: str) -> Any:
    """Start MLflow's system-metrics sampler for ``run_id`` (a daemon thread), or return None when turned off."""
    if os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower() in ("false", "0"):
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a resumed training run continues the system-metric steps instead of overwriting them.
        monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, resume_logging=True,
                                       tracking_uri=uri)
    except Exception as err:  # noqa: BLE001 - psutil missing, or the server failed the step lookup: train anyway
        log.warning("system metrics are not logged for this run: %s", str(err).splitlines()[0][:300])
        return None
    monitor.start()
    return monitor


class _IntoLogger:
    """Stands in for the sampler's own metrics batcher once its thread is joined: values go through
    :class:`MlflowLogger` (and so into the pending file when the server is gone)."""

    def __init__(self, logger: MlflowLogger) -> None:
        self.logger = logger

    def record_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logger.log_metrics(metrics, step=step)

    def flush(self) -> None:
        self.logger.flush()


def stop_system_metrics(monitor: Any, logger: MlflowLogger) -> None:
    """Stop and join the sampler thread, then log the samples taken since its last publish (a run shorter than the
    sampling interval has exactly one) through ``logger``. After a lost server the sampler thread stops on its
    own at its next status check; the samples it took until then still arrive this way. ``monitor`` None: no-op."""
    if monitor is None:
        return
    monitor.finish()  # sets the stop event, joins the thread (its server calls are bounded by HTTP_ENV)
    logger.buffer_metrics(list(getattr(monitor.mlflow_logger, "data", [])))  # what its batcher failed to send
    monitor.mlflow_logger = _IntoLogger(logger)
    leftover = monitor.aggregate_metrics()
    if leftover:
        monitor.publish_metrics(leftover)  # adds the "system/" prefix and the next system-metrics step
    logger.flush()
