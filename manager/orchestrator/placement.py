"""Parsed placement rules per service, shared by every stage of a pass.

The global orchestrator (which nodes get a task) and the scheduler (where a
replica goes) both need a service's constraints and platforms; they get them
from here, parsed once per placement spec rather than once per node or per
group, and reuse the same node-filter pipeline (`scheduler.filters`).

A cache lives as long as its owner wants: `plan` makes one per pass when
not given one; the leader's loop can keep one across passes, where an entry
stays valid as long as the service's placement spec is equal.
"""

from __future__ import annotations

from collections.abc import Collection

from api.objects import Placement, Service
from scheduler.filters import PlacementRules


class PlacementCache:
    def __init__(self) -> None:
        self._by_service: dict[str, tuple[Placement, PlacementRules]] = {}
        self.parses = 0  # placement specs parsed so far

    def rules(self, svc: Service) -> PlacementRules:
        pl = svc.spec.task.placement
        hit = self._by_service.get(svc.id)
        if hit is not None and (hit[0] is pl or hit[0] == pl):
            return hit[1]
        rules = PlacementRules.parse(pl.constraints, pl.platforms, pl.preferences, pl.max_replicas)
        self.parses += 1
        self._by_service[svc.id] = (pl, rules)
        return rules

    def retain(self, service_ids: Collection[str]) -> None:
        """Forget the services not in `service_ids` (removed ones)."""
        for sid in [s for s in self._by_service if s not in service_ids]:
            del self._by_service[sid]
