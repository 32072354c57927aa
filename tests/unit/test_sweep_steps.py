"""ganops.sweep: experiment names, DVC ``-S`` arguments, point validation, picking the best point, reading DVC's
checkout failures and the comparison table (the DVC experiments themselves run in tests/e2e/test_prefect_sweep.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from ganops.config import ConfigError, load_params
from ganops.sweep import (
    PointResult, best_point, checkout_failures, comparison_table, dvc_set_args, experiment_names, forget_training,
    validate_points,
)

REPO = Path(__file__).resolve().parents[2]


def test_experiment_names_default_and_checks():
    assert experiment_names(None, 2, "20250101-000000") == ["sweep-20250101-000000-0", "sweep-20250101-000000-1"]
    assert experiment_names(["a", "b.1"], 2, "s") == ["a", "b.1"]
    with pytest.raises(ValueError, match="1 names for 2 points"):
        experiment_names(["a"], 2, "s")
    for bad in (["a", "a"], ["a", "-b"], ["a", "has space"]):
        with pytest.raises(ValueError, match="must be unique and match"):
            experiment_names(bad, 2, "s")


def test_dvc_set_args_quote_strings_as_json():
    assert dvc_set_args({"train.loss": "hinge", "train.betas_g": [0.0, 0.99], "train.diffaugment": "a,b"}) == [
        "-S", 'train.loss="hinge"', "-S", "train.betas_g=[0.0, 0.99]", "-S", 'train.diffaugment="a,b"']


def test_validate_points_names_the_bad_point_and_field(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    typed = validate_points(tmp_path / "params.yaml", [{"train.lr_g": 1e-4}, {}], ["a", "b"])
    assert [t for t, _ in typed] == [{"train.lr_g": 1e-4}, {}] and typed[0][1].train.lr_g == 1e-4
    with pytest.raises(ConfigError, match=r"(?s)sweep point 1 \(b\).*- train.lr_g: Input should be greater than 0"):
        validate_points(tmp_path / "params.yaml", [{}, {"train.lr_g": -1}], ["a", "b"])


def test_best_point_is_the_lowest_finite_metric_first_on_ties():
    results = [PointResult("failed", {}, ok=False), PointResult("nan", {}, ok=True, fid=math.nan),
               PointResult("a", {}, ok=True, fid=20.0, kid_mean=0.3), PointResult("b", {}, ok=True, fid=10.0),
               PointResult("c", {}, ok=True, fid=10.0, kid_mean=0.1)]
    assert best_point(results, "fid").name == "b"
    assert best_point(results, "kid_mean").name == "c"
    assert best_point(results[:2], "fid") is None


def test_checkout_failures_lists_the_targets_dvc_could_not_check_out():
    output = ("Applied experiment x\nERROR: Checkout failed for following targets:\nreports/registration.json\n"
              "Is your cache up to date?\n<https://error.dvc.org/missing-files>\n")
    assert checkout_failures(output) == ["reports/registration.json"]
    assert checkout_failures("all good\n") == []


def test_comparison_table_marks_the_best_and_its_registration():
    results = [PointResult("a", {"train.lr_g": 1e-4}, ok=True, fid=10.0, wall_time_s=12.34),
               PointResult("b", {}, ok=False, error="boom")]
    reg = {"model_name": "m", "version": 2, "alias": "champion"}
    rows = comparison_table(results, "a", "fid", reg)
    assert rows[0] == {"experiment": "a", "overrides": json.dumps({"train.lr_g": 1e-4}), "status": "ok", "fid": 10.0,
                       "kid_mean": None, "num_samples": None, "best": True, "registered": "m v2 @champion",
                       "wall_time_s": 12.3, "note": ""}
    assert (rows[1]["status"], rows[1]["best"], rows[1]["registered"]) == ("failed", False, "")


def test_forget_training_drops_the_run_dir_and_its_lock_entry_only(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = load_params(tmp_path / "params.yaml")
    run_dir = tmp_path / params.train.run_dir
    run_dir.mkdir(parents=True)
    (run_dir / "training-state.pt").write_bytes(b"x")
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {"cmd": "p"},
                                                                                    "train": {"cmd": "t"}}}))
    forget_training(tmp_path, params)
    assert not run_dir.exists()
    assert yaml.safe_load((tmp_path / "dvc.lock").read_text()) == {"schema": "2.0", "stages": {"prepare": {"cmd": "p"}}}
    forget_training(tmp_path, params)  # nothing left to forget: no error
