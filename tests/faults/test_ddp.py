"""Data-parallel training under torchrun: the one train entry (``-m ganops.cli train``), 2 CPU processes (gloo) on a
tiny config, on one node agent and on two node agents (multi-node on one machine, loopback rendezvous).

Slow tests (process start-up dominates: torch imports + gloo rendezvous), marked ``e2e``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ganops.training.distributed import DistInfo, check_batch, shard, state_checksum
from tests.model.conftest import write_prepared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_shard_is_disjoint_and_covers_the_global_batch():
    x = torch.arange(12)
    parts = [shard(x, DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert [p.tolist() for p in parts] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert sorted(torch.cat(parts).tolist()) == x.tolist()
    assert shard(x, DistInfo()) is x
    assert check_batch(12, DistInfo(rank=0, world_size=3)) == 4
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        check_batch(10, DistInfo(rank=0, world_size=3))


def test_state_checksum_sees_one_bit():
    a = {"w": torch.zeros(3)}
    b = {"w": torch.tensor([0.0, 0.0, 1e-45])}  # smallest subnormal: one mantissa bit
    assert state_checksum(a) == state_checksum({"w": torch.zeros(3)})
    assert state_checksum(a) != state_checksum(b)


def _launch(tmp_path: Path, nodes: int) -> list[subprocess.CompletedProcess]:
    """``ganops train`` on 2 ranks: one torchrun agent with 2 processes, or 2 agents (nodes) with 1 each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path.cwd() / "src"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    port = _free_port()
    train = ["-m", "ganops.cli", "train", "-p", "params.yaml"]
    if nodes == 1:
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
                 "--master_addr=127.0.0.1", f"--master_port={port}", *train]]
    else:  # what two machines run, each with its own agent, meeting at a c10d rendezvous on the first
        cmds = [[sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                 "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=ganops-test",
                 "--max_restarts=0", *train] for _ in range(2)]
    procs = [subprocess.Popen(c, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    out = []
    for proc, cmd in zip(procs, cmds):
        stdout, stderr = proc.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr))
    return out


@pytest.mark.e2e
@pytest.mark.parametrize("nodes", [1, 2], ids=["one_node", "two_nodes"])
def test_torchrun_ganops_train_two_gloo_ranks_identical_weights(tmp_path: Path, nodes: int):
    """``torchrun ... -m ganops.cli train`` does what ``ganops train`` does (tracking, in-training FID, summary)
    with rank 0 alone writing, and both ranks end with bit-identical G and D."""
    prepared = write_prepared(tmp_path / "prepared", n=64, resolution=16)
    run_dir = tmp_path / "runs" / "train"
    params = {
        "seed": 3,
        "prepare": {"out_dir": str(prepared), "resolution": 16},
        "train": dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.048, sample_every_kimg=0.024,
                      checkpoint_every_kimg=0.024, log_every_steps=2, grid_size=2, mode_collapse_num_images=8,
                      device="cpu", channels_last=False, num_threads=1, run_dir=str(run_dir),
                      eval_every_kimg=0.048, eval_num_samples=8),
        "evaluate": {"device": "cpu", "batch_size": 8},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    procs = _launch(tmp_path, nodes)
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Rank 0 alone prints the stage's JSON summary.
    printed = [p.stdout for p in procs if '"world_size": 2' in p.stdout]
    assert len(printed) == 1

    summary = json.loads((run_dir / "train.json").read_text())
    assert summary["world_size"] == 2
    assert summary["step"] == 6 and summary["cur_nimg"] == 48  # global batch 8 = 2 ranks x 4
    # Both ranks reported their G/D checksum; they agree, and equal the weights rank 0 saved.
    checksums = summary["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    state = torch.load(run_dir / "training-state.pt", weights_only=True)
    assert state_checksum(state["G"], state["D"]) == checksums[0]
    # The run directory is complete and written once (by rank 0).
    for name in ("training_options.json", "stats.jsonl", "fakes000000.png", "fakes-latest.png",
                 "network-snapshot.pt", "network-snapshot-latest.pt", "training-state.pt"):
        assert (run_dir / name).is_file(), name
    steps = [json.loads(ln)["step"] for ln in (run_dir / "stats.jsonl").read_text().splitlines()
             if "loss_G" in ln]
    assert steps == [2, 4, 6]  # one line per logged step: a second writer would duplicate them
    assert not list(run_dir.glob(".*.tmp"))
    assert json.loads((run_dir / "training_options.json").read_text())["world_size"] == 2
    # In-training FID ran once (at the end), on rank 0, and was tracked in MLflow like ganops train does.
    fids = [json.loads(ln) for ln in (run_dir / "stats.jsonl").read_text().splitlines() if "metric/fid" in ln]
    assert len(fids) == 1 and fids[0]["metric/fid"] > 0 and summary["best_fid"] == fids[0]["metric/fid"]
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    run = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["ganops.status.train"] == "ok"
    assert run.data.metrics["metric/fid"] == pytest.approx(fids[0]["metric/fid"])


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"RANK": "x"}, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}])
def test_stray_distributed_environment_is_a_named_user_error(monkeypatch, env):
    """Leftover torchrun variables in a plain shell: a one-line error that says to use torchrun or unset them."""
    from ganops.training.distributed import DistributedEnvError, setup

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(DistributedEnvError, match="launch with torchrun .* or unset these variables"):
        setup(torch.device("cpu"), timeout_s=5)
