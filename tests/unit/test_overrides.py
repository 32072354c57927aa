"""ganops.overrides: typed params.yaml overrides validated against the whole schema, written like
``dvc exp run -S`` (comments kept), parsed from ``-S key=value`` like DVC."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from ganops.config import ConfigError, load_params
from ganops.overrides import (
    _SECTION_OVERRIDES, PipelineOverrides, apply_overrides, check_params_path, parse_overrides, parse_set_args,
    resolve_overrides, validate_overrides,
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


# ---- The params.yaml writer and the project checks ------------------------------------------------------------------

def test_apply_overrides_round_trip_keeps_comments_order_and_other_keys(project):
    path = project / "params.yaml"
    before = path.read_text()
    apply_overrides(path, {"train.lr_g": 0.0001, "evaluate.num_samples": 64})
    after = path.read_text()
    # Every comment stays, on its key's line; key order and every value not overridden are unchanged.
    comments = [(line.split(":")[0], line.split("#", 1)[1]) for line in before.splitlines() if "#" in line]
    assert comments == [(line.split(":")[0], line.split("#", 1)[1]) for line in after.splitlines() if "#" in line]
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    assert [k for k in new] == [k for k in old] and list(new["train"]) == list(old["train"])
    old["train"]["lr_g"], old["evaluate"]["num_samples"] = 0.0001, 64
    assert new == old
    reread = load_params(path)
    assert (reread.train.lr_g, reread.evaluate.num_samples) == (0.0001, 64)
    apply_overrides(path, {})  # nothing to write: the text stays the same
    assert path.read_text() == after


def test_parse_overrides_error_names_the_key_and_how_to_spell_overrides():
    with pytest.raises(ConfigError) as info:
        parse_overrides({"train.total_kimg": -1, "train.batch_size": "many"})
    message = str(info.value)
    assert message.startswith("invalid parameters in overrides:")
    assert "- train.total_kimg: Input should be greater than 0 (got -1)" in message
    assert "- train.batch_size:" in message and "-S train.loss=hinge" in message


def test_parse_overrides_passes_a_model_through_and_set_args_strip_keys():
    model = parse_overrides({"seed": 1})
    assert parse_overrides(model) is model and isinstance(model, PipelineOverrides)
    assert parse_set_args([" seed =2"]) == {"seed": 2}


def test_check_params_path_accepts_only_the_projects_params_yaml(project):
    assert check_params_path(project, "params.yaml") == (project / "params.yaml").resolve()
    assert check_params_path(project, "./sub/../params.yaml") == (project / "params.yaml").resolve()
    with pytest.raises(ValueError, match="DVC stages read"):
        check_params_path(project, "other.yaml")


def test_resolve_overrides_validates_against_params_yaml_and_writes_nothing(project):
    path = project / "params.yaml"
    before = path.read_text()
    params_file, params, typed = resolve_overrides(project, "params.yaml", {"train": {"loss": "hinge"}})
    assert params_file == path.resolve() and typed == {"train.loss": "hinge"} and params.train.loss == "hinge"
    assert resolve_overrides(project, "params.yaml", None)[2] == {}
    with pytest.raises(ConfigError, match="prepare.folder must be set"):
        resolve_overrides(project, "params.yaml", {"prepare.source": "folder"})
    assert path.read_text() == before
