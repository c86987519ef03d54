"""Errors of the object model: validation failures with field paths.

`ValidationError` is what every entry point (control API, stack parser, store
transactions) raises for bad objects. It carries `(field_path, message)` pairs
such as `("spec.name", 'must match ... (got "bad name")')`, turned from
pydantic's errors so users see which field is wrong, why, and what they sent.
Payload fields (`data`) are never echoed back: they may be secrets.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError as PydanticValidationError

# Field names whose values are never put into messages (secret payloads).
_SENSITIVE = frozenset({"data"})
_SHOW_MAX = 60

# pydantic's error types -> our wording. Keys missing here fall back to
# pydantic's message with a lower-case first letter.
_MESSAGES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "bytes_type": "must be bytes",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be an object (mapping)",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "model_type": "must be an object (mapping)",
    "model_attributes_type": "must be an object (mapping)",
    "enum": "must be one of {expected}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "finite_number": "must be a finite number",
}

# Errors whose message already says what was received.
_NO_GOT = frozenset({"missing", "name_too_long", "data_too_large"})


def field_path(loc: Sequence[str | int]) -> str:
    """("spec", "ipam", 0, "subnet") -> "spec.ipam[0].subnet"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def show_value(v: Any) -> str:
    """A short, safe rendering of a user's input for an error message."""
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"{len(v)} bytes"
    try:
        s = json.dumps(v, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):  # e.g. keys that are not strings
        s = repr(v)
    if len(s) > _SHOW_MAX:
        s = s[: _SHOW_MAX - 3] + "..."
    return s


def _message(err: dict[str, Any]) -> str:
    typ = err["type"]
    ctx = err.get("ctx") or {}
    template = _MESSAGES.get(typ)
    if template is not None:
        try:
            msg = template.format(**ctx)
        except (KeyError, IndexError):
            msg = template
    else:
        msg = str(err.get("msg", typ))
        if typ == "value_error" and msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if msg[:1].isupper() and not msg[1:2].isupper():
            msg = msg[0].lower() + msg[1:]
    if typ in _NO_GOT or "input" not in err:
        return msg
    loc = err.get("loc", ())
    value = err["input"]
    if loc and loc[-1] in _SENSITIVE:
        if isinstance(value, (bytes, bytearray, str)):
            return f"{msg} (got {len(value)} {'bytes' if not isinstance(value, str) else 'characters'})"
        return msg
    return f"{msg} (got {show_value(value)})"


class ValidationError(ValueError):
    """An object or request failed validation.

    `errors` lists `(field_path, message)` pairs; `str()` joins them as
    `spec.name: must match ... (got "bad name")`.
    """

    def __init__(self, errors: list[tuple[str, str]], *, what: str = "") -> None:
        self.errors = errors
        self.what = what
        body = "; ".join(f"{p}: {m}" if p else m for p, m in errors) or "invalid"
        super().__init__(f"{what}: {body}" if what else body)

    @classmethod
    def from_pydantic(
        cls, e: PydanticValidationError, *, prefix: str = "", what: str = ""
    ) -> ValidationError:
        """Turn pydantic's errors into ours; `prefix` is prepended to every
        field path (e.g. "spec" when only the spec was validated)."""
        errors: list[tuple[str, str]] = []
        for err in e.errors(include_url=False):
            loc = tuple(err.get("loc", ()))
            path = field_path(loc)
            if prefix:
                path = f"{prefix}.{path}" if path else prefix
            errors.append((path, _message(err)))
        return cls(errors, what=what)

    def fields(self) -> list[str]:
        return [p for p, _ in self.errors]
