"""Review in the MLflow UI, tested for real: a tiny ``dvc repro`` logs into a local ``mlflow server``, then headless
Chromium (the Debian ``chromium`` package, driven by Playwright) opens the registered model's pages and checks that
the version, its ``champion`` alias, the FID and the model card (with its sample grid) are shown.

The same run checks the model card through ``MlflowClient`` against the project's own files (git HEAD, dvc.lock,
summary.json, train.json), the run's link to the Great Expectations report, and that the registered pyfunc loads
from the server. Screenshots are kept under ``test-artifacts/`` at the repository root (gitignored; CI can upload
them): ``mlflow-ui-model-version.png`` and ``mlflow-ui-model.png``.

A missing browser or Playwright is a test failure with the install command, never a skip: ``make test`` installs
both (``make browser``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.mlflow_server import running_mlflow_server

from .conftest import REPO, run

pytestmark = pytest.mark.e2e

ARTIFACT_DIR = REPO / "test-artifacts"
MODEL = "ganops-ui-e2e"
# Smaller than the other e2e tests' TINY_PARAMS: this test is about what the UI shows, not about training.
UI_PARAMS = {
    "prepare": {"max_train": 200, "max_test": 40},
    "train": {"total_kimg": 0.2, "batch_size": 32, "sample_every_kimg": 0.1, "checkpoint_every_kimg": 0.1,
              "grid_size": 4, "num_threads": 1, "mode_collapse_num_images": 16, "log_every_steps": 2},
    "evaluate": {"num_samples": 16, "batch_size": 16, "kid_subsets": 5, "kid_subset_size": 8},
    "register": {"model_name": MODEL},
}
UI_TIMEOUT_MS = 90_000  # the React app fetches its bundle (several MB) and then the registry over REST


@pytest.fixture()
def mlflow_server(tmp_path, migrated_mlflow_db):
    """``mlflow server`` on 127.0.0.1:<free port> (tests/mlflow_server.py): SQLite backend with the schema already
    migrated, artifacts served by it; its process group is stopped at teardown. Yields the base URL."""
    with running_mlflow_server(tmp_path / "server", migrated_mlflow_db) as server:
        yield server.uri


def _tiny_ui_project(project: Path) -> None:
    """Shrink params.yaml further and commit it, so the registered git commit is a clean HEAD."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in UI_PARAMS.items():
        params[section].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "ui params"], project)


def _launch_chromium(playwright):
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).is_file():
        pytest.fail("Chromium is not installed, so the MLflow UI cannot be checked. Install it with `make browser` "
                    "(as root: apt-get install chromium) or `sudo apt-get install chromium`, then re-run.")
    # --no-sandbox: Chromium refuses to start its sandbox as root (CI runs as root); the pages are local.
    return playwright.chromium.launch(executable_path=exe, headless=True,
                                      args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])


def test_review_champion_in_mlflow_ui(tiny_project, mlflow_server):
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as err:
        pytest.fail(f"Playwright is not installed ({err}); run `make setup` (it installs the pinned dev extras)")
    from mlflow import MlflowClient

    _tiny_ui_project(tiny_project)
    env_run = ["env", f"MLFLOW_TRACKING_URI={mlflow_server}"]
    t0 = time.perf_counter()
    run([*env_run, "dvc", "repro"], tiny_project)
    pipeline_s = time.perf_counter() - t0
    reg = json.loads((tiny_project / "reports/registration.json").read_text())
    ev = json.loads((tiny_project / "metrics/eval.json").read_text())
    assert (reg["model_name"], reg["alias"]) == (MODEL, "champion"), reg
    version, fid = str(reg["version"]), float(ev["fid"])

    # ---- the model card, checked against the project's own records --------------------------------------------
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    mv = client.get_model_version(MODEL, version)
    head = run(["git", "rev-parse", "HEAD"], tiny_project).stdout.strip()
    lock = yaml.safe_load((tiny_project / "dvc.lock").read_text())
    prepared_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    dataset_sha = json.loads((tiny_project / "data/prepared/summary.json").read_text())["dataset_sha256"]
    train = json.loads((tiny_project / "runs/train/train.json").read_text())
    tags = mv.tags
    assert float(tags["fid"]) == fid and float(tags["kid"]) == ev["kid_mean"] and float(tags["kid_std"]) == ev["kid_std"]
    assert (tags["protocol"], tags["num_samples"], tags["num_real"]) == ("legacy_tensorflow", "16", str(ev["num_real"]))
    assert tags["inception_sha256"] == ev["weights_sha256"]
    assert (tags["git_commit"], tags["dvc_data_md5"], tags["dataset_sha256"]) == (head, prepared_md5, dataset_sha)
    assert (tags["arch"], tags["loss"], tags["num_classes"]) == ("dcgan", "non_saturating", "0")
    assert tags["train_wall_time_s"] == f"{train['wall_time_s']:.1f}"
    card = mv.description
    for text in (f"**{fid:.3f}**", "legacy_tensorflow", "16 generated", head, prepared_md5, dataset_sha[:16],
                 f"in {tags['train_wall_time_s']} s", "`non_saturating` loss", "dcgan",
                 f'mlflow.pyfunc.load_model("models:/{MODEL}/{version}")', "ganops generate --model-uri"):
        assert text in card, f"{text!r} missing from the model card:\n{card}"
    grid_artifact = tags["sample_grid_run_artifact"]
    assert grid_artifact in card and f"run_uuid={mv.run_id}" in card
    grid_local = client.download_artifacts(mv.run_id, grid_artifact, str(tiny_project.parent / "dl"))
    assert Path(grid_local).read_bytes() == (tiny_project / "runs/train/fakes-latest.png").read_bytes()

    # The training run links the Great Expectations report: result.json names the Data Docs index.html.
    run_artifacts = {f.path for f in client.list_artifacts(mv.run_id, "data/validation")}
    assert "data/validation/result.json" in run_artifacts, run_artifacts
    result = json.loads(Path(client.download_artifacts(mv.run_id, "data/validation/result.json",
                                                       str(tiny_project.parent / "dl"))).read_text())
    assert (tiny_project / result["data_docs"]).is_file(), result["data_docs"]

    # The registered pyfunc loads through the server and draws uint8 (N, H, W, C) images.
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    images = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(
        pd.DataFrame({"num_images": [2], "seed": [3]}))
    assert images.dtype == np.uint8 and images.shape == (2, 28, 28, 1)

    # ---- the UI -------------------------------------------------------------------------------------------------
    ARTIFACT_DIR.mkdir(exist_ok=True)
    shots = {"version": ARTIFACT_DIR / "mlflow-ui-model-version.png", "model": ARTIFACT_DIR / "mlflow-ui-model.png"}
    t1 = time.perf_counter()
    with sync_playwright() as pw:
        browser = _launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1600})
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)

            # Model version page: title, alias tag in the header, FID in the tags table and in the card, the grid.
            page.goto(f"{mlflow_server}/#/models/{MODEL}/versions/{version}")
            expect(page.get_by_text(f"Version {version}", exact=True).first).to_be_visible()
            aliases = page.locator('[data-testid="descriptions-item"]').filter(
                has=page.locator('[data-testid="descriptions-item-label"]', has_text="Aliases"))
            expect(aliases.locator('[title="champion"]')).to_be_visible()
            expect(page.locator('tr[data-row-key="fid"]')).to_contain_text(tags["fid"])
            expect(page.get_by_text(f"{fid:.3f}", exact=True)).to_be_visible()  # bold FID in the card's table
            expect(page.locator('tr[data-row-key="git_commit"]')).to_contain_text(head)
            # The card's image (MLflow's Markdown sanitizer drops the alt text): the run artifact via get-artifact.
            grid = page.locator(f'img[src*="get-artifact"][src*="{grid_artifact.rsplit("/", 1)[1]}"]')
            expect(grid).to_be_visible()
            grid.evaluate("img => img.complete || new Promise(r => { img.onload = img.onerror = r; })")
            width = grid.evaluate("img => img.naturalWidth")
            assert width > 0, "the model card's sample grid did not load from the server (get-artifact)"
            page.screenshot(path=str(shots["version"]), full_page=True)

            # Registered model page: the versions table shows this version with its alias and the fid tag.
            page.goto(f"{mlflow_server}/#/models/{MODEL}")
            row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {version}", exact=True))
            expect(row).to_have_count(1)
            expect(row.locator('[title="champion"]')).to_be_visible()
            expect(row).to_contain_text(f"fid: {tags['fid']}")
            page.screenshot(path=str(shots["model"]), full_page=True)
        finally:
            browser.close()
    ui_s = time.perf_counter() - t1
    for path in shots.values():
        assert path.stat().st_size > 10_000, f"{path} looks empty"
    print(json.dumps({"mlflow_ui_screenshots": [str(p) for p in shots.values()], "dvc_repro_s": round(pipeline_s, 1),
                      "ui_checks_s": round(ui_s, 1)}))


def test_missing_chromium_is_a_failure_naming_the_install_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install chromium"):
        _launch_chromium(playwright=None)
