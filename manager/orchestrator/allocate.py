"""The allocation stage's hook: what a task needs before it can be scheduled.

A reconciliation pass moves tasks NEW -> PENDING -> ASSIGNED (see
`reconcile.plan`). Between creation and scheduling, an `Allocator` gives
each task the cluster resources it needs wherever it runs -- for overlay
networks: an IP address per task per network, and a VIP per service. A task
the allocator cannot serve yet stays NEW with the allocator's reason, and is
offered again on the next pass.

The allocator is called from the pure plan, so it must be pure as well: it
reads the store view it is given (e.g. which addresses the tasks in it hold)
and returns its decisions as data; the leader's loop commits them with the
pass. Nothing is allocated yet (`NoAllocation`); the network allocator plugs
in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from api.objects import Task


@dataclass
class Allocation:
    """An allocator's answer for the tasks it was given.

    Every task given appears either in `allocated` (possibly a new version
    of it, e.g. with its network attachments filled in; same id; its state
    is set to PENDING by the plan) or in `waiting` (task id -> why it cannot
    be allocated yet; it stays NEW with that reason). A task in neither waits
    with a generic reason. `ops` are further store writes the allocations
    need (a service's VIPs, a network's state); they are committed in the
    same pass, ahead of the tasks' own writes.
    """

    allocated: list[Task] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    ops: list[Any] = field(default_factory=list)
    # Writes that yield to the pass's own: placed after its writes, and dropped
    # when the pass writes the same object (offered again next pass).
    after: list[Any] = field(default_factory=list)


class Allocator(Protocol):
    def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
        """Allocate `tasks` (all NEW, wanted running, due now) against the
        store `view` (read only). Pure: no I/O, no clock but `now`."""
        ...


class NoAllocation:
    """Nothing to allocate yet: every task passes on unchanged."""

    __slots__ = ()

    def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
        return Allocation(allocated=list(tasks))
