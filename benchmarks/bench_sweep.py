"""Wall time of a fanned-out 4-point tiny sweep with 1 and with 2 Prefect process workers on this machine.

For each worker count: a fresh git copy of the tracked files with the e2e tiny params (tests/e2e/sweep_harness.py:
tiny model, 0.1 kimg, 16 evaluation samples), a Prefect server, an MLflow server, the ``ganops-sweep`` pool and the
``sweep-point`` deployment, N workers (``--limit 1``), then ``flows/sweep.py --deployment ...``. The sweep's wall
time counts from its start to its exit (submission, every point, registration), not the servers' start-up. Prints
one JSON object: per worker count the sweep wall time, each point's span and FID, and the best point.

    .venv/bin/python benchmarks/bench_sweep.py                 # ~10-20 minutes on 2 cores
    .venv/bin/python benchmarks/bench_sweep.py --workers 2     # one configuration
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from tests.e2e.conftest import TINY_PARAMS  # noqa: E402
from tests.e2e.sweep_harness import SweepCluster, commit_tiny_params, tiny_sweep_points  # noqa: E402

from bench_orchestration import tiny_copy  # noqa: E402


def fresh_copy(dest: Path) -> Path:
    """The repository's tracked files in a new git repository, params.yaml with the e2e tiny params, committed."""
    project = tiny_copy(dest, TINY_PARAMS)
    commit_tiny_params(project)
    return project


def migrated_db(path: Path) -> Path:
    """An empty, migrated MLflow SQLite store (the MLflow server starts from a copy)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def bench(workers: int, root: Path, db_template: Path, timeout_s: float) -> dict:
    project = fresh_copy(root / "project")
    cluster = SweepCluster(project, root / "cluster", db_template)
    try:
        start_s = cluster.start()
        for i in range(workers):
            cluster.start_worker(f"w{i + 1}")
        points, names = tiny_sweep_points()
        t0 = time.perf_counter()
        out = cluster.sweep_output(cluster.start_sweep(points, names), timeout_s)
        wall_s = time.perf_counter() - t0
    finally:
        cluster.stop()
    exps = out["experiments"]
    return {"workers": workers, "sweep_wall_s": round(wall_s, 1), "cluster_start_s": round(start_s, 1),
            "best": out["best"], "all_ok": all(e["ok"] for e in exps),
            "points": {e["name"]: {"fid": e["fid"], "point_wall_s": round(e["wall_time_s"], 1),
                                   "started": e["started"], "ended": e["ended"]} for e in exps}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, action="append", help="worker counts to run (default: 1 and 2)")
    ap.add_argument("--timeout", type=float, default=2400, help="seconds per sweep")
    args = ap.parse_args()
    for key, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("GX_ANALYTICS_ENABLED", "false"),
                       ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(key, value)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_sweep-") as tmp:
        db = migrated_db(Path(tmp) / "template.db")
        for n in args.workers or [1, 2]:
            root = Path(tmp) / f"workers{n}"
            root.mkdir()
            results.append(bench(n, root, db, args.timeout))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    by_n = {r["workers"]: r["sweep_wall_s"] for r in results}
    summary = {"speedup_2_vs_1": round(by_n[1] / by_n[2], 2)} if {1, 2} <= set(by_n) else {}
    print(json.dumps({"date": time.strftime("%Y-%m-%d", time.gmtime()), "nproc": os.cpu_count(),
                      "affinity": sorted(os.sched_getaffinity(0)), "results": results, **summary}, indent=2))


if __name__ == "__main__":
    main()
