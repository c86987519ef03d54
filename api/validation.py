"""Reusable field types and rules of the object model.

Owns the rules every object shares: object names (Swarm's), object ids, labels,
size-limited binary data (base64 on the JSON wire, raw bytes everywhere else),
and the read-only dict that keeps stored objects immutable.

Each type is a `typing.Annotated` alias that pydantic understands; the errors
they raise use stable error types (`name_*`, `data_*`, `label_*`) and messages
written for users, which `api.errors.ValidationError` prefixes with the field
path.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

NAME_MAX = 64
NAME_PATTERN = r"[a-zA-Z0-9][a-zA-Z0-9_.-]*"
_NAME_RE = re.compile(NAME_PATTERN)
ID_MAX = 64
_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
MAX_DATA_SIZE = 500 * 1024  # Swarm's limit for config and secret payloads
"""Largest config or secret payload, in bytes (500 KiB, as Swarm)."""

# The key of `ValidationInfo.context` that says the input came from JSON, where
# bytes travel as base64 strings.
JSON_CONTEXT = {"wire": "json"}

K = TypeVar("K")
V = TypeVar("V")


class FrozenDict(dict[K, V]):
    """A dict that refuses mutation and can be hashed.

    Stored objects are shared by every reader (the store hands out the objects
    it holds rather than copies), so their dict fields must not be mutable.
    It stays a `dict` subclass so that pydantic, msgpack and json serialise it
    like any dict.
    """

    __slots__ = ()

    def _readonly(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "this dict belongs to an immutable object; build a new dict and use "
            "api.objects.evolve() (or model_copy(update=...)) to change the object"
        )

    __setitem__ = _readonly
    __delitem__ = _readonly
    __ior__ = _readonly  # type: ignore[assignment]
    clear = _readonly
    pop = _readonly
    popitem = _readonly
    setdefault = _readonly
    update = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __copy__(self) -> FrozenDict[K, V]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> FrozenDict[K, V]:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))

    def __repr__(self) -> str:
        return dict.__repr__(self)


def _check_name(v: str) -> str:
    if not v:
        raise PydanticCustomError("name_empty", "must not be empty")
    if len(v) > NAME_MAX:
        raise PydanticCustomError(
            "name_too_long",
            "must be at most {max} characters, got {n}",
            {"max": NAME_MAX, "n": len(v)},
        )
    if _NAME_RE.fullmatch(v) is None:
        raise PydanticCustomError(
            "name_pattern",
            "must match {pattern}: letters, digits, '_', '.', '-', starting with a letter or digit",
            {"pattern": NAME_PATTERN},
        )
    return v


def _check_optional_name(v: str) -> str:
    return v if v == "" else _check_name(v)


def _check_id(v: str) -> str:
    if not v:
        raise PydanticCustomError("id_empty", "must not be empty")
    if len(v) > ID_MAX or _ID_RE.fullmatch(v) is None:
        raise PydanticCustomError(
            "id_invalid", "must be 1 to {max} letters, digits, '_', '.' or '-'", {"max": ID_MAX}
        )
    return v


def _check_labels(v: dict[str, str]) -> FrozenDict[str, str]:
    for k in v:
        if not k:
            raise PydanticCustomError("label_key_empty", "label keys must not be empty")
    return FrozenDict(v)


def _bytes_in(v: Any, info: ValidationInfo) -> Any:
    if isinstance(v, str):
        if info.context is not None and info.context.get("wire") == "json":
            try:
                return base64.b64decode(v, validate=True)
            except (binascii.Error, ValueError):
                raise PydanticCustomError(
                    "data_base64", "must be base64 (standard alphabet, padded)"
                ) from None
        # A str here means a caller confused text and bytes; silently taking
        # its UTF-8 (pydantic's lax default) would hide that.
        raise PydanticCustomError("data_type", "must be bytes, not a string")
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def _b64(v: bytes) -> str:
    return base64.b64encode(v).decode("ascii")


def _check_size(v: bytes) -> bytes:
    if len(v) > MAX_DATA_SIZE:
        raise PydanticCustomError(
            "data_too_large",
            "must be at most {max} bytes (500 KiB), got {n} bytes",
            {"max": MAX_DATA_SIZE, "n": len(v)},
        )
    return v


def _check_size_nonempty(v: bytes) -> bytes:
    if not v:
        raise PydanticCustomError("data_empty", "must not be empty")
    return _check_size(v)


Name = Annotated[
    str,
    AfterValidator(_check_name),
    WithJsonSchema(
        {"type": "string", "minLength": 1, "maxLength": NAME_MAX, "pattern": f"^{NAME_PATTERN}$"}
    ),
]
"""An object name: 1-64 characters, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`."""

OptionalName = Annotated[str, AfterValidator(_check_optional_name)]
"""A `Name`, or "" for unnamed objects (nodes)."""

ObjectId = Annotated[str, AfterValidator(_check_id)]
"""An object id; `api.codec.new_id()` makes them."""

Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]
"""String labels with non-empty keys, held in a read-only dict."""

Bytes = Annotated[
    bytes,
    BeforeValidator(_bytes_in),
    PlainSerializer(_b64, return_type=str, when_used="json"),
    # One schema for requests and responses: base64 text either way.
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
"""Binary data: raw bytes in Python and msgpack, base64 text in JSON."""

Data = Annotated[Bytes, AfterValidator(_check_size)]
"""A config payload: 0 to 500 KiB."""

SecretData = Annotated[Bytes, AfterValidator(_check_size_nonempty)]
"""A secret payload: 1 byte to 500 KiB (Swarm refuses empty secrets)."""


def frozen_dict(items: dict[K, V] | Iterable[tuple[K, V]] = ()) -> FrozenDict[K, V]:
    """A `FrozenDict`; handy as a pydantic `default_factory`."""
    return FrozenDict(items)
