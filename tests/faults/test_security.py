"""Security checks beyond test_faults.py (which greps ``torch.load(...)`` for ``weights_only=True``, refuses one
malicious snapshot in the library and bans ``0.0.0.0`` from src/flows/Makefile):

- no other unpickling entry point anywhere in src/flows/benchmarks (``from torch import load``, pickle, dill,
  joblib, ``np.load(allow_pickle=True)``, ``weights_only=False``, ``mlflow.pytorch.load_model``);
- a pickled payload in a snapshot or a training state is refused through the CLI and the training loop with a clear
  one-line error, and its code never runs; a corrupt checkpoint is a clear error too;
- every server the project or its tests launch (Makefile, flows, src, tests, benchmarks, CI, prefect.yaml) is told
  ``--host 127.0.0.1``;
- a tracking URI carrying ``user:password@`` is never echoed with its password.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ganops.cli import app
from ganops.io import atomic_write
from ganops.training.snapshot import CorruptCheckpointError, UnsafeCheckpointError, load_torch
from tests.model.conftest import tiny_cfg, write_prepared

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _py_files(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in (REPO / d).rglob("*.py") if ".venv" not in p.parts]


# ---- no unpickling entry points -----------------------------------------------------------------------------------

_PICKLE_MODULES = {"pickle", "_pickle", "cPickle"}  # importing these for their exception types is fine
_UNPICKLING = {"load", "loads", "Unpickler", "_load", "_loads"}
_UNSAFE_MODULES = {"dill", "cloudpickle", "joblib", "shelve", "marshal"}  # no use of these at all


def _unsafe_loads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization") and any(
                a.name == "load" for a in node.names):
            found.append(f"{where} imports torch's load under another name")
        if isinstance(node, ast.ImportFrom) and node.module in _PICKLE_MODULES and any(
                a.name in _UNPICKLING for a in node.names):
            found.append(f"{where} imports an unpickling function from {node.module}")
        if isinstance(node, ast.Attribute) and node.attr in _UNPICKLING and isinstance(node.value, ast.Name) and \
                node.value.id in _PICKLE_MODULES:
            found.append(f"{where} calls {node.value.id}.{node.attr}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if any(n.split(".")[0] in _UNSAFE_MODULES for n in names):
                found.append(f"{where} imports an unpickling library ({', '.join(names)})")
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg in ("allow_pickle", "weights_only") and isinstance(kw.value, ast.Constant) and \
                        kw.value.value is (kw.arg == "allow_pickle"):
                    found.append(f"{where} passes {kw.arg}={kw.value.value}")
            func = ast.unparse(node.func)
            if func in ("mlflow.pytorch.load_model", "torch.serialization.load", "pd.read_pickle",
                        "pandas.read_pickle"):
                found.append(f"{where} calls {func}")
    return found


def test_no_unpickling_entry_point_in_the_code():
    files = _py_files("src", "flows", "benchmarks")
    assert len(files) > 20
    unsafe = [f for p in files for f in _unsafe_loads(p)]
    assert not unsafe, "\n".join(unsafe)


def test_the_unpickling_scan_catches_each_pattern(tmp_path, monkeypatch):
    probe = REPO / "src" / "ganops" / "__probe__.py"  # scanned as if it were package code; never written
    snippets = {
        "from torch import load\nload('x')": "imports torch's load",
        "import pickle\npickle.loads(b'')": "calls pickle.loads",
        "from pickle import Unpickler": "imports an unpickling function",
        "import joblib\njoblib.load('m.pkl')": "imports an unpickling library",
        "import numpy as np\nnp.load('x.npz', allow_pickle=True)": "allow_pickle=True",
        "import torch\ntorch.load('x', weights_only=False)": "weights_only=False",
        "import mlflow\nmlflow.pytorch.load_model('models:/m/1')": "mlflow.pytorch.load_model",
    }
    for code, expected in snippets.items():
        monkeypatch.setattr(Path, "read_text", lambda self, *a, _c=code, **k: _c)
        found = _unsafe_loads(probe)
        assert found and expected in found[0], (code, found)


# ---- pickled payloads and corrupt checkpoints -----------------------------------------------------------------------


class _Payload:
    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, **blob) -> Path:
    payload = _Payload()
    payload.marker = marker
    with atomic_write(path) as f:
        torch.save({**blob, "metadata": payload}, f)
    return path


def test_pickled_payload_in_a_snapshot_is_refused_by_the_cli_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    evil = _evil(tmp_path / "network-snapshot.pt", marker, format=1, G_ema={})
    result = CliRunner().invoke(app, ["generate", "--snapshot", str(evil), "--n", "2", "--out",
                                      str(tmp_path / "grid.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{evil}: refused to load: it holds pickled Python objects" in result.output
    assert "GLOBAL posix.system" in result.output  # what was refused
    assert not marker.exists() and not (tmp_path / "grid.png").exists()


def test_pickled_payload_in_a_training_state_is_refused_before_training(tmp_path):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _evil(run_dir / "training-state.pt", marker, step=3)
    with pytest.raises(UnsafeCheckpointError, match="never unpickles code") as info:
        tiny = tiny_cfg(run_dir)
        from ganops.training.loop import training_loop

        training_loop(tiny, prepared_dir=write_prepared(tmp_path / "prepared"), seed=0, progress=False)
    assert isinstance(info.value, ValueError)  # the CLI shows ValueErrors of ganops as one-line errors
    assert not marker.exists() and not (run_dir / "network-snapshot.pt").exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None], ids=["empty", "text", "truncated"])
def test_corrupt_checkpoint_is_a_clear_error(tmp_path, content):
    path = tmp_path / "network-snapshot.pt"
    if content is None:
        with atomic_write(path) as f:
            torch.save({"format": 1, "G_ema": {"w": torch.zeros(64, 64)}}, f)
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=r"is not a readable torch checkpoint .*replace it"):
        load_torch(path)
    result = CliRunner().invoke(app, ["generate", "--snapshot", str(path), "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output and str(path) in result.output


# ---- servers bind loopback ---------------------------------------------------------------------------------------

_LAUNCH = re.compile(r"\b(mlflow\s+(server|ui)|prefect\s+server\s+start|uvicorn|gunicorn|http\.server)\b")
# A socket bound to every interface, or a host= keyword that means it ("" and "::" included).
_WILDCARD_BIND = re.compile(r"""(?:bind\(\(|\bhost\s*=\s*)["'](?:0\.0\.0\.0|::|)["']""")
_HOST_VALUE = re.compile(r"""--host(?:name)?[\s"',=]+([^\s"',\])]+)""")


def _server_texts() -> dict[Path, str]:
    files = [REPO / "Makefile", REPO / "prefect.yaml", *(REPO / ".ci").rglob("*"),
             *_py_files("src", "flows", "tests", "benchmarks")]
    return {p: p.read_text() for p in files if p.is_file() and p != Path(__file__)}


def _python_launch_lists(text: str) -> list[tuple[int, list[str]]]:
    """String elements of list/tuple literals that start a server: contain 'server' or 'ui' and '--port'."""
    out = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.List, ast.Tuple)):
            strs = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if "--port" in strs and ({"server", "ui"} & set(strs) or any("uvicorn" in s for s in strs)):
                out.append((node.lineno, strs))
    return out


def test_every_server_launch_binds_loopback():
    checked = 0
    for path, text in _server_texts().items():
        rel = path.relative_to(REPO)
        for value in _HOST_VALUE.findall(text):
            assert value in LOOPBACK, f"{rel}: --host {value} (servers must bind 127.0.0.1)"
        wildcard = _WILDCARD_BIND.findall(text)
        assert not wildcard, f"{rel}: wildcard bind address {wildcard}"
        for line in text.splitlines():  # shell commands: Makefile, CI scripts, command strings
            if _LAUNCH.search(line) and "--port" in line:
                assert "--host 127.0.0.1" in line, f"{rel}: server started without --host 127.0.0.1: {line.strip()}"
                checked += 1
        if path.suffix == ".py":
            for lineno, strs in _python_launch_lists(text):
                i = strs.index("--host") if "--host" in strs else -1
                assert i >= 0 and strs[i + 1] in LOOPBACK, f"{rel}:{lineno}: server without --host 127.0.0.1"
                checked += 1
    assert checked >= 1  # at least the Makefile's `make ui`


# ---- no secrets in errors / logs / outputs ---------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_credentials_in_the_tracking_uri_never_reach_errors_logs_or_outputs(tmp_path, monkeypatch, caplog):
    import yaml

    secret = "s3cr3t-pw"
    uri = f"http://alice:{secret}@127.0.0.1:{_closed_port()}"
    run_dir = tmp_path / "runs" / "train"
    write_prepared(tmp_path / "prepared")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({
        "prepare": {"out_dir": str(tmp_path / "prepared"), "resolution": 8},
        "train": dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=0.016, num_threads=1, device="cpu",
                      run_dir=str(run_dir)),
    }))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["train", "--params", "params.yaml"])
    assert result.exit_code == 1 and "unreachable" in result.output  # the error path of check_reachable
    assert "127.0.0.1" in result.output  # the message still says which server
    leaked = [where for where, text in [("CLI output", result.output), ("logs", caplog.text),
                                        *((str(p), p.read_text(errors="replace")) for p in tmp_path.rglob("*")
                                          if p.is_file() and p.suffix in (".json", ".jsonl", ".yaml", ".log"))]
              if secret in text]
    assert not leaked, f"password of the tracking URI written to: {leaked}"
