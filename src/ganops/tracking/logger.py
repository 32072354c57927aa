"""What library code reports through: the :class:`Logger` protocol, :class:`NullLogger` and :class:`MlflowLogger`.

``Logger`` is what the training loop and evaluate receive; ``NullLogger`` drops everything (tests, dry runs).
:class:`MlflowLogger` writes to one MLflow run and falls back to the outbox (:mod:`ganops.tracking.outbox`) when
the tracking server is lost. ``mlflow`` is imported lazily because it costs seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ganops.tracking.outbox import PENDING_FILE, append_pending, replay, send_params, stash_artifact
from ganops.tracking.server import is_transient

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# After a failed call the logger writes to the pending file without trying the server for this long (seconds);
# each further failed attempt doubles it, up to the cap.
RETRY_AFTER_S = 10.0
RETRY_AFTER_MAX_S = 300.0


class Logger(Protocol):
    """What the training loop and the stages may report. Step is the training step (G updates)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullLogger:
    """A Logger that drops everything."""

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass


def _param_str(v: Any) -> str:
    s = "None" if v is None else str(v)
    return s[:6000]  # MLflow's param value limit


class MlflowLogger:
    """A :class:`Logger` writing to one MLflow run through ``MlflowClient``, surviving a lost tracking server.

    Metrics are buffered and written with ``log_batch`` (one SQLite transaction per ``flush_every`` values instead
    of one per value); call :meth:`flush` (done by :func:`ganops.tracking.stage_logger`) before the process ends.
    Non-finite metric values are logged as they are (MLflow stores NaN/inf), so a diverging run stays visible.

    Params are immutable in MLflow: re-logging a key with another value (e.g. ``evaluate.num_samples`` changed
    while resuming the training run) keeps the first value and records the new one as tag
    ``ganops.param_update.<key>`` instead of failing the stage.

    With ``pending_dir`` set, a call that fails for a transient reason (see
    :func:`ganops.tracking.server.is_transient`; the HTTP client has already retried, bounded by
    :data:`ganops.tracking.server.HTTP_ENV`) never raises: its content is appended to
    ``<pending_dir>/mlflow_pending.jsonl`` (artifacts are copied under ``<pending_dir>/mlflow_pending_artifacts``),
    the logger stops calling the server for :data:`RETRY_AFTER_S` seconds (doubling per failed attempt up to
    :data:`RETRY_AFTER_MAX_S`), and the next call after that first re-sends the pending file in order
    (:func:`ganops.tracking.upload_pending`). Permanent errors (4xx: invalid value, deleted run) still raise.
    Without ``pending_dir`` every error raises, as plain ``MlflowClient`` calls do.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 500,
                 pending_dir: str | Path | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self.pending_dir = Path(pending_dir) if pending_dir is not None else None
        self._metrics: list[Any] = []
        self._retry_at = 0.0  # time.monotonic() before which the server is not tried
        self._backoff_s = RETRY_AFTER_S

    @property
    def offline(self) -> bool:
        """True while the logger writes to the pending file without trying the server (after a failure)."""
        return time.monotonic() < self._retry_at

    # ---- the fallback ------------------------------------------------------------------------------------------

    def _call(self, send: Callable[[], None], entry: Callable[[], dict[str, Any]]) -> bool:
        """Run ``send()``; on a transient failure (or while offline) append ``entry()`` to the pending file.

        Returns True when the server took it.
        """
        if self.pending_dir is None:
            send()
            return True
        if not self.offline and (self.pending_dir / PENDING_FILE).is_file():
            # The server is (maybe) back: older entries first, so the run's history keeps its order.
            _, failure = replay(self.client, self.pending_dir)
            if failure is not None:
                self._went_offline(failure)
        if not self.offline:
            try:
                send()
            except Exception as err:  # noqa: BLE001 - only transient errors are swallowed
                if not is_transient(err):
                    raise
                self._went_offline(err)
            else:
                self._backoff_s = RETRY_AFTER_S
                return True
        append_pending(self.pending_dir, [{"run_id": self.run_id, **entry()}])
        return False

    def retry_now(self) -> None:
        """End the pause after a failure: the next call tries the server (and the pending file) again."""
        self._retry_at = 0.0

    def _went_offline(self, err: BaseException) -> None:
        if not self.offline:
            log.warning("MLflow tracking at %s failed (%s); logging to %s until it answers (next try in %.0f s; "
                        "`ganops sync` uploads the file later)", self.client.tracking_uri,
                        str(err).splitlines()[0][:300], self.pending_dir / PENDING_FILE, self._backoff_s)
        self._retry_at = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, RETRY_AFTER_MAX_S)

    # ---- Logger protocol ---------------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        self.flush()
        new = {k: _param_str(v) for k, v in params.items()}
        self._call(lambda: send_params(self.client, self.run_id, new), lambda: {"kind": "params", "params": new})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items())
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def buffer_metrics(self, metrics: list[Any]) -> None:
        """Queue built ``mlflow.entities.Metric`` objects (own timestamps and steps) for :meth:`flush`."""
        self._metrics.extend(metrics)

    def flush(self) -> None:
        """Write buffered metrics (at most 1000 per batch, MLflow's limit); see the class doc for a lost server."""
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self._call(lambda: self.client.log_batch(self.run_id, metrics=batch),
                       lambda: {"kind": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in batch]})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)

        def send() -> None:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self.client.log_artifact(self.run_id, str(path), artifact_path)

        self._call(send, lambda: stash_artifact(self.pending_dir, path, artifact_path))

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None:
        self.log_artifact(path, artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        clipped = {k: str(v)[:5000] for k, v in tags.items()}
        self._call(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in clipped.items()]),
                   lambda: {"kind": "tags", "tags": clipped})

    def terminate(self, status: str) -> None:
        """Set the run's final status (``FINISHED``/``FAILED``) and end time, through the same fallback."""
        end_ms = int(time.time() * 1000)
        self._call(lambda: self.client.set_terminated(self.run_id, status, end_ms),
                   lambda: {"kind": "terminate", "status": status, "end_time": end_ms})
