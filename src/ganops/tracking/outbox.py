"""The outbox: what could not reach the tracking server, kept on disk under a lock and re-sent in order.

``<run_dir>/mlflow_pending.jsonl`` holds one JSON entry per line (metrics, params, tags, artifact, terminate);
artifacts are copied under ``<run_dir>/mlflow_pending_artifacts/``. :class:`ganops.tracking.logger.MlflowLogger`
appends here while the server is away; :func:`replay` sends the file back in order; :func:`upload_pending` is
``ganops sync``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganops.tracking.server import bounded_http, check_reachable, is_transient, quiet_env, redact_uri, tracking_uri

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

PENDING_FILE = "mlflow_pending.jsonl"
PENDING_ARTIFACTS = "mlflow_pending_artifacts"
REJECTED_FILE = "mlflow_pending.rejected.jsonl"


def send_params(client: MlflowClient, run_id: str, new: dict[str, str]) -> None:
    """Log ``new`` (string values) to ``run_id``; a key already logged with another value becomes the tag
    ``ganops.param_update.<key>`` (MLflow params are immutable) and a warning."""
    from mlflow.entities import Param, RunTag

    existing = client.get_run(run_id).data.params
    fresh = [Param(k, v) for k, v in new.items() if k not in existing]
    changed = {f"ganops.param_update.{k}": v for k, v in new.items() if k in existing and existing[k] != v}
    for i in range(0, len(fresh), 100):  # MLflow caps a batch at 100 params
        client.log_batch(run_id, params=fresh[i:i + 100])
    if changed:
        log.warning("params differ from the values already logged to run %s: %s", run_id, changed)
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in changed.items()])


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


def append_pending(run_dir: Path, entries: list[dict[str, Any]]) -> None:
    """Append ``entries`` to ``<run_dir>/mlflow_pending.jsonl`` under its lock, fsynced."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked_pending(run_dir / PENDING_FILE, "a") as f:
        f.write("".join(json.dumps(e) + "\n" for e in entries))  # NaN/inf are written as JSON's NaN/Infinity
        f.flush()
        os.fsync(f.fileno())


def stash_artifact(run_dir: Path | None, path: Path, artifact_path: str | None) -> dict[str, Any]:
    """Copy ``path`` (file or folder) under ``<run_dir>/mlflow_pending_artifacts/<id>/``: the original may be a
    temporary file gone by the time the server answers again. Returns the pending entry that names the copy."""
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
        send_params(client, run_id, entry["params"])
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


def replay(client: MlflowClient, run_dir: Path) -> tuple[dict[str, int], BaseException | None]:
    """Send ``<run_dir>/mlflow_pending.jsonl`` in order; see :func:`upload_pending` (which checks the server first).

    Stops at the first transient failure (that entry and the rest stay pending; the error is returned); an entry
    refused for good (4xx, unreadable line) moves to ``mlflow_pending.rejected.jsonl`` with the error. The pending
    file is deleted once empty, and the pending-artifacts folder with it when empty. Other errors propagate.

    Returns:
        ``({"sent": n, "remaining": n, "rejected": n}, failure)``; ``failure`` is None unless a transient error
        stopped the replay.
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
                    if is_transient(err):
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
    quiet_env()
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    with bounded_http(uri):
        counts, failure = replay(MlflowClient(tracking_uri=uri, registry_uri=uri), run_dir)
    if failure is not None:
        log.warning("MLflow tracking at %s failed again (%s); %d entries stay in %s", redact_uri(uri),
                    redact_uri(failure).splitlines()[0][:300], counts["remaining"], run_dir / PENDING_FILE)
    return counts
