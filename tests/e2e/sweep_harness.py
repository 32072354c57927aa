"""A fanned-out sweep on one machine: a Prefect server and an MLflow server on 127.0.0.1, the ``ganops-sweep`` process
work pool, the ``sweep-point`` deployment of prefect.yaml, process workers (``--limit 1``: one point each) and the
sweep itself (``flows/sweep.py --deployment ...``), all as child processes in their own process groups.

Used by tests/e2e/test_sweep_fanout.py and benchmarks/bench_sweep.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.test_prefect_deployment import PrefectServer
from tests.mlflow_server import MlflowServer

POOL, DEPLOYMENT = "ganops-sweep", "ganops-sweep-point/sweep-point"  # as in prefect.yaml
PREFECT = Path(sys.executable).parent / "prefect"
# Committed into the copy's params.yaml (points start from its HEAD commit): a few seconds of training per point and
# the same prepare/validate parameters everywhere, so DVC's run-cache serves them to every point after the first.
TINY_SWEEP_PARAMS = {
    "prepare": {"max_train": 128, "max_test": 32},
    "train": {"z_dim": 8, "ngf": 8, "ndf": 8, "batch_size": 16, "total_kimg": 0.1, "num_threads": 1,
              "sample_every_kimg": 0.1, "checkpoint_every_kimg": 0.1, "grid_size": 2, "mode_collapse_num_images": 8},
    "evaluate": {"num_samples": 16, "batch_size": 16, "kid_subsets": 2, "kid_subset_size": 8},
}
LEARNING_RATES = (2e-3, 1e-3, 1e-6, 5e-4)  # one point each; 1e-6 barely moves the generator


def tiny_sweep_points() -> tuple[list[dict[str, Any]], list[str]]:
    """Four points (learning rates of G and D) and their names."""
    points = [{"train.lr_g": lr, "train.lr_d": lr} for lr in LEARNING_RATES]
    return points, [f"lr-{lr:g}".replace("+", "") for lr in LEARNING_RATES]


def commit_tiny_params(project: Path) -> None:
    """Merge :data:`TINY_SWEEP_PARAMS` into the copy's params.yaml and commit it."""
    doc = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in TINY_SWEEP_PARAMS.items():
        doc[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    git = ["git", "-c", "user.name=ganops-e2e", "-c", "user.email=e2e@ganops.local"]
    subprocess.run([*git, "commit", "-qam", "tiny sweep params"], cwd=project, check=True)


class SweepCluster:
    """Prefect server + MLflow server + work pool + deployment for a tiny project copy; workers on demand."""

    def __init__(self, project: Path, root: Path, mlflow_db_template: Path | None = None,
                 heartbeat_s: int = 30) -> None:
        self.project, self.root = project, root
        (root / "prefect-home").mkdir(parents=True, exist_ok=True)
        self.prefect = PrefectServer(root / "prefect-home")
        self.mlflow = MlflowServer(root / "mlflow", db_template=mlflow_db_template)
        self.sweep_dir = root / "sweeps"
        self.prefect.env.update(MLFLOW_TRACKING_URI=self.mlflow.uri, GANOPS_CHECKOUT=str(project),
                                GANOPS_SWEEP_DIR=str(self.sweep_dir),
                                PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(heartbeat_s))
        self.workers: dict[str, subprocess.Popen] = {}

    def start(self) -> float:
        """Both servers (in parallel), the work pool and the deployment; returns the seconds it took."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(self.mlflow.start), pool.submit(self.prefect.start)]:
                future.result()
        self.prefect.cli(["work-pool", "create", POOL, "--type", "process"], self.project)
        self.prefect.cli(["--no-prompt", "deploy", "--name", "sweep-point"], self.project)
        return time.perf_counter() - t0

    def start_worker(self, name: str) -> subprocess.Popen:
        """``prefect worker start --pool ganops-sweep --type process --limit 1`` (own process group)."""
        proc = self.prefect.popen([str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process", "--limit",
                                   "1", "--name", name], self.project, self.root / f"worker-{name}.log")
        self.workers[name] = proc
        return proc

    def start_sweep(self, points: list[dict[str, Any]], names: list[str], *extra: str) -> subprocess.Popen:
        """``python flows/sweep.py --deployment ganops-sweep-point/sweep-point -p ... -n ...`` in the copy."""
        args = [sys.executable, "flows/sweep.py", "--deployment", DEPLOYMENT, *extra]
        for point, name in zip(points, names):
            args += ["-p", json.dumps(point), "-n", name]
        return self.prefect.popen(args, self.project, self.root / "sweep.log")

    def sweep_output(self, proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
        """Wait for the sweep process; its JSON result (the last ``{`` ... block of its output)."""
        log = self.root / "sweep.log"
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"sweep still running after {timeout_s} s:\n{self.logs()}") from None
        text = log.read_text()
        assert proc.returncode == 0, f"sweep exited {proc.returncode}:\n{self.logs()}"
        return json.loads(text[text.rindex("\n{\n") + 1:])

    def point_runs(self) -> list[dict[str, Any]]:
        """The flow runs of the point deployment (API dicts)."""
        deployment = self.prefect.api("GET", f"/deployments/name/{DEPLOYMENT}")
        return self.prefect.api("POST", "/flow_runs/filter",
                                json={"flow_runs": {"deployment_id": {"any_": [deployment["id"]]}}})

    def logs(self, chars: int = 4000) -> str:
        parts = []
        for path in sorted(self.root.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        self.prefect.stop()
        self.mlflow.stop()
