"""Orchestration overhead: where start-up time goes, a no-op ``dvc repro``, and the Prefect flow minus the stages.

Prints one JSON object with sections:
- imports: ``python -X importtime -c "import <mod>"`` cumulative seconds of each heavy module (torch, mlflow, prefect,
  great_expectations, dvc, ganops modules) and the wall time of that interpreter (best of ``--repeats``), plus
  ``ganops --help`` (what every DVC stage pays before its work).
- prefect_server: import prefect + start/stop of Prefect's temporary server (what a flow run without
  PREFECT_API_URL pays up front).
- pipeline (``--pipeline``): in a fresh git copy of the tracked files with the e2e tests' tiny params:
  1. ``python flows/pipeline.py``: every stage runs; overhead = flow wall time - sum of the stages' ``dvc repro``
     wall times (Prefect's temporary server, task runs, the MLflow pipeline run, the artifact);
  2. the same flow again, every stage up to date: all of it is orchestration (target <= 30 s);
  3. ``dvc repro`` with everything up to date (target <= 10 s).

    .venv/bin/python benchmarks/bench_orchestration.py --pipeline      # ~3-5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULES = ("torch", "numpy", "pandas", "pydantic", "typer", "mlflow", "prefect", "great_expectations", "dvc.repo",
           "ganops.config", "ganops.cli", "ganops.training.loop", "ganops.tracking", "ganops.metrics.inception",
           "ganops.data.validate", "ganops.registry")
# As tests/e2e/conftest.py TINY_PARAMS: every stage does its real work on a few hundred images.
TINY_PARAMS = {
    "experiment": "ganops-bench",
    "prepare": {"max_train": 300, "max_test": 100},
    "train": {"ngf": 16, "ndf": 16, "batch_size": 32, "total_kimg": 0.5, "sample_every_kimg": 0.25,
              "checkpoint_every_kimg": 0.25, "grid_size": 4, "num_threads": 2, "mode_collapse_num_images": 16},
    "evaluate": {"num_samples": 100, "batch_size": 50, "kid_subsets": 10, "kid_subset_size": 50},
}


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID")}
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    e.update(MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
             PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return e


def timed(cmd: list[str], cwd: Path, timeout_s: float = 1800) -> tuple[float, subprocess.CompletedProcess[str]]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t, proc


def import_seconds(module: str) -> tuple[float, float]:
    """(cumulative import seconds of ``module`` per -X importtime, wall seconds of the whole interpreter)."""
    wall, proc = timed([sys.executable, "-X", "importtime", "-c", f"import {module}"], REPO)
    cumulative_us = 0
    for line in proc.stderr.splitlines():  # "import time: self [us] | cumulative | imported package"
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            cumulative_us = int(parts[1])
    return cumulative_us / 1e6, wall


def bench_imports(repeats: int) -> dict:
    out: dict = {}
    for module in MODULES:
        runs = [import_seconds(module) for _ in range(repeats)]
        out[module] = {"import_s": round(min(r[0] for r in runs), 3), "interpreter_wall_s": round(min(r[1] for r in runs), 3)}
    out["ganops --help"] = {"wall_s": round(min(timed([str(BIN / "ganops"), "--help"], REPO)[0]
                                                for _ in range(repeats)), 3)}
    out["python -c pass"] = {"wall_s": round(min(timed([sys.executable, "-c", "pass"], REPO)[0]
                                                 for _ in range(repeats)), 3)}
    return out


PREFECT_PHASES = """
import json, time
t0 = time.perf_counter()
import prefect
t1 = time.perf_counter()
from prefect.server.api.server import SubprocessASGIServer
server = SubprocessASGIServer()
server.start(timeout=180)
t2 = time.perf_counter()
server.stop()
print(json.dumps({"import_prefect_s": round(t1 - t0, 2), "temporary_server_start_s": round(t2 - t1, 2),
                  "temporary_server_stop_s": round(time.perf_counter() - t2, 2)}))
"""


def bench_prefect_server() -> dict:
    """What a flow run without PREFECT_API_URL pays before its first task: import prefect, start the temporary
    server (a subprocess running uvicorn + the API on SQLite), and stop it at exit."""
    wall, proc = timed([sys.executable, "-c", PREFECT_PHASES], REPO)
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "interpreter_wall_s": round(wall, 2)}


def tiny_copy(dest: Path, tiny_params: dict = TINY_PARAMS) -> Path:
    """A fresh git repository holding the tracked files and params.yaml merged with ``tiny_params`` (per section)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for rel in filter(None, files.split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    for name in ("dvc.lock", "mlflow.db"):
        (dest / name).unlink(missing_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in tiny_params.items():
        params[section] = {**params[section], **values} if isinstance(values, dict) else values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=ganops-bench", "-c", "user.email=bench@ganops.local"]
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "bench copy"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def flow_result(proc: subprocess.CompletedProcess[str]) -> dict:
    """The result dict that flows/pipeline.py prints (indented JSON) at the end of stdout."""
    lines = proc.stdout.splitlines()
    starts = [i for i, ln in enumerate(lines) if ln == "{"]
    if not starts:
        raise RuntimeError(f"no JSON result in the flow's output:\n{proc.stdout[-2000:]}")
    return json.loads("\n".join(lines[starts[-1]:]))


def bench_pipeline(root: Path) -> dict:
    project = tiny_copy(root / "project")
    flow = [sys.executable, "flows/pipeline.py"]
    full_s, proc = timed(flow, project)
    stages = flow_result(proc)["stages"]
    stage_s = sum(s["wall_time_s"] for s in stages.values())
    noop_flow_s, proc = timed(flow, project)
    noop_stages = flow_result(proc)["stages"]
    noop_dvc = [timed([sys.executable, "-m", "dvc", "repro"], project)[0] for _ in range(2)]
    status_s = timed([sys.executable, "-m", "dvc", "status"], project)[0]
    return {
        "params": TINY_PARAMS,
        "flow_full_wall_s": round(full_s, 1),
        "stage_wall_s": {k: round(v["wall_time_s"], 1) for k, v in stages.items()},
        "flow_overhead_s": round(full_s - stage_s, 1),
        "flow_noop_wall_s": round(noop_flow_s, 1),
        "flow_noop_stage_wall_s": {k: round(v["wall_time_s"], 1) for k, v in noop_stages.items()},
        "flow_overhead_target_s": 30,
        "dvc_repro_noop_wall_s": round(min(noop_dvc), 2),
        "dvc_repro_noop_target_s": 10,
        "dvc_status_wall_s": round(status_s, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2, help="import timings: best of N interpreters")
    ap.add_argument("--pipeline", action="store_true", help="also run the tiny pipeline through Prefect and DVC")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1 (best of N interpreters), got {args.repeats}")
    result: dict = {"imports": bench_imports(args.repeats), "prefect_server": bench_prefect_server()}
    print(json.dumps({"imports": result["imports"]}), file=sys.stderr, flush=True)
    if args.pipeline:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            result["pipeline"] = {**bench_pipeline(Path(tmp)), "section_wall_s": round(time.perf_counter() - t, 1)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
