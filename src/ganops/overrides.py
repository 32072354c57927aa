"""Typed ``params.yaml`` overrides: parse and validate them, then write them into ``params.yaml``.

:data:`PipelineOverrides` is generated from the :mod:`ganops.config` models: one optional field per ``params.yaml``
key, with the same type, range, alias, description and field validators, so it cannot drift from ``params.yaml``
and a flow's run form shows and checks every key. ``{"train": {"loss": "hinge"}}`` and the dotted spelling of
``dvc exp run -S`` (``{"train.loss": "hinge"}``) are both accepted; a bad value is a :class:`ConfigError` naming the
field. :func:`validate_overrides` checks the overrides together with the whole ``params.yaml`` (cross-field rules)
and :func:`apply_overrides` writes them in place, keeping comments and key order, as ``dvc exp run -S`` does.
"""

from __future__ import annotations

import inspect
import io
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from ganops.config import ConfigError, Params, format_validation_error, load_params, parse_params

OVERRIDES_HINT = ("Override keys are params.yaml keys, e.g. {\"train\": {\"loss\": \"hinge\"}} or -S train.loss=hinge "
                  "(see README, 'Parameters').")


def _drop_null_defaults(schema: dict[str, Any], _cls: type) -> None:
    # Every field defaults to None = "keep params.yaml's value"; a form must not pre-fill null into typed fields.
    for prop in schema.get("properties", {}).values():
        if prop.get("default", 0) is None:
            del prop["default"]


_OVERRIDES_CONFIG = ConfigDict(extra="forbid", populate_by_name=True, json_schema_extra=_drop_null_defaults)


def _copied_field_validators(model: type[BaseModel]) -> dict[str, Any]:
    """The model's ``@field_validator``s (e.g. Adam betas in [0, 1)), re-bound for the overrides model."""
    out: dict[str, Any] = {}
    for name, dec in model.__pydantic_decorators__.field_validators.items():
        func = dec.func  # bound to ``model``; takes (value) or (value, info)
        if len(inspect.signature(func).parameters) == 1:
            def wrapper(cls: type, value: Any, _f: Any = func) -> Any:
                return _f(value)
        else:
            def wrapper(cls: type, value: Any, info: Any, _f: Any = func) -> Any:
                return _f(value, info)
        out[name] = field_validator(*dec.info.fields, mode=dec.info.mode)(classmethod(wrapper))
    return out


def _overrides_model(model: type[BaseModel], name: str, nested: dict[str, type[BaseModel]]) -> type[BaseModel]:
    """``model`` with every field optional (default None = not overridden), same type, constraints, alias and
    description; fields whose type is a section model use that section's overrides model (``nested``)."""
    fields: dict[str, Any] = {}
    for fname, info in model.model_fields.items():
        annotation = nested.get(fname, info.annotation)
        fields[fname] = (annotation, FieldInfo.merge_field_infos(info, default=None, default_factory=None))
    doc = f"Overrides of {model.__name__} ({(model.__doc__ or '').strip().splitlines()[0]}); unset = keep params.yaml."
    return create_model(name, __config__=_OVERRIDES_CONFIG, __doc__=doc,
                        __validators__=_copied_field_validators(model), **fields)


_SECTION_MODELS = {fname: info.annotation for fname, info in Params.model_fields.items()
                   if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)}
_SECTION_OVERRIDES = {fname: _overrides_model(m, f"{m.__name__.removesuffix('Config')}Overrides", {})
                      for fname, m in _SECTION_MODELS.items()}
# params.yaml section name (the alias: "validate", "register") -> field name on Params ("validate_", "register_").
_SECTION_BY_ALIAS = {(Params.model_fields[f].alias or f): f for f in _SECTION_MODELS}


class _OverridesBase(BaseModel):
    model_config = _OVERRIDES_CONFIG

    @model_validator(mode="before")
    @classmethod
    def _nest_dotted_keys(cls, data: Any) -> Any:
        """``{"train.loss": "hinge"}`` -> ``{"train": {"loss": "hinge"}}`` (the ``dvc exp run -S`` spelling)."""
        if not isinstance(data, dict) or not any(isinstance(k, str) and "." in k for k in data):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            if isinstance(key, str) and "." in key:
                section, _, rest = key.partition(".")
                target = out.setdefault(section, {})
                if isinstance(target, BaseModel):
                    target = out[section] = target.model_dump(exclude_unset=True, by_alias=True)
                if not isinstance(target, dict):
                    raise ValueError(f"override {key!r} conflicts with {section!r} = {target!r}")
                target[rest] = value  # "train.loss.x" -> train: {"loss.x": ...}: an unknown key, named as such
            elif isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**value, **out[key]}
            else:
                out[key] = dict(value) if isinstance(value, dict) else value  # never mutate the caller's dict
        return out

    def dotted(self) -> dict[str, Any]:
        """The overrides that were set, as ``{"train.loss": "hinge", "seed": 3}`` (JSON types, params.yaml names).

        A field left out is not an override; an explicit ``null`` is (for keys that may be null in params.yaml).
        """
        out: dict[str, Any] = {}
        for key, value in self.model_dump(mode="json", by_alias=True, exclude_unset=True).items():
            if key in _SECTION_BY_ALIAS and isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        return out


PipelineOverrides = create_model(
    "PipelineOverrides", __base__=_OverridesBase,
    __doc__="Overrides of params.yaml keys, per section; unset fields keep the project's params.yaml value.",
    **{fname: (_SECTION_OVERRIDES.get(fname, info.annotation),
               FieldInfo.merge_field_infos(info, default=None, default_factory=None))
       for fname, info in Params.model_fields.items()},
)
PipelineOverrides.__module__ = __name__


def parse_overrides(overrides: Any) -> Any:
    """A :data:`PipelineOverrides` from a model instance, a nested dict or a dotted-key dict (None -> empty).

    Raises:
        ConfigError: an empty key part, an unknown key, a wrong type or an out-of-range value; each bad field is
            named, e.g. ``- train.total_kimg: Input should be greater than 0 (got -1)``.
    """
    if isinstance(overrides, PipelineOverrides):
        return overrides
    if overrides is None:
        return PipelineOverrides()
    if isinstance(overrides, dict):
        bad = [k for k in overrides if not isinstance(k, str) or not k or any(not p for p in k.split("."))]
        if bad:
            raise ConfigError(f"override key(s) {bad} are not params.yaml keys such as 'train.loss'")
    try:
        return PipelineOverrides.model_validate(overrides)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "overrides", OVERRIDES_HINT)) from None


def parse_set_args(pairs: list[str]) -> dict[str, Any]:
    """``["train.loss=hinge", "train.total_kimg=5"]`` -> ``{"train.loss": "hinge", "train.total_kimg": 5}``.

    Values are parsed as YAML scalars, like ``dvc exp run -S``; keys are not checked here (see
    :func:`parse_overrides`).

    Raises:
        ValueError: an item has no ``=``.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"-S {pair!r}: expected KEY=VALUE, e.g. -S train.loss=hinge")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[leaf] = value


def _get_dotted(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def validate_overrides(params_file: Path, overrides: dict[str, Any]) -> tuple[Params, dict[str, Any]]:
    """Merge dotted-key ``overrides`` into ``params_file`` and validate the result; nothing is written.

    Args:
        params_file: the project's ``params.yaml``.
        overrides: ``{"train.loss": "hinge", "train.total_kimg": 5}``; values are parsed like ``params.yaml``
            values (``"0.5"`` becomes 0.5 for a float field).

    Returns:
        ``(params, typed)``: the validated :class:`Params` and each override's validated value (JSON types).

    Raises:
        ConfigError: an override names an unknown key, has a wrong type or is out of range (the message names the
            field), or a key is empty.
        OSError: ``params_file`` cannot be read.
    """
    raw = yaml.safe_load(params_file.read_text()) or {}
    for key, value in overrides.items():
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override key {key!r} is not a dotted params.yaml key such as 'train.loss'")
        _set_dotted(raw, key, value)
    params = parse_params(raw, f"{params_file} with overrides {overrides}")
    dumped = params.model_dump(by_alias=True, mode="json")
    return params, {key: _get_dotted(dumped, key) for key in overrides}


def apply_overrides(params_file: Path, typed: dict[str, Any]) -> None:
    """Write validated dotted-key overrides into ``params_file`` in place (as ``dvc exp run -S`` does).

    Comments, key order and every key not overridden are kept; a missing parent mapping is created.

    Args:
        params_file: the project's ``params.yaml``.
        typed: ``{"train.loss": "hinge"}`` as returned by :func:`validate_overrides` (not checked again here).

    Raises:
        OSError: ``params_file`` cannot be read or written.
    """
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip mode: comments survive
    doc = rt.load(params_file.read_text())
    for key, value in typed.items():
        _set_dotted(doc, key, value)
    buf = io.StringIO()
    rt.dump(doc, buf)
    params_file.write_text(buf.getvalue())


def check_params_path(project_dir: Path, params_path: str | Path) -> Path:
    """``project_dir/params.yaml`` (resolved) if ``params_path`` (relative to ``project_dir``) points there.

    Raises:
        ValueError: ``params_path`` is another file; the DVC stages read only the project's ``params.yaml``.
    """
    path = (project_dir / params_path).resolve()
    if path != (project_dir / "params.yaml").resolve():
        raise ValueError(f"params_path {params_path!r} resolves to {path}, but the DVC stages read "
                         f"{project_dir / 'params.yaml'}; edit that file or use `dvc exp run -S key=value`")
    return path


def resolve_overrides(project_dir: Path, params_path: str | Path,
                      overrides: Any) -> tuple[Path, Params, dict[str, Any]]:
    """Check typed overrides against the project's whole ``params.yaml``; nothing is written.

    Args:
        project_dir: the ganops checkout (absolute).
        params_path: the project's ``params.yaml``, relative to ``project_dir``.
        overrides: anything :func:`parse_overrides` takes (None = no overrides).

    Returns:
        ``(params_file, params, typed)``: the resolved ``params.yaml``, the parameters with the overrides applied
        and the dotted overrides with their validated values (``{}`` when there are none).

    Raises:
        ValueError: ``params_path`` is not the project's ``params.yaml``.
        ConfigError: ``params.yaml`` or an override is invalid (the message names the field).
    """
    params_file = check_params_path(project_dir, params_path)
    dotted = parse_overrides(overrides).dotted()
    if dotted:
        params, typed = validate_overrides(params_file, dotted)
    else:
        params, typed = load_params(params_file), {}
    return params_file, params, typed


__all__ = ["ConfigError", "OVERRIDES_HINT", "PipelineOverrides", "apply_overrides", "check_params_path",
           "parse_overrides", "parse_set_args", "resolve_overrides", "validate_overrides"]
