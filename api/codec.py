"""Wire codecs for objects, and object ids.

Two shapes of the same models:

- msgpack-ready dicts (`to_dict`/`from_dict`, `packb`/`unpackb`) for
  everything inside the cluster (Raft entries, snapshots, agent sessions):
  bytes stay bytes, enums are their plain values.
- JSON-ready dicts (`to_json`/`from_json`) for the control API: bytes become
  base64 strings, task states their lower-case names, and secrets lose their
  payload (`Secret.public()`).

Decoding validates and raises `api.errors.ValidationError` with field paths.
"""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .errors import ValidationError
from .objects import Secret
from .validation import JSON_CONTEXT

M = TypeVar("M", bound=BaseModel)

ID_LENGTH = 25
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_id() -> str:
    """A random 128-bit id in base36, zero-padded to 25 characters (as Swarm)."""
    n = secrets.randbits(128)
    out = []
    for _ in range(ID_LENGTH):
        n, r = divmod(n, 36)
        out.append(_ALPHABET[r])
    return "".join(reversed(out))


def to_dict(obj: BaseModel) -> dict[str, Any]:
    """msgpack-ready dict (bytes stay bytes; enums pack as their values)."""
    return obj.model_dump()


def from_dict(cls: type[M], data: Any, *, what: str = "") -> M:
    try:
        return cls.model_validate(data)
    except PydanticValidationError as e:
        raise ValidationError.from_pydantic(e, what=what) from None


def to_json(obj: BaseModel) -> dict[str, Any]:
    """JSON-ready dict for the control API; a Secret's data is left out."""
    public = getattr(obj, "public", None)
    if isinstance(obj, Secret) or callable(public):
        return obj.public()  # type: ignore[attr-defined]
    return obj.model_dump(mode="json")


def from_json(cls: type[M], data: Any, *, what: str = "") -> M:
    """Validate a JSON-decoded dict (bytes as base64 strings)."""
    try:
        return cls.model_validate(data, context=JSON_CONTEXT)
    except PydanticValidationError as e:
        raise ValidationError.from_pydantic(e, what=what) from None


def packb(obj: BaseModel) -> bytes:
    return msgpack.packb(obj.model_dump(), use_bin_type=True)


def unpackb(cls: type[M], data: bytes, *, what: str = "") -> M:
    try:
        d = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types
        raise ValidationError([("", f"not valid msgpack: {e}")], what=what) from None
    return from_dict(cls, d, what=what)
