"""The prefect.yaml deployment for real: a Prefect server on 127.0.0.1, a process work pool, `prefect deploy`, a run
with tiny overrides picked up by `prefect worker start --run-once`, then the run's state, its artifacts and the
registered champion in the copy's MLflow store. Also: the server refuses a run whose overrides break the schema."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import project_env, tracking_client

pytestmark = pytest.mark.e2e

POOL, GPU_POOL, SWEEP_POOL = "ganops-local", "ganops-gpu", "ganops-sweep"  # as in prefect.yaml
DEPLOYMENT = "ganops-pipeline/nightly"
# No in-training FID: loading the Inception network in the train stage too costs minutes on a busy 2-core machine
# (tests/unit/test_flows.py reads a real training loop's FID lines instead).
TINY_OVERRIDES = {
    "prepare": {"max_train": 200, "max_test": 50},
    "train": {"total_kimg": 0.2, "num_threads": 1, "sample_every_kimg": 0.2, "checkpoint_every_kimg": 0.2},
    "evaluate": {"num_samples": 16, "kid_subsets": 5, "kid_subset_size": 8},
}
SERVER_START_TIMEOUT_S = 240  # a fresh server migrates its database first: slow on a busy 2-core machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class PrefectServer:
    """``prefect server start`` on a free 127.0.0.1 port with its own PREFECT_HOME (and database)."""

    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.env = {**project_env(), "PREFECT_HOME": str(home), "PREFECT_API_URL": self.url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false",
                    "PREFECT_CLI_PROMPT": "false"}
        self.log = home / "server.log"
        self.procs: list[subprocess.Popen] = []
        self.timings: list[tuple[str, float]] = []  # (command, seconds) of each CLI call, printed by the test

    def popen(self, args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
        with open(log, "w") as out:  # own process group: teardown kills the process and its children
            proc = subprocess.Popen(args, cwd=cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        import httpx

        home = Path(self.env["PREFECT_HOME"])
        server = self.popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(self.port)], home, self.log)
        t0 = time.monotonic()
        deadline = t0 + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert server.poll() is None, f"prefect server exited {server.returncode}:\n{self.log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    self.start_s = time.monotonic() - t0
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n"
                             f"{self.log.read_text()[-4000:]}")

    def cli(self, args: list[str], cwd: Path, timeout_s: float = 300, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        cmd = [str(Path(sys.executable).parent / "prefect"), *args]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        self.timings.append((" ".join(args[:2]), round(time.perf_counter() - t0, 1)))
        if check:
            assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                         f"{proc.stderr[-4000:]}"
        return proc

    def api(self, method: str, path: str, **kwargs) -> dict | list:
        import httpx

        response = httpx.request(method, f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)


@pytest.fixture()
def prefect_server(tmp_path: Path) -> Iterator[PrefectServer]:
    home = tmp_path / "prefect-home"
    home.mkdir()
    server = PrefectServer(home)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_deployment_runs_through_a_process_worker_and_registers_a_champion(tiny_project, prefect_server):
    srv, project = prefect_server, tiny_project
    t0 = time.perf_counter()
    print(json.dumps({"server_start_s": round(srv.start_s, 1)}))
    for pool in (POOL, GPU_POOL, SWEEP_POOL):
        srv.cli(["work-pool", "create", pool, "--type", "process"], project)
    srv.cli(["--no-prompt", "deploy", "--all"], project)
    # The GPU deployment: its own pool, CUDA defaults, and a working directory resolved on the GPU worker at run time.
    gpu = srv.api("GET", "/deployments/name/ganops-pipeline/gpu")
    assert gpu["work_pool_name"] == GPU_POOL and gpu["parameters"]["overrides"] == {"train": {"device": "cuda"}}
    assert gpu["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert gpu["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $GANOPS_CHECKOUT }}"}}]
    # The sweep-point deployment (tests/e2e/test_sweep_fanout.py runs it): its pool, the worker's checkout.
    point = srv.api("GET", "/deployments/name/ganops-sweep-point/sweep-point")
    assert point["work_pool_name"] == SWEEP_POOL and point["pull_steps"] == gpu["pull_steps"]
    deployment = srv.api("GET", f"/deployments/name/{DEPLOYMENT}")
    assert deployment["work_pool_name"] == POOL and deployment["entrypoint"] == "flows/pipeline.py:ganops_pipeline"
    assert deployment["pull_steps"] == [  # no pull section: the checkout `prefect deploy` ran in
        {"prefect.deployments.steps.set_working_directory": {"directory": str(project.resolve())}}]
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    # The run form's schema is the typed overrides model, generated from ganops.config.
    schema = deployment["parameter_openapi_schema"]
    train_props = schema["definitions"]["TrainOverrides"]["properties"]
    assert train_props["total_kimg"]["exclusiveMinimum"] == 0 and train_props["loss"]["type"] == "string"
    assert set(train_props["device"]["enum"]) == {"auto", "cpu", "cuda"}

    # A bad override is refused by the server when the run is created, naming the field; nothing is scheduled.
    bad = srv.cli(["deployment", "run", DEPLOYMENT, "--params",
                   json.dumps({"overrides": {"train": {"total_kimg": -1}}})], project, check=False)
    assert bad.returncode != 0 and "total_kimg" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    created = srv.cli(["deployment", "run", DEPLOYMENT, "--params", json.dumps({"overrides": TINY_OVERRIDES})],
                      project)
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", created.stdout).group(1)

    worker_log = Path(srv.env["PREFECT_HOME"]) / "worker.log"
    worker = srv.popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL,
                        "--type", "process", "--run-once", "--limit", "1"], project, worker_log)
    t_worker = time.perf_counter()
    try:
        worker.wait(timeout=600)
    except subprocess.TimeoutExpired:
        pytest.fail(f"worker still running after 600 s:\n{worker_log.read_text()[-6000:]}")
    worker_s = time.perf_counter() - t_worker
    run_ = srv.api("GET", f"/flow_runs/{flow_run_id}")
    assert run_["state"]["type"] == "COMPLETED", (run_["state"], worker_log.read_text()[-6000:])
    wall_s = time.perf_counter() - t0

    # The run executed the copy's pipeline: the overrides reached params.yaml, the model is the champion there.
    client = tracking_client(project)
    reg = json.loads((project / "reports" / "registration.json").read_text())
    mv = client.get_model_version_by_alias(reg["model_name"], "champion")
    assert int(mv.version) == reg["version"] == 1
    pipeline_run = client.get_run(reg["run_id"])
    assert pipeline_run.data.tags["prefect.flow_run_id"] == flow_run_id
    assert json.loads(pipeline_run.data.tags["ganops.overrides"])["train.total_kimg"] == 0.2
    ev = json.loads((project / "metrics" / "eval.json").read_text())
    assert ev["num_generated"] == 16 and float(mv.tags["fid"]) == ev["fid"]

    # Artifacts of this flow run: the markdown report and the FID-history table (here only the evaluate row).
    artifacts = srv.api("POST", "/artifacts/filter",
                        json={"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    by_key = {a["key"]: a for a in artifacts}
    table = json.loads(by_key["ganops-fid-history"]["data"])
    assert by_key["ganops-fid-history"]["type"] == "table"
    assert table == [{"source": "evaluate", "step": None, "kimg": ev["kimg"], "fid": ev["fid"],
                      "kid_mean": ev["kid_mean"], "num_samples": 16}]
    report = by_key["ganops-pipeline"]["data"]
    assert f"version **{reg['version']}**, alias **@champion**" in report
    assert "## FID history" in report and f"| evaluate |  | {ev['kimg']:.4g} | {ev['fid']:.4g} |" in report
    assert "No in-training evaluations" in report
    assert f"/runs/{reg['run_id']})" in report and "fakes-latest.png](file://" in report
    assert "reports/validation/data_docs/index.html)" in report and "Great Expectations Data Docs" in report
    print(report)
    print(json.dumps({"deployment_e2e_wall_s": round(wall_s, 1), "worker_wall_s": round(worker_s, 1),
                      "cli_s": srv.timings}))
