"""A full disk or a permission problem on each stage's output: prepared data, checkpoints, eval.json, the
registration report.

The disk-full cases are real kernel errors: the temporary file ``atomic_write`` writes into gets a file descriptor
on ``/dev/full``, so ``write(2)`` itself answers ENOSPC (nothing in Python raises on our behalf). Permission errors
cannot be produced with chmod (CI runs as root, which ignores mode bits), so they come from a parent path that is a
regular file (the kernel's ENOTDIR) or from a monkeypatched ``mkstemp`` raising EACCES.

Each time: the CLI exits 1 with one line naming the path and what to do, no traceback; the previous output is
byte-identical; no temporary file or directory is left; nothing is registered from a failed stage.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from ganops.cli import app
from ganops.io import OutputWriteError, atomic_write, write_json
from tests.fakes import ChannelMeanFeatures
from tests.model.conftest import write_prepared

DEV_FULL = Path("/dev/full")


def _kernel_enospc_for(monkeypatch, *names: str) -> list[str]:
    """Temporary files of ``atomic_write`` for outputs called ``names`` write to /dev/full (kernel ENOSPC).

    Returns the list the temporary paths are appended to (they must all be gone afterwards).
    """
    assert stat.S_ISCHR(DEV_FULL.stat().st_mode), "/dev/full is needed for kernel-level ENOSPC"
    real_mkstemp, made = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        fd, tmp = real_mkstemp(*args, **kwargs)
        if any(Path(tmp).name.startswith(f".{n}.") for n in names):
            full = os.open(DEV_FULL, os.O_WRONLY)
            os.dup2(full, fd)  # the temporary file exists, but its descriptor now writes to /dev/full
            os.close(full)
            made.append(tmp)
        return fd, tmp

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return made


def _permission_denied_for(monkeypatch, *names: str) -> list[str]:
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, prefix=None, **kwargs):
        if prefix is not None and any(prefix == f".{n}." for n in names):
            raise PermissionError(errno.EACCES, "Permission denied", os.path.join(str(dir), prefix + "tmp"))
        return real_mkstemp(*args, dir=dir, prefix=prefix, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return []


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temp_leftovers(root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in root.rglob(".*") if ".tmp" in p.name]


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


# ---- atomic_write itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 1 << 20], ids=["fails-at-flush", "fails-inside-write"])
def test_kernel_enospc_names_the_path_keeps_old_file_and_no_temp(tmp_path, monkeypatch, size):
    target = tmp_path / "out" / "blob.bin"
    with atomic_write(target) as f:
        f.write(b"old")
    made = _kernel_enospc_for(monkeypatch, "blob.bin")
    with pytest.raises(OutputWriteError) as info:
        with atomic_write(target) as f:
            f.write(b"x" * size)
    assert made, "the write never reached /dev/full"
    err = info.value
    assert err.errno == errno.ENOSPC and isinstance(err, OSError) and err.filename == str(target)
    assert str(err).startswith(f"cannot write {target}: No space left on device")
    assert "free space" in str(err)
    assert target.read_bytes() == b"old"
    assert not any(Path(t).exists() for t in made) and _temp_leftovers(tmp_path) == []


def test_output_path_pointing_at_a_device_is_refused_and_the_device_untouched(tmp_path):
    link = tmp_path / "eval.json"
    link.symlink_to(DEV_FULL)  # e.g. evaluate.out set to a device through a link
    with pytest.raises(OutputWriteError, match=r"eval\.json: exists and is not a regular file; .*regular file path"):
        write_json(link, {"fid": 1.0})
    assert link.is_symlink() and stat.S_ISCHR(DEV_FULL.stat().st_mode)
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(OutputWriteError) as info:
        write_json(tmp_path / "dir.json", {"fid": 1.0})
    assert info.value.errno == errno.EISDIR and "is a folder" in str(info.value)
    assert _temp_leftovers(tmp_path) == []


def test_parent_that_is_a_file_and_permission_denied_name_the_path_and_the_fix(tmp_path, monkeypatch):
    blocker = tmp_path / "reports"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(OutputWriteError) as info:
        write_json(blocker / "sub" / "registration.json", {})
    assert info.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(blocker / "sub" / "registration.json") in str(info.value) and "not a folder" in str(info.value)
    assert blocker.read_text() == "a file where a folder should be"

    _permission_denied_for(monkeypatch, "eval.json")
    with pytest.raises(OutputWriteError) as info:
        write_json(tmp_path / "metrics" / "eval.json", {})
    assert info.value.errno == errno.EACCES
    assert f"cannot write {tmp_path / 'metrics' / 'eval.json'}: Permission denied" in str(info.value)
    assert f"fix the permissions of {tmp_path / 'metrics'}" in str(info.value)


# ---- (a) prepared dataset -----------------------------------------------------------------------------------------


def _image_folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (10, 10), dtype=np.uint8), "L").save(root / f"{i:02d}.png")
    return root


def _prepare_params(project: Path, out_dir: Path) -> Path:
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump({"prepare": {
        "source": "folder", "folder": str(project / "images"), "resolution": 8, "test_fraction": 0.25,
        "out_dir": str(out_dir)}}))
    return params


def test_prepare_disk_full_keeps_previous_prepared_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "images", 8)
    out_dir = tmp_path / "data" / "prepared"
    params = _prepare_params(tmp_path, out_dir)
    assert _cli("prepare", "--params", str(params)).exit_code == 0
    before = _tree(out_dir)
    assert {"train-images.npy", "test-images.npy", "summary.json", "metadata.parquet"} <= set(before)

    _image_folder(tmp_path / "images", 12)  # new data: the next prepare would write different arrays
    made = _kernel_enospc_for(monkeypatch, "train-images.npy")
    result = _cli("prepare", "--params", str(params))
    assert made and result.exit_code == 1
    assert f"ganops prepare: error: cannot write {out_dir}: No space left on device" in result.output
    assert "free space" in result.output
    assert _tree(out_dir) == before
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["prepared"], "temporary directory left behind"


def test_prepare_into_unwritable_places_fails_with_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "images", 8)
    (tmp_path / "data").write_text("not a folder")
    result = _cli("prepare", "--params", str(_prepare_params(tmp_path, tmp_path / "data" / "prepared")))
    assert result.exit_code == 1
    assert f"cannot write {tmp_path / 'data' / 'prepared'}" in result.output and "not a folder" in result.output
    assert (tmp_path / "data").read_text() == "not a folder"

    _permission_denied_for(monkeypatch, "summary.json")
    out_dir = tmp_path / "ok" / "prepared"
    result = _cli("prepare", "--params", str(_prepare_params(tmp_path, out_dir)))
    assert result.exit_code == 1
    assert f"cannot write {out_dir}: Permission denied" in result.output and "fix the permissions" in result.output
    assert not out_dir.exists() and list((tmp_path / "ok").iterdir()) == []


# ---- (b) checkpoint / training state --------------------------------------------------------------------------------


def _train_params(project: Path, total_kimg: float) -> Path:
    params = project / "params.yaml"
    params.write_text(yaml.safe_dump({
        "prepare": {"out_dir": str(project / "prepared"), "resolution": 8},
        "train": dict(z_dim=8, ngf=8, ndf=8, batch_size=8, total_kimg=total_kimg, checkpoint_every_kimg=0.016,
                      sample_every_kimg=0.016, grid_size=2, mode_collapse_num_images=8, num_threads=1,
                      device="cpu", channels_last=False, run_dir=str(project / "runs" / "train")),
    }))
    return params


CHECKPOINTS = ("network-snapshot.pt", "network-snapshot-latest.pt", "training-state.pt")


@pytest.mark.parametrize("fault", ["disk-full", "permission-denied"])
def test_train_checkpoint_write_failure_keeps_last_good_state_and_marks_the_run_failed(mlflow_project, monkeypatch,
                                                                                      fault):
    from mlflow import MlflowClient

    from ganops.tracking import read_run_id
    from ganops.training.snapshot import load_torch

    write_prepared(mlflow_project / "prepared")
    run_dir = mlflow_project / "runs" / "train"
    assert _cli("train", "--params", str(_train_params(mlflow_project, 0.016))).exit_code == 0
    good = {n: (run_dir / n).read_bytes() for n in CHECKPOINTS}

    with pytest.MonkeyPatch.context() as mp:
        made = _kernel_enospc_for(mp, *CHECKPOINTS) if fault == "disk-full" else \
            _permission_denied_for(mp, *CHECKPOINTS)
        result = _cli("train", "--params", str(_train_params(mlflow_project, 0.032)))
    assert result.exit_code == 1, result.output
    line = "ganops train: error:" + result.output.split("ganops train: error:")[-1].rstrip()  # after the progress bar
    assert line.startswith(f"ganops train: error: cannot write {run_dir}/") and "\n" not in line, line
    assert any(n in line for n in CHECKPOINTS)
    assert ("No space left on device" in line and "free space" in line) if fault == "disk-full" else \
        ("Permission denied" in line and f"fix the permissions of {run_dir}" in line)
    if fault == "disk-full":
        assert made and not any(Path(t).exists() for t in made)
    assert {n: (run_dir / n).read_bytes() for n in CHECKPOINTS} == good
    assert _temp_leftovers(mlflow_project) == []
    assert load_torch(run_dir / "training-state.pt")["step"] == 2  # the resume point is still the last good one
    run = MlflowClient().get_run(read_run_id(run_dir))
    assert run.info.status == "FAILED" and run.data.tags["ganops.status.train"] == "failed"


# ---- (c) metrics/eval.json and (d) the registration report ---------------------------------------------------------


G_KWARGS = {"z_dim": 8, "ngf": 4, "resolution": 16, "channels": 1, "num_classes": 0}


@pytest.fixture()
def trained_project(mlflow_project):
    """cwd = a project with prepared data, a snapshot in runs/train and its finished MLflow training run."""
    import torch

    from ganops.models import build_G
    from ganops.tracking import RUN_ID_FILE, STATUS_TAG, configure_mlflow
    from ganops.training.snapshot import save_snapshot

    write_prepared(mlflow_project / "prepared", resolution=16)
    run_dir = mlflow_project / "runs" / "train"
    torch.manual_seed(0)
    meta = {"arch": "dcgan", "G_kwargs": G_KWARGS, "kimg": 0.5, "step": 8,
            **{k: G_KWARGS[k] for k in ("z_dim", "resolution", "channels", "num_classes")}}
    save_snapshot(run_dir / "network-snapshot.pt", build_G("dcgan", **G_KWARGS).eval(), meta)
    write_json(run_dir / "training_options.json", {"arch": "dcgan", "loss": "hinge",
                                                   "prepared_dir": str(mlflow_project / "prepared")})
    client, exp_id = configure_mlflow("ganops")
    run = client.create_run(exp_id, tags={STATUS_TAG.format(stage="train"): "ok"})
    client.set_terminated(run.info.run_id, "FINISHED")
    write_json(run_dir / RUN_ID_FILE, {"run_id": run.info.run_id})
    (mlflow_project / "params.yaml").write_text(yaml.safe_dump({
        "prepare": {"out_dir": str(mlflow_project / "prepared"), "resolution": 16},
        "train": {"run_dir": str(run_dir)},
        "evaluate": {"num_samples": 8, "batch_size": 8, "kid_subset_size": 4, "kid_subsets": 5,
                     "ref_stats_dir": str(mlflow_project / "cache")},
        "register": {"model_name": "faults-gan", "out": "reports/registration.json"},
    }))
    return mlflow_project


def test_evaluate_disk_full_keeps_old_eval_json_and_nothing_is_registered(trained_project, monkeypatch):
    from mlflow import MlflowClient

    import ganops.metrics.api

    monkeypatch.setattr(ganops.metrics.api, "load_feature_extractor", lambda *a, **k: ChannelMeanFeatures(dim=8))
    old = {"fid": 3.0, "kid_mean": 0.1, "kid_std": 0.01, "num_generated": 8, "num_real": 8,
           "protocol": "legacy_tensorflow", "snapshot_sha256": "0" * 64}  # scores an earlier snapshot
    eval_json = trained_project / "metrics" / "eval.json"
    write_json(eval_json, old)
    before = eval_json.read_bytes()

    with pytest.MonkeyPatch.context() as mp:
        made = _kernel_enospc_for(mp, "eval.json")
        result = _cli("evaluate", "--params", "params.yaml")
    assert made and result.exit_code == 1, result.output
    assert "ganops evaluate: error: cannot write metrics/eval.json: No space left on device" in result.output
    assert "free space" in result.output
    assert eval_json.read_bytes() == before and _temp_leftovers(trained_project) == []

    result = _cli("register", "--params", "params.yaml")  # the stale eval.json cannot justify a registration
    assert result.exit_code == 1 and "re-run `ganops evaluate`" in result.output
    assert MlflowClient().search_registered_models() == []
    assert not (trained_project / "reports" / "registration.json").exists()

    # With space again, evaluate writes a fresh, complete eval.json for the current snapshot.
    assert _cli("evaluate", "--params", "params.yaml").exit_code == 0
    fresh = json.loads(eval_json.read_text())
    assert fresh["snapshot_sha256"] != old["snapshot_sha256"] and np.isfinite(fresh["fid"])


@pytest.mark.e2e
def test_register_disk_full_on_the_report_unregisters_and_a_retry_registers_once(trained_project, monkeypatch):
    """The report is written after the version is created (it needs the version number): a full disk there fails
    the stage and the new version is deleted again (nothing registered from a failed stage); the retry registers
    the snapshot once."""
    from mlflow import MlflowClient

    from ganops.io import sha256_file

    run_dir = trained_project / "runs" / "train"
    write_json(trained_project / "metrics" / "eval.json", {
        "fid": 12.0, "kid_mean": 0.1, "kid_std": 0.01, "num_generated": 8, "num_real": 8,
        "protocol": "legacy_tensorflow", "snapshot_sha256": sha256_file(run_dir / "network-snapshot.pt")})
    report = trained_project / "reports" / "registration.json"
    write_json(report, {"model_name": "faults-gan", "version": 0, "note": "previous report"})
    before = report.read_bytes()

    with pytest.MonkeyPatch.context() as mp:
        made = _kernel_enospc_for(mp, "registration.json")
        result = _cli("register", "--params", "params.yaml")
    assert made and result.exit_code == 1, result.output
    assert "ganops register: error: cannot write reports/registration.json: No space left on device" in result.output
    assert report.read_bytes() == before and _temp_leftovers(trained_project) == []
    client = MlflowClient()
    assert client.search_model_versions("name = 'faults-gan'") == []  # the new version was deleted again

    result = _cli("register", "--params", "params.yaml")
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    assert record["newly_registered"] is True and record["alias"] == "champion"
    versions = client.search_model_versions("name = 'faults-gan'")
    assert [int(v.version) for v in versions] == [record["version"]]
    assert int(client.get_model_version_by_alias("faults-gan", "champion").version) == record["version"]
    # A repeat reports the alias the version holds (search results carry no aliases; the single read does).
    assert _cli("register", "--params", "params.yaml").exit_code == 0
    again = json.loads(report.read_text())
    assert (again["version"], again["newly_registered"], again["alias"]) == (record["version"], False, "champion")



def test_atomic_outputs_get_the_mode_a_plain_open_would(tmp_path):
    """mkstemp makes 0600 files; a written output follows the umask (or keeps the replaced file's mode)."""
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "new.json", {"a": 1})
        assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o644
        (tmp_path / "kept.json").write_text("{}")
        os.chmod(tmp_path / "kept.json", 0o640)
        write_json(tmp_path / "kept.json", {"b": 2})
        assert stat.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
