"""The scheduler's own lightweight view of nodes and task groups.

Plain slotted classes rather than the api models: the scheduler touches
every candidate node for every decision, so its data must be cheap to read
and update. The manager builds these from the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .constraints import Constraint

if TYPE_CHECKING:
    from .filters import Pipeline


@dataclass(slots=True)
class NodeInfo:
    id: str
    hostname: str = ""
    role: str = "worker"
    labels: dict[str, str] = field(default_factory=dict)
    os: str = "linux"
    arch: str = "x86_64"
    ready: bool = True
    availability: str = "active"  # active | pause | drain
    cpu_nanos: int = 0  # total; 0 = unknown/unlimited
    memory_bytes: int = 0
    reserved_cpu: int = 0
    reserved_memory: int = 0
    service_tasks: Counter[str] = field(default_factory=Counter)
    total_tasks: int = 0
    # (protocol, port) -> the task holding it on this node, as users name it ("web.2")
    host_ports: dict[tuple[str, int], str] = field(default_factory=dict)
    recent_failures: Counter[str] = field(default_factory=Counter)  # service -> count

    def free_cpu(self) -> int:
        return self.cpu_nanos - self.reserved_cpu

    def free_memory(self) -> int:
        return self.memory_bytes - self.reserved_memory


@dataclass(slots=True)
class TaskGroup:
    """Identical tasks of one service (same spec), scheduled together."""

    service_id: str
    task_ids: list[str]
    constraints: list[Constraint] = field(default_factory=list)
    spread: list[str] = field(default_factory=list)  # label names, outermost first
    reserve_cpu: int = 0
    reserve_memory: int = 0
    max_replicas_per_node: int = 0  # 0 = no limit
    host_ports: list[tuple[str, int]] = field(default_factory=list)  # (protocol, port), host mode
    task_names: dict[str, str] = field(default_factory=dict)  # task id -> "web.2", for reasons
    platforms: list[tuple[str, str]] = field(default_factory=list)  # (os, arch); empty = any
    # The node pipeline already built from these constraints and platforms
    # (PlacementRules.group sets it); None: the scheduler builds it.
    node_filter: Pipeline | None = None
