"""The allocation stage of the leader's reconciliation pass (NEW -> PENDING).

`NetworkStage` implements the orchestrator's allocation hook
(`manager.orchestrator.allocate.Allocator`) with the network allocator: in
each pass it gives new networks their VNI and subnet, services their
virtual IPs and published ports, and the pass's NEW tasks one address per
network (the ingress network's first for tasks of services publishing
ports). A task whose service cannot be allocated yet waits
with the service's reason. Its writes
go into the pass, so every value is committed in the same transaction as
the object that holds it.

State: an `Allocator` restored from the store view the first time the stage
is used in a term (and again after `reset()`, which the loop calls when a
batch of the pass fails: memory would otherwise hold values the store does
not). Releases follow the store's own writes, fed in by the loop with
`observe(events)`: a deleted task, service or network, and an ended task
whose addresses the stage cleared; events no newer than the view the allocator was restored
from are already reflected in it and are ignored, so nothing is released
twice (a stale release could free an address another holder has since got).
A service written by someone else (the control API) holds the published
ports its new version claims from that event on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from api.objects import Cluster, Network, Service, Task
from manager import store as store_ops
from manager.orchestrator.allocate import Allocation

from .allocator import Allocator, Pending
from .ipam import AllocationError

__all__ = ["NetworkStage"]

log = logging.getLogger(__name__)

TABLES = frozenset({"networks", "services", "tasks"})
"""The tables whose changes the stage must see (the loop watches them)."""


class NetworkStage:
    def __init__(self) -> None:
        self._alloc: Allocator | None = None
        self._restored_at = 0  # store version the allocator was restored from
        self._dirty_networks: set[str] = set()
        self._dirty_services: set[str] = set()
        self._dead: set[str] = set()  # ended tasks still holding addresses
        self.errors: dict[str, str] = {}  # network id -> why it cannot be allocated (for logs / inspect)

    # -- lifetime ---------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything; the next pass restores from the store."""
        self._alloc = None

    def _state(self, view: Any) -> Allocator:
        if self._alloc is None:
            cluster = next(iter(view.list("clusters")), None)
            pool = cluster.default_addr_pool if isinstance(cluster, Cluster) else None
            self._alloc = Allocator.restore(pool, view.list("networks"), view.list("services"),
                                            view.list("tasks"))
            self._restored_at = view.index
            # After a restore, look at everything once: networks or services
            # created while no allocator ran (or before a failed batch).
            self._dirty_networks = {n.id for n in view.list("networks") if n.allocation is None}
            self._dirty_services = {s.id for s in view.list("services")}
            self._dead = {t.id for t in view.list("tasks") if _ended(t) and t.networks}
        return self._alloc

    def counts(self) -> dict[str, int] | None:
        return self._alloc.counts() if self._alloc is not None else None

    # -- events -------------------------------------------------------------------

    def observe(self, events: Iterable[Any]) -> None:
        """Store change events (from the loop's watch), in order."""
        for ev in events:
            if ev.table == "networks":
                if ev.action == "delete":
                    self._release(ev, lambda a, n=ev.obj: a.release_network(n))
                    self.errors.pop(ev.obj.id, None)
                elif ev.obj.allocation is None:
                    self._dirty_networks.add(ev.obj.id)
            elif ev.table == "services":
                if ev.action == "delete":
                    self._release(ev, lambda a, s=ev.obj: a.release_service(s))
                else:
                    self._release(ev, lambda a, s=ev.obj: a.hold_ports(s))
                    self._dirty_services.add(ev.obj.id)
            elif ev.table == "tasks":
                if ev.action == "delete":
                    self._dead.discard(ev.obj.id)
                    if ev.obj.networks:
                        self._release(ev, lambda a, t=ev.obj: a.release_task(t))
                elif ev.old is not None and ev.old.networks and not ev.obj.networks:
                    # An ended task gave its addresses back (our own write).
                    self._dead.discard(ev.obj.id)
                    self._release(ev, lambda a, t=ev.old: a.release_task(t))
                elif ev.obj.networks and _ended(ev.obj):
                    self._dead.add(ev.obj.id)

    def _release(self, ev: Any, fn: Any) -> None:
        if self._alloc is not None and ev.version > self._restored_at:
            fn(self._alloc)

    # -- the hook -----------------------------------------------------------------

    def allocate(self, view: Any, tasks: Sequence[Task], now: float) -> Allocation:
        a = self._state(view)
        res = Allocation()
        networks: dict[str, Network] = {n.id: n for n in view.list("networks")}
        for nid in sorted(self._dirty_networks):
            n = networks.get(nid)
            if n is None or n.allocation is not None:
                continue
            try:
                done = a.allocate_network(n)
            except AllocationError as e:
                if self.errors.get(nid) != str(e):
                    log.warning("network %s (%s) cannot be allocated: %s", n.spec.name, nid, e)
                self.errors[nid] = str(e)
                continue
            self.errors.pop(nid, None)
            networks[nid] = done
            res.ops.append(store_ops.Update("networks", done))
        self._dirty_networks = {nid for nid in self._dirty_networks if nid in self.errors}
        ingress = next((n for n in networks.values() if n.spec.ingress), None)
        services = {t.service_id for t in tasks if t.service_id} | self._dirty_services
        pending: dict[str, str] = {}  # service id -> why it waits (its tasks wait with it)
        needs_ingress: set[str] = set()
        for sid in sorted(services):
            s = view.get("services", sid)
            if not isinstance(s, Service):
                continue
            if s.spec.endpoint_spec.needs_ingress:
                needs_ingress.add(sid)
            got = a.allocate_service(s, networks, ingress)
            if isinstance(got, Pending):
                pending[sid] = got.reason
            elif got is not s:
                res.ops.append(store_ops.Update("services", got))
        self._dirty_services = set(pending)
        # Ended tasks give their addresses back (as Swarm does): the task stays
        # in the history without them. The addresses are released when that
        # write is applied (observe), never before: a batch that fails must
        # not leave them handed out twice.
        # They yield to the pass's own writes of the task (its shutdown, its
        # removal) and stay on the list until the clearing write is seen.
        for tid in sorted(self._dead):
            dead = view.get("tasks", tid)
            if dead is None or not dead.networks:
                self._dead.discard(tid)
            elif _ended(dead):
                res.after.append(store_ops.Update("tasks", dead.model_copy(update={"networks": ()})))
        for t in tasks:
            if t.service_id in pending:
                res.waiting[t.id] = pending[t.service_id]
                continue
            via = ingress.id if ingress is not None and t.service_id in needs_ingress else None
            got_t = a.allocate_task(t, networks, via)
            if isinstance(got_t, Pending):
                res.waiting[t.id] = got_t.reason
            else:
                res.allocated.append(got_t)
        return res


def _ended(t: Task) -> bool:
    """A task whose container can never run again (a new task replaces it)."""
    return t.status.state.terminal
