"""flows/pipeline.py: an invalid override fails before any stage runs or any MLflow run starts, naming the field."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

from ganops.config import ConfigError

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


def test_cross_field_rules_are_checked_against_params_yaml_before_any_stage(pipeline, project):
    """prepare.source=folder needs prepare.folder: a rule over two keys, checked with the merged params.yaml."""
    with pytest.raises(ConfigError, match="prepare.folder must be set"):
        pipeline.ganops_pipeline.fn(overrides={"prepare": {"source": "folder"}}, project_dir=str(project))
    assert not (project / "mlflow.db").exists()
