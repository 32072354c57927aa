"""Prefect 3 flow running the ganops DVC stages in order: prepare -> validate -> train -> evaluate -> register.

DVC alone decides what is up to date: one ``dvc status`` finds the first changed stage, and from there each task is
``dvc repro --single-item <stage>``, so this flow and a plain ``dvc repro`` execute the same commands. Prefect adds retries for transient failures (a held DVC lock, a busy
SQLite tracking store), one MLflow run shared by every stage of this execution (exported to the stages as
``$GANOPS_MLFLOW_RUN_ID``), a markdown report and a table artifact of the FID history.

Parameters are typed: ``overrides`` is a :data:`ganops.overrides.PipelineOverrides`, generated from the ``ganops.config`` models
(one optional field per ``params.yaml`` key, same types and ranges), so a deployment's run form shows and checks
every key, and a bad value fails before any stage runs, naming the field. ``{"train": {"loss": "hinge"}}`` and the
dotted form ``{"train.loss": "hinge"}`` are both accepted. Accepted overrides are validated once more together with
the project's ``params.yaml`` (cross-field rules), then written into it -- what ``dvc exp run -S`` does -- so DVC
still decides which stages are out of date, and a ``dvc repro`` afterwards sees the same parameters.

Run it with ``python flows/pipeline.py [-S train.loss=hinge ...]`` (no Prefect server needed: Prefect starts a
temporary local one), or deploy it (``prefect.yaml``, ``flows/serve.py``; see README).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

# The temporary Prefect server migrates a fresh database on first start: > 20 s (Prefect's default) on 2 cores.
for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")):
    os.environ.setdefault(_key, _value)

# Imported after the analytics opt-out above.
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from ganops.config import ConfigError, Params  # noqa: E402
from ganops.overrides import (  # noqa: E402
    PipelineOverrides, apply_overrides, parse_overrides, parse_set_args, resolve_overrides,
)
from ganops.report import fid_history, summary_markdown  # noqa: E402
from ganops.stage_runner import (  # noqa: E402
    STAGES, Stage, StageFailed, StageResult, changed_stages, repro_stage, retry_if_transient, stages_to_run,
)

PROJECT_DIR = Path(__file__).resolve().parents[1]
REPORT_KEY, FID_TABLE_KEY = "ganops-pipeline", "ganops-fid-history"


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE,
      task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str, run_id: str | None) -> StageResult:
    """``dvc repro --single-item <stage>`` in ``project_dir``; raises :class:`StageFailed` on a non-zero exit.

    The stage's output reaches the terminal and the Prefect run log line by line while it runs (progress bars as
    periodic plain lines: the stage's stderr is a pipe, see ``ganops.progress``)."""
    logger = get_run_logger()
    # Prefect's run logger writes to the terminal and to the run's log.
    result = repro_stage(stage, project_dir, run_id, lambda line: logger.info("[%s] %s", stage, line))
    logger.info("stage %s %s in %.1f s", stage, "ran" if result.ran else "was up to date", result.wall_time_s)
    return result


def _start_pipeline_run(params: Params, project_dir: Path) -> tuple[str, str]:
    from ganops.tracking import configure_mlflow

    client, exp_id = configure_mlflow(params.experiment, root=project_dir)
    fr_id = flow_run.get_id()
    run = client.create_run(exp_id, run_name=f"pipeline-{flow_run.get_name() or 'local'}",
                            tags={"ganops.source": "prefect", "prefect.flow_run_id": str(fr_id or "")})
    return run.info.run_id, exp_id


def _end_pipeline_run(project_dir: Path, params: Params, run_id: str, status: str,
                      results: list[StageResult]) -> None:
    from ganops.tracking import configure_mlflow

    client, _ = configure_mlflow(params.experiment, root=project_dir)
    client.set_tag(run_id, "ganops.stages_run", ",".join(r.stage for r in results if r.ran) or "none")
    client.set_terminated(run_id, status=status)


def publish_artifacts(project_dir: Path, params: Params, run_id: str, exp_id: str,
                      results: list[StageResult]) -> None:
    """The markdown report (key ``ganops-pipeline``) and the FID-history table (key ``ganops-fid-history``)."""
    create_markdown_artifact(summary_markdown(project_dir, params, run_id, exp_id, results), key=REPORT_KEY,
                             description="ganops pipeline: metrics, FID history, registered model, links")
    history = fid_history(project_dir, params)
    if history:
        create_table_artifact(history, key=FID_TABLE_KEY,
                              description=f"FID over training (MLflow run {run_id}); last row: the evaluate stage")


@flow(name="ganops-pipeline", log_prints=True)
def ganops_pipeline(overrides: PipelineOverrides | None = None, params_path: str = "params.yaml",
                    project_dir: str | None = None, stages: tuple[Stage, ...] = STAGES) -> dict[str, Any]:
    """Run the DVC stages in order under one MLflow run; returns ``{run_id, stages, eval, registration}``.

    Args:
        overrides: params.yaml values to change, per section: ``{"train": {"loss": "hinge"}}`` (or dotted,
            ``{"train.loss": "hinge"}``). Typed like params.yaml, then validated with the whole file before
            anything runs, then written into ``params.yaml`` (like ``dvc exp run -S``; the file keeps them
            afterwards). The MLflow run is tagged ``ganops.overrides``.
        params_path: the project's ``params.yaml`` (relative to ``project_dir``); DVC reads only that file.
        project_dir: the ganops checkout (default: the one holding this file).
        stages: the stages to run, in pipeline order (default: all five).

    Raises:
        ValueError: unknown stage names or a params file other than the project's params.yaml.
        ConfigError: params.yaml or an override is invalid, naming the field (no stage ran, params.yaml unchanged).
            Through Prefect, a value of the wrong type is refused even earlier, by parameter validation
            (``prefect.exceptions.ParameterTypeError``: ``overrides.train.total_kimg: ...``).
        StageFailed: a stage failed (after retries for transient failures); the MLflow run is marked FAILED.
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    project = Path(project_dir).resolve() if project_dir else PROJECT_DIR
    params_file, params, typed = resolve_overrides(project, params_path, overrides)
    if typed:
        apply_overrides(params_file, typed)
        get_run_logger().info("params.yaml overrides: %s", typed)
    run_id, exp_id = _start_pipeline_run(params, project)
    if typed:
        from ganops.tracking import configure_mlflow

        configure_mlflow(params.experiment, root=project)[0].set_tag(run_id, "ganops.overrides",
                                                                     json.dumps(typed, sort_keys=True))
    selected = [s for s in STAGES if s in stages]
    to_run = stages_to_run(selected, changed_stages(project))
    # Stages before the first changed one: DVC's status says up to date, so no `dvc repro` start-up is paid for them.
    results: list[StageResult] = [StageResult(s, False, 0.0) for s in selected if s not in to_run]
    if results:
        get_run_logger().info("dvc status: %s up to date", ", ".join(r.stage for r in results))
    try:
        for stage in to_run:
            results.append(run_stage(stage, str(project), run_id))
    except BaseException:
        _end_pipeline_run(project, params, run_id, "FAILED", results)
        raise
    _end_pipeline_run(project, params, run_id, "FINISHED", results)
    publish_artifacts(project, params, run_id, exp_id, results)
    ev_path, reg_path = project / params.evaluate.out, project / params.register_.out
    return {
        "run_id": run_id,
        "stages": {r.stage: {"ran": r.ran, "wall_time_s": r.wall_time_s} for r in results},
        "eval": json.loads(ev_path.read_text()) if ev_path.is_file() else None,
        "registration": json.loads(reg_path.read_text()) if reg_path.is_file() else None,
    }


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the ganops DVC stages as a Prefect flow.")
    cli.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                     help="params.yaml override, e.g. -S train.loss=hinge (repeatable)")
    try:
        # Checked here first, so a typo ends with the field named instead of Prefect's failed-run traceback.
        cli_overrides = parse_overrides(parse_set_args(cli.parse_args().set_param))
        result = ganops_pipeline(overrides=cli_overrides)
    except (StageFailed, ConfigError, ValueError) as err:
        # Prefect has already logged the full state; the user needs the failing stage and its message.
        print(f"ganops pipeline failed: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({k: v for k, v in result.items() if k != "eval"}, indent=2, default=str))
