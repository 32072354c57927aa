"""The pipeline run's report: FID history over training and the markdown summary of one pipeline run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ganops.config import REPORTED_METRICS, Params
from ganops.rundir import RunDir
from ganops.stage_runner import StageResult

VALIDATION_RESULT = "result.json"  # the validate stage's result, in validate.report_dir


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def fid_history(project_dir: Path, params: Params) -> list[dict[str, Any]]:
    """FID over training, oldest first: one row per in-training evaluation, then the evaluate stage's FID.

    In-training rows come from the ``metric/*`` entries of the run directory's ``stats.jsonl`` (written every
    ``train.eval_every_kimg`` on ``train.eval_num_samples`` samples; torn lines are skipped); the last row is
    ``evaluate.out`` (the registered figure, on ``evaluate.num_samples`` samples). Missing files give fewer (or no)
    rows.

    Args:
        project_dir: the ganops checkout; ``train.run_dir`` and ``evaluate.out`` are relative to it.
        params: the project's parameters.

    Returns:
        ``[{"source": "training" | "evaluate", "step": int | None, "kimg": float, "fid": float,
        "kid_mean": float | None, "num_samples": int}, ...]`` (FID and KID are unitless distances; ``kimg`` is
        thousands of real images shown to D).

    Raises:
        ValueError: ``training_options.json`` or ``evaluate.out`` exists but is not valid JSON.
    """
    run = RunDir(project_dir / params.train.run_dir)
    in_training_n = run.read_json(RunDir.OPTIONS).get("eval_num_samples", params.train.eval_num_samples)
    rows: list[dict[str, Any]] = [
        {"source": "training", "step": entry.get("step"), "kimg": entry.get("kimg"), "fid": entry["metric/fid"],
         "kid_mean": entry.get("metric/kid_mean"), "num_samples": in_training_n}
        for entry in run.read_stats("metric/fid")
    ]
    ev = _read_json(project_dir / params.evaluate.out)
    if "fid" in ev:
        rows.append({"source": "evaluate", "step": None, "kimg": ev.get("kimg"), "fid": ev["fid"],
                     "kid_mean": ev.get("kid_mean"), "num_samples": ev.get("num_generated")})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def mlflow_run_url(uri: str, exp_id: str, run_id: str) -> str:
    """The MLflow UI page of run ``run_id`` in experiment ``exp_id``.

    An ``http(s)`` tracking ``uri`` is the UI's base, with any ``user:password@`` part masked (the link is shown to
    everyone who can read the report); any other store links to a local ``mlflow ui`` at ``http://127.0.0.1:5000``.
    """
    from ganops.tracking import redact_uri

    base = redact_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{exp_id}/runs/{run_id}"


def _history_lines(history: list[dict[str, Any]]) -> list[str]:
    lines = ["", "## FID history", ""]
    if not history:
        return lines + ["No FID yet (the evaluate stage has not run)."]
    lines += ["| source | step | kimg | FID | KID | samples |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['source']} | {_fmt(r['step'])} | {_fmt(r['kimg'])} | {_fmt(r['fid'])} | "
              f"{_fmt(r['kid_mean'])} | {_fmt(r['num_samples'])} |" for r in history]
    if not any(r["source"] == "training" for r in history):
        lines += ["", "No in-training evaluations (set `train.eval_every_kimg` > 0 to record FID during training)."]
    return lines


def _link_lines(project_dir: Path, params: Params, run_id: str, exp_id: str) -> list[str]:
    from ganops.tracking import mlflow_command, tracking_uri

    uri = tracking_uri(project_dir)
    grid = RunDir(project_dir / params.train.run_dir).fakes_latest.resolve()
    validation = _read_json(project_dir / params.validate_.report_dir / VALIDATION_RESULT)
    docs = Path(validation.get("data_docs") or Path(params.validate_.report_dir) / "data_docs" / "index.html")
    docs = docs if docs.is_absolute() else (project_dir / docs).resolve()
    url = mlflow_run_url(uri, exp_id, run_id)
    ui_hint = "" if uri.startswith("http") else f" (start the UI with `{mlflow_command()} ui --backend-store-uri {uri}`)"
    return ["", "## Links", "",
            f"- **MLflow run** `{run_id}`: [{url}]({url})" + ui_hint,
            f"- **Samples**: [{grid.name}]({grid.as_uri()}) (also the run's `samples/` artifacts)",
            f"- **Data validation (Great Expectations Data Docs)**: [{docs.name}]({docs.as_uri()})"
            + ("" if validation.get("success", True) else " -- validation reported failures")]


def summary_markdown(project_dir: Path, params: Params, run_id: str, exp_id: str,
                     results: list[StageResult]) -> str:
    """The run report as Markdown.

    Sections: stage table (ran / up to date, wall time in seconds), metrics of ``evaluate.out``, FID history
    (:func:`fid_history`), the registered version and alias from ``register.out``, and links to the MLflow run
    (password masked), the sample grid and the Great Expectations Data Docs. Missing outputs are reported as such.

    Args:
        project_dir: the ganops checkout.
        params: the project's parameters (output paths).
        run_id: the pipeline's MLflow run.
        exp_id: its MLflow experiment id.
        results: one entry per stage, in pipeline order.

    Raises:
        ValueError: an output file exists but is not valid JSON.
    """
    ev = _read_json(project_dir / params.evaluate.out)
    reg = _read_json(project_dir / params.register_.out)
    lines = ["# ganops pipeline", "", "| stage | ran | wall time (s) |", "|---|---|---|"]
    lines += [f"| {r.stage} | {'yes' if r.ran else 'up to date'} | {r.wall_time_s:.1f} |" for r in results]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    for key in (*REPORTED_METRICS, "num_generated", "num_real", "protocol", "kimg"):
        if key in ev:
            lines.append(f"| {key} | {ev[key]} |")
    lines += _history_lines(fid_history(project_dir, params))
    lines += ["", "## Model", ""]
    if reg:
        lines.append(f"**Model** `{reg['model_name']}` version **{reg['version']}**, alias **@{reg['alias']}** "
                     f"({reg.get('reason', '')}); load with `mlflow.pyfunc.load_model(\"{reg['model_uri']}\")`.")
    else:
        lines.append("Nothing registered in this run.")
    lines += _link_lines(project_dir, params, run_id, exp_id)
    return "\n".join(lines) + "\n"


__all__ = ["fid_history", "mlflow_run_url", "summary_markdown"]
