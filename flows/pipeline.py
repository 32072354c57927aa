"""Prefect 3 flow running the ganops DVC stages in order: prepare -> validate -> train -> evaluate -> register.

DVC alone decides what is up to date (each task is ``dvc repro --single-item <stage>``), so this flow and a plain
``dvc repro`` execute the same commands. Prefect adds retries for transient failures (a held DVC lock, a busy
SQLite tracking store), one MLflow run shared by every stage of this execution (exported to the stages as
``$GANOPS_MLFLOW_RUN_ID``) and a markdown artifact summarising the result.

Parameter overrides (``overrides={"train.loss": "hinge"}``) are validated against the full ``params.yaml`` schema
before any stage runs, then written into the project's ``params.yaml`` -- what ``dvc exp run -S`` does -- so DVC
still decides which stages are out of date, and a ``dvc repro`` afterwards sees the same parameters.

Run it with ``python flows/pipeline.py [-S train.loss=hinge ...]`` (no Prefect server needed: Prefect starts a
temporary local one).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# The temporary Prefect server migrates a fresh database on first start: > 20 s (Prefect's default) on 2 cores.
for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")):
    os.environ.setdefault(_key, _value)

# Imported after the analytics opt-out above.
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from ganops.config import ConfigError, Params, load_params, parse_params  # noqa: E402
from ganops.tracking import ENV_RUN_ID, configure_mlflow, tracking_uri  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "validate", "train", "evaluate", "register")
# Output fragments that mark a failure worth retrying: another process holds DVC's lock, or SQLite is busy.
TRANSIENT_PATTERNS = ("Unable to acquire lock", "database is locked", "Connection reset", "Temporary failure")
OUTPUT_TAIL_CHARS = 4000


class StageFailed(RuntimeError):
    """``dvc repro`` of one stage exited non-zero; ``transient`` says whether a retry may help."""

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        self.stage, self.returncode = stage, returncode
        self.transient = any(p in output for p in TRANSIENT_PATTERNS)
        tail = output[-OUTPUT_TAIL_CHARS:]
        super().__init__(f"stage {stage!r} failed (dvc exit code {returncode}); last output:\n{tail}")


@dataclass(frozen=True)
class StageResult:
    stage: str
    ran: bool  # False: DVC found the stage up to date and skipped it
    wall_time_s: float


def _retry_only_transient(task: Any, task_run: Any, state: Any) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StageFailed) and exc.transient


def stage_env(run_id: str | None) -> dict[str, str]:
    """Environment for a stage subprocess: the venv's bin first on PATH (``ganops``), quiet analytics, run id."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    if run_id:
        env[ENV_RUN_ID] = run_id
    return env


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_only_transient, cache_policy=NO_CACHE,
      task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str, run_id: str | None) -> StageResult:
    """``dvc repro --single-item <stage>`` in ``project_dir``; raises :class:`StageFailed` on a non-zero exit."""
    logger = get_run_logger()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=project_dir,
                          env=stage_env(run_id), capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, output)
    ran = re.search(rf"Running stage '{re.escape(stage)}'", output) is not None
    logger.info("stage %s %s in %.1f s", stage, "ran" if ran else "was up to date", time.perf_counter() - t0)
    return StageResult(stage, ran, time.perf_counter() - t0)


def _start_pipeline_run(params: Params, project_dir: Path) -> tuple[str, str]:
    client, exp_id = configure_mlflow(params.experiment, root=project_dir)
    fr_id = flow_run.get_id()
    run = client.create_run(exp_id, run_name=f"pipeline-{flow_run.get_name() or 'local'}",
                            tags={"ganops.source": "prefect", "prefect.flow_run_id": str(fr_id or "")})
    return run.info.run_id, exp_id


def _end_pipeline_run(project_dir: Path, params: Params, run_id: str, status: str,
                      results: list[StageResult]) -> None:
    client, _ = configure_mlflow(params.experiment, root=project_dir)
    client.set_tag(run_id, "ganops.stages_run", ",".join(r.stage for r in results if r.ran) or "none")
    client.set_terminated(run_id, status=status)


def summary_markdown(project_dir: Path, params: Params, run_id: str, exp_id: str,
                     results: list[StageResult]) -> str:
    """The run summary: stage table, FID/KID, registered version and alias, sample grid, MLflow run."""
    ev_path, reg_path = project_dir / params.evaluate.out, project_dir / params.register_.out
    ev = json.loads(ev_path.read_text()) if ev_path.is_file() else {}
    reg = json.loads(reg_path.read_text()) if reg_path.is_file() else {}
    lines = ["# ganops pipeline", "", "| stage | ran | wall time (s) |", "|---|---|---|"]
    lines += [f"| {r.stage} | {'yes' if r.ran else 'up to date'} | {r.wall_time_s:.1f} |" for r in results]
    lines += ["", "| metric | value |", "|---|---|"]
    for key in ("fid", "kid_mean", "kid_std", "num_generated", "num_real", "protocol", "kimg"):
        if key in ev:
            lines.append(f"| {key} | {ev[key]} |")
    if reg:
        lines += ["", f"**Model** `{reg['model_name']}` version **{reg['version']}**, alias **@{reg['alias']}** "
                      f"({reg.get('reason', '')}); load with `mlflow.pyfunc.load_model(\"{reg['model_uri']}\")`."]
    grid = project_dir / params.train.run_dir / "fakes-latest.png"
    lines += ["", f"**Samples**: `{grid}`", "",
              f"**MLflow run** `{run_id}` in `{tracking_uri(project_dir)}`: run "
              f"`mlflow ui --backend-store-uri {tracking_uri(project_dir)}` and open "
              f"http://127.0.0.1:5000/#/experiments/{exp_id}/runs/{run_id}"]
    return "\n".join(lines) + "\n"


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[leaf] = value


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def validate_overrides(params_file: Path, overrides: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
    """Merge dotted-key ``overrides`` into ``params_file`` and validate the result; nothing is written.

    Args:
        params_file: the project's ``params.yaml``.
        overrides: ``{"train.loss": "hinge", "train.total_kimg": 5}``; values are parsed like ``params.yaml``
            values (``"0.5"`` becomes 0.5 for a float field).

    Returns:
        ``(params, typed)``: the validated :class:`Params` and each override's validated value (JSON types).

    Raises:
        ConfigError: an override names an unknown key, has a wrong type or is out of range (the message names the
            field), or a key is empty.
    """
    raw = yaml.safe_load(params_file.read_text()) or {}
    for key, value in overrides.items():
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override key {key!r} is not a dotted params.yaml key such as 'train.loss'")
        _set_dotted(raw, key, value)
    params = parse_params(raw, f"{params_file} with overrides {overrides}")
    dumped = params.model_dump(by_alias=True, mode="json")
    return params, {key: _get_dotted(dumped, key) for key in overrides}


def apply_overrides(params_file: Path, typed: dict[str, Any]) -> None:
    """Write validated overrides into ``params_file`` in place, keeping its comments and key order (as
    ``dvc exp run -S`` does)."""
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip mode: comments survive
    doc = rt.load(params_file.read_text())
    for key, value in typed.items():
        _set_dotted(doc, key, value)
    buf = io.StringIO()
    rt.dump(doc, buf)
    params_file.write_text(buf.getvalue())


def _check_params_path(project_dir: Path, params_path: str | Path) -> Path:
    path = (project_dir / params_path).resolve()
    if path != (project_dir / "params.yaml").resolve():
        raise ValueError(f"params_path {params_path!r} resolves to {path}, but the DVC stages read "
                         f"{project_dir / 'params.yaml'}; edit that file or use `dvc exp run -S key=value`")
    return path


@flow(name="ganops-pipeline", log_prints=True)
def ganops_pipeline(overrides: dict[str, Any] | None = None, params_path: str = "params.yaml",
                    project_dir: str | None = None, stages: tuple[str, ...] = STAGES) -> dict[str, Any]:
    """Run the DVC stages in order under one MLflow run; returns ``{run_id, stages, eval, registration}``.

    Args:
        overrides: dotted ``params.yaml`` keys -> values, e.g. ``{"train.loss": "hinge"}``. Validated with the
            full schema before anything runs, then written into ``params.yaml`` (like ``dvc exp run -S``; the file
            keeps them afterwards). The MLflow run is tagged ``ganops.overrides``.
        params_path: the project's ``params.yaml`` (relative to ``project_dir``); DVC reads only that file.
        project_dir: the ganops checkout (default: the one holding this file).
        stages: the stages to run, in pipeline order (default: all five).

    Raises:
        ValueError: unknown stage names or a params file other than the project's params.yaml.
        ConfigError: params.yaml or an override is invalid (no stage ran, params.yaml unchanged).
        StageFailed: a stage failed (after retries for transient failures); the MLflow run is marked FAILED.
    """
    project = Path(project_dir).resolve() if project_dir else PROJECT_DIR
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; valid: {', '.join(STAGES)}")
    params_file = _check_params_path(project, params_path)
    params = load_params(params_file)
    if overrides:
        params, typed = validate_overrides(params_file, overrides)
        apply_overrides(params_file, typed)
        get_run_logger().info("params.yaml overrides: %s", typed)
    run_id, exp_id = _start_pipeline_run(params, project)
    if overrides:
        configure_mlflow(params.experiment, root=project)[0].set_tag(run_id, "ganops.overrides",
                                                                     json.dumps(typed, sort_keys=True))
    results: list[StageResult] = []
    try:
        for stage in (s for s in STAGES if s in stages):
            results.append(run_stage(stage, str(project), run_id))
    except BaseException:
        _end_pipeline_run(project, params, run_id, "FAILED", results)
        raise
    _end_pipeline_run(project, params, run_id, "FINISHED", results)
    create_markdown_artifact(summary_markdown(project, params, run_id, exp_id, results), key="ganops-pipeline",
                             description="ganops pipeline: metrics, registered model, samples, MLflow run")
    ev_path, reg_path = project / params.evaluate.out, project / params.register_.out
    return {
        "run_id": run_id,
        "stages": {r.stage: {"ran": r.ran, "wall_time_s": r.wall_time_s} for r in results},
        "eval": json.loads(ev_path.read_text()) if ev_path.is_file() else None,
        "registration": json.loads(reg_path.read_text()) if reg_path.is_file() else None,
    }


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """``["train.loss=hinge", "train.total_kimg=5"]`` -> ``{"train.loss": "hinge", "train.total_kimg": 5}``
    (values parsed as YAML scalars, like ``dvc exp run -S``). Raises ValueError for an item without ``=``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"-S {pair!r}: expected KEY=VALUE, e.g. -S train.loss=hinge")
        out[key.strip()] = yaml.safe_load(value)
    return out


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Run the ganops DVC stages as a Prefect flow.")
    cli.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                     help="params.yaml override, e.g. -S train.loss=hinge (repeatable)")
    try:
        result = ganops_pipeline(overrides=parse_set_args(cli.parse_args().set_param) or None)
    except (StageFailed, ConfigError) as err:
        # Prefect has already logged the full state; the user needs the failing stage and its message.
        print(f"ganops pipeline failed: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({k: v for k, v in result.items() if k != "eval"}, indent=2, default=str))
