"""Config defaults: the code and params.yaml agree."""

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
