"""``ganops fid`` on a registered model: ``models:/NAME@champion`` against an image folder, through the CLI.

Uses the real TF-Inception network (16 + 16 images of 16x16) and a real MLflow registration in a temporary store.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ganops.cli import app
from ganops.config import RegisterConfig
from ganops.io import sha256_file, write_json
from ganops.models import build_G
from ganops.registry import register
from ganops.tracking import RUN_ID_FILE, configure_mlflow
from ganops.training.snapshot import save_snapshot

G_KWARGS = {"z_dim": 8, "ngf": 4, "resolution": 16, "channels": 1, "num_classes": 0}
MODEL = "fid-cli-gan"
JSON_KEYS = {"fid", "kid_mean", "kid_std", "n_a", "n_b", "protocol", "weights_sha256"}


@pytest.fixture()
def champion(mlflow_project):
    """cwd = a project whose MLflow store holds MODEL version 1 as @champion (an untrained 16x16 DCGAN G)."""
    client, exp_id = configure_mlflow("unit")
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id, "FINISHED")
    run_dir = mlflow_project / "runs" / "train"
    write_json(run_dir / RUN_ID_FILE, {"run_id": run.info.run_id})
    torch.manual_seed(0)
    meta = {"arch": "dcgan", "G_kwargs": G_KWARGS, "kimg": 0.5, "step": 8,
            **{k: G_KWARGS[k] for k in ("z_dim", "resolution", "channels", "num_classes")}}
    save_snapshot(run_dir / "network-snapshot.pt", build_G("dcgan", **G_KWARGS).eval(), meta)
    eval_json = mlflow_project / "metrics" / "eval.json"
    write_json(eval_json, {"fid": 20.0, "kid_mean": 0.01, "kid_std": 0.001, "num_generated": 16, "num_real": 16,
                           "protocol": "legacy_tensorflow",
                           "snapshot_sha256": sha256_file(run_dir / "network-snapshot.pt")})
    rec = register(RegisterConfig(model_name=MODEL, out=str(mlflow_project / "registration.json")),
                   run_dir=run_dir, eval_json=eval_json)
    assert rec["alias"] == "champion"
    return mlflow_project


def _folder(root, n: int):
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):  # smooth blobs, not white noise: a plausible, non-degenerate image set
        y, x = np.mgrid[:16, :16]
        cy, cx = rng.uniform(4, 12, 2)
        img = 255 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / rng.uniform(4, 20))
        Image.fromarray(img.astype(np.uint8), "L").save(root / f"{i:02d}.png")
    return root


@pytest.mark.e2e
def test_fid_of_a_registered_model_against_a_folder_prints_the_documented_json(champion):
    folder = _folder(champion / "real", 20)
    result = CliRunner().invoke(app, ["fid", f"models:/{MODEL}@champion", str(folder), "--num-samples", "16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(out) == JSON_KEYS
    assert math.isfinite(out["fid"]) and out["fid"] > 0
    assert math.isfinite(out["kid_mean"]) and math.isfinite(out["kid_std"]) and out["kid_std"] >= 0
    assert (out["n_a"], out["n_b"]) == (16, 16)  # 16 sampled; the first 16 of the folder's 20
    assert out["protocol"] == "legacy_tensorflow"
    assert len(out["weights_sha256"]) == 64 and int(out["weights_sha256"], 16) >= 0


def test_fid_of_a_model_uri_without_num_samples_is_a_clear_error(tmp_path):
    folder = _folder(tmp_path / "real", 4)
    result = CliRunner().invoke(app, ["fid", f"models:/{MODEL}@champion", str(folder), "--json"])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and result.stdout == ""
    assert f"models:/{MODEL}@champion" in result.output and "--num-samples" in result.output
