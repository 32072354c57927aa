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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
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
            f"MLflow tracking server {uri} is unreachable ({err}). Start it (e.g. `mlflow server --host 127.0.0.1 "
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
        exp_id = client.create_experiment(experiment, artifact_location=artifact_location(root))
    elif exp.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {experiment!r} is deleted in {uri}; restore it or set another "
                         "'experiment' in params.yaml")
    else:
        exp_id = exp.experiment_id
    return client, exp_id


# ---------------------------------------------------------------------------------------------------------------
# Logger
# ---------------------------------------------------------------------------------------------------------------


class MlflowLogger:
    """A :class:`Logger` writing to one MLflow run through ``MlflowClient``.

    Metrics are buffered and written with ``log_batch`` (one SQLite transaction per ``flush_every`` values instead
    of one per value); call :meth:`flush` (done by :func:`stage_logger`) before the process ends. Non-finite metric
    values are logged as they are (MLflow stores NaN/inf), so a diverging run stays visible.

    Params are immutable in MLflow: re-logging a key with another value (e.g. ``evaluate.num_samples`` changed
    while resuming the training run) keeps the first value and records the new one as tag
    ``ganops.param_update.<key>`` instead of failing the stage.
    """

    def __init__(self, client: MlflowClient, run_id: str, flush_every: int = 500) -> None:
        self.client = client
        self.run_id = run_id
        self.flush_every = flush_every
        self._metrics: list[Any] = []

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self.flush()
        existing = self.client.get_run(self.run_id).data.params
        new = {k: _param_str(v) for k, v in params.items()}
        fresh = [Param(k, v) for k, v in new.items() if k not in existing]
        changed = {f"ganops.param_update.{k}": v for k, v in new.items() if k in existing and existing[k] != v}
        for i in range(0, len(fresh), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(self.run_id, params=fresh[i:i + 100])
        if changed:
            log.warning("params differ from the values already logged to run %s: %s", self.run_id, changed)
            self.set_tags(changed)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._metrics.extend(Metric(k, float(v), ts, int(step or 0)) for k, v in metrics.items())
        if len(self._metrics) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write buffered metrics (at most 1000 per batch, MLflow's limit)."""
        while self._metrics:
            batch, self._metrics = self._metrics[:1000], self._metrics[1000:]
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_image(self, path: str | Path, artifact_path: str = "samples") -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


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


def export_loss_csv(run_dir: str | Path) -> Path | None:
    """Write ``<run_dir>/loss.csv`` (columns step, kimg, loss_G, loss_D) from the loss lines of ``stats.jsonl``.

    DVC plots read CSV/JSON/YAML but not JSON Lines; this is the ``plots:`` file of ``dvc.yaml``. Lines without
    ``loss_G`` (sample-interval and evaluation entries) are skipped. Returns None when ``stats.jsonl`` is absent.
    """
    import csv
    import io
    import json

    from ganops.io import atomic_write

    stats = Path(run_dir) / "stats.jsonl"
    if not stats.is_file():
        return None
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOSS_COLUMNS)
    for line in stats.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "loss_G" in entry:
            writer.writerow([entry.get(k, "") for k in LOSS_COLUMNS])
    out = Path(run_dir) / LOSS_CSV
    with atomic_write(out, "w") as f:
        f.write(buf.getvalue())
    return out


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
    plot when in-training evaluation ran; evaluate adds the evaluated sample grid (``evaluation/``). eval.json and
    the model are logged by evaluate and register themselves.
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
        files.extend((run_dir / n, "train") for n in ("training_options.json", "train.json", LOSS_CSV))
        files.append((run_dir / "fakes-latest.png", "samples"))
    for path, dest in files:
        if path.is_file():
            logger.log_artifact(path, dest)


@contextlib.contextmanager
def stage_logger(params: Params, stage: str, *, root: str | Path | None = None) -> Iterator[Logger]:
    """Open the MLflow run of this pipeline execution for one stage and yield its :class:`Logger`.

    The run is also the active fluent run inside the block (``mlflow.active_run()``), which is how
    :func:`ganops.registry.register` logs the model into it. See the module docstring for which run is used.
    On exit the stage's outputs are attached as artifacts, ``ganops.status.<stage>`` is tagged ``ok`` and the run
    ends ``FINISHED``; if the block raises, the tag is ``failed``, the run ends ``FAILED`` and the error propagates.

    Args:
        params: the whole validated ``params.yaml``.
        stage: one of ``prepare, validate, train, evaluate, register``.
        root: project root for the default SQLite store and artifact folder (default: cwd).

    Raises:
        ValueError: unknown ``stage``, or ``$GANOPS_MLFLOW_RUN_ID`` names a run missing from the store (a stale id
            in ``mlflow_run.json`` only logs a warning and starts a new run).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    run_id = _resolve_run_id(params, stage)
    if run_id is None and stage in ("prepare", "validate"):
        yield NullLogger()
        return

    import mlflow

    client, exp_id = configure_mlflow(params.experiment, root)
    if run_id is not None and not _run_exists(client, run_id):
        if os.environ.get(ENV_RUN_ID, "").strip():
            raise ValueError(f"${ENV_RUN_ID}={run_id} is not a run in {tracking_uri(root)}; unset it or point "
                             "MLFLOW_TRACKING_URI at the store that holds it")
        log.warning("run %s from %s/%s is not in %s (store reset?); logging to a new run",
                    run_id, params.train.run_dir, RUN_ID_FILE, tracking_uri(root))
        run_id = None
    if run_id is None:
        run = client.create_run(exp_id, tags={"ganops.source": "cli"})
        run_id = run.info.run_id
    if stage == "train":
        write_json(Path(params.train.run_dir) / RUN_ID_FILE,
                   {"run_id": run_id, "experiment_id": client.get_run(run_id).info.experiment_id})

    logger = MlflowLogger(client, run_id)
    mlflow.start_run(run_id=run_id)
    status = "FAILED"
    try:
        logger.set_tags({"ganops.stage": stage, STATUS_TAG.format(stage=stage): "running"})
        logger.log_params(_stage_params(params, stage))
        yield logger
        logger.flush()
        if stage == "train":
            export_loss_csv(params.train.run_dir)  # the dvc.yaml plots file, inside the train output
        _log_stage_outputs(logger, params, stage)
        logger.set_tags({STATUS_TAG.format(stage=stage): "ok"})
        status = "FINISHED"
    except BaseException:
        with contextlib.suppress(Exception):  # report the stage's own error, not a logging one
            logger.flush()
            logger.set_tags({STATUS_TAG.format(stage=stage): "failed", "ganops.failed_stage": stage})
        raise
    finally:
        mlflow.end_run(status=status)

