"""ganops.registry: refusal rules, idempotence, champion/challenger aliases, and the logged pyfunc's output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ganops.config import RegisterConfig
from ganops.io import sha256_file, write_json
from ganops.models import build_G
from ganops.registry import RegistrationError, choose_alias, pip_requirements, register
from ganops.tracking import RUN_ID_FILE, STATUS_TAG, configure_mlflow
from ganops.training.sampling import latents
from ganops.training.snapshot import save_snapshot

G_KWARGS = {"z_dim": 8, "ngf": 4, "resolution": 16, "channels": 1, "num_classes": 0}
MODEL = "unit-gan"


def _write_snapshot(run_dir, torch_seed: int) -> str:
    torch.manual_seed(torch_seed)
    G = build_G("dcgan", **G_KWARGS).eval()
    meta = {"arch": "dcgan", "G_kwargs": G_KWARGS, "kimg": 0.5, "step": 8, **{k: G_KWARGS[k] for k in
            ("z_dim", "resolution", "channels", "num_classes")}}
    save_snapshot(run_dir / "network-snapshot.pt", G, meta)
    write_json(run_dir / "prepared" / "summary.json", {"dataset_sha256": "d" * 64})
    write_json(run_dir / "training_options.json", {"arch": "dcgan", "loss": "hinge",
                                                   "prepared_dir": str(run_dir / "prepared")})
    return sha256_file(run_dir / "network-snapshot.pt")


def _write_eval(path, fid: float, snapshot_sha: str, protocol: str = "legacy_tensorflow") -> None:
    write_json(path, {"fid": fid, "kid_mean": 0.01, "kid_std": 0.001, "num_generated": 100, "num_real": 100,
                      "protocol": protocol, "snapshot_sha256": snapshot_sha, "kimg": 0.5})


@pytest.fixture()
def project(mlflow_project):
    """cwd = tmp project with its own MLflow store; a training run recorded in runs/train/mlflow_run.json."""
    client, exp_id = configure_mlflow("unit")
    run = client.create_run(exp_id)
    client.set_terminated(run.info.run_id, "FINISHED")
    run_dir = mlflow_project / "runs" / "train"
    write_json(run_dir / RUN_ID_FILE, {"run_id": run.info.run_id})
    return client, run.info.run_id, run_dir


def test_pip_requirements_are_exact_pins_without_local_labels():
    reqs = pip_requirements()
    torch_pin = next(r for r in reqs if r.startswith("torch=="))
    assert torch_pin == f"torch=={torch.__version__.split('+')[0]}" and "+" not in torch_pin
    assert all("==" in r for r in reqs) and any(r.startswith("mlflow==") for r in reqs)


@pytest.mark.parametrize(("new_fid", "champ_fid", "champ_protocol", "expected"), [
    (10.0, None, None, "champion"),                 # no champion at all
    (10.0, 12.0, "legacy_tensorflow", "champion"),  # strictly better
    (12.0, 12.0, "legacy_tensorflow", "challenger"),  # a tie does not replace the champion
    (14.0, 12.0, "legacy_tensorflow", "challenger"),
    (1.0, 12.0, "clean", "challenger"),             # different protocol: not comparable, keep the champion
])
def test_choose_alias(new_fid, champ_fid, champ_protocol, expected):
    tags = {"protocol": "legacy_tensorflow", "num_samples": "100", "dataset_sha256": "abc"}
    champ_tags = None if champ_protocol is None else {**tags, "protocol": champ_protocol}
    assert choose_alias(new_fid, tags, champ_fid, champ_tags)[0] == expected


@pytest.mark.parametrize("fid", [math.nan, math.inf, None])
def test_non_finite_or_missing_fid_is_never_registered(project, tmp_path, fid):
    client, _, run_dir = project
    sha = _write_snapshot(run_dir, 0)
    eval_json = tmp_path / "metrics" / "eval.json"
    if fid is not None:
        _write_eval(eval_json, fid, sha)
    with pytest.raises(RegistrationError, match="FID|not found"):
        register(RegisterConfig(model_name=MODEL, out=str(tmp_path / "reg.json")), run_dir=run_dir,
                 eval_json=eval_json)
    assert client.search_model_versions(f"name = '{MODEL}'") == []
    assert not (tmp_path / "reg.json").exists()


def test_failed_training_run_or_stale_eval_is_never_registered(project, tmp_path):
    client, run_id, run_dir = project
    sha = _write_snapshot(run_dir, 0)
    cfg = RegisterConfig(model_name=MODEL, out=str(tmp_path / "reg.json"))
    _write_eval(tmp_path / "eval.json", 5.0, "0" * 64)
    with pytest.raises(RegistrationError, match="re-run `ganops evaluate`"):
        register(cfg, run_dir=run_dir, eval_json=tmp_path / "eval.json")
    _write_eval(tmp_path / "eval.json", 5.0, sha)
    client.set_tag(run_id, STATUS_TAG.format(stage="train"), "failed")
    with pytest.raises(RegistrationError, match="marked failed"):
        register(cfg, run_dir=run_dir, eval_json=tmp_path / "eval.json")
    assert client.search_model_versions(f"name = '{MODEL}'") == []


def test_register_idempotent_champion_challenger_and_pyfunc_output(project, tmp_path):
    import mlflow

    client, run_id, run_dir = project
    cfg = RegisterConfig(model_name=MODEL, out=str(tmp_path / "reports" / "registration.json"))
    eval_json = tmp_path / "metrics" / "eval.json"

    sha1 = _write_snapshot(run_dir, 0)
    _write_eval(eval_json, 20.0, sha1)
    write_json(run_dir / "train.json", {"wall_time_s": 12.34})
    (run_dir / "fakes-latest.png").write_bytes(b"\x89PNG grid")
    (tmp_path / "dvc.lock").write_text(f"schema: '2.0'\nstages:\n  prepare:\n    outs:\n"
                                       f"    - path: {run_dir / 'prepared'}\n      md5: 0123abcd.dir\n")
    rec1 = register(cfg, run_dir=run_dir, eval_json=eval_json)
    assert (rec1["version"], rec1["alias"], rec1["run_id"], rec1["newly_registered"]) == (1, "champion", run_id, True)
    assert json.loads((tmp_path / "reports" / "registration.json").read_text()) == rec1
    mv = client.get_model_version(MODEL, "1")
    assert mv.tags["snapshot_sha256"] == sha1 and float(mv.tags["fid"]) == 20.0
    assert mv.tags["arch"] == "dcgan" and mv.tags["loss"] == "hinge" and mv.tags["protocol"] == "legacy_tensorflow"
    assert mv.tags["dataset_sha256"] == "d" * 64  # from the prepared data named in training_options.json
    # Model card (Markdown description + tags): quality with its protocol and sample counts, provenance, usage.
    card = mv.description
    assert card.startswith(f"{MODEL} v1: dcgan GAN generator (G_ema), unconditional, 16×16×1 uint8 images, FID 20.000.")
    assert "| FID (lower is better) | **20.000** |" in card and "| KID | 0.01000 ± 0.00100 |" in card
    assert "`legacy_tensorflow`: 100 generated vs 100 real images" in card
    assert (mv.tags["kid_std"], mv.tags["num_real"], mv.tags["num_classes"]) == ("0.001", "100", "0")
    assert mv.tags["train_wall_time_s"] == "12.3" and "in 12.3 s" in card
    assert mv.tags["dvc_data_md5"] == "0123abcd.dir" and "`0123abcd.dir`" in card
    assert mv.tags["git_commit"] == "unknown"  # the tmp project is not a git checkout
    assert f"`{'d' * 16}…`" in card and f"({run_id})" in card.replace("`", "")
    assert f'mlflow.pyfunc.load_model("models:/{MODEL}/1")' in card
    assert "class_label" not in card.split("```")[1]  # the usage snippet of an unconditional model
    # The sample grid: logged with the model, and as a run artifact that the card shows and links.
    assert mv.tags["sample_grid"].endswith("/artifacts/fakes-latest.png")
    grid = mlflow.artifacts.download_artifacts(mv.tags["sample_grid"], dst_path=str(tmp_path / "dl"))
    assert open(grid, "rb").read() == (run_dir / "fakes-latest.png").read_bytes()
    grid_artifact = mv.tags["sample_grid_run_artifact"]
    assert grid_artifact == f"model_card/samples-{sha1[:12]}.png"
    assert f"![sample grid of {MODEL} v1](get-artifact?path=model_card%2Fsamples-{sha1[:12]}.png&run_uuid={run_id})" in card
    run_grid = client.download_artifacts(run_id, grid_artifact, str(tmp_path / "dl-run"))
    assert open(run_grid, "rb").read() == (run_dir / "fakes-latest.png").read_bytes()

    # Same snapshot again: the existing version comes back, nothing new is registered.
    rec_again = register(cfg, run_dir=run_dir, eval_json=eval_json)
    assert (rec_again["version"], rec_again["newly_registered"]) == (1, False)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1

    # The registered pyfunc draws the same images as G_ema itself (independent path: z -> G -> quantize).
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    out = model.predict(pd.DataFrame({"num_images": [3, 2], "seed": [7, 1]}))
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (5, 16, 16, 1)
    torch.manual_seed(0)
    G = build_G("dcgan", **G_KWARGS).eval()
    with torch.no_grad():
        ref = (G(latents(3, 8, seed=7), None) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert np.abs(out[:3].astype(int) - ref.numpy().astype(int)).max() <= 1  # float rounding of batched convs

    # A worse snapshot becomes challenger; a better one takes the champion alias and the displaced champion
    # (FID 20, the runner-up) becomes challenger.
    sha2 = _write_snapshot(run_dir, 1)
    _write_eval(eval_json, 25.0, sha2)
    assert register(cfg, run_dir=run_dir, eval_json=eval_json)["alias"] == "challenger"
    sha3 = _write_snapshot(run_dir, 2)
    _write_eval(eval_json, 15.0, sha3)
    rec3 = register(cfg, run_dir=run_dir, eval_json=eval_json)
    assert (rec3["version"], rec3["alias"]) == (3, "champion")
    assert int(client.get_model_version_by_alias(MODEL, "champion").version) == 3
    assert int(client.get_model_version_by_alias(MODEL, "challenger").version) == 1


def test_registered_pyfunc_is_self_describing_conditional_model(project, tmp_path):
    """Signature, input example and pip requirements of the logged model; a conditional model through the registry."""
    import mlflow
    from mlflow.models import Model

    client, run_id, run_dir = project
    kwargs = {**G_KWARGS, "num_classes": 3}
    torch.manual_seed(0)
    G = build_G("dcgan", **kwargs).eval()
    meta = {"arch": "dcgan", "G_kwargs": kwargs, "kimg": 0.5, "step": 8,
            **{k: kwargs[k] for k in ("z_dim", "resolution", "channels", "num_classes")}}
    save_snapshot(run_dir / "network-snapshot.pt", G, meta)
    _write_eval(tmp_path / "eval.json", 30.0, sha256_file(run_dir / "network-snapshot.pt"))
    register(RegisterConfig(model_name=MODEL, out=str(tmp_path / "reg.json")), run_dir=run_dir,
             eval_json=tmp_path / "eval.json")
    mv = client.get_model_version(MODEL, "1")
    assert mv.tags["num_classes"] == "3" and "class-conditional (3 classes)" in mv.description
    assert '"class_label": [0]' in mv.description  # the usage snippet shows the label column

    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL}/1", dst_path=str(tmp_path / "model"))
    logged = Model.load(local)
    assert logged.signature.inputs.input_names() == ["num_images", "seed", "class_label"]
    assert [c.required for c in logged.signature.inputs.inputs] == [True, True, False]
    out_spec = logged.signature.outputs.inputs[0]
    assert out_spec.type == np.dtype(np.uint8) and out_spec.shape == (-1, 16, 16, 1)
    example = logged.load_input_example(local)
    assert list(example.columns) == ["num_images", "seed", "class_label"]
    # Requirements: exact pins from PyPI, no local build label (torch "2.x.y+cpu" would not resolve there), so the
    # same file installs on CPU or CUDA machines (pip picks the platform's build of that torch version).
    reqs = (Path(local) / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__.split('+')[0]}" in reqs and any(r.startswith("mlflow==") for r in reqs)
    assert all("+" not in r and "cpu" not in r for r in reqs), reqs

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.predict(example).shape == (len(example) * int(example["num_images"][0]), 16, 16, 1)
    out = model.predict(pd.DataFrame({"num_images": [2, 3], "seed": [5, 5], "class_label": [2, 1]}))
    assert out.dtype == np.uint8 and out.shape == (5, 16, 16, 1)
    z = latents(3, 8, seed=5)
    with torch.no_grad():
        ref = (G(z[:2], torch.tensor([2, 2])) * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    assert np.abs(out[:2].astype(int) - ref.numpy().astype(int)).max() <= 1
    # The label column is optional: without it, or where it is empty, the images cycle through the classes.
    cycled = model.predict(pd.DataFrame({"num_images": [3], "seed": [5]}))
    assert cycled.shape == (3, 16, 16, 1)
    mixed = model.predict(pd.DataFrame({"num_images": [2, 3], "seed": [5, 5], "class_label": [2, None]}))
    assert np.array_equal(mixed[:2], out[:2]) and np.array_equal(mixed[2:], cycled)
    with pytest.raises(Exception, match=r"outside 0\.\.2"):
        model.predict(pd.DataFrame({"num_images": [1], "seed": [0], "class_label": [7]}))


def test_generate_images_conditional_rows_follow_class_label_and_seed():
    from ganops.pyfunc_model import generate_images

    torch.manual_seed(0)
    kwargs = {**G_KWARGS, "num_classes": 3}
    G = build_G("dcgan", **kwargs).eval()
    out = generate_images(G, kwargs, pd.DataFrame({"num_images": [2, 3], "seed": [5, 5],
                                                  "class_label": [2, None]}))
    assert out.dtype == np.uint8 and out.shape == (5, 16, 16, 1)
    z = latents(3, 8, seed=5)
    with torch.no_grad():
        ref_fixed = (G(z[:2], torch.tensor([2, 2])) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
        ref_cycle = (G(z, torch.tensor([0, 1, 2])) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    assert np.abs(out[:2].astype(int) - ref_fixed.permute(0, 2, 3, 1).numpy()).max() <= 1
    assert np.abs(out[2:].astype(int) - ref_cycle.permute(0, 2, 3, 1).numpy()).max() <= 1  # null label cycles 0..K-1


@pytest.mark.parametrize(("frame", "num_classes", "message"), [
    (pd.DataFrame({"num_images": [2]}), 0, r"missing column\(s\) \['seed'\]"),
    (pd.DataFrame({"num_images": [0], "seed": [1]}), 0, "num_images must be >= 1"),
    (pd.DataFrame({"num_images": [1], "seed": [1], "class_label": [1]}), 0, "unconditional"),
    (pd.DataFrame({"num_images": [1], "seed": [1], "class_label": [3]}), 3, r"outside 0\.\.2"),
    (pd.DataFrame({"num_images": [1], "seed": [1], "class_label": [1.5]}), 3, "not an integer class index"),
    (pd.DataFrame({"num_images": [1], "seed": [1], "class_label": ["cat"]}), 3, "not an integer class index"),
    (pd.DataFrame({"num_images": [70_000], "seed": [1]}), 0, "at most"),
])
def test_generate_images_rejects_bad_requests(frame, num_classes, message):
    from ganops.pyfunc_model import generate_images

    G = build_G("dcgan", **{**G_KWARGS, "num_classes": num_classes}).eval()
    with pytest.raises(ValueError, match=message):
        generate_images(G, {"num_classes": num_classes}, frame)


def test_git_commit_and_dvc_out_md5(tmp_path):
    import subprocess

    from ganops.provenance import dvc_out_md5, git_commit

    assert git_commit(tmp_path) == "unknown"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(["git", "add", "a.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    head = (tmp_path / ".git" / (tmp_path / ".git" / "HEAD").read_text().split()[1]).read_text().strip()
    assert git_commit(tmp_path) == head and len(head) == 40
    (tmp_path / "a.txt").write_text("2")
    assert git_commit(tmp_path) == f"{head}-dirty"

    lock = tmp_path / "dvc.lock"
    assert dvc_out_md5(lock, "data/prepared") is None
    lock.write_text("schema: '2.0'\nstages:\n  prepare:\n    outs:\n    - path: data/prepared\n      md5: aa.dir\n"
                    "  train:\n    outs:\n    - path: runs/train\n      md5: bb.dir\n")
    assert (dvc_out_md5(lock, "data/prepared/"), dvc_out_md5(lock, "runs/train"), dvc_out_md5(lock, "x")) == (
        "aa.dir", "bb.dir", None)
