"""The Prefect flow in a fresh copy: DVC stages under one MLflow run, a markdown artifact, a no-op second run."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time

import pytest

from .conftest import project_env, tracking_client
from .test_dvc_pipeline import assert_pipeline_result

pytestmark = pytest.mark.e2e


def _load_flow_module(project):
    spec = importlib.util.spec_from_file_location("ganops_e2e_pipeline", project / "flows" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _markdown_artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def test_prefect_flow_runs_stages_under_one_mlflow_run(tiny_project, prefect_harness, monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", project_env()["PATH"])
    pipeline = _load_flow_module(tiny_project)

    t0 = time.perf_counter()
    result = pipeline.ganops_pipeline(project_dir=str(tiny_project))
    first_s = time.perf_counter() - t0
    assert all(s["ran"] for s in result["stages"].values()), result["stages"]
    client = tracking_client(tiny_project)
    reg = assert_pipeline_result(tiny_project, client)
    # Every stage logged into the flow's run (the run id exported as GANOPS_MLFLOW_RUN_ID).
    assert reg["run_id"] == result["run_id"]
    tags = client.get_run(result["run_id"]).data.tags
    assert tags["ganops.source"] == "prefect" and tags["ganops.stages_run"] == ",".join(pipeline.STAGES)
    assert {tags[f"ganops.status.{s}"] for s in pipeline.STAGES} == {"ok"}
    assert json.loads((tiny_project / "runs/train/mlflow_run.json").read_text())["run_id"] == result["run_id"]

    (artifact,) = [a for a in _markdown_artifacts("ganops-pipeline") if result["run_id"] in a.data]
    assert artifact.type == "markdown"
    assert f"version **{reg['version']}**, alias **@champion**" in artifact.data
    assert f"| fid | {result['eval']['fid']} |" in artifact.data and math.isfinite(result["eval"]["fid"])

    # Second execution: DVC finds everything up to date, so no stage runs and nothing new is registered.
    t0 = time.perf_counter()
    again = pipeline.ganops_pipeline(project_dir=str(tiny_project))
    noop_s = time.perf_counter() - t0
    assert not any(s["ran"] for s in again["stages"].values()), again["stages"]
    assert again["registration"]["version"] == reg["version"]
    assert client.get_run(again["run_id"]).data.tags["ganops.stages_run"] == "none"
    print(json.dumps({"flow_tiny_wall_s": round(first_s, 1), "flow_noop_wall_s": round(noop_s, 1),
                      "dvc_stage_wall_s": {k: round(v["wall_time_s"], 1) for k, v in result["stages"].items()}}))


def test_flow_rejects_unknown_stage_and_foreign_params(tiny_project, tmp_path):
    pipeline = _load_flow_module(tiny_project)
    with pytest.raises(ValueError, match="unknown stage"):
        pipeline.ganops_pipeline.fn(project_dir=str(tiny_project), stages=("prepare", "deploy"))
    with pytest.raises(ValueError, match="DVC stages read"):
        pipeline.ganops_pipeline.fn(params_path=str(tmp_path / "other.yaml"), project_dir=str(tiny_project))


def test_failed_stage_fails_flow_and_marks_mlflow_run_failed(tiny_project, prefect_harness, monkeypatch):
    import yaml

    for key in ("MLFLOW_TRACKING_URI", "GANOPS_MLFLOW_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["prepare"]["fashion_mnist_dir"] = str(tiny_project / "no-such-dir")
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    pipeline = _load_flow_module(tiny_project)

    with pytest.raises(pipeline.StageFailed, match="stage 'prepare' failed") as info:
        pipeline.ganops_pipeline(project_dir=str(tiny_project))
    assert not info.value.transient  # a missing dataset is not retried
    client = tracking_client(tiny_project)
    (run_,) = client.search_runs([client.get_experiment_by_name("ganops-e2e").experiment_id])
    assert run_.info.status == "FAILED" and run_.data.tags["ganops.status.prepare"] == "failed"
    assert not (tiny_project / "reports" / "registration.json").exists()
