"""Validated task specs shared by content.

Every task of a service carries the same `TaskSpec` (the service's
template), and most task writes (status reports, scheduling) leave it
unchanged. Validating it again for every write costs most of a task's
validation, and keeping one copy per task most of a task's memory. So the
store validates a task's spec once per distinct content (its msgpack bytes)
and hands the same immutable instance to every task with that content.

Equal bytes decode to equal values, and validation is a pure function of
them, so the result is exactly what validating each task's own spec would
give, on every replica, whatever each one's cache holds.
"""

from __future__ import annotations

from typing import Any

import msgpack
from pydantic import ValidationError as PydanticValidationError

from api.objects import Task, TaskSpec

DEFAULT_LIMIT = 4096
"""Distinct specs kept (the oldest is dropped first)."""


class TaskSpecs:
    """Content -> validated `TaskSpec`, bounded."""

    __slots__ = ("_by_content", "limit")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._by_content: dict[bytes, TaskSpec] = {}

    def __len__(self) -> int:
        return len(self._by_content)

    def task(self, payload: dict[str, Any]) -> Task:
        """`Task.model_validate(payload)`, with its spec shared. `payload`
        may be changed (its spec replaced by the validated one). Raises
        pydantic's ValidationError as that call would."""
        spec = payload.get("spec")
        if isinstance(spec, dict):
            shared = self.spec(spec)
            if shared is not None:
                payload["spec"] = shared
        return Task.model_validate(payload)

    def spec(self, raw: dict[str, Any]) -> TaskSpec | None:
        """The validated spec for `raw`; None when it is not valid (the
        caller's full validation then says why, with the field's path)."""
        try:
            key = msgpack.packb(raw, use_bin_type=True)
        except (TypeError, ValueError, OverflowError):
            return None
        got = self._by_content.get(key)
        if got is None:
            try:
                got = TaskSpec.model_validate(raw)
            except PydanticValidationError:
                return None
            if len(self._by_content) >= self.limit:
                del self._by_content[next(iter(self._by_content))]
            self._by_content[key] = got
        return got
