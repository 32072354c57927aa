"""ganops.overrides: typed params.yaml overrides validated against the whole schema, written like
``dvc exp run -S`` (comments kept), parsed from ``-S key=value`` like DVC."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ganops.config import ConfigError, load_params
from ganops.overrides import (
    _SECTION_OVERRIDES, PipelineOverrides, apply_overrides, parse_overrides, parse_set_args, validate_overrides,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def project(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def test_overrides_are_coerced_written_in_place_and_keep_comments(project):
    path = project / "params.yaml"
    params, typed = validate_overrides(path, {"train.loss": "hinge", "train.total_kimg": "0.5",
                                                       "train.betas_g": [0.0, 0.99], "seed": 3})
    assert typed == {"train.loss": "hinge", "train.total_kimg": 0.5, "train.betas_g": [0.0, 0.99], "seed": 3}
    assert params.train.total_kimg == 0.5 and params.train.betas_g == (0.0, 0.99)
    apply_overrides(path, typed)
    text = path.read_text()
    assert "# ganops parameters" in text and "# fashion_mnist | folder" in text
    reread = load_params(path)
    assert (reread.train.loss, reread.train.total_kimg, reread.train.betas_g, reread.seed) == ("hinge", 0.5,
                                                                                              (0.0, 0.99), 3)
    # Everything not overridden is unchanged.
    original = yaml.safe_load((REPO / "params.yaml").read_text())
    new = yaml.safe_load(text)
    assert new["evaluate"] == original["evaluate"] and new["train"]["ngf"] == original["train"]["ngf"]


def test_set_args_parse_like_dvc():
    assert parse_set_args(["train.loss=hinge", "train.total_kimg=5", "prepare.max_train=null",
                                    "train.diffaugment=translation,color"]) == {
        "train.loss": "hinge", "train.total_kimg": 5, "prepare.max_train": None,
        "train.diffaugment": "translation,color"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_set_args(["train.loss"])


# ---- Typed overrides (PipelineOverrides) ---------------------------------------------------------------------------

def test_overrides_model_mirrors_every_params_key():
    """Generated from ganops.config: every params.yaml key is an optional field with the same constraints."""
    from ganops.config import Params

    schema = PipelineOverrides.model_json_schema()
    defs = schema["$defs"]
    for section, info in Params.model_fields.items():
        name = info.alias or section
        assert name in schema["properties"], name
        if section in _SECTION_OVERRIDES:
            model = _SECTION_OVERRIDES[section]
            assert set(model.model_fields) == set(info.annotation.model_fields), section
            assert not defs[model.__name__].get("required")  # every field optional
    train = defs["TrainOverrides"]["properties"]
    assert train["total_kimg"]["exclusiveMinimum"] == 0 and "default" not in train["total_kimg"]
    assert train["precision"]["enum"] == ["fp32", "bf16", "fp16", "auto"]
    assert defs["EvaluateOverrides"]["properties"]["num_samples"]["minimum"] == 2


def test_overrides_nested_and_dotted_forms_agree_and_only_set_keys_count():
    nested = parse_overrides({"train": {"loss": "hinge", "betas_g": [0.0, 0.99]}, "validate": {"duplicates":
                                                                                                       "fail"}})
    dotted = parse_overrides({"train.loss": "hinge", "train.betas_g": [0.0, 0.99],
                                       "validate.duplicates": "fail"})
    assert nested.dotted() == dotted.dotted() == {"train.loss": "hinge", "train.betas_g": [0.0, 0.99],
                                                  "validate.duplicates": "fail"}
    # An explicit null is an override where params.yaml allows null; a left-out key is not.
    assert parse_overrides({"prepare.max_train": None, "seed": 4}).dotted() == {"prepare.max_train": None,
                                                                                         "seed": 4}
    assert parse_overrides(None).dotted() == {} == parse_overrides({"train": {}}).dotted()
    # The config's field validators come along (DiffAugment names are normalised, Adam betas range-checked).
    assert parse_overrides({"train.diffaugment": "translation, color"}).dotted() == {
        "train.diffaugment": "translation,color"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train": {"betas_g": [1.5, 0.9]}}, r"- train.betas_g: Value error, Adam betas must lie in \[0, 1\)"),
    ({"train.diffaugment": "zoom"}, r"- train.diffaugment: .*unknown DiffAugment policy"),
    ({"train.loss": None}, r"- train.loss: Input should be a valid string"),    # not nullable in params.yaml
    ({"trian.loss": "hinge"}, r"- trian: Extra inputs are not permitted"),       # unknown section
    ({"train.loss.x": 1}, r"- train.loss.x: Extra inputs are not permitted"),
    ({"train..loss": 1}, r"not params.yaml keys"),
])
def test_bad_overrides_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(overrides)
