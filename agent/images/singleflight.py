"""Share one in-flight operation among concurrent callers that ask for the same key.

Used for manifest fetches, token fetches, blob downloads, layer unpacks and
whole pulls: the first caller starts the work as its own task; later callers
with the same key await that task instead of starting another.  Progress
events emitted by the work reach every caller that is currently waiting.
Cancelling one waiter does not cancel the shared work unless it was the last.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
Listener = Callable[[Any], None]
Emit = Callable[[Any], None]

log = logging.getLogger(__name__)


@dataclass
class _Call(Generic[T]):
    task: "asyncio.Task[T] | None" = None
    listeners: list[Listener] = field(default_factory=list)
    waiters: int = 0
    joined: int = 0  # callers that shared instead of starting the work


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._calls: dict[Hashable, _Call[T]] = {}

    def in_flight(self, key: Hashable) -> bool:
        return key in self._calls

    def keys(self) -> list[Hashable]:
        return list(self._calls)

    async def do(
        self,
        key: Hashable,
        fn: Callable[[Emit], Awaitable[T]],
        listener: Listener | None = None,
    ) -> T:
        call = self._calls.get(key)
        if call is None:
            call = _Call()
            self._calls[key] = call

            def emit(event: Any, call: _Call[T] = call) -> None:
                for cb in list(call.listeners):
                    try:
                        cb(event)
                    except Exception:  # a broken progress callback must not break a pull
                        log.exception("progress listener failed")

            call.task = asyncio.ensure_future(self._run(key, call, fn, emit))
            call.task.add_done_callback(_consume_exception)
        else:
            call.joined += 1
        if listener is not None:
            call.listeners.append(listener)
        call.waiters += 1
        task = call.task
        assert task is not None
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done() and call.waiters == 1:
                task.cancel()
            raise
        finally:
            call.waiters -= 1
            if listener is not None and listener in call.listeners:
                call.listeners.remove(listener)

    async def _run(self, key: Hashable, call: _Call[T], fn: Callable[[Emit], Awaitable[T]], emit: Emit) -> T:
        try:
            return await fn(emit)
        finally:
            if self._calls.get(key) is call:
                del self._calls[key]


def _consume_exception(task: "asyncio.Task[Any]") -> None:
    # Waiters see the exception; this keeps asyncio from logging it as
    # "never retrieved" when every waiter was cancelled first.
    if not task.cancelled():
        task.exception()
