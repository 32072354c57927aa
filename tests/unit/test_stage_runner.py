"""ganops.stage_runner: which DVC stages to run, and a stage's output streamed line by line while it runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ganops.stage_runner import MAX_LINE_CHARS, STAGES, changed_stages, stages_to_run, stream_lines


# ---- Skipping DVC start-ups for stages `dvc status` reports unchanged ---------------------------------------------

def test_stages_run_from_the_first_changed_one():
    every = list(STAGES)
    assert stages_to_run(every, set()) == []                              # a no-op: no `dvc repro` at all
    assert stages_to_run(every, {"train"}) == ["train", "evaluate", "register"]
    assert stages_to_run(every, {"register", "validate"}) == every[1:]   # order comes from the pipeline
    assert stages_to_run(["evaluate", "register"], {"train"}) == []      # unselected upstream stays unrun
    assert stages_to_run(every, None) == every                            # status unknown: ask DVC per stage


def test_changed_stages_is_none_when_dvc_status_fails(tmp_path):
    assert changed_stages(tmp_path) is None  # not a DVC repository


def test_stream_lines_delivers_lines_while_the_stage_runs():
    # The child prints a line, then waits until the parent has seen it: only a streaming reader can pass this.
    import subprocess
    import tempfile
    import time

    flag = Path(tempfile.mkdtemp()) / "seen"
    script = ("import sys, time, pathlib\n"
              "print('first line', flush=True)\n"
              "sys.stderr.write('bar 10%\\rbar 50%\\rbar 100%\\n'); sys.stderr.flush()\n"
              f"p = pathlib.Path({str(flag)!r})\n"
              "t = time.time()\n"
              "while not p.exists() and time.time() - t < 20: time.sleep(0.05)\n"
              "print('saw flag' if p.exists() else 'no flag', flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if line == "first line":
            flag.touch()

    t0 = time.time()
    output = stream_lines(proc, on_line)
    assert seen == ["first line", "bar 10%", "bar 50%", "bar 100%", "saw flag"]
    assert proc.returncode == 0 and "saw flag" in output and time.time() - t0 < 20


def test_stream_lines_keeps_split_utf8_whole_and_cuts_endless_lines():
    import subprocess

    script = ("import sys, time\n"
              "out = sys.stdout.buffer\n"
              "for b in 'é€ ok\\n'.encode():\n"
              "    out.write(bytes([b])); out.flush(); time.sleep(0.002)\n"
              f"out.write(b'x' * ({MAX_LINE_CHARS} * 2 + 5) + b'\\r\\n' + b'last'); out.flush()\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    stream_lines(proc, seen.append)
    assert seen[0] == "é€ ok"
    assert [len(s) for s in seen[1:4]] == [MAX_LINE_CHARS, MAX_LINE_CHARS, 5]
    assert seen[4:] == ["last"]


def test_stream_lines_kills_the_child_when_the_consumer_fails():
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def boom(line: str) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        stream_lines(proc, boom)
    assert proc.returncode is not None  # killed and reaped, not left running


def test_stage_failed_marks_lock_and_busy_store_failures_transient_and_keeps_the_tail():
    from ganops.stage_runner import OUTPUT_TAIL_CHARS, StageFailed

    held = StageFailed("train", 1, "ERROR: Unable to acquire lock. Most likely another DVC process is running")
    real = StageFailed("train", 2, "x" * (OUTPUT_TAIL_CHARS + 10) + "boom")
    assert held.transient and not real.transient
    assert (real.stage, real.returncode) == ("train", 2)
    assert str(real).endswith("boom") and "stage 'train' failed (dvc exit code 2)" in str(real)
    assert len(str(real).split("last output:\n", 1)[1]) == OUTPUT_TAIL_CHARS


def test_retry_if_transient_retries_only_a_transient_stage_failure():
    from ganops.stage_runner import StageFailed, retry_if_transient

    class State:
        def __init__(self, exc):
            self.exc = exc

        def result(self, raise_on_failure=True):
            return self.exc

    assert retry_if_transient(None, None, State(StageFailed("train", 1, "database is locked")))
    assert not retry_if_transient(None, None, State(StageFailed("train", 1, "CUDA out of memory")))
    assert not retry_if_transient(None, None, State(RuntimeError("database is locked")))


def test_stage_env_puts_the_venv_first_and_sets_or_clears_the_run_id(monkeypatch):
    from ganops.stage_runner import stage_env
    from ganops.tracking import ENV_RUN_ID

    monkeypatch.setenv(ENV_RUN_ID, "stale")
    env = stage_env("abc")
    assert env[ENV_RUN_ID] == "abc" and env["PATH"].startswith(str(Path(sys.executable).parent))
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert ENV_RUN_ID not in stage_env(None)
