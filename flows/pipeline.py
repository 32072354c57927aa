"""Prefect 3 flow running the ganops DVC stages in order: prepare -> validate -> train -> evaluate -> register.

DVC alone decides what is up to date: one ``dvc status`` finds the first changed stage, and from there each task is
``dvc repro --single-item <stage>``, so this flow and a plain ``dvc repro`` execute the same commands. Prefect adds retries for transient failures (a held DVC lock, a busy
SQLite tracking store), one MLflow run shared by every stage of this execution (exported to the stages as
``$GANOPS_MLFLOW_RUN_ID``), a markdown report and a table artifact of the FID history.

Parameters are typed: ``overrides`` is a :class:`PipelineOverrides`, generated from the ``ganops.config`` models
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
import codecs
import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

# The temporary Prefect server migrates a fresh database on first start: > 20 s (Prefect's default) on 2 cores.
for _key, _value in (("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_DISABLE_TELEMETRY", "true"),
                     ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")):
    os.environ.setdefault(_key, _value)

# Imported after the analytics opt-out above.
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator, model_validator  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

from ganops.config import ConfigError, Params, load_params, parse_params  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "validate", "train", "evaluate", "register")
Stage = Literal["prepare", "validate", "train", "evaluate", "register"]
# Output fragments that mark a failure worth retrying: another process holds DVC's lock, or SQLite is busy.
TRANSIENT_PATTERNS = ("Unable to acquire lock", "database is locked", "Connection reset", "Temporary failure")
OUTPUT_TAIL_CHARS = 4000
REPORT_KEY, FID_TABLE_KEY = "ganops-pipeline", "ganops-fid-history"


# ---- Typed overrides, generated from ganops.config so they cannot drift from params.yaml -------------------------

def _drop_null_defaults(schema: dict[str, Any], _cls: type) -> None:
    # Every field defaults to None = "keep params.yaml's value"; a form must not pre-fill null into typed fields.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


_OVERRIDES_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_drop_null_defaults)


def _copied_field_validators(model: type[BaseModel]) -> dict[str, Any]:
    """The model's ``@field_validator``s (e.g. Adam betas in [0, 1)), re-bound for the overrides model."""
    out: dict[str, Any] = {}
    for name, dec in model.__pydantic_decorators__.field_validators.items():
        func = dec.func  # bound to ``model``; takes (value) or (value, info)
        if len(inspect.signature(func).parameters) == 1:
            def wrapper(cls: type, value: Any, _f: Any = func) -> Any:
                return _f(value)
        else:
            def wrapper(cls: type, value: Any, info: Any, _f: Any = func) -> Any:
                return _f(value, info)
        out[name] = field_validator(*dec.info.fields, mode=dec.info.mode)(classmethod(wrapper))
    return out


def _overrides_model(model: type[BaseModel], name: str, nested: dict[str, type[BaseModel]]) -> type[BaseModel]:
    """``model`` with every field optional (default None = not overridden), same type, constraints, alias and
    description; fields whose type is a section model use that section's overrides model (``nested``)."""
    fields: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        annotation = nested.get(fname, info.annotation)
        fields[fname] = (annotation, FieldInfo.merge_field_infos(info, default=None, default_factory=None))
    doc = f"Overrides of {model.__name__} ({(model.__doc__ or '').strip().splitlines()[0]}); unset = keep params.yaml."
    return create_model(name, __config__=_OVERRIDES_CONFIG, __doc__=doc,
                        __validators__=_copied_field_validators(model), **fields)


_SECTION_MODELS = {fname: info.annotation for fname, info in Params.model_fields.items()
                   if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}
_SECTION_OVERRIDES = {fname: _overrides_model(m, f"{m.__name__.removesuffix('Config')}Overrides", {})
                      for fname, m in _SECTION_MODELS.items()}
# params.yaml section name (the alias: "validate", "register") -> field name on Params ("validate_", "register_").
_SECTION_BY_ALIAS = {(Params.model_fields[f].alias or f): f for f in _SECTION_MODELS}


class _OverridesBase(BaseModel):
    model_config = _OVERRIDES_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _nest_dotted_keys(cls, data: Any) -> Any:
        """``{"train.loss": "hinge"}`` -> ``{"train": {"loss": "hinge"}}`` (the ``dvc exp run -S`` spelling)."""
        if not isinstance(data, dict) or not any(isinstance(k, str) and "." in k for k in data):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(key, str) and "." in key:
                section, _, rest = key.partition(".")
                target = out.setdefault(section, {})
                if isinstance(target, BaseModel):
                    target = out[section] = target.model_dump(exclude_unset=True, by_alias=True)
                if not isinstance(target, dict):
                    raise ValueError(f"override {key!r} conflicts with {section!r} = {target!r}")
                target[rest] = value  # "train.loss.x" -> train: {"loss.x": ...}: an unknown key, named as such
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**value, **out[key]}
            else:
                out[key] = dict(value) if isinstance(value, dict) else value  # never mutate the caller's dict
        return out

    def dotted(self) -> dict[str, Any]:
        """The overrides that were set, as ``{"train.loss": "hinge", "seed": 3}`` (JSON types, params.yaml names).

        A field left out is not an override; an explicit ``null`` is (for keys that may be null in params.yaml).
        """
        out: dict[str, Any] = {}
        for key, value in self.model_dump(mode="json", by_alias=True, exclude_unset=True).items():
            if key in _SECTION_BY_ALIAS and isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


PipelineOverrides = create_model(
    "PipelineOverrides", __base__=_OverridesBase,
    __doc__="Overrides of params.yaml keys, per section; unset fields keep the project's params.yaml value.",
    **{fname: (_SECTION_OVERRIDES.get(fname, info.annotation),
               FieldInfo.merge_field_infos(info, default=None, default_factory=None))
       for fname, info in Params.model_fields.items()},
)
PipelineOverrides.__module__ = __name__


def _format_override_errors(err: ValidationError) -> str:
    lines = ["invalid overrides:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]).replace("validate_", "validate").replace("register_", "register")
        got = e.get("input")
        lines.append(f"  - {loc}: {e['msg']}" + ("" if isinstance(got, dict) else f" (got {got!r})"))
    lines.append("Override keys are params.yaml keys, e.g. {\"train\": {\"loss\": \"hinge\"}} or -S train.loss=hinge "
                 "(see README, 'Parameters').")
    return "\n".join(lines)


def parse_overrides(overrides: Any) -> Any:
    """A :class:`PipelineOverrides` from a model instance, a nested dict or a dotted-key dict (None -> empty).

    Raises:
        ConfigError: an unknown key, a wrong type or an out-of-range value; each bad field is named, e.g.
            ``- train.total_kimg: Input should be greater than 0 (got -1)``.
    """
    if isinstance(overrides, PipelineOverrides):
        return overrides
    if overrides is None:
        return PipelineOverrides()
    if isinstance(overrides, dict):
        bad = [k for k in overrides if not isinstance(k, str) or not k or any(not p for p in k.split("."))]
        if bad:
            raise ConfigError(f"override key(s) {bad} are not params.yaml keys such as 'train.loss'")
    try:
        return PipelineOverrides.model_validate(overrides)
    except ValidationError as err:
        raise ConfigError(_format_override_errors(err)) from None


# ---- Stages -------------------------------------------------------------------------------------------------------

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
    from ganops.tracking import ENV_RUN_ID

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop(ENV_RUN_ID, None)
    if run_id:
        env[ENV_RUN_ID] = run_id
    return env


MAX_LINE_CHARS = 10_000  # a longer run without a line break is passed on in pieces of this size


def stream_lines(proc: subprocess.Popen, on_line) -> str:
    """Read ``proc``'s merged stdout/stderr as it comes and call ``on_line(line)`` for each line; a carriage-return
    redraw (a progress bar in a terminal) counts as a line too, and a run of more than ``MAX_LINE_CHARS`` without a
    break is passed on in pieces. UTF-8 is decoded incrementally (a character split between reads stays whole).
    Returns the whole output. If ``on_line`` raises, the child is killed and waited for before the error goes on."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    chunks: list[str] = []
    pending = ""
    assert proc.stdout is not None
    try:
        for block in iter(lambda: proc.stdout.read1(4096), b""):  # read1: whatever has arrived, up to 4 KiB
            text = decoder.decode(block)
            chunks.append(text)
            pending = _emit_lines(pending + text, on_line)
        pending = (pending + decoder.decode(b"", final=True)).rstrip("\r")
        if pending.strip():
            on_line(pending)
    except BaseException:
        proc.kill()
        raise
    finally:
        proc.wait()
    return "".join(chunks)


def _emit_lines(buffer: str, on_line) -> str:
    """Pass every complete line of ``buffer`` to ``on_line``; return the unfinished rest (at most MAX_LINE_CHARS,
    plus a trailing \\r that may be the first half of a CRLF: the next read decides)."""
    hold_cr = buffer.endswith("\r")
    *lines, rest = re.split(r"\r\n|\r|\n", buffer[:-1] if hold_cr else buffer)
    for line in lines:
        for i in range(0, len(line), MAX_LINE_CHARS):
            if line[i:i + MAX_LINE_CHARS].strip():
                on_line(line[i:i + MAX_LINE_CHARS])
    while len(rest) > MAX_LINE_CHARS:
        on_line(rest[:MAX_LINE_CHARS])
        rest = rest[MAX_LINE_CHARS:]
    return rest + ("\r" if hold_cr else "")


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_only_transient, cache_policy=NO_CACHE,
      task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str, run_id: str | None) -> StageResult:
    """``dvc repro --single-item <stage>`` in ``project_dir``; raises :class:`StageFailed` on a non-zero exit.

    The stage's output reaches the terminal and the Prefect run log line by line while it runs (progress bars as
    periodic plain lines: the stage's stderr is a pipe, see ``ganops.progress``)."""
    logger = get_run_logger()
    t0 = time.perf_counter()

    def on_line(line: str) -> None:  # Prefect's run logger writes to the terminal and to the run's log
        logger.info("[%s] %s", stage, line)

    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=project_dir,
                            env=stage_env(run_id), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = stream_lines(proc, on_line)
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, output)
    ran = re.search(rf"Running stage '{re.escape(stage)}'", output) is not None
    logger.info("stage %s %s in %.1f s", stage, "ran" if ran else "was up to date", time.perf_counter() - t0)
    return StageResult(stage, ran, time.perf_counter() - t0)


def changed_stages(project_dir: Path) -> set[str] | None:
    """The stages ``dvc status --json`` reports as changed (one DVC start-up, ~4 s, instead of one per stage).

    Returns None when ``dvc status`` fails (e.g. another process holds DVC's lock); the flow then asks
    ``dvc repro`` about every stage, as without this check.
    """
    proc = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=project_dir, env=stage_env(None),
                          capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        report = None
    if not isinstance(report, dict):
        return None
    return {str(key).rsplit(":", 1)[-1] for key in report}  # "train", or "dvc.yaml:train" in sub-projects


def stages_to_run(selected: list[str], changed: set[str] | None) -> list[str]:
    """``selected`` (pipeline order) from the first stage DVC reports as changed on: stages before it, and their
    upstream, are unchanged, so they stay up to date; later ones may change once it runs, so each is still asked
    (``dvc repro --single-item``). ``changed=None`` (status unknown) keeps every selected stage."""
    if changed is None:
        return list(selected)
    first = next((i for i, stage in enumerate(selected) if stage in changed), len(selected))
    return list(selected[first:])


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


# ---- Report and artifacts -----------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def fid_history(project_dir: Path, params: Params) -> list[dict[str, Any]]:
    """FID over training, oldest first: one row per in-training evaluation, then the evaluate stage's FID.

    In-training rows come from the ``metric/*`` lines of ``<train.run_dir>/stats.jsonl`` (written every
    ``train.eval_every_kimg`` on ``train.eval_num_samples`` samples); the last row is ``evaluate.out`` (the
    registered figure, on ``evaluate.num_samples`` samples). Missing files give fewer (or no) rows.

    Returns:
        ``[{"source": "training" | "evaluate", "step": int | None, "kimg": float, "fid": float,
        "kid_mean": float | None, "num_samples": int}, ...]`` (FID and KID are unitless distances).
    """
    rows: list[dict[str, Any]] = []
    run_dir = project_dir / params.train.run_dir
    stats = run_dir / "stats.jsonl"
    options = _read_json(run_dir / "training_options.json")
    in_training_n = options.get("eval_num_samples", params.train.eval_num_samples)
    if stats.is_file():
        for line in stats.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill; training drops those when it resumes
            if isinstance(entry, dict) and "metric/fid" in entry:
                rows.append({"source": "training", "step": entry.get("step"), "kimg": entry.get("kimg"),
                             "fid": entry["metric/fid"], "kid_mean": entry.get("metric/kid_mean"),
                             "num_samples": in_training_n})
    ev = _read_json(project_dir / params.evaluate.out)
    if "fid" in ev:
        rows.append({"source": "evaluate", "step": None, "kimg": ev.get("kimg"), "fid": ev["fid"],
                     "kid_mean": ev.get("kid_mean"), "num_samples": ev.get("num_generated")})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _mlflow_run_url(uri: str, exp_id: str, run_id: str) -> str:
    from ganops.tracking import redact_uri

    # A user:password@ part never goes into the report (it is shown to everyone who can see the flow run).
    base = redact_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}"


def summary_markdown(project_dir: Path, params: Params, run_id: str, exp_id: str,
                     results: list[StageResult]) -> str:
    """The run report: stage table, metrics table, FID history, registered version and alias, and links to the
    MLflow run, the sample grid and the Great Expectations Data Docs."""
    from ganops.tracking import mlflow_command, tracking_uri

    ev = _read_json(project_dir / params.evaluate.out)
    reg = _read_json(project_dir / params.register_.out)
    lines = ["# ganops pipeline", "", "| stage | ran | wall time (s) |", "|---|---|---|"]
    lines += [f"| {r.stage} | {'yes' if r.ran else 'up to date'} | {r.wall_time_s:.1f} |" for r in results]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    for key in ("fid", "kid_mean", "kid_std", "num_generated", "num_real", "protocol", "kimg"):
        if key in ev:
            lines.append(f"| {key} | {ev[key]} |")
    history = fid_history(project_dir, params)
    lines += ["", "## FID history", ""]
    if history:
        lines += ["| source | step | kimg | FID | KID | samples |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['source']} | {_fmt(r['step'])} | {_fmt(r['kimg'])} | {_fmt(r['fid'])} | "
                  f"{_fmt(r['kid_mean'])} | {_fmt(r['num_samples'])} |" for r in history]
        if not any(r["source"] == "training" for r in history):
            lines += ["", "No in-training evaluations (set `train.eval_every_kimg` > 0 to record FID during training)."]
    else:
        lines.append("No FID yet (the evaluate stage has not run).")
    lines += ["", "## Model", ""]
    if reg:
        lines.append(f"**Model** `{reg['model_name']}` version **{reg['version']}**, alias **@{reg['alias']}** "
                     f"({reg.get('reason', '')}); load with `mlflow.pyfunc.load_model(\"{reg['model_uri']}\")`.")
    else:
        lines.append("Nothing registered in this run.")
    uri = tracking_uri(project_dir)
    grid = (project_dir / params.train.run_dir / "fakes-latest.png").resolve()
    validation = _read_json(project_dir / params.validate_.report_dir / "result.json")
    docs = Path(validation.get("data_docs") or Path(params.validate_.report_dir) / "data_docs" / "index.html")
    docs = docs if docs.is_absolute() else (project_dir / docs).resolve()
    url = _mlflow_run_url(uri, exp_id, run_id)
    lines += ["", "## Links", "",
              f"- **MLflow run** `{run_id}`: [{url}]({url})"
              + ("" if uri.startswith("http") else f" (start the UI with `{mlflow_command()} ui --backend-store-uri {uri}`)"),
              f"- **Samples**: [{grid.name}]({grid.as_uri()}) (also the run's `samples/` artifacts)",
              f"- **Data validation (Great Expectations Data Docs)**: [{docs.name}]({docs.as_uri()})"
              + ("" if validation.get("success", True) else " -- validation reported failures")]
    return "\n".join(lines) + "\n"


def publish_artifacts(project_dir: Path, params: Params, run_id: str, exp_id: str,
                      results: list[StageResult]) -> None:
    """The markdown report (key ``ganops-pipeline``) and the FID-history table (key ``ganops-fid-history``)."""
    create_markdown_artifact(summary_markdown(project_dir, params, run_id, exp_id, results), key=REPORT_KEY,
                             description="ganops pipeline: metrics, FID history, registered model, links")
    history = fid_history(project_dir, params)
    if history:
        create_table_artifact(history, key=FID_TABLE_KEY,
                              description=f"FID over training (MLflow run {run_id}); last row: the evaluate stage")


# ---- Overrides into params.yaml -----------------------------------------------------------------------------------

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


def check_params_path(project_dir: Path, params_path: str | Path) -> Path:
    """``project_dir/params.yaml`` if ``params_path`` points there; ValueError otherwise (DVC reads only it)."""
    path = (project_dir / params_path).resolve()
    if path != (project_dir / "params.yaml").resolve():
        raise ValueError(f"params_path {params_path!r} resolves to {path}, but the DVC stages read "
                         f"{project_dir / 'params.yaml'}; edit that file or use `dvc exp run -S key=value`")
    return path


def prepare_run(project_dir: str | None, params_path: str, overrides: Any) -> tuple[Path, Path, Params, dict]:
    """Resolve the project, check the typed overrides against the whole params.yaml; nothing is written.

    Returns ``(project, params_file, params, typed)`` with ``typed`` the dotted overrides (validated values).
    Raises ConfigError / ValueError as :func:`ganops_pipeline` documents.
    """
    project = Path(project_dir).resolve() if project_dir else PROJECT_DIR
    params_file = check_params_path(project, params_path)
    dotted = parse_overrides(overrides).dotted()
    if dotted:
        params, typed = validate_overrides(params_file, dotted)
    else:
        params, typed = load_params(params_file), {}
    return project, params_file, params, typed


# ---- The flow -----------------------------------------------------------------------------------------------------

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
    project, params_file, params, typed = prepare_run(project_dir, params_path, overrides)
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
        # Checked here first, so a typo ends with the field named instead of Prefect's failed-run traceback.
        cli_overrides = parse_overrides(parse_set_args(cli.parse_args().set_param))
        result = ganops_pipeline(overrides=cli_overrides)
    except (StageFailed, ConfigError, ValueError) as err:
        # Prefect has already logged the full state; the user needs the failing stage and its message.
        print(f"ganops pipeline failed: {err}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({k: v for k, v in result.items() if k != "eval"}, indent=2, default=str))
