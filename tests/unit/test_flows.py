"""flows/pipeline.py parameter overrides: validated against the whole schema before any stage, written like
``dvc exp run -S`` (comments kept), parsed from ``-S key=value`` like DVC."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ganops.config import ConfigError, load_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipeline():
    spec = importlib.util.spec_from_file_location("ganops_flows_pipeline", REPO / "flows" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


@pytest.mark.parametrize(("overrides", "field"), [
    ({"train.los": "hinge"}, "train.los"),                       # typo: unknown key
    ({"train.total_kimg": -1}, "train.total_kimg"),             # out of range
    ({"evaluate.protocol": "tf"}, "evaluate.protocol"),         # not one of the literals
    ({"train.batch_size": "many"}, "train.batch_size"),         # wrong type
])
def test_invalid_override_fails_before_any_stage_naming_the_field(pipeline, project, overrides, field):
    before = (project / "params.yaml").read_text()
    with pytest.raises(ConfigError, match=rf"- {field}:"):
        pipeline.ganops_pipeline.fn(overrides=overrides, project_dir=str(project))
    assert (project / "params.yaml").read_text() == before
    assert not (project / "mlflow.db").exists()  # no MLflow run was started


def test_overrides_are_coerced_written_in_place_and_keep_comments(pipeline, project):
    path = project / "params.yaml"
    params, typed = pipeline.validate_overrides(path, {"train.loss": "hinge", "train.total_kimg": "0.5",
                                                       "train.betas_g": [0.0, 0.99], "seed": 3})
    assert typed == {"train.loss": "hinge", "train.total_kimg": 0.5, "train.betas_g": [0.0, 0.99], "seed": 3}
    assert params.train.total_kimg == 0.5 and params.train.betas_g == (0.0, 0.99)
    pipeline.apply_overrides(path, typed)
    text = path.read_text()
    assert "# ganops parameters" in text and "# fashion_mnist | folder" in text
    reread = load_params(path)
    assert (reread.train.loss, reread.train.total_kimg, reread.train.betas_g, reread.seed) == ("hinge", 0.5,
                                                                                              (0.0, 0.99), 3)
    # Everything not overridden is unchanged.
    original = yaml.safe_load((REPO / "params.yaml").read_text())
    new = yaml.safe_load(text)
    assert new["evaluate"] == original["evaluate"] and new["train"]["ngf"] == original["train"]["ngf"]


def test_set_args_parse_like_dvc(pipeline):
    assert pipeline.parse_set_args(["train.loss=hinge", "train.total_kimg=5", "prepare.max_train=null",
                                    "train.diffaugment=translation,color"]) == {
        "train.loss": "hinge", "train.total_kimg": 5, "prepare.max_train": None,
        "train.diffaugment": "translation,color"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        pipeline.parse_set_args(["train.loss"])
