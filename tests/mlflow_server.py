"""A real ``mlflow server`` for tests: SQL backend, artifact serving, 127.0.0.1 on a free port, killed afterwards.

Use :func:`running_mlflow_server` (e.g. in a module-scoped fixture) or :class:`MlflowServer` directly. The
server runs in its own process group (the ``mlflow`` CLI and its uvicorn worker), so :meth:`MlflowServer.kill` and
:meth:`MlflowServer.stop` leave no process behind. Its backend store starts as a copy
of the session's already-migrated SQLite database (``migrated_mlflow_db`` in tests/conftest.py), which saves the
schema migration on every start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` with ``sqlite:///<root>/mlflow.db`` and artifacts served from ``<root>/artifacts``.

    ``start`` can be called again after ``kill``/``stop``: same port, same backend store and artifacts.
    """

    def __init__(self, root: Path, port: int | None = None, db_template: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = self.root / "mlflow.db"
        self.artifacts = self.root / "artifacts"
        self.log_path = self.root / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if db_template is not None and not self.db.exists():
            shutil.copy(db_template, self.db)

    def start(self, timeout_s: float = 240) -> MlflowServer:
        """Start the server and wait until ``/health`` answers; raises with the server log's tail if it does not."""
        cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.db}", "--serve-artifacts",
               "--artifacts-destination", str(self.artifacts)]
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID")}
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1",
                   MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")  # no job-runner process: nothing here uses jobs
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.kill()
        raise RuntimeError(f"mlflow server did not answer /health within {timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group (a server lost without warning)."""
        self._signal(signal.SIGKILL, wait_s=30)

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL whatever is still there after 15 s."""
        if not self._signal(signal.SIGTERM, wait_s=15):
            self.kill()

    def _signal(self, sig: int, wait_s: float) -> bool:
        if self.proc is None:
            return True
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return False
        # The group leader is gone; wait for its children (uvicorn workers) too.
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                self.proc = None
                return True
            time.sleep(0.1)
        return False

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.is_file() else ""

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@contextlib.contextmanager
def running_mlflow_server(root: Path, db_template: Path | None = None) -> Iterator[MlflowServer]:
    """A started :class:`MlflowServer` under ``root``, stopped (process group) on exit even if the block fails.

    For a module-scoped fixture::

        @pytest.fixture(scope="module")
        def mlflow_server(tmp_path_factory, migrated_mlflow_db):
            with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), migrated_mlflow_db) as server:
                yield server
    """
    server = MlflowServer(root, db_template=db_template)
    try:
        yield server.start()
    finally:
        server.stop()
