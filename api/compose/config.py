"""The merged, interpolated, normalised compose file (`orch stack config`,
as `docker stack config`): long forms everywhere, unset values left out,
relative paths made absolute, and every `$` written as `$$` so that the
output loads back to the same model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .interpolation import escape
from .model import Project
from .yamlmarks import dump_yaml

__all__ = ["to_config", "dump_config"]


def _walk(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        default = field.get_default(call_default_factory=True)
        if value is None or (not default and value == default):
            continue  # unset, or an empty default (false, {}, ()); truthy defaults are written out
        out[name] = _value(value, dumped[name])
    return out


def _value(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _walk(value, dumped)
    if isinstance(value, dict):  # a mapping of the file: every entry stays, even empty ones
        return {k: _value(v, dumped[k]) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_value(v, d) for v, d in zip(value, dumped)]
    if isinstance(dumped, str):
        return escape(dumped)
    return dumped


def to_config(project: Project) -> dict[str, Any]:
    """The project as plain compose data (dicts, lists, scalars)."""
    return _walk(project, project.model_dump(mode="json"))


def dump_config(project: Project) -> str:
    """The project as compose YAML text."""
    return dump_yaml(to_config(project))
