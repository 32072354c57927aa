"""Stage wiring: which MLflow run a pipeline stage logs into, which params and artifacts it attaches, its status.

One pipeline execution = one MLflow run. Which run a stage logs into:

1. ``$GANOPS_MLFLOW_RUN_ID`` when set (the Prefect flow creates the run and exports it to every stage);
2. otherwise ``train`` starts a new run, and every stage that uses the run records its id in
   ``<train.run_dir>/mlflow_run.json`` (a DVC output of ``train``), so ``evaluate`` and ``register`` resume it;
3. ``prepare`` and ``validate`` without a pipeline run log nowhere; ``train`` attaches the dataset summary and the
   validation report to its run instead, so each training run still carries the data it saw.

What each stage logs is the table :data:`STAGE_POLICIES` (params sections, artifacts, run handling). A stage that
raises marks the run ``FAILED`` and tags ``ganops.status.<stage> = failed``; the registry refuses to register a
model from such a run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganops.io import read_json, write_json
from ganops.rundir import RunDir
from ganops.rundir.export import FID_PLOT, export_fid_csv, export_loss_csv, plot_fid_over_training
from ganops.tracking.logger import Logger, MlflowLogger, NullLogger
from ganops.tracking.outbox import PENDING_FILE, replay
from ganops.tracking.server import bounded_http, configure_mlflow, redact_uri, tracking_uri
from ganops.tracking.sysmetrics import start_system_metrics, stop_system_metrics

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient

    from ganops.config import Params

log = logging.getLogger(__name__)

ENV_RUN_ID = "GANOPS_MLFLOW_RUN_ID"
RUN_ID_FILE = "mlflow_run.json"
# Tags carrying per-stage outcome; the registry reads ``ganops.status.train``.
STATUS_TAG = "ganops.status.{stage}"

# An artifact rule: attaches something derived from params.yaml to the stage's run (a missing file is skipped).
ArtifactRule = Callable[[MlflowLogger, "Params"], None]


@dataclass(frozen=True)
class Files:
    """Artifact rule: the existing files among ``paths(params)``, logged under the artifact folder ``dest``."""

    paths: Callable[[Params], list[Path]]
    dest: str

    def __call__(self, logger: MlflowLogger, params: Params) -> None:
        for path in self.paths(params):
            if path.is_file():
                logger.log_artifact(path, self.dest)


def _log_resolved_config(logger: MlflowLogger, params: Params) -> None:
    """The whole validated params.yaml, defaults filled in (``config/params.resolved.yaml``): what the stage ran."""
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.resolved.yaml"
        path.write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False))
        logger.log_artifact(path, "config")


def _log_evaluation_grid(logger: MlflowLogger, params: Params) -> None:
    """The evaluated snapshot's samples next to its metrics (``evaluation/``), one file per evaluated snapshot."""
    import shutil
    import tempfile

    grid, ev_path = RunDir(params.train.run_dir).fakes_latest, Path(params.evaluate.out)
    if not grid.is_file() or not ev_path.is_file():
        return
    ev = read_json(ev_path)
    name = f"fakes-kimg{float(ev.get('kimg') or 0):08.3f}-{str(ev.get('snapshot_sha256', ''))[:8]}.png"
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(grid, Path(tmp) / name)
        logger.log_artifact(Path(tmp) / name, "evaluation")


def _log_fid_plot(logger: MlflowLogger, params: Params) -> None:
    """The FID-over-training plot (``train/fid_over_training.png``) when in-training evaluation ran."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        plot = plot_fid_over_training(params.train.run_dir, Path(tmp) / FID_PLOT)
        if plot is not None:
            logger.log_artifact(plot, "train")


def _log_data_docs(logger: MlflowLogger, params: Params) -> None:
    """The Great Expectations Data Docs site the training data passed (``data/validation/data_docs/``), browsable
    from the run's artifacts, and tag ``ganops.data_docs`` saying where to open it."""
    docs = Path(params.validate_.report_dir) / "data_docs"
    if (docs / "index.html").is_file():
        logger.log_artifact(docs, "data/validation/data_docs")
        logger.set_tags({"ganops.data_docs": "data/validation/data_docs/index.html (run artifact); local: "
                                             f"{(docs / 'index.html').resolve()}"})


def _validation_reports(params: Params) -> list[Path]:
    report_dir = Path(params.validate_.report_dir)
    return sorted(p for p in report_dir.iterdir() if p.is_file()) if report_dir.is_dir() else []


def _train_outputs(params: Params) -> list[Path]:
    rd = RunDir(params.train.run_dir)
    return [rd.options, rd.summary, rd.path / rd.LOSS_CSV, rd.path / rd.FID_CSV]


_DATA_SUMMARY = Files(lambda p: [Path(p.prepare.out_dir) / "summary.json"], "data")
_VALIDATION_REPORT = Files(_validation_reports, "data/validation")
_TRAIN_OUTPUTS = Files(_train_outputs, "train")
_LATEST_SAMPLES = Files(lambda p: [RunDir(p.train.run_dir).fakes_latest], "samples")


@dataclass(frozen=True)
class StagePolicy:
    """How one stage uses tracking.

    Attributes:
        sections: params.yaml sections logged as the stage's params (top-level keys such as ``seed`` always are).
        artifacts: rules run in order when the stage ends, attaching its small, human-readable outputs (never
            arrays or checkpoints; eval.json and the model are logged by evaluate and register themselves).
        without_run: True when the stage logs nowhere unless ``$GANOPS_MLFLOW_RUN_ID`` names a run.
        resumes_recorded_run: True when the stage resumes the run recorded in ``<train.run_dir>/mlflow_run.json``.
        owns_run: True for the stage that records the run id, samples system metrics and exports ``stats.jsonl``
            (``loss.csv``, ``fid.csv``: the dvc.yaml plots files, inside the train output).
    """

    sections: tuple[str, ...]
    artifacts: tuple[ArtifactRule, ...]
    without_run: bool = False
    resumes_recorded_run: bool = False
    owns_run: bool = False


# Validate's Data Docs go with train, not validate: under plain `dvc repro` validate has no run.
STAGE_POLICIES: dict[str, StagePolicy] = {
    "prepare": StagePolicy(("prepare",), (_log_resolved_config, _DATA_SUMMARY), without_run=True),
    "validate": StagePolicy(("validate",), (_log_resolved_config, _VALIDATION_REPORT), without_run=True),
    "train": StagePolicy(("prepare", "validate", "train"),
                         (_log_resolved_config, _log_fid_plot, _DATA_SUMMARY, _VALIDATION_REPORT, _TRAIN_OUTPUTS,
                          _LATEST_SAMPLES, _log_data_docs), owns_run=True),
    "evaluate": StagePolicy(("evaluate",), (_log_resolved_config, _log_evaluation_grid), resumes_recorded_run=True),
    "register": StagePolicy(("register",), (_log_resolved_config,), resumes_recorded_run=True),
}
STAGES = tuple(STAGE_POLICIES)  # in ganops.config.STAGES order (tests/unit/test_stage_wiring.py)


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id recorded in ``<run_dir>/mlflow_run.json``, or None when the file is absent."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    run_id = read_json(path).get("run_id")
    return str(run_id) if run_id else None


def _stage_params(params: Params, stage: str) -> dict[str, Any]:
    """The flattened params a stage reads: its own section(s) of :data:`STAGE_POLICIES`, plus top-level keys."""
    from ganops.config import flatten

    sections = STAGE_POLICIES[stage].sections
    return {k: v for k, v in flatten(params).items() if k.split(".")[0] in sections or "." not in k}


def _run_exists(client: MlflowClient, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _open_run(client: MlflowClient, exp_id: str, params: Params, run_id: str | None, uri: str) -> str:
    """The id of the run to log into: ``run_id`` when the store has it, else a new run (see module docstring).

    Raises:
        ValueError: ``$GANOPS_MLFLOW_RUN_ID`` names a run missing from the store.
    """
    if run_id is not None and not _run_exists(client, run_id):
        if os.environ.get(ENV_RUN_ID, "").strip():
            raise ValueError(f"${ENV_RUN_ID}={run_id} is not a run in {redact_uri(uri)}; unset it or point "
                             "MLFLOW_TRACKING_URI at the store that holds it")
        log.warning("run %s from %s/%s is not in %s (store reset?); logging to a new run",
                    run_id, params.train.run_dir, RUN_ID_FILE, redact_uri(uri))
        run_id = None
    if run_id is None:
        run_id = client.create_run(exp_id, tags={"ganops.source": "cli"}).info.run_id
    return run_id


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
    are sent first when the stage opens. The train stage samples system metrics (:mod:`ganops.tracking.sysmetrics`).

    Args:
        params: the whole validated ``params.yaml``.
        stage: one of ``prepare, validate, train, evaluate, register``.
        root: project root for the default SQLite store and artifact folder (default: cwd).

    Raises:
        ValueError: unknown ``stage``, or ``$GANOPS_MLFLOW_RUN_ID`` names a run missing from the store (a stale id
            in ``mlflow_run.json`` only logs a warning and starts a new run).
        TrackingUnavailableError: an http(s) ``$MLFLOW_TRACKING_URI`` does not answer when the stage opens.
    """
    if stage not in STAGE_POLICIES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    policy = STAGE_POLICIES[stage]
    run_id = os.environ.get(ENV_RUN_ID, "").strip() or None
    if run_id is None and policy.resumes_recorded_run:
        run_id = read_run_id(params.train.run_dir)
    if run_id is None and policy.without_run:
        yield NullLogger()
        return

    import mlflow

    uri = tracking_uri(root)
    run_dir = RunDir(params.train.run_dir).path
    with bounded_http(uri):
        client, exp_id = configure_mlflow(params.experiment, root)
        if (run_dir / PENDING_FILE).is_file():  # an earlier stage lost the server: its entries go first
            counts, failure = replay(client, run_dir)
            if failure is not None:
                log.warning("%d pending MLflow entries could not be sent yet (%s)", counts["remaining"],
                            str(failure).splitlines()[0][:300])
        run_id = _open_run(client, exp_id, params, run_id, uri)
        if policy.owns_run:
            write_json(run_dir / RUN_ID_FILE,
                       {"run_id": run_id, "experiment_id": client.get_run(run_id).info.experiment_id})

        logger = MlflowLogger(client, run_id, pending_dir=run_dir)
        # System metrics are started here, not by start_run, so that stopping them cannot hang on a lost server.
        mlflow.start_run(run_id=run_id, log_system_metrics=False)
        monitor = start_system_metrics(run_id, uri) if policy.owns_run else None
        status = "FAILED"
        try:
            logger.set_tags({"ganops.stage": stage, STATUS_TAG.format(stage=stage): "running"})
            logger.log_params(_stage_params(params, stage))
            yield logger
            logger.flush()
            if policy.owns_run:
                export_loss_csv(run_dir)
                export_fid_csv(run_dir)
            for attach in policy.artifacts:
                attach(logger, params)
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
                    stop_system_metrics(monitor, logger)
                    logger.retry_now()  # one last attempt to deliver what is pending before the stage ends
                    logger.terminate(status)
            finally:
                _end_fluent_run(status)
