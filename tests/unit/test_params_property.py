"""Invalid parameters are refused before any work, with the offending field named (property tests + CLI)."""

from __future__ import annotations

import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ganops.config import ConfigError, Params, TrainConfig, parse_params

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Positive-number fields of `train` and a value that breaks each bound.
POSITIVE = ["lr_g", "lr_d", "total_kimg", "grad_norm_limit", "sample_every_kimg", "checkpoint_every_kimg"]
AT_LEAST_ONE = ["batch_size", "z_dim", "ngf", "ndf", "r1_interval", "log_every_steps"]
_identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


@SETTINGS
@given(field=st.sampled_from(POSITIVE), value=st.floats(max_value=0.0, allow_nan=False))
def test_non_positive_float_names_the_field(field, value):
    # -inf is refused as non-finite on the fields that also refuse +inf (total_kimg, lr_g, lr_d)
    with pytest.raises(ConfigError, match=rf"train\.{field}: .*(greater than 0|finite number)"):
        parse_params({"train": {field: value}})


@SETTINGS
@given(field=st.sampled_from(AT_LEAST_ONE), value=st.integers(max_value=0))
def test_int_below_one_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"train\.{field}: .*greater than or equal to 1"):
        parse_params({"train": {field: value}})


@SETTINGS
@given(field=st.sampled_from(AT_LEAST_ONE),
       value=st.one_of(st.text(alphabet="xyz", min_size=1), st.lists(st.integers(), max_size=2), st.floats(0.1, 0.9)))
def test_wrong_type_names_the_field_and_value(field, value):
    with pytest.raises(ConfigError) as info:
        parse_params({"train": {field: value}})
    assert f"train.{field}:" in str(info.value)
    assert repr(value) in str(info.value)


@SETTINGS
@given(section=st.sampled_from(["prepare", "validate", "train", "evaluate", "register"]), key=_identifiers)
def test_unknown_key_is_an_error_naming_it(section, key):
    known = {"validate": "validate_", "register": "register_"}.get(section, section)
    if key in type(getattr(Params(), known)).model_fields:
        return  # a real field
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Extra inputs are not permitted"):
        parse_params({section: {key: 1}})


@SETTINGS
@given(lr=st.floats(1e-8, 1.0), batch=st.integers(1, 4096), b1=st.floats(0.0, 0.999), kimg=st.floats(1e-3, 1e4))
def test_valid_values_round_trip(lr, batch, b1, kimg):
    p = parse_params({"train": {"lr_g": lr, "batch_size": batch, "betas_g": [b1, 0.99], "total_kimg": kimg}})
    assert isinstance(p.train, TrainConfig)
    assert (p.train.lr_g, p.train.batch_size, p.train.betas_g, p.train.total_kimg) == (lr, batch, (b1, 0.99), kimg)


@SETTINGS
@given(beta=st.one_of(st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=1.0, allow_nan=False)))
def test_adam_beta_out_of_range(beta):
    with pytest.raises(ConfigError, match=r"train\.betas_d: .*\[0, 1\)"):
        parse_params({"train": {"betas_d": [beta, 0.9]}})


def test_nan_lr_is_refused():
    with pytest.raises(ConfigError, match=r"train\.lr_g"):
        parse_params({"train": {"lr_g": math.nan}})


def test_every_bad_field_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        parse_params({"train": {"lr_d": -1, "batch_size": 0, "bogus": 1}, "seed": "x"})
    msg = str(info.value)
    for field in ("train.lr_d", "train.batch_size", "train.bogus", "seed"):
        assert field in msg


@pytest.mark.parametrize(("train", "field"), [({"batch_size": 0}, "train.batch_size"), ({"lr_g": -0.1}, "train.lr_g"),
                                              ({"typo_lr": 1}, "train.typo_lr"), ({"ngf": "wide"}, "train.ngf")])
def test_cli_train_exits_1_naming_the_field_before_any_work(tmp_path, monkeypatch, train, field):
    from ganops.cli import app

    run_dir = tmp_path / "runs" / "train"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {**train, "run_dir": str(run_dir)}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--params", "params.yaml"])
    assert result.exit_code == 1
    assert field in result.output
    assert not run_dir.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("field", ["total_kimg", "lr_g", "lr_d", "ema_halflife_kimg", "r1_gamma", "gp_lambda"])
@pytest.mark.parametrize("value", [math.inf, "+.inf"])
def test_infinite_training_values_are_refused(field, value):
    # total_kimg=.inf trains forever; an infinite lr or penalty weight diverges; an infinite EMA half-life freezes
    # G_ema at its random initialisation (silently useless samples): all must be refused up front.
    raw = yaml.safe_load(f"train: {{{field}: {value}}}") if isinstance(value, str) else {"train": {field: value}}
    with pytest.raises(ConfigError, match=rf"train\.{field}: Input should be a finite number"):
        parse_params(raw)
