"""End-to-end fixtures: a throwaway copy of the repository (its git-tracked files) with a tiny params.yaml.

The copy is a fresh git repository, so ``dvc repro`` there behaves like on a fresh clone: no dvc.lock, no cache,
no MLflow store; everything it writes stays under ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
# Small enough for 2 CPU cores, large enough for every stage to do its real work (GX suite, FID/KID, registry).
TINY_PARAMS: dict[str, Any] = {
    "experiment": "ganops-e2e",
    "prepare": {"max_train": 300, "max_test": 100},
    "train": {"ngf": 16, "ndf": 16, "batch_size": 32, "total_kimg": 0.5, "sample_every_kimg": 0.25,
              "checkpoint_every_kimg": 0.25, "grid_size": 4, "num_threads": 2, "mode_collapse_num_images": 16,
              # DVC experiments that change the architecture/loss start training afresh (see TrainConfig).
              "on_config_change": "restart"},
    "evaluate": {"num_samples": 100, "batch_size": 50, "kid_subsets": 10, "kid_subset_size": 50},
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def project_env() -> dict[str, str]:
    """Environment for commands in the copy: this venv's ``ganops``/``dvc`` first on PATH, default MLflow store."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MLFLOW_DISABLE_TELEMETRY="true", GX_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
    # `dvc exp run` commits experiment refs: give git an identity that does not depend on the machine's config.
    for who in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{who}_NAME", "ganops-e2e")
        env.setdefault(f"GIT_{who}_EMAIL", "e2e@ganops.local")
    return env


def run(cmd: list[str], cwd: Path, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in ``cwd``; on failure the assertion shows the command's output."""
    proc = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture()
def tiny_project(tmp_path: Path) -> Path:
    """A fresh git repository holding the repo's tracked files and ``params.yaml`` merged with TINY_PARAMS."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    dest = tmp_path / "project"
    for rel in filter(None, files.split("\0")):
        src = REPO / rel
        if src.is_file():  # skip files deleted in the working tree but still in the index
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for name in ("dvc.lock", "mlflow.db"):
        (dest / name).unlink(missing_ok=True)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=ganops-e2e", "-c", "user.email=e2e@ganops.local"]
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run([*git, "commit", "-qm", "e2e copy"], dest)
    return dest


def tracking_client(project: Path) -> Any:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)
