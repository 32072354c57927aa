"""benchmarks/bench_quality.py refuses bad input before any stage runs, with one message naming the problem.

No training here: ``run_stage`` is replaced by a recorder, so each test checks that nothing ran and nothing was
written (no params file, no quality_results.json change).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.scripts import REPO, load_benchmark


@pytest.fixture()
def bq(tmp_path, monkeypatch):
    """The bench_quality module with its root, results file and stage runner redirected into tmp_path."""
    mod = load_benchmark("bench_quality")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "quality_results.json")
    mod.stages_run = []
    monkeypatch.setattr(mod, "run_stage", lambda stage, params_file: mod.stages_run.append(stage) or 0.0)
    return mod


@pytest.fixture()
def preset(tmp_path):
    raw = yaml.safe_load((REPO / "benchmarks" / "presets" / "lucic_fmnist.yaml").read_text())
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "runs").exists() and not (tmp_path / "quality_results.json").exists()


def _main(bq, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_quality.py", *argv])
    bq.main()


@pytest.mark.parametrize(("text", "expected"), [
    (None, "file not found"),
    ("train: [1, 2\n", "is not valid YAML"),
    ("seed: 0\n", "needs a params.yaml-style mapping with the sections ['train', 'evaluate']"),
    ("- a list\n", "needs a params.yaml-style mapping"),
])
def test_missing_or_malformed_preset(bq, tmp_path, text, expected):
    path = tmp_path / "p.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit, match=r"--preset .*p\.yaml") as info:
        bq.run_config(path, "x", [])
    assert expected in str(info.value)
    assert bq.stages_run == [] and _nothing_written(tmp_path)


@pytest.mark.parametrize(("override", "expected"), [
    ("train.betas_g=[0.0, 0.9", "the value is not valid YAML"),
    ("train.loss", "expected KEY=VALUE"),
    ("=hinge", "expected KEY=VALUE"),
    ("trian.loss=hinge", "'trian' is not a params section"),
    ("train.lossx=hinge", "train.lossx: Extra inputs are not permitted"),
    ("train.loss=hinges", "unknown train.loss 'hinges'; valid: hinge, lsgan, minimax, non_saturating, rpgan, wgan_gp"),
    ("train.arch=stylegan", "unknown train.arch 'stylegan'; valid: dcgan, r3gan, resnet"),
    ("train.total_kimg=0", "train.total_kimg: Input should be greater than 0"),
    ("train.diffaugment=rotate", "unknown DiffAugment policy ['rotate']"),
])
def test_bad_override_fails_before_any_stage(bq, preset, tmp_path, override, expected):
    with pytest.raises(SystemExit) as info:
        bq.run_config(preset, "x", [override])
    assert expected in str(info.value)
    assert "params.yaml (see" not in str(info.value)  # the fix is in the preset / -S, not in a params.yaml
    assert bq.stages_run == [] and _nothing_written(tmp_path)


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_name_must_be_a_plain_directory_name(bq, preset, tmp_path, name):
    with pytest.raises(SystemExit, match="--name"):
        bq.run_config(preset, name, [])
    assert bq.stages_run == [] and _nothing_written(tmp_path)


@pytest.mark.parametrize("argv", [
    ["--only", "abl_r1"],  # without --ablation this used to train the whole 1200-kimg preset
    ["--ablation-kimg", "5"],
    ["--ablation", "--only", ","],
    ["--ablation", "--name", "foo"],
    ["--ablation", "--skip-train"],
])
def test_flags_that_do_not_apply_are_refused(bq, preset, tmp_path, monkeypatch, capsys, argv):
    with pytest.raises(SystemExit) as info:
        _main(bq, monkeypatch, "--preset", str(preset), *argv)
    assert info.value.code == 2
    assert "--" in capsys.readouterr().err.splitlines()[-1]
    assert bq.stages_run == [] and _nothing_written(tmp_path)


def test_only_names_are_stripped_and_checked(bq, preset, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match=r"unknown configuration\(s\) \['bogus'\]"):
        _main(bq, monkeypatch, "--preset", str(preset), "--ablation", "--only", "abl_r1, bogus")
    assert bq.stages_run == []


def _trained_run_dir(tmp_path: Path, name: str, **options) -> None:
    run_dir = tmp_path / "runs" / "quality" / name / "train"
    run_dir.mkdir(parents=True)
    from ganops.config import TrainConfig

    saved = {**TrainConfig().model_dump(mode="json"), "seed": 0, **options}
    (run_dir / "training_options.json").write_text(json.dumps(saved))


def test_run_dir_trained_with_other_hyper_parameters_is_refused(bq, preset, tmp_path):
    raw = yaml.safe_load(preset.read_text())
    # A finished run dir of this name, trained with lr_g 2e-4: -S train.lr_g=1e-4 would resume it (refuse mode
    # resumes changed hyper-parameters) and file the old model's FID under lr_g=1e-4.
    _trained_run_dir(tmp_path, "x", **{**raw["train"], "run_dir": "runs/quality/x/train"})
    with pytest.raises(SystemExit, match=r"runs/quality/x/train was trained with other options \(lr_g: 0.0002 -> "
                                         r"0.0001\).*Delete that directory.*another --name"):
        bq.run_config(preset, "x", ["train.lr_g=0.0001"])
    assert bq.stages_run == []
    with pytest.raises(SystemExit, match=r"seed: 0 -> 3"):
        bq.run_config(preset, "x", ["seed=3"])
    # Length, intervals and threads may change on resume: a longer run of the same configuration is fine.
    with pytest.raises(FileNotFoundError, match="train.json"):  # the recorder trained nothing, so no train.json
        bq.run_config(preset, "x", ["train.total_kimg=2400", "train.num_threads=1"])
    assert bq.stages_run == ["prepare", "train", "evaluate"]


def test_ablation_checks_every_configuration_before_training_any(bq, preset, tmp_path, monkeypatch):
    raw = yaml.safe_load(preset.read_text())
    _trained_run_dir(tmp_path, "abl_r1", **{**raw["train"], "r1_gamma": 10.0})
    with pytest.raises(SystemExit, match=r"abl_r1/train was trained with other options \(r1_gamma: 10.0 -> 1.0\)"):
        _main(bq, monkeypatch, "--preset", str(preset), "--ablation", "--only", "abl_preset,abl_r1")
    assert bq.stages_run == []


def test_corrupt_results_file_stops_before_training(bq, preset, tmp_path):
    (tmp_path / "quality_results.json").write_text('{"preset": {"fid": 19.5')
    with pytest.raises(SystemExit, match=r"quality_results.json is not valid JSON.*restore it"):
        bq.run_config(preset, "x", [])
    assert bq.stages_run == []
    assert (tmp_path / "quality_results.json").read_text() == '{"preset": {"fid": 19.5'


def test_skip_train_needs_a_finished_run(bq, preset, tmp_path):
    # A killed run dir has snapshots and a training state but no train.json: evaluating it used to take minutes and
    # then fail on the missing train.json.
    (tmp_path / "runs" / "quality" / "x" / "train").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"--skip-train: runs/quality/x/train holds no finished training"):
        bq.run_config(preset, "x", [], skip_train=True)
    assert bq.stages_run == []
