"""Experiment tracking behind a small protocol, so the training loop knows nothing about MLflow.

``Logger`` is what library code (the training loop, evaluate) receives. ``NullLogger`` does nothing (tests, dry
runs). :class:`MlflowLogger` and :func:`stage_logger` are the only code that imports ``mlflow`` for logging; the
import is lazy because it costs seconds.

One pipeline execution = one MLflow run. Which run a stage logs into:

1. ``$GANOPS_MLFLOW_RUN_ID`` when set (the Prefect flow creates the run and exports it to every stage);
2. otherwise ``train`` starts a new run, and every stage that uses the run records its id in
   ``<train.run_dir>/mlflow_run.json`` (a DVC output of ``train``), so ``evaluate`` and ``register`` resume it;
3. ``prepare`` and ``validate`` without a pipeline run log nowhere; ``train`` attaches the dataset summary and the
   validation report to its run instead, so each training run still carries the data it saw.

A stage that raises marks the run ``FAILED`` and tags ``ganops.status.<stage> = failed``; the registry refuses to
register a model from such a run.

A tracking server lost mid-run never stops a stage (see :class:`MlflowLogger`): metrics, params, tags, artifacts
and the run's end status that cannot reach it are appended to ``<train.run_dir>/mlflow_pending.jsonl`` (artifacts
copied under ``<train.run_dir>/mlflow_pending_artifacts/``) and re-sent, in order, on the next successful call, at
the start of the next stage, or by :func:`upload_pending` (``ganops sync``). Against an ``http(s)://`` server each
stage bounds MLflow's HTTP retries (:data:`HTTP_ENV`, unless exported by the user): a dead server costs about 3 s
per attempt instead of MLflow's default ~4 min, a hung one about 1 min (3 x 20 s); after a failure the logger stops
trying for 10 s, doubling up to 5 min while the server stays away.

The train stage also logs system metrics (``system/cpu_utilization_percentage``, memory, disk, network, GPU when
``pynvml`` is present) every :data:`SYSTEM_METRICS_INTERVAL_S` seconds (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
overrides; ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false`` turns it off), plus one last sample when the stage ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ganops.io import read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from ganops.config import Params

log = logging.getLogger(__name__)

ENV_RUN_ID = "GANOPS_MLFLOW_RUN_ID"
RUN_ID_FILE = "mlflow_run.json"
STAGES = ("prepare", "validate", "train", "evaluate", "register")
# Tags carrying per-stage outcome; the registry reads ``ganops.status.train``.
STATUS_TAG = "ganops.status.{stage}"

_QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


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


# ---------------------------------------------------------------------------------------------------------------
# MLflow setup
# ---------------------------------------------------------------------------------------------------------------


def tracking_uri(root: str | Path | None = None) -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` (root = cwd)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(root) if root is not None else Path.cwd()
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def artifact_location(root: str | Path | None = None) -> str:
    """Where new experiments keep artifacts: ``<root>/mlartifacts`` (a ``file://`` URI; root = cwd)."""
    root = Path(root) if root is not None else Path.cwd()
    return (root / "mlartifacts").resolve().as_uri()


def mlflow_command() -> str:
    """How to call this environment's ``mlflow`` CLI: the executable next to the running Python (e.g.
    ``.venv/bin/mlflow``, relative to the working directory when it lies below it), else plain ``mlflow``. A bare
    ``mlflow`` is only on PATH when the virtual environment is activated."""
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file():
        return "mlflow"
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def redact_uri(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI in it replaced by ``***``.

    Use it on anything that may show a tracking URI (errors, logs, artifacts): credentials belong in
    ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, but a user may still put them into the URI.
    """
    import re

    return re.sub(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):[^/\s@]*@", r"\g<head>:***@", str(text))


def _is_http(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https")


class TrackingUnavailableError(ConnectionError):
    """The MLflow tracking server in ``$MLFLOW_TRACKING_URI`` does not answer; raised before any stage work."""


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast when an ``http(s)://`` tracking URI has nothing listening (local stores are not checked).

    MLflow's own client retries a dead server with exponential backoff for minutes; a TCP connect with a short
    timeout turns that into an immediate, actionable error, before a stage trains or evaluates anything.

    Raises:
        TrackingUnavailableError: the host does not resolve or refuses / times out the connection.
    """
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "localhost", port), timeout=timeout_s):
            pass
    except OSError as err:
        raise TrackingUnavailableError(
            f"MLflow tracking server {redact_uri(uri)} is unreachable ({redact_uri(err)}). Start it (e.g. `mlflow server --host 127.0.0.1 "
            f"--port {port}`), fix MLFLOW_TRACKING_URI, or unset it to log to the local sqlite:///mlflow.db"
        ) from None


def configure_mlflow(experiment: str, root: str | Path | None = None) -> tuple[MlflowClient, str]:
    """Point MLflow at the project store and make sure ``experiment`` exists.

    Returns:
        ``(client, experiment_id)``.

    Raises:
        TrackingUnavailableError: ``$MLFLOW_TRACKING_URI`` is an http(s) server that does not answer.
        ValueError: the experiment exists but is deleted (restore it with ``mlflow experiments restore`` or pick
            another ``experiment`` in params.yaml).
    """
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        # A tracking server picks the artifact store itself (``--serve-artifacts`` / ``--default-artifact-root``);
        # a local path here would make every client write into its own machine's folder instead.
        exp_id = client.create_experiment(experiment,
                                          artifact_location=None if _is_http(uri) else artifact_location(root))
    elif exp.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {experiment!r} is deleted in {redact_uri(uri)}; restore it or set another "
                         "'experiment' in params.yaml")
    else:
        exp_id = exp.experiment_id
    return client, exp_id


# ---------------------------------------------------------------------------------------------------------------
# Logger
# ---------------------------------------------------------------------------------------------------------------


# MLflow's HTTP client defaults (7 retries with 2 s exponential backoff, 120 s timeout) wait ~4 min on a dead server
# per call. While a stage runs against an http(s) server these apply instead (values already exported win):
# connection refused -> ~3 s per call (retry at once, then after 2 s + jitter); no answer -> about 3 x 20 s.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
# After a failed call the logger writes to the pending file without trying the server for this long (seconds);
# each further failed attempt doubles it, up to the cap.
RETRY_AFTER_S = 10.0
RETRY_AFTER_MAX_S = 300.0
PENDING_FILE = "mlflow_pending.jsonl"
PENDING_ARTIFACTS = "mlflow_pending_artifacts"
REJECTED_FILE = "mlflow_pending.rejected.jsonl"


def _is_transient(err: BaseException) -> bool:
    """True for errors a later retry may fix: no connection, timeouts, 5xx/429 answers, a locked SQLite store.

    4xx answers (invalid value, missing or deleted run) are permanent: retrying cannot make them succeed.
    """
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(err, MlflowException):
        code = err.get_http_status_code()
        return code >= 500 or code == 429
    return isinstance(err, (requests.exceptions.RequestException, ConnectionError, TimeoutError))


@contextlib.contextmanager
def _bounded_http(uri: str) -> Iterator[None]:
    """Apply :data:`HTTP_ENV` (where unset) while the block runs against an http(s) ``uri``; restore afterwards."""
    added = [k for k in HTTP_ENV if k not in os.environ] if _is_http(uri) else []
    for k in added:
        os.environ[k] = HTTP_ENV[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


class MlflowLogger:
    """A :class:`Logger` writing to one MLflow run through ``MlflowClient``, surviving a lost tracking server.

    Metrics are buffered and written with ``log_batch`` (one SQLite transaction per ``flush_every`` values instead
    of one per value); call :meth:`flush` (done by :func:`stage_logger`) before the process ends. Non-finite metric
    values are logged as they are (MLflow stores NaN/inf), so a diverging run stays visible.

    Params are immutable in MLflow: re-logging a key with another value (e.g. ``evaluate.num_samples`` changed
    while resuming the training run) keeps the first value and records the new one as tag
    ``ganops.param_update.<key>`` instead of failing the stage.

    With ``pending_dir`` set, a call that fails for a transient reason (see :func:`_is_transient`; the HTTP client
    has already retried, bounded by :data:`HTTP_ENV`) never raises: its content is appended to
    ``<pending_dir>/mlflow_pending.jsonl`` (artifacts are copied under ``<pending_dir>/mlflow_pending_artifacts``),
    the logger stops calling the server for :data:`RETRY_AFTER_S` seconds (doubling per failed attempt up to
    :data:`RETRY_AFTER_MAX_S`), and the next call after that first re-sends the pending file in order
    (:func:`upload_pending`). Permanent errors (4xx: invalid value, deleted run) still raise. Without
    ``pending_dir`` every error raises, as plain ``MlflowClient`` calls do.
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
            _, failure = _replay(self.client, self.pending_dir)
            if failure is not None:
                self._went_offline(failure)
        if not self.offline:
            try:
                send()
            except Exception as err:  # noqa: BLE001 - only transient errors are swallowed
                if not _is_transient(err):
                    raise
                self._went_offline(err)
            else:
                self._backoff_s = RETRY_AFTER_S
                return True
        _append_pending(self.pending_dir, [{"run_id": self.run_id, **entry()}])
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
        self._call(lambda: _send_params(self.client, self.run_id, new), lambda: {"kind": "params", "params": new})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items())
        if len(self._metrics) >= self.flush_every:
            self.flush()

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

        self._call(send, lambda: _stash_artifact(self.pending_dir, path, artifact_path))

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


def _send_params(client: MlflowClient, run_id: str, new: dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    fresh = [Param(k, v) for k, v in new.items() if k not in existing]
    changed = {f"ganops.param_update.{k}": v for k, v in new.items() if k in existing and existing[k] != v}
    for i in range(0, len(fresh), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=fresh[i:i + 100])
    if changed:
        log.warning("params differ from the values already logged to run %s: %s", run_id, changed)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in changed.items()])


# ---------------------------------------------------------------------------------------------------------------
# Pending file: what could not reach the tracking server
# ---------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked_pending(path: Path, mode: str) -> Iterator[Any]:
    """Open ``path`` under an exclusive ``flock`` that is guaranteed to be on the file currently at ``path``.

    A replay replaces or deletes the file while holding the lock; a writer that was waiting for it then holds a lock
    on the old inode, sees that ``path`` moved on, and reopens (so no appended line is ever lost).
    """
    import fcntl

    while True:
        f = open(path, mode)
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield f
                return
        finally:
            f.close()  # also releases the lock


def _append_pending(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked_pending(run_dir / PENDING_FILE, "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in entries))  # NaN/inf are written as JSON's NaN/Infinity
        f.flush()
        os.fsync(f.fileno())


def _stash_artifact(run_dir: Path | None, path: Path, artifact_path: str | None) -> dict[str, Any]:
    """Copy ``path`` (file or folder) under ``<run_dir>/mlflow_pending_artifacts/<id>/``: the original may be a
    temporary file gone by the time the server answers again."""
    assert run_dir is not None
    rel = Path(PENDING_ARTIFACTS) / uuid.uuid4().hex / path.name
    dest = run_dir / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        shutil.copytree(path, dest)
    else:
        shutil.copy2(path, dest)
    return {"kind": "artifact", "file": str(rel), "artifact_path": artifact_path, "is_dir": path.is_dir()}


def _send_entry(client: MlflowClient, run_dir: Path, entry: dict[str, Any]) -> None:
    from mlflow.entities import Metric, RunTag

    run_id, kind = entry["run_id"], entry["kind"]
    if kind == "metrics":
        metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in entry["metrics"]]
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])  # a metric sent twice is stored once
    elif kind == "params":
        _send_params(client, run_id, entry["params"])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in entry["tags"].items()])
    elif kind == "artifact":
        src = run_dir / entry["file"]
        if entry.get("is_dir"):
            client.log_artifacts(run_id, str(src), entry.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(src), entry.get("artifact_path"))
        shutil.rmtree(src.parent, ignore_errors=True)
    elif kind == "terminate":
        client.set_terminated(run_id, entry["status"], int(entry["end_time"]))
    else:
        raise ValueError(f"unknown pending entry kind {kind!r}")


def _replay(client: MlflowClient, run_dir: Path) -> tuple[dict[str, int], BaseException | None]:
    """Send ``<run_dir>/mlflow_pending.jsonl`` in order; see :func:`upload_pending` (which checks the server first).

    Stops at the first transient failure (that entry and the rest stay pending; the error is returned); an entry
    refused for good (4xx, unreadable line) moves to ``mlflow_pending.rejected.jsonl`` with the error. The pending
    file is deleted once empty, and the pending-artifacts folder with it when empty. Other errors propagate.
    """
    path = run_dir / PENDING_FILE
    counts = {"sent": 0, "remaining": 0, "rejected": 0}
    failure: BaseException | None = None
    try:
        with _locked_pending(path, "r") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
            rejected: list[dict[str, Any]] = []
            done = 0
            for line in lines:
                try:
                    _send_entry(client, run_dir, json.loads(line))
                except Exception as err:  # noqa: BLE001 - sorted into transient (stop) and permanent (reject)
                    if _is_transient(err):
                        failure = err
                        break
                    log.error("pending MLflow entry refused for good, kept in %s: %s",
                              run_dir / REJECTED_FILE, str(err).splitlines()[0][:300])
                    rejected.append({"line": line, "error": str(err)[:2000]})
                    counts["rejected"] += 1
                else:
                    counts["sent"] += 1
                done += 1
            left = lines[done:]
            counts["remaining"] = len(left)
            if rejected:
                with open(run_dir / REJECTED_FILE, "a") as r:
                    r.write("".join(json.dumps(e) + "\n" for e in rejected))
            if left:
                from ganops.io import atomic_write

                with atomic_write(path, "w") as out:
                    out.write("".join(line + "\n" for line in left))
            else:
                path.unlink()
                with contextlib.suppress(OSError):
                    (run_dir / PENDING_ARTIFACTS).rmdir()  # only when empty
    except FileNotFoundError:  # another process emptied it first
        if path.is_file():
            raise
    if counts["sent"]:
        log.info("uploaded %d pending MLflow entries from %s", counts["sent"], path)
    return counts, failure


def pending_entries(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries waiting in ``<run_dir>/mlflow_pending.jsonl`` (empty when there is none).

    Each is a dict with ``run_id`` and ``kind``: ``metrics`` (``metrics``: ``[key, value, timestamp_ms, step]``
    rows), ``params``, ``tags``, ``artifact`` (``file`` under ``run_dir``, ``artifact_path``) or ``terminate``
    (``status``, ``end_time`` in ms).
    """
    path = Path(run_dir) / PENDING_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upload_pending(run_dir: str | Path, uri: str | None = None) -> dict[str, int]:
    """Send what a stage could not deliver to the tracking server (``<run_dir>/mlflow_pending.jsonl``) — ``ganops sync``.

    Entries go in the order they were logged, with their original timestamps and steps; metrics already on the
    server are not duplicated (MLflow stores an identical (key, value, timestamp, step) once). Safe to run while a
    stage still appends to the file (an exclusive lock on the file serialises them).

    Args:
        run_dir: the training run directory (``train.run_dir`` of params.yaml, default ``runs/train``).
        uri: tracking URI; default ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db``.

    Returns:
        ``{"sent": n, "remaining": n, "rejected": n}``: entries delivered, still pending (the server failed again;
        run it later), and refused for good (4xx such as a deleted run; kept with the error in
        ``<run_dir>/mlflow_pending.rejected.jsonl``). With nothing pending all are 0.

    Raises:
        TrackingUnavailableError: an http(s) ``uri`` does not answer (nothing is sent; the file stays).
    """
    run_dir = Path(run_dir)
    if not (run_dir / PENDING_FILE).is_file():
        return {"sent": 0, "remaining": 0, "rejected": 0}
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    with _bounded_http(uri):
        counts, failure = _replay(MlflowClient(tracking_uri=uri, registry_uri=uri), run_dir)
    if failure is not None:
        log.warning("MLflow tracking at %s failed again (%s); %d entries stay in %s", redact_uri(uri),
                    redact_uri(failure).splitlines()[0][:300], counts["remaining"], run_dir / PENDING_FILE)
    return counts


def _param_str(v: Any) -> str:
    s = "None" if v is None else str(v)
    return s[:6000]  # MLflow's param value limit


# ---------------------------------------------------------------------------------------------------------------
# Stage context
# ---------------------------------------------------------------------------------------------------------------


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id recorded in ``<run_dir>/mlflow_run.json``, or None when the file is absent."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    run_id = read_json(path).get("run_id")
    return str(run_id) if run_id else None


def _resolve_run_id(params: Params, stage: str) -> str | None:
    env = os.environ.get(ENV_RUN_ID, "").strip()
    if env:
        return env
    if stage in ("evaluate", "register"):
        return read_run_id(params.train.run_dir)
    return None


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The flattened params a stage reads: its own section, plus ``seed``/``experiment``; train adds its data."""
    from ganops.config import flatten

    sections = {"prepare": ("prepare",), "validate": ("validate",), "train": ("prepare", "validate", "train"),
                "evaluate": ("evaluate",), "register": ("register",)}[stage]
    return {k: v for k, v in flatten(params).items() if k.split(".")[0] in sections or "." not in k}


LOSS_CSV = "loss.csv"
LOSS_COLUMNS = ("step", "kimg", "loss_G", "loss_D")


def _export_stats_csv(run_dir: str | Path, name: str, columns: tuple[str, ...], marker: str,
                      rename: dict[str, str] | None = None) -> Path | None:
    """Write ``<run_dir>/<name>`` (CSV, header ``columns``) from the ``stats.jsonl`` lines holding ``marker``.

    ``rename`` maps a CSV column to its key in ``stats.jsonl`` when they differ. Returns None when ``stats.jsonl``
    is absent; otherwise the file is written (atomically), with only the header when no line matches.
    """
    import csv
    import io
    import json

    from ganops.io import atomic_write

    stats = Path(run_dir) / "stats.jsonl"
    if not stats.is_file():
        return None
    keys = [(rename or {}).get(c, c) for c in columns]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for line in stats.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if marker in entry:
            writer.writerow([entry.get(k, "") for k in keys])
    out = Path(run_dir) / name
    with atomic_write(out, "w") as f:
        f.write(buf.getvalue())
    return out


def export_loss_csv(run_dir: str | Path) -> Path | None:
    """Write ``<run_dir>/loss.csv`` (columns step, kimg, loss_G, loss_D) from the loss lines of ``stats.jsonl``.

    DVC plots read CSV/JSON/YAML but not JSON Lines; this is a ``plots:`` file of ``dvc.yaml``. Lines without
    ``loss_G`` (sample-interval and evaluation entries) are skipped. Returns None when ``stats.jsonl`` is absent.
    """
    return _export_stats_csv(run_dir, LOSS_CSV, LOSS_COLUMNS, "loss_G")


FID_CSV = "fid.csv"
FID_COLUMNS = ("step", "kimg", "fid", "kid_mean", "kid_std", "num_generated")


def export_fid_csv(run_dir: str | Path) -> Path | None:
    """Write ``<run_dir>/fid.csv`` (columns step, kimg, fid, kid_mean, kid_std, num_generated): one row per
    in-training evaluation (``metric/*`` lines of ``stats.jsonl``), the FID-curve file of ``dvc.yaml``'s plots.

    Only the header when in-training evaluation is off (``train.eval_every_kimg: 0``). Returns None when
    ``stats.jsonl`` is absent.
    """
    return _export_stats_csv(run_dir, FID_CSV, FID_COLUMNS, "metric/fid",
                             {c: f"metric/{c}" for c in FID_COLUMNS[2:]})


FID_PLOT = "fid_over_training.png"


def plot_fid_over_training(run_dir: str | Path, out: str | Path) -> Path | None:
    """Plot in-training FID (``metric/fid`` lines of ``<run_dir>/stats.jsonl``) against kimg into the PNG ``out``.

    Returns None (and writes nothing) when ``stats.jsonl`` is absent or holds no FID (``train.eval_every_kimg`` 0).
    """
    import json

    stats = Path(run_dir) / "stats.jsonl"
    if not stats.is_file():
        return None
    points = [(e["kimg"], e["metric/fid"]) for e in (json.loads(x) for x in stats.read_text().splitlines() if x.strip())
              if "metric/fid" in e]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([k for k, _ in points], [f for _, f in points], marker="o")
    ax.set(xlabel="kimg (thousands of real images shown to D)", ylabel="FID (lower is better)",
           title="FID over training (G_ema)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def _log_resolved_config(logger: MlflowLogger, params: Params) -> None:
    # The whole validated params.yaml, defaults filled in: what the stage actually ran with.
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.resolved.yaml"
        path.write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False))
        logger.log_artifact(path, "config")


def _log_evaluation_grid(logger: MlflowLogger, params: Params) -> None:
    # The evaluated snapshot's samples next to its metrics, one file per evaluated snapshot.
    import shutil
    import tempfile

    grid, ev_path = Path(params.train.run_dir) / "fakes-latest.png", Path(params.evaluate.out)
    if not grid.is_file() or not ev_path.is_file():
        return
    ev = read_json(ev_path)
    name = f"fakes-kimg{float(ev.get('kimg') or 0):08.3f}-{str(ev.get('snapshot_sha256', ''))[:8]}.png"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(grid, Path(tmp) / name)
        logger.log_artifact(Path(tmp) / name, "evaluation")


def _log_stage_outputs(logger: MlflowLogger, params: Params, stage: str) -> None:
    """Attach the small, human-readable outputs of a stage to the run (never arrays or checkpoints).

    Every stage attaches the resolved config (``config/params.resolved.yaml``); train adds the FID-over-training
    plot, ``fid.csv`` and the Great Expectations Data Docs site (``data/validation/data_docs/``, tag
    ``ganops.data_docs``); evaluate adds the evaluated sample grid
    (``evaluation/``). eval.json and the model are logged by evaluate and register themselves.
    """
    import tempfile

    _log_resolved_config(logger, params)
    if stage == "evaluate":
        _log_evaluation_grid(logger, params)
    if stage == "train":
        with tempfile.TemporaryDirectory() as tmp:
            plot = plot_fid_over_training(params.train.run_dir, Path(tmp) / FID_PLOT)
            if plot is not None:
                logger.log_artifact(plot, "train")
    summary = Path(params.prepare.out_dir) / "summary.json"
    report_dir = Path(params.validate_.report_dir)
    run_dir = Path(params.train.run_dir)
    files: list[tuple[Path, str]] = []
    if stage in ("prepare", "train"):
        files.append((summary, "data"))
    if stage in ("validate", "train") and report_dir.is_dir():
        files.extend((p, "data/validation") for p in sorted(report_dir.iterdir()) if p.is_file())
    if stage == "train":
        files.extend((run_dir / n, "train") for n in ("training_options.json", "train.json", LOSS_CSV, FID_CSV))
        files.append((run_dir / "fakes-latest.png", "samples"))
    for path, dest in files:
        if path.is_file():
            logger.log_artifact(path, dest)
    docs = report_dir / "data_docs"
    if stage == "train" and (docs / "index.html").is_file():
        # The Great Expectations Data Docs site the training data passed, browsable from the run's artifacts (train,
        # not validate: under plain `dvc repro` validate has no run); the tag says where to open it.
        logger.log_artifact(docs, "data/validation/data_docs")
        logger.set_tags({"ganops.data_docs": "data/validation/data_docs/index.html (run artifact); local: "
                                             f"{(docs / 'index.html').resolve()}"})


SYSTEM_METRICS_INTERVAL_S = 2.0  # MLflow's default (10 s) leaves short runs with one sample or none


def _start_system_metrics(run_id: str, uri: str) -> Any:
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


def _stop_system_metrics(monitor: Any, logger: MlflowLogger) -> None:
    """Stop and join the sampler thread, then log the samples taken since its last publish (a run shorter than the
    sampling interval has exactly one) through ``logger``. After a lost server the sampler thread stops on its
    own at its next status check; the samples it took until then still arrive this way."""
    if monitor is None:
        return
    monitor.finish()  # sets the stop event, joins the thread (its server calls are bounded by HTTP_ENV)
    unsent = list(getattr(monitor.mlflow_logger, "data", []))  # what its batcher failed to send, if anything
    logger._metrics.extend(unsent)
    monitor.mlflow_logger = _IntoLogger(logger)
    leftover = monitor.aggregate_metrics()
    if leftover:
        monitor.publish_metrics(leftover)  # adds the "system/" prefix and the next system-metrics step
    logger.flush()


def _end_fluent_run(status: str) -> None:
    """Drop the active fluent run. Its status was already sent (or queued) by :meth:`MlflowLogger.terminate`;
    ``mlflow.end_run`` pops the run before it calls the server, so that call needs no retries and may fail."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        with contextlib.suppress(Exception):
            mlflow.end_run(status=status)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def stage_logger(params: Params, stage: str, *, root: str | Path | None = None) -> Iterator[Logger]:
    """Open the MLflow run of this pipeline execution for one stage and yield its :class:`Logger`.

    The run is also the active fluent run inside the block (``mlflow.active_run()``), which is how
    :func:`ganops.registry.register` logs the model into it. See the module docstring for which run is used.
    On exit the stage's outputs are attached as artifacts, ``ganops.status.<stage>`` is tagged ``ok`` and the run
    ends ``FINISHED``; if the block raises, the tag is ``failed``, the run ends ``FAILED`` and the error propagates.

    A tracking server that stops answering inside the block does not fail the stage: what cannot be sent goes to
    ``<train.run_dir>/mlflow_pending.jsonl`` (see :class:`MlflowLogger`); entries left there by an earlier stage
    are sent first when the stage opens. The train stage samples system metrics (module docstring).

    Args:
        params: the whole validated ``params.yaml``.
        stage: one of ``prepare, validate, train, evaluate, register``.
        root: project root for the default SQLite store and artifact folder (default: cwd).

    Raises:
        ValueError: unknown ``stage``, or ``$GANOPS_MLFLOW_RUN_ID`` names a run missing from the store (a stale id
            in ``mlflow_run.json`` only logs a warning and starts a new run).
        TrackingUnavailableError: an http(s) ``$MLFLOW_TRACKING_URI`` does not answer when the stage opens.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    run_id = _resolve_run_id(params, stage)
    if run_id is None and stage in ("prepare", "validate"):
        yield NullLogger()
        return

    import mlflow

    uri = tracking_uri(root)
    run_dir = Path(params.train.run_dir)
    with _bounded_http(uri):
        client, exp_id = configure_mlflow(params.experiment, root)
        if (run_dir / PENDING_FILE).is_file():  # an earlier stage lost the server: its entries go first
            counts, failure = _replay(client, run_dir)
            if failure is not None:
                log.warning("%d pending MLflow entries could not be sent yet (%s)", counts["remaining"],
                            str(failure).splitlines()[0][:300])
        if run_id is not None and not _run_exists(client, run_id):
            if os.environ.get(ENV_RUN_ID, "").strip():
                raise ValueError(f"${ENV_RUN_ID}={run_id} is not a run in {redact_uri(uri)}; unset it or point "
                                 "MLFLOW_TRACKING_URI at the store that holds it")
            log.warning("run %s from %s/%s is not in %s (store reset?); logging to a new run",
                        run_id, params.train.run_dir, RUN_ID_FILE, redact_uri(uri))
            run_id = None
        if run_id is None:
            run = client.create_run(exp_id, tags={"ganops.source": "cli"})
            run_id = run.info.run_id
        if stage == "train":
            write_json(run_dir / RUN_ID_FILE,
                       {"run_id": run_id, "experiment_id": client.get_run(run_id).info.experiment_id})

        logger = MlflowLogger(client, run_id, pending_dir=run_dir)
        # System metrics are started here, not by start_run, so that stopping them cannot hang on a lost server.
        mlflow.start_run(run_id=run_id, log_system_metrics=False)
        monitor = _start_system_metrics(run_id, uri) if stage == "train" else None
        status = "FAILED"
        try:
            logger.set_tags({"ganops.stage": stage, STATUS_TAG.format(stage=stage): "running"})
            logger.log_params(_stage_params(params, stage))
            yield logger
            logger.flush()
            if stage == "train":
                export_loss_csv(params.train.run_dir)  # the dvc.yaml plots files, inside the train output
                export_fid_csv(params.train.run_dir)
            _log_stage_outputs(logger, params, stage)
            logger.set_tags({STATUS_TAG.format(stage=stage): "ok"})
            status = "FINISHED"
        except BaseException:
            with contextlib.suppress(Exception):  # report the stage's own error, not a logging one
                logger.flush()
                logger.set_tags({STATUS_TAG.format(stage=stage): "failed", "ganops.failed_stage": stage})
            raise
        finally:
            try:
                # After a failure the stage's own error is the one to report, not a logging one.
                with contextlib.nullcontext() if status == "FINISHED" else contextlib.suppress(Exception):
                    _stop_system_metrics(monitor, logger)
                    logger.retry_now()  # one last attempt to deliver what is pending before the stage ends
                    logger.terminate(status)
            finally:
                _end_fluent_run(status)
