"""Faults: a kill in the middle of a checkpoint write, an unwritable or full output directory, an unreachable
MLflow server, and a malicious snapshot file. Each must end in a clear error and intact previous outputs."""

from __future__ import annotations

import ast
import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ganops.io import atomic_write, write_json
from ganops.training.loop import training_loop
from ganops.training.snapshot import load_generator, load_torch
from tests.model.conftest import tiny_cfg, write_prepared

REPO = Path(__file__).resolve().parents[2]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


# ---- SIGKILL inside atomic_write of training-state.pt ---------------------------------------------------------

_KILL_CHILD = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from tests.model.conftest import tiny_cfg
from ganops.training.loop import training_loop

run_dir, prepared, marker = Path({run_dir!r}), Path({prepared!r}), Path({marker!r})
real_replace = os.replace

def hanging_replace(src, dst):
    if Path(dst).name == "training-state.pt":  # the temporary file is complete and fsync'ed; the rename is not done
        marker.write_text(str(src))
        time.sleep(600)
    return real_replace(src, dst)

os.replace = hanging_replace
training_loop(tiny_cfg(run_dir, total_kimg=0.032, checkpoint_every_kimg=0.016), prepared_dir=prepared, seed=0,
              progress=False)
"""


def test_sigkill_during_checkpoint_write_keeps_previous_state(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    run_dir = tmp_path / "run"
    first = training_loop(tiny_cfg(run_dir, total_kimg=0.016, checkpoint_every_kimg=0.016), prepared_dir=prepared,
                          seed=0, progress=False)
    assert first["step"] == 2
    before = (run_dir / "training-state.pt").read_bytes()

    marker = tmp_path / "in-replace"
    script = _KILL_CHILD.format(repo=str(REPO), run_dir=str(run_dir), prepared=str(prepared), marker=str(marker))
    child = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "child exited before reaching the checkpoint write"
            assert time.monotonic() < deadline, "child never reached the checkpoint write"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL

    # The kill hit mid-write: the new state sits in a temporary file, the old one is untouched and loadable.
    assert Path(marker.read_text()).is_file()
    assert (run_dir / "training-state.pt").read_bytes() == before
    assert load_torch(run_dir / "training-state.pt")["step"] == 2

    # Resume uses it: training continues from step 2 (not from scratch, not from the torn write).
    resumed = training_loop(tiny_cfg(run_dir, total_kimg=0.032, checkpoint_every_kimg=0.016), prepared_dir=prepared,
                            seed=0, progress=False)
    assert resumed["resumed_from_step"] == 2 and resumed["step"] == 4


# ---- Unwritable / full output directory ----------------------------------------------------------------------


def test_run_dir_under_a_file_fails_before_training_with_the_path(tmp_path):
    prepared = write_prepared(tmp_path / "prepared")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:  # NotADirectoryError / FileExistsError from mkdir
        training_loop(tiny_cfg(blocker / "run"), prepared_dir=prepared, seed=0, progress=False)
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert "not-a-dir" in str(info.value)
    assert blocker.read_text() == "x"


def test_disk_full_in_atomic_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    write_json(target, {"fid": 1.0})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        write_json(target, {"fid": 2.0})
    assert info.value.errno == errno.ENOSPC
    assert json.loads(target.read_text()) == {"fid": 1.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]


def test_disk_full_at_checkpoint_keeps_last_good_state(tmp_path, monkeypatch):
    prepared = write_prepared(tmp_path / "prepared")
    run_dir = tmp_path / "run"
    training_loop(tiny_cfg(run_dir, total_kimg=0.016, checkpoint_every_kimg=0.016), prepared_dir=prepared, seed=0,
                  progress=False)
    good = {n: (run_dir / n).read_bytes() for n in ("training-state.pt", "network-snapshot.pt", "train.json")}

    real_fsync = os.fsync

    def fsync_full_for_checkpoints(fd):  # the disk fills up exactly when a snapshot / state is written
        if any(n in os.readlink(f"/proc/self/fd/{fd}") for n in ("network-snapshot", "training-state")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_full_for_checkpoints)
    with pytest.raises(OSError) as info:
        training_loop(tiny_cfg(run_dir, total_kimg=0.032, checkpoint_every_kimg=0.016), prepared_dir=prepared,
                      seed=0, progress=False)
    assert info.value.errno == errno.ENOSPC
    for name, data in good.items():
        assert (run_dir / name).read_bytes() == data, f"{name} changed after a failed write"
    assert not list(run_dir.glob(".*.tmp")), "temporary files left behind"
    monkeypatch.undo()
    assert load_torch(run_dir / "training-state.pt")["step"] == 2


# ---- MLflow server unreachable ---------------------------------------------------------------------------------


def test_unreachable_mlflow_server_fails_fast_before_training(tmp_path):
    prepared = write_prepared(tmp_path / "prepared", resolution=16)
    run_dir = tmp_path / "runs" / "train"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "prepare": {"out_dir": str(prepared), "resolution": 16},
        "train": dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.016, num_threads=1, device="cpu",
                      run_dir=str(run_dir)),
    }))
    uri = f"http://127.0.0.1:{_closed_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop("GANOPS_MLFLOW_RUN_ID", None)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "ganops.cli", "train", "--params", "params.yaml"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    elapsed_s = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert elapsed_s < 30, f"took {elapsed_s:.1f} s to report an unreachable server"
    assert "unreachable" in proc.stderr and uri in proc.stderr and "Traceback" not in proc.stderr
    assert not run_dir.exists() or not any(run_dir.iterdir()), "training started despite the dead tracking server"


# ---- Security: snapshots are never unpickled -------------------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def test_malicious_pickle_snapshot_is_refused_without_running_code(tmp_path):
    _Payload.marker = tmp_path / "pwned"
    evil = tmp_path / "network-snapshot.pt"
    with atomic_write(evil) as f:
        torch.save({"format": 1, "G_ema": {}, "metadata": _Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_generator(evil)
    assert not _Payload.marker.exists()


def _torch_load_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == "load" and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]


def test_every_torch_load_in_the_package_is_weights_only():
    files = [p for d in ("src", "flows", "benchmarks") for p in (REPO / d).rglob("*.py")]
    calls = [(p, c) for p in files for c in _torch_load_calls(p)]
    assert calls, "expected at least the snapshot loader"
    unsafe = [f"{p.relative_to(REPO)}:{c.lineno}" for p, c in calls
              if not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                         for k in c.keywords)]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_servers_bind_loopback_only():
    texts = {p: p.read_text() for p in [REPO / "Makefile", *(REPO / "src").rglob("*.py"), *(REPO / "flows").rglob("*.py")]}
    wildcard = [str(p.relative_to(REPO)) for p, t in texts.items() if "0.0.0.0" in t]
    assert not wildcard, f"wildcard bind address in {wildcard}"
    assert "--host 127.0.0.1" in texts[REPO / "Makefile"]
