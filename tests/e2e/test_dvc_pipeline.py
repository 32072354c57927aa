"""``dvc repro`` of the whole pipeline in a fresh copy: every stage runs, the model is registered, a rerun is a no-op;
then a DVC experiment with another loss, and a ``dvc push`` / ``git clone`` / ``dvc pull`` round trip through the
default local remote (one pipeline run serves all of it: the e2e budget is a full pipeline per test)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ganops.io import sha256_file

from .conftest import run, tracking_client

pytestmark = pytest.mark.e2e


def assert_pipeline_result(project: Path, client) -> dict:
    """Checks shared by the DVC and Prefect e2e tests; returns the registration record."""
    ev = json.loads((project / "metrics" / "eval.json").read_text())
    for key in ("fid", "kid_mean", "kid_std"):
        assert math.isfinite(ev[key]), f"{key} = {ev[key]}"
    assert ev["num_generated"] == 100 and ev["snapshot_sha256"] == sha256_file(project / "runs/train/network-snapshot.pt")

    reg = json.loads((project / "reports" / "registration.json").read_text())
    mv = client.get_model_version_by_alias(reg["model_name"], reg["alias"])
    assert reg["alias"] == "champion" and int(mv.version) == reg["version"]
    assert mv.tags["snapshot_sha256"] == ev["snapshot_sha256"] and float(mv.tags["fid"]) == ev["fid"]

    run_ = client.get_run(reg["run_id"])
    assert run_.info.status == "FINISHED"
    assert {run_.data.tags.get(f"ganops.status.{s}") for s in ("train", "evaluate", "register")} == {"ok"}
    assert len(client.get_metric_history(reg["run_id"], "loss_G")) >= 2
    assert run_.data.params["train.ngf"] == "16"
    artifacts = {f.path for f in client.list_artifacts(reg["run_id"], "samples")}
    assert "samples/fakes-latest.png" in artifacts
    # The Great Expectations Data Docs site travels with the run, and a tag says where to open it.
    docs = {f.path for f in client.list_artifacts(reg["run_id"], "data/validation/data_docs")}
    assert "data/validation/data_docs/index.html" in docs
    assert run_.data.tags["ganops.data_docs"].startswith("data/validation/data_docs/index.html")
    return reg


def test_dvc_repro_fresh_copy_then_noop(tiny_project):
    import mlflow

    t0 = time.perf_counter()
    first = run(["dvc", "repro"], tiny_project)
    wall_s = time.perf_counter() - t0
    for stage in ("prepare", "validate", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    reg = assert_pipeline_result(tiny_project, tracking_client(tiny_project))
    print(json.dumps({"dvc_repro_tiny_wall_s": round(wall_s, 1)}))

    # The registered pyfunc loads from the copy's registry and returns uint8 (N, H, W, C).
    uri = f"sqlite:///{tiny_project / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    images = mlflow.pyfunc.load_model(f"models:/{reg['model_name']}@champion").predict(
        pd.DataFrame({"num_images": [3], "seed": [0]}))
    assert images.dtype == np.uint8 and images.shape == (3, 28, 28, 1)

    # The dvc.yaml loss plot renders from runs/train/loss.csv (one row per logged step).
    loss_rows = (tiny_project / "runs/train/loss.csv").read_text().splitlines()
    assert loss_rows[0] == "step,kimg,loss_G,loss_D" and len(loss_rows) >= 3
    plots = json.loads(run(["dvc", "plots", "show", "--json"], tiny_project).stdout)
    assert "runs/train/loss.csv" in plots["data"] and "runs/train/fid.csv" in plots["data"]

    second = run(["dvc", "repro"], tiny_project)
    assert "Running stage" not in second.stdout and "up to date" in second.stdout
    status = run(["dvc", "status"], tiny_project)
    assert "up to date" in status.stdout
    # Nothing the pipeline wrote is left untracked by git (outputs are ignored or DVC-tracked).
    porcelain = run(["git", "status", "--porcelain", "--untracked-files=all"], tiny_project).stdout.splitlines()
    assert [line for line in porcelain if not line.endswith("dvc.lock")] == []


def _tree_sha256(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_experiment_with_another_loss_then_push_clone_pull(tiny_project):
    client = tracking_client(tiny_project)
    run(["dvc", "repro"], tiny_project)
    first = json.loads((tiny_project / "reports/registration.json").read_text())
    run(["git", "add", "dvc.lock"], tiny_project)
    run(["git", "commit", "-qm", "baseline"], tiny_project)

    # runs/train is persisted (resume), so the experiment finds a non_saturating training state there; with
    # train.on_config_change=restart it trains hinge from scratch instead of failing with ResumeMismatchError.
    exp = run(["dvc", "exp", "run", "-S", "train.loss=hinge", "-n", "hinge"], tiny_project)
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in exp.stdout
    assert "Running stage 'prepare'" not in exp.stdout
    train = json.loads((tiny_project / "runs/train/train.json").read_text())
    options = json.loads((tiny_project / "runs/train/training_options.json").read_text())
    assert train["resumed_from_step"] is None and options["loss"] == "hinge" and options["arch_config"]["loss"] == "hinge"
    second = json.loads((tiny_project / "reports/registration.json").read_text())
    assert second["version"] == first["version"] + 1 and second["snapshot_sha256"] != first["snapshot_sha256"]
    assert client.get_model_version(second["model_name"], str(second["version"])).tags["loss"] == "hinge"
    shown = json.loads(run(["dvc", "exp", "show", "--json"], tiny_project).stdout)
    assert "hinge" in json.dumps(shown)
    # `dvc metrics diff`: the committed baseline vs the hinge experiment in the workspace.
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], tiny_project).stdout)
    fid = diff["metrics/eval.json"]["fid"]
    assert (fid["old"], fid["new"]) == (first["fid"], second["fid"])

    # Keep the experiment in git, push its data to the default remote (a sibling folder), restore it in a clone.
    run(["git", "add", "dvc.lock", "params.yaml"], tiny_project)
    run(["git", "commit", "-qm", "hinge experiment"], tiny_project)
    remote = tiny_project.parent / "ganops-dvc-remote"
    assert "local" in run(["dvc", "remote", "list"], tiny_project).stdout
    run(["dvc", "push"], tiny_project)
    assert any(remote.rglob("*")), f"dvc push wrote nothing under {remote}"
    clone = tiny_project.parent / "clone"
    run(["git", "clone", "-q", str(tiny_project), str(clone)], tiny_project.parent)
    assert not (clone / "data/prepared").exists() and not (clone / "runs/train").exists()
    run(["dvc", "pull"], clone)
    for out in ("data/prepared", "runs/train", "reports/validation"):
        assert _tree_sha256(clone / out) == _tree_sha256(tiny_project / out), out
    status = run(["dvc", "status"], clone)
    assert "changed" not in status.stdout, status.stdout
    # The restored snapshot is the registered hinge model.
    assert sha256_file(clone / "runs/train/network-snapshot.pt") == second["snapshot_sha256"]
