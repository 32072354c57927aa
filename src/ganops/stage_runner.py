"""Run the project's DVC stages as ``dvc`` subprocesses and read what DVC says about them.

The pipeline order is :data:`STAGES`. :func:`changed_stages` asks ``dvc status`` once which stages changed,
:func:`stages_to_run` keeps the selected stages from the first changed one on, and :func:`repro_stage` runs one with
``dvc repro --single-item``, passing its output on line by line (:func:`stream_lines`) and raising
:class:`StageFailed`, which says whether a retry may help. DVC runs in a child process (``python -m dvc``); this
module does not import it.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ganops.config import STAGES

Stage = Literal[STAGES]  # the flow's parameter type: the run form offers exactly these
# Output fragments that mark a failure worth retrying: another process holds DVC's lock, or SQLite is busy.
TRANSIENT_PATTERNS = ("Unable to acquire lock", "database is locked", "Connection reset", "Temporary failure")
OUTPUT_TAIL_CHARS = 4000
MAX_LINE_CHARS = 10_000  # a longer run without a line break is passed on in pieces of this size


class StageFailed(RuntimeError):
    """A ``dvc`` command for one stage exited non-zero.

    Attributes:
        stage: the stage (or a description of the command, e.g. ``"exp apply <name>"``).
        returncode: DVC's exit code.
        transient: True when the output shows a failure a retry may fix (:data:`TRANSIENT_PATTERNS`).
    """

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        self.stage, self.returncode = stage, returncode
        self.transient = any(p in output for p in TRANSIENT_PATTERNS)
        tail = output[-OUTPUT_TAIL_CHARS:]
        super().__init__(f"stage {stage!r} failed (dvc exit code {returncode}); last output:\n{tail}")


@dataclass(frozen=True)
class StageResult:
    """One stage of a pipeline run: ``ran`` is False when DVC found it up to date; ``wall_time_s`` in seconds."""

    stage: str
    ran: bool
    wall_time_s: float


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """A task-retry condition (Prefect's ``retry_condition_fn`` signature): True when the failed state holds a
    :class:`StageFailed` marked transient, so a held DVC lock is retried and a real failure is not."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StageFailed) and exc.transient


def stage_env(run_id: str | None) -> dict[str, str]:
    """Environment for a stage subprocess: the venv's bin first on PATH (``ganops``), quiet analytics, and
    ``$GANOPS_MLFLOW_RUN_ID`` set to ``run_id`` (removed when ``run_id`` is None)."""
    from ganops.tracking import ENV_RUN_ID

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    env.pop(ENV_RUN_ID, None)
    if run_id:
        env[ENV_RUN_ID] = run_id
    return env


def stream_lines(proc: subprocess.Popen, on_line: Callable[[str], Any]) -> str:
    """Read ``proc``'s merged stdout/stderr as it comes and call ``on_line(line)`` for each line.

    A carriage-return redraw (a progress bar in a terminal) counts as a line too, and a run of more than
    :data:`MAX_LINE_CHARS` without a break is passed on in pieces; blank lines are skipped. UTF-8 is decoded
    incrementally (a character split between reads stays whole; undecodable bytes become U+FFFD).

    Args:
        proc: started with ``stdout=subprocess.PIPE`` (binary) and, to see errors too, ``stderr=STDOUT``.
        on_line: called once per line, without the line break.

    Returns:
        The whole output; ``proc`` has exited (``proc.returncode`` is set).

    Raises:
        Whatever ``on_line`` raises, after the child has been killed and waited for.
    """
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


def _emit_lines(buffer: str, on_line: Callable[[str], Any]) -> str:
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


def repro_stage(stage: str, project_dir: str | Path, run_id: str | None,
                on_line: Callable[[str], Any]) -> StageResult:
    """``dvc repro --single-item <stage>`` in ``project_dir``, its output passed to ``on_line`` while it runs.

    Args:
        stage: a DVC stage name, e.g. ``"train"``.
        project_dir: the DVC project.
        run_id: MLflow run the stage logs into (``$GANOPS_MLFLOW_RUN_ID``); None for the stage's own run.
        on_line: called with each output line (see :func:`stream_lines`).

    Returns:
        The :class:`StageResult`; ``ran`` is False when DVC skipped the stage as up to date.

    Raises:
        StageFailed: DVC exited non-zero.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=project_dir,
                            env=stage_env(run_id), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = stream_lines(proc, on_line)
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, output)
    ran = re.search(rf"Running stage '{re.escape(stage)}'", output) is not None
    return StageResult(stage, ran, time.perf_counter() - t0)


def changed_stages(project_dir: Path) -> set[str] | None:
    """The stages ``dvc status --json`` reports as changed (one DVC start-up, ~4 s, instead of one per stage).

    Returns None when ``dvc status`` fails (e.g. another process holds DVC's lock, or ``project_dir`` is no DVC
    project); callers then ask ``dvc repro`` about every stage.
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
    """``selected`` (pipeline order) from the first stage DVC reports as changed on.

    Stages before it, and their upstream, are unchanged, so they stay up to date; later ones may change once it
    runs, so each is still asked (``dvc repro --single-item``). ``changed=None`` (status unknown) keeps every
    selected stage.
    """
    if changed is None:
        return list(selected)
    first = next((i for i, stage in enumerate(selected) if stage in changed), len(selected))
    return list(selected[first:])


__all__ = ["MAX_LINE_CHARS", "STAGES", "Stage", "StageFailed", "StageResult", "changed_stages", "repro_stage",
           "retry_if_transient", "stage_env", "stages_to_run", "stream_lines"]
