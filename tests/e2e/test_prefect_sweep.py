"""flows/sweep.py on a 2-point sweep in a fresh copy: both points become DVC experiments with their own FID, only the
best is registered (exactly one model version, carrying the best experiment's snapshot and FID), and the comparison
table artifact lists both."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import pytest
import yaml

from ganops.config import ConfigError
from ganops.sweep import run_dvc

from .conftest import project_env, tracking_client

pytestmark = pytest.mark.e2e

# Smaller than TINY_PARAMS: two trainings and two evaluations in one test.
SWEEP_BASE = {"prepare.max_train": 200, "prepare.max_test": 50, "train.total_kimg": 0.2, "train.num_threads": 1,
              "train.sample_every_kimg": 0.2, "train.checkpoint_every_kimg": 0.2, "evaluate.num_samples": 16,
              "evaluate.kid_subsets": 5, "evaluate.kid_subset_size": 8}


def _load_sweep(project, monkeypatch):
    monkeypatch.syspath_prepend(str(project / "flows"))
    monkeypatch.delitem(sys.modules, "pipeline", raising=False)  # the copy's pipeline.py, not another one
    spec = importlib.util.spec_from_file_location("ganops_e2e_sweep", project / "flows" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _table_artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_sweep_registers_only_the_best_experiment(tiny_project, prefect_harness, monkeypatch):
    for key, value in project_env().items():  # venv first on PATH, git identity for the experiment commits
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    sweep = _load_sweep(tiny_project, monkeypatch)
    # Two learning rates: the same seed and data, so the snapshots (and FIDs) differ only through lr_g / lr_d.
    points = [{**SWEEP_BASE, "train.lr_g": 2e-4}, {**SWEEP_BASE, "train.lr_g": 1e-6, "train.lr_d": 1e-6}]

    out = sweep.ganops_sweep(points=points, names=["lr-2e-4", "lr-1e-6"], project_dir=str(tiny_project))

    exps = {e["name"]: e for e in out["experiments"]}
    assert set(exps) == {"lr-2e-4", "lr-1e-6"} and all(e["ok"] for e in exps.values()), exps
    assert all(math.isfinite(e["fid"]) for e in exps.values())
    assert exps["lr-2e-4"]["snapshot_sha256"] != exps["lr-1e-6"]["snapshot_sha256"]  # each trained from scratch
    best = min(exps.values(), key=lambda e: e["fid"])
    loser = max(exps.values(), key=lambda e: e["fid"])
    assert best["fid"] < loser["fid"] and out["best"] == best["name"]

    # Both are DVC experiments with their own metrics.
    proc = run_dvc([sys.executable, "-m", "dvc", "exp", "show", "--json"], tiny_project)
    assert proc.returncode == 0, proc.stderr
    shown = json.dumps(json.loads(proc.stdout))
    assert "lr-2e-4" in shown and "lr-1e-6" in shown

    # Exactly one model version exists, and it is the best experiment's snapshot and FID.
    client = tracking_client(tiny_project)
    reg = out["registration"]
    versions = client.search_model_versions(f"name='{reg['model_name']}'")
    assert len(versions) == 1, [(v.version, v.tags.get("fid")) for v in versions]
    (mv,) = versions
    assert mv.tags["snapshot_sha256"] == best["snapshot_sha256"] != loser["snapshot_sha256"]
    assert float(mv.tags["fid"]) == best["fid"]
    assert client.get_model_version_by_alias(reg["model_name"], "champion").version == mv.version
    # Registered from the best experiment's own MLflow run, which carries the sweep tags.
    assert reg["run_id"] == best["mlflow_run_id"] != loser["mlflow_run_id"]
    assert client.get_run(reg["run_id"]).data.tags["ganops.dvc_exp"] == best["name"]
    # The workspace now holds the best experiment (its params), ready to commit.
    # (DVC writes 1e-6 as `1e-06`, which PyYAML reads as a string; params.yaml's loader coerces it to float.)
    applied = yaml.safe_load((tiny_project / "params.yaml").read_text())["train"]
    assert float(applied["lr_g"]) == {"lr-2e-4": 2e-4, "lr-1e-6": 1e-6}[best["name"]]

    (artifact,) = [a for a in _table_artifacts(sweep.SWEEP_TABLE_KEY) if "lr-1e-6" in a.data]
    rows = json.loads(artifact.data)
    assert {r["experiment"]: r["best"] for r in rows} == {"lr-2e-4": best["name"] == "lr-2e-4",
                                                          "lr-1e-6": best["name"] == "lr-1e-6"}
    assert [r["registered"] for r in rows if r["best"]] == [f"{reg['model_name']} v{mv.version} @champion"]
    print(json.dumps({"sweep_experiment_wall_s": {e["name"]: round(e["wall_time_s"], 1) for e in exps.values()},
                      "best": best["name"], "fid": {e["name"]: e["fid"] for e in exps.values()}}))


def test_sweep_rejects_a_bad_point_before_any_experiment(tiny_project, monkeypatch):
    sweep = _load_sweep(tiny_project, monkeypatch)
    with pytest.raises(ConfigError, match=r"(?s)sweep point 1 \(b\).*- train.lr_g: Input should be greater than 0"):
        sweep.ganops_sweep.fn(points=[{"train.lr_g": 1e-4}, {"train.lr_g": -1}], names=["a", "b"],
                              project_dir=str(tiny_project))
    with pytest.raises(ValueError, match="names must be unique"):
        sweep.ganops_sweep.fn(points=[{}, {}], names=["a", "a"], project_dir=str(tiny_project))
    with pytest.raises(ValueError, match="successive halving needs a deployment"):
        sweep.ganops_sweep.fn(points=[{}, {}], names=["a", "b"], project_dir=str(tiny_project),
                              halving_rungs_kimg=[0.1])
    assert not (tiny_project / "data" / "prepared").exists()  # nothing ran
