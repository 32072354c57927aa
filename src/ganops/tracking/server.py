"""Where MLflow tracks and whether it answers: store URIs, experiment set-up, reachability, bounded HTTP retries.

Nothing here logs to a run; :mod:`ganops.tracking.logger` and :mod:`ganops.tracking.outbox` send through the client
that :func:`configure_mlflow` returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

# Set (where unset) before mlflow is imported: no telemetry or analytics calls from any stage.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

# MLflow's HTTP client defaults (7 retries with 2 s exponential backoff, 120 s timeout) wait ~4 min on a dead server
# per call. While a stage runs against an http(s) server these apply instead (values already exported win):
# connection refused -> ~3 s per call (retry at once, then after 2 s + jitter); no answer -> about 3 x 20 s.
HTTP_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def quiet_env() -> None:
    """Set :data:`QUIET_ENV` in ``os.environ`` where the user has not set those variables."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)


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


def is_http(uri: str) -> bool:
    """True when ``uri`` is an ``http://`` or ``https://`` tracking server (not a local store)."""
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
    quiet_env()
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
                                          artifact_location=None if is_http(uri) else artifact_location(root))
    elif exp.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {experiment!r} is deleted in {redact_uri(uri)}; restore it or set another "
                         "'experiment' in params.yaml")
    else:
        exp_id = exp.experiment_id
    return client, exp_id


def is_transient(err: BaseException) -> bool:
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
def bounded_http(uri: str) -> Iterator[None]:
    """Apply :data:`HTTP_ENV` (where unset) while the block runs against an http(s) ``uri``; restore afterwards."""
    added = [k for k in HTTP_ENV if k not in os.environ] if is_http(uri) else []
    for k in added:
        os.environ[k] = HTTP_ENV[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
