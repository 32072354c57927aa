"""Config: the code defaults agree with params.yaml; error messages name the params.yaml keys."""

from __future__ import annotations


def test_code_defaults_match_params_yaml():
    """A key left out of params.yaml means what params.yaml says: every value written there is also the default."""
    from pathlib import Path

    import yaml

    from ganops.config import Params

    written = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    defaults = Params().model_dump(by_alias=True, mode="json")

    def differences(a, b, prefix=""):
        for key, value in a.items():
            if isinstance(value, dict):
                yield from differences(value, b[key], f"{prefix}{key}.")
            elif value != b[key] and not (isinstance(value, list) and value == list(b[key])):
                yield f"{prefix}{key}: params.yaml {value!r}, code {b[key]!r}"

    assert list(differences(written, defaults)) == []


def test_error_locations_rename_only_the_section_field_names():
    """``validate_``/``register_`` are the Params field names of two sections; a key spelled so inside a section is
    the user's own key and keeps its name in the message."""
    import pytest

    from ganops.config import ConfigError, parse_params

    with pytest.raises(ConfigError, match=r"- prepare\.validate_: Extra inputs are not permitted"):
        parse_params({"prepare": {"validate_": 1}})
    with pytest.raises(ConfigError, match=r"- validate\.register_: Extra inputs are not permitted"):
        parse_params({"validate": {"register_": 1}})
