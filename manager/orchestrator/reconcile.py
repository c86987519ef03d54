"""The orchestrators' decisions, as pure functions of the store's state.

One pass over a read view returns the writes that move the cluster towards
what the services ask for; the leader's loop (`loop.py`) runs passes when the
store changes and commits their writes in batches. Being pure, a pass is the
same on whichever manager leads, so a new leader simply carries on where
the old one stopped: there is no hidden progress to lose.

- replicated services: slots 1..replicas each hold one live task; missing
  ones are created, extra ones shut down (highest slots first).
- global services: one live task on every eligible node (ready, active,
  constraints and platform match); tasks on nodes that stop being eligible
  are shut down.
- jobs: replicated jobs run until `total_completions` tasks completed, at
  most `max_concurrent` at once; global jobs once per eligible node.
- restart supervisor: a task that ended while wanted running is replaced
  in its slot according to the restart policy (condition, delay, attempts
  in a window); one that must not be restarted marks its slot finished.
- node loss and drain: tasks on DOWN or drained nodes are shut down and
  their slots refilled elsewhere.
- rolling update: tasks of an older spec version are replaced a batch
  (`parallelism`) at a time, stop-first or start-first; the next batch
  waits until the last one ran for `monitor` seconds; failures beyond
  `max_failure_ratio` pause, continue or roll back.
- task stages: the reconcilers above create tasks NEW; the allocation
  stage moves them to PENDING once an `Allocator` (allocate.py) gave them
  what they need (network addresses), or leaves them NEW with its reason;
  the scheduling stage moves PENDING tasks to ASSIGNED: global ones to the
  node they were made for, the others onto nodes picked by the pure
  scheduler, grouped per (service, spec version). Unplaceable ones stay
  PENDING with the scheduler's reason. One pass takes a task through every
  stage it can pass and writes it once, in its final state.
- depends_on: the scheduling stage leaves the tasks of a service whose
  dependencies do not hold yet PENDING with the reason (depends.py); order
  of start only, as compose.
- placement: global services and the scheduler use the same node filters
  (`scheduler.filters`), from rules parsed once per service (placement.py).
- reaper: at most `task_history_retention_limit` ended tasks per slot, and
  the tasks of removed services once they stopped.
- ingress sandboxes: while the cluster has an ingress network, every node
  (whatever its availability or state) has one live task with
  `attachment=INGRESS_ATTACHMENT` on it, allocated an address there and
  assigned like a global service's task; one that ended is replaced (after
  a short delay), and they go with their node or the network.
- host-mode published ports: the scheduling stage keeps two tasks holding
  the same host port off one node (tasks that have not ended hold theirs),
  for global tasks as for the others; a task that fits nowhere stays PENDING
  saying which task holds the port.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from api import codec
from api.objects import (
    INGRESS_ATTACHMENT,
    Cluster,
    ContainerSpec,
    FailureAction,
    Network,
    NetworkAttachmentConfig,
    PublishMode,
    Node,
    NodeAvailability,
    NodeState,
    RestartCondition,
    Service,
    ServiceMode,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    UpdateOrder,
    UpdateState,
    UpdateStatus,
    evolve,
    port_conflict,
    trim_endpoint,
)
from manager import store as store_ops
from scheduler.constraints import normalize_arch, normalize_os
from scheduler.filters import HostPortFilter, PlacementRules
from scheduler.model import NodeInfo
from scheduler.scheduler import schedule_group

from .allocate import Allocator, NoAllocation
from .depends import DependsGate
from .placement import PlacementCache

JOB_MODES = (ServiceMode.REPLICATED_JOB, ServiceMode.GLOBAL_JOB)

INGRESS_RESTART_DELAY = 2.0
"""Seconds before a node's ended ingress sandbox is replaced (a node that
cannot build one must not be handed a new task in a tight loop)."""


@dataclass
class Pass:
    """The writes of one reconciliation pass, and when to look again."""

    ops: list[Any] = field(default_factory=list)
    wake_at: float | None = None  # earliest time something becomes due (restart delay, monitor)
    # service id -> why its placement rules do not parse; one entry per
    # service however many nodes or tasks it concerns (for the loop to log)
    placement_errors: dict[str, str] = field(default_factory=dict)

    def wake(self, t: float) -> None:
        if self.wake_at is None or t < self.wake_at:
            self.wake_at = t


def _node_down(n: Node | None) -> bool:
    return n is None or n.status.state == NodeState.DOWN


def node_info(n: Node) -> NodeInfo:
    d = n.description
    return NodeInfo(
        id=n.id, hostname=d.hostname, role=n.role.value, labels=dict(n.spec.labels),
        os=normalize_os(d.os or "linux"), arch=normalize_arch(d.arch), ready=n.status.state == NodeState.READY,
        availability=n.spec.availability.value, cpu_nanos=d.nano_cpus, memory_bytes=d.memory_bytes,
    )


class _Context:
    """What the stages of one pass share: the nodes as the scheduler sees
    them (built once per pass, on first use) and the services' placement
    rules (parsed once per service)."""

    def __init__(self, nodes: dict[str, Node], placements: PlacementCache, out: Pass) -> None:
        self.nodes = nodes
        self.placements = placements
        self.out = out
        self._infos: dict[str, NodeInfo] | None = None

    @property
    def infos(self) -> dict[str, NodeInfo]:
        if self._infos is None:
            self._infos = {nid: node_info(n) for nid, n in self.nodes.items()}
        return self._infos

    def rules(self, svc: Service) -> PlacementRules:
        r = self.placements.rules(svc)
        if r.error is not None:
            self.out.placement_errors[svc.id] = r.error
        return r


def same_to_orchestrator(old: Node | None, new: Node | None) -> bool:
    """Whether a pass reads the same from both versions of a node: its
    state, availability and what the scheduler's filters see (`node_info`).
    A node written again unchanged in these (an agent registering anew)
    changes no decision."""
    if old is None or new is None:
        return False
    return (old.status.state == new.status.state and old.spec.availability == new.spec.availability
            and node_info(old) == node_info(new))


_SETTLED_UPDATES = (None, UpdateState.COMPLETED, UpdateState.ROLLBACK_COMPLETED)


def quiet_task_change(old: Task | None, new: Task, view: Any) -> bool:
    """Whether a pass over the task's service decides the same after this
    change as before it, so the change need not make the service's next
    pass: a task of a replicated service with no update under way, alone in
    its slot, moved forward by its node between ASSIGNED and RUNNING, and
    nothing else about it changed. Such a task is live before and after,
    so no slot, restart, scale-down, reaping or placement decision reads
    the difference; only a rolling update (its batch in flight), a
    start-first replacement (its old task waits for the new one to run)
    and a dependent's gate do, and the first two are excluded here while the
    third is re-read on every pass while the dependent waits."""
    if old is None or old.id != new.id or old.status.state == new.status.state:
        return False
    if not (TaskState.ASSIGNED <= old.status.state < new.status.state <= TaskState.RUNNING):
        return False
    if new.desired_state != TaskState.RUNNING or not new.slot:
        return False
    if evolve(new, status=old.status, meta=old.meta) != old:
        return False
    svc = view.get("services", new.service_id)
    if svc is None or svc.spec.mode != ServiceMode.REPLICATED or new.spec_version != svc.spec_version:
        return False
    if new.slot > svc.spec.replicas:
        return False
    if (svc.update_status.state if svc.update_status is not None else None) not in _SETTLED_UPDATES:
        return False
    return all(t.id == new.id or t.desired_state > TaskState.RUNNING
               for t in view.find("tasks", "slot", (new.service_id, new.slot)))


def live(t: Task, nodes: dict[str, Node]) -> bool:
    """Wanted running, not ended, and not stranded on a lost or drained node."""
    if t.desired_state > TaskState.RUNNING or t.status.state.terminal:
        return False
    if t.node_id:
        n = nodes.get(t.node_id)
        if _node_down(n) or (n is not None and n.spec.availability == NodeAvailability.DRAIN):
            return False
    return True


def new_task(svc: Service, slot: int, node_id: str, now: float, not_before: float = 0.0) -> Task:
    return Task(
        id=codec.new_id(), service_id=svc.id, slot=slot, node_id=node_id, spec=svc.spec.task,
        spec_version=svc.spec_version, desired_state=TaskState.RUNNING,
        status=TaskStatus(state=TaskState.NEW, timestamp=now,
                          message="waiting for the restart delay" if not_before > now else "created"),
        created_at=now, not_before=not_before,
    )


def _shutdown(t: Task, message: str = "") -> Any:
    kw: dict[str, Any] = {"desired_state": TaskState.SHUTDOWN}
    if not t.node_id and not t.status.state.terminal:
        # Never reached a node: nothing will report on it, so end it here.
        kw["status"] = evolve(t.status, state=TaskState.SHUTDOWN, message=message or "shut down before start")
    return store_ops.Update("tasks", evolve(t, **kw))


def _restart_decision(svc: Service, slot_tasks: list[Task], t: Task, now: float) -> tuple[bool, float]:
    """(restart?, not_before) for task `t` that ended while wanted running."""
    pol = svc.spec.task.restart_policy
    cond = pol.condition
    if svc.spec.mode in JOB_MODES and cond == RestartCondition.ANY:
        cond = RestartCondition.ON_FAILURE  # a job that completed is done
    st = t.status.state
    if cond == RestartCondition.NONE:
        return False, 0.0
    if cond == RestartCondition.ON_FAILURE and st == TaskState.COMPLETE:
        return False, 0.0
    if st == TaskState.SHUTDOWN and t.desired_state <= TaskState.RUNNING and svc.spec.mode in JOB_MODES:
        return False, 0.0
    if pol.max_attempts:
        # Restarts so far in this slot (the first run is not a restart).
        runs = [x for x in slot_tasks if x.status.state.terminal and
                (not pol.window or x.created_at >= now - pol.window)]
        if len(runs) > pol.max_attempts:
            return False, 0.0
    return True, max(now, t.status.timestamp) + pol.delay


def waiting_services(view: Any) -> set[str]:
    """Services (and "" for tasks of none) with a task wanted running that
    is not assigned yet: read from the store's state index, not a walk."""
    return {t.service_id for state in (TaskState.NEW, TaskState.PENDING)
            for t in view.find("tasks", "state", state) if t.desired_state == TaskState.RUNNING}


class _TasksOf(Mapping[str, Sequence[Task]]):
    """Tasks per service for the depends_on gate of a partial pass: the
    pass's own, else read from the store's service index."""

    def __init__(self, view: Any, read: dict[str, list[Task]]) -> None:
        self.view = view
        self.read = read

    def __getitem__(self, sid: str) -> Sequence[Task]:
        got = self.read.get(sid)
        return got if got is not None else self.view.find("tasks", "service_id", sid)

    def __iter__(self) -> Iterator[str]:
        return iter(self.read)

    def __len__(self) -> int:
        return len(self.read)


def plan(view: Any, now: float | None = None, *, allocator: Allocator | None = None,
         placements: PlacementCache | None = None, services_changed: Collection[str] | None = None) -> Pass:
    """One reconciliation pass over `view`: the writes, and when to look again.

    `allocator` is the allocation stage's hook (default: nothing to
    allocate); `placements` may be kept by the caller across passes so a
    service's placement is parsed once per spec rather than once per pass.

    `services_changed` makes the pass partial: only those services (ids;
    "" for the tasks of no service: attachments, ingress sandboxes) and the
    ones with tasks waiting to be allocated or scheduled are reconciled,
    their tasks read from the store's indexes; the rest of the store is not
    walked. For those services it decides what a full pass would. The
    caller names every service whose spec or tasks changed since the last
    pass that covered it; anything else that a decision reads (nodes, the
    cluster, networks, a failed write, a wake-up time coming due) needs a
    full pass (None, the default).
    """
    now = time.time() if now is None else now
    out = Pass()
    if placements is None:
        placements = PlacementCache()
    nodes: dict[str, Node] = {n.id: n for n in view.list("nodes")}
    services: dict[str, Service] = {s.id: s for s in view.list("services")}
    clusters: list[Cluster] = view.list("clusters")
    history = clusters[0].spec.task_history_retention_limit if clusters else 5
    by_service: dict[str, list[Task]]
    wanted: set[str] = set()
    if services_changed is None:
        by_service = defaultdict(list)
        for t in view.list("tasks"):
            by_service[t.service_id].append(t)
        gate_tasks: Mapping[str, Sequence[Task]] = by_service

        def all_tasks() -> Iterable[Task]:
            return (t for ts in by_service.values() for t in ts)
    else:
        wanted = set(services_changed) | waiting_services(view)
        by_service = {}
        # In the order a full pass meets them (store order of services; "" first).
        for sid in ["", *services, *sorted(wanted - services.keys() - {""})]:
            if sid in wanted:
                ts = view.find("tasks", "service_id", sid)
                if ts:
                    by_service[sid] = ts
        gate_tasks = _TasksOf(view, by_service)

        def all_tasks() -> Iterable[Task]:
            return view.list("tasks")

    ctx = _Context(nodes, placements, out)

    # Stage 1, create: the reconcilers write new tasks NEW (and stop, restart,
    # replace and reap the others).
    for sid, tasks in by_service.items():
        if sid == "":
            _attachments(tasks, nodes, out)
        elif sid not in services:
            _orphaned_service_tasks(tasks, out)
    if services_changed is None or "" in wanted:
        ingress = next((n for n in view.list("networks") if n.spec.ingress), None)
        _ingress_sandboxes([t for t in by_service.get("", ()) if t.attachment == INGRESS_ATTACHMENT],
                           nodes, ingress, now, out)
    for svc in services.values():
        if services_changed is not None and svc.id not in wanted:
            continue
        tasks = by_service.get(svc.id, [])
        if svc.spec.mode in (ServiceMode.GLOBAL, ServiceMode.GLOBAL_JOB):
            _global(svc, tasks, ctx, now, out)
        else:
            _replicated(svc, tasks, nodes, now, out, services)
        _reap(tasks, nodes, history, out)
    placements.retain(services)

    # The tasks the next stages move on: this pass's new ones and earlier
    # ones still waiting, unless stage 1 just wrote them.
    writes = _TaskWrites(out)
    waiting = _waiting(by_service, writes, now, out)
    # Stage 2, allocate: NEW -> PENDING, or NEW with the allocator's reason.
    to_allocate = [t for t in waiting if t.status.state == TaskState.NEW]
    allocated, alloc_ops, alloc_after = _allocate(view, to_allocate, allocator or NoAllocation(), writes, now)
    for op in alloc_ops:
        if isinstance(op, store_ops.Update) and isinstance(op.obj, Service):
            services[op.obj.id] = op.obj  # its ports as allocated: the scheduler places by them
    # Stage 3, schedule: PENDING -> ASSIGNED, or PENDING with the scheduler's reason.
    pending = [allocated.get(t.id, t) for t in waiting
               if t.status.state == TaskState.PENDING or t.id in allocated]
    # Tasks of services whose dependencies do not hold yet stay PENDING with the reason.
    gate = DependsGate(services, gate_tasks)
    ready = []
    for t in pending:
        owner = services.get(t.service_id)
        why = gate.reason(owner) if owner is not None else None
        if why is None:
            ready.append(t)
        else:
            _set_pending(t, why, writes, now)
    _schedule(ready, ctx, services, all_tasks, writes, now)

    out.ops.extend(retire_replaced(by_service, services, nodes))
    out.ops = _dedupe(alloc_ops + out.ops + alloc_after)
    return out


def _dedupe(ops: list[Any]) -> list[Any]:
    """One write per object per pass (a second would fail its version check
    and with it the batch); later decisions are taken again next pass."""
    seen: set[tuple[str, str]] = set()
    out = []
    for op in ops:
        key = (op.table, op.id if isinstance(op, store_ops.Delete) else op.obj.id)
        if key in seen:
            continue
        seen.add(key)
        out.append(op)
    return out


def _attachments(tasks: list[Task], nodes: dict[str, Node], out: Pass) -> None:
    """Network attachments of plain containers: allocated and assigned to
    their node like other tasks (stages 2 and 3), removed once their container
    ended (the node reports it) or their node is gone."""
    for t in tasks:
        if not t.attachment or t.attachment == INGRESS_ATTACHMENT:
            continue  # not ours to judge: no service and no attachment, or an ingress sandbox
        if t.status.state > TaskState.RUNNING or t.desired_state > TaskState.RUNNING or t.node_id not in nodes:
            out.ops.append(store_ops.Delete("tasks", t.id))


def _ingress_sandboxes(tasks: list[Task], nodes: dict[str, Node], ingress: Network | None, now: float,
                       out: Pass) -> None:
    """One live ingress sandbox task per node while there is an ingress
    network. Ended ones are removed (their addresses go with them) and
    replaced; extra live ones (a race of two leaders' passes) are removed,
    the oldest one stays. The node reports the task RUNNING once its
    sandbox is up."""
    by_node: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        on_ingress = ingress is not None and any(c.target == ingress.id for c in t.spec.networks)
        if not on_ingress or t.node_id not in nodes:
            out.ops.append(store_ops.Delete("tasks", t.id))  # its network or its node is gone
        else:
            by_node[t.node_id].append(t)
    if ingress is None:
        return
    for nid in nodes:
        ts = sorted(by_node.get(nid, ()), key=lambda x: (x.created_at, x.id))
        alive = [t for t in ts if t.desired_state <= TaskState.RUNNING and not t.status.state.terminal]
        for t in ts:
            if t not in alive[:1]:
                out.ops.append(store_ops.Delete("tasks", t.id))
        if alive:
            continue
        ended = [t.status.timestamp for t in ts]
        not_before = max(ended) + INGRESS_RESTART_DELAY if ended else 0.0
        if not_before > now:
            out.wake(not_before)
        else:
            not_before = 0.0
        out.ops.append(store_ops.Create("tasks", Task(
            id=codec.new_id(), node_id=nid, attachment=INGRESS_ATTACHMENT, created_at=now, not_before=not_before,
            spec=TaskSpec(container=ContainerSpec(image="none"),
                          networks=(NetworkAttachmentConfig(target=ingress.id),)),
            status=TaskStatus(state=TaskState.NEW, timestamp=now, message="ingress sandbox"))))


def _orphaned_service_tasks(tasks: list[Task], out: Pass) -> None:
    for t in tasks:
        if t.desired_state <= TaskState.RUNNING:
            out.ops.append(_shutdown(t, "service removed"))
        elif t.status.state.terminal or not t.node_id:
            out.ops.append(store_ops.Delete("tasks", t.id))


def _replicated(svc: Service, tasks: list[Task], nodes: dict[str, Node], now: float, out: Pass,
                services: dict[str, Service] | None = None) -> None:
    spec = svc.spec
    job = spec.mode == ServiceMode.REPLICATED_JOB
    slots: dict[int, list[Task]] = defaultdict(list)
    for t in tasks:
        slots[t.slot].append(t)
    for ts in slots.values():
        ts.sort(key=lambda x: (x.created_at, x.id))
    handled: set[str] = set()

    # Ended tasks that are still wanted running: restart or finish the slot.
    for slot, ts in slots.items():
        for t in ts:
            if t.desired_state <= TaskState.RUNNING and not live(t, nodes) and t.id not in handled:
                handled.add(t.id)
                stranded = not t.status.state.terminal  # on a lost/drained node
                if stranded:
                    out.ops.append(store_ops.Update("tasks", evolve(t, desired_state=TaskState.SHUTDOWN)))
                    restart, not_before = True, now
                else:
                    restart, not_before = _restart_decision(svc, ts, t, now)
                if restart and (job or slot <= spec.replicas):
                    if not stranded:
                        out.ops.append(store_ops.Update("tasks", evolve(t, desired_state=TaskState.SHUTDOWN)))
                    out.ops.append(store_ops.Create("tasks", new_task(svc, slot, "", now, not_before)))
                    if not_before > now:
                        out.wake(not_before)
                elif not stranded:
                    # Finished for good: desired follows observed so the slot counts as done.
                    out.ops.append(store_ops.Update("tasks", evolve(
                        t, desired_state=TaskState.COMPLETE if t.status.state == TaskState.COMPLETE
                        else TaskState.FAILED)))

    def slot_done(ts: list[Task]) -> bool:
        last = ts[-1] if ts else None
        return last is not None and last.desired_state in (TaskState.COMPLETE, TaskState.FAILED)

    def slot_live(ts: list[Task]) -> bool:
        return any(t.desired_state <= TaskState.RUNNING and (live(t, nodes) or t.id in handled) for t in ts)

    if job:
        total = spec.total_completions or spec.replicas
        concurrent = spec.max_concurrent or spec.replicas
        done = sum(1 for ts in slots.values() if slot_done(ts) and ts[-1].desired_state == TaskState.COMPLETE)
        running = sum(1 for ts in slots.values() if slot_live(ts))
        failed = sum(1 for ts in slots.values() if slot_done(ts) and ts[-1].desired_state == TaskState.FAILED)
        want_new = min(concurrent - running, total - done - running - failed)
        slot = max(slots, default=0)
        for _ in range(max(0, want_new)):
            slot += 1
            out.ops.append(store_ops.Create("tasks", new_task(svc, slot, "", now)))
        return

    # Service: every slot up to replicas holds a live task (or finished by policy).
    for slot in range(1, spec.replicas + 1):
        ts = slots.get(slot, [])
        if slot_live(ts) or slot_done(ts):
            continue
        out.ops.append(store_ops.Create("tasks", new_task(svc, slot, "", now)))
    for slot, ts in slots.items():
        if slot > spec.replicas:
            for t in ts:
                if t.desired_state <= TaskState.RUNNING and t.id not in handled:
                    out.ops.append(_shutdown(t, "scaled down"))
                elif t.desired_state > TaskState.RUNNING and (t.status.state.terminal or not t.node_id):
                    out.ops.append(store_ops.Delete("tasks", t.id))  # a removed slot keeps no history
    _rolling_update(svc, slots, nodes, now, out, handled, services or {})


def _rolling_update(svc: Service, slots: dict[int, list[Task]], nodes: dict[str, Node], now: float,
                    out: Pass, handled: set[str], services: dict[str, Service]) -> None:
    """Replace tasks of older spec versions, a batch at a time."""
    spec = svc.spec
    rolling_back = svc.update_status is not None and svc.update_status.state in (
        UpdateState.ROLLBACK_STARTED, UpdateState.ROLLBACK_PAUSED)
    cfg = spec.rollback_config if rolling_back else spec.update_config
    status = svc.update_status
    if status is not None and status.state in (UpdateState.PAUSED, UpdateState.ROLLBACK_PAUSED):
        return
    current: list[Task] = []
    stale: list[Task] = []
    for slot, ts in slots.items():
        if slot > spec.replicas:
            continue
        for t in ts:
            if t.desired_state <= TaskState.RUNNING and t.id not in handled and live(t, nodes):
                (current if t.spec_version == svc.spec_version else stale).append(t)
    # start-first: a slot whose replacement exists already keeps its old task
    # until the new one runs (retire_replaced); it is not replaced twice.
    current_slots = {t.slot for t in current}
    waiting_retire = [t for t in stale if t.slot in current_slots]
    stale = [t for t in stale if t.slot not in current_slots]
    if not stale:
        if waiting_retire:
            return
        if status is not None and status.state in (UpdateState.UPDATING, UpdateState.ROLLBACK_STARTED):
            if all(t.status.state == TaskState.RUNNING for t in current):
                done = UpdateState.ROLLBACK_COMPLETED if rolling_back else UpdateState.COMPLETED
                out.ops.append(store_ops.Update("services", evolve(
                    svc, update_status=UpdateStatus(state=done, started_at=status.started_at, completed_at=now,
                                                    message=f"rollback completed: {status.message}"
                                                    if rolling_back else "update completed"))))
        return
    # Failures among the new version's tasks (ended while wanted running).
    new_tasks = [t for ts in slots.values() for t in ts if t.spec_version == svc.spec_version]
    failed = [t for t in new_tasks if t.status.state in (TaskState.FAILED, TaskState.REJECTED)
              and (status is None or t.created_at >= status.started_at)]
    if new_tasks and len(failed) / max(1, len(new_tasks)) > cfg.max_failure_ratio and failed:
        why = f"task {failed[0].id[:12]} failed: {failed[0].status.err or failed[0].status.message}"
        if cfg.failure_action == FailureAction.ROLLBACK and not rolling_back and svc.previous_spec is not None:
            back = evolve(
                svc, spec=svc.previous_spec, previous_spec=svc.spec, spec_version=svc.spec_version + 1,
                endpoint=trim_endpoint(svc.previous_spec.endpoint_spec, svc.endpoint),
                update_status=UpdateStatus(state=UpdateState.ROLLBACK_STARTED, started_at=now,
                                           message=f"update rolled back: {why}"))
            # The store would refuse a rollback to ports another service took
            # since (and with it the whole batch, pass after pass): pause instead.
            taken = port_conflict(back, services.values())
            if taken is None:
                out.ops.append(store_ops.Update("services", back))
                return
            why += (f"; cannot roll back: published port {taken[1]}/{taken[0]} is used by service "
                    f'"{taken[2].spec.name}" now')
        if cfg.failure_action in (FailureAction.PAUSE, FailureAction.ROLLBACK):
            out.ops.append(store_ops.Update("services", evolve(
                svc, update_status=UpdateStatus(
                    state=UpdateState.ROLLBACK_PAUSED if rolling_back else UpdateState.PAUSED,
                    started_at=status.started_at if status else now,
                    message=f"update paused: {why}"))))
            return
    # The batch in flight: new tasks not yet running for `monitor` seconds.
    in_flight = [t for t in current if t.status.state != TaskState.RUNNING or
                 (t.status.timestamp > now - cfg.monitor and t.created_at >= (status.started_at if status else 0))]
    # A slot can hold more than one stale task (a start-first replacement still
    # starting, or waiting for its health check, when a rollback begins): the
    # slot gets one replacement, never one per old task.
    stale_slots: dict[int, list[Task]] = defaultdict(list)
    for t in stale:
        stale_slots[t.slot].append(t)
    parallelism = cfg.parallelism or len(stale_slots)
    if len(in_flight) >= parallelism:
        for t in in_flight:
            if t.status.state == TaskState.RUNNING:
                out.wake(t.status.timestamp + cfg.monitor)
        return
    budget = parallelism - len(in_flight)
    for slot in sorted(stale_slots)[:budget]:
        olds = stale_slots[slot]
        not_before = now + cfg.delay if cfg.delay and current else 0.0
        if cfg.order != UpdateOrder.START_FIRST:
            out.ops.extend(_shutdown(t, "replaced by an update") for t in olds)
        # start-first: the old tasks stop once the replacement runs (retire_replaced).
        out.ops.append(store_ops.Create("tasks", new_task(svc, slot, "", now, not_before)))
        if not_before:
            out.wake(not_before)
        handled.update(t.id for t in olds)


def retire_replaced(by_service: Mapping[str, Sequence[Task]], services: Mapping[str, Service],
                    nodes: dict[str, Node]) -> list[Any]:
    """start-first: once a slot's new task runs, stop the old one."""
    ops = []
    slots: dict[tuple[str, int], list[Task]] = defaultdict(list)
    for ts in by_service.values():
        for t in ts:
            if t.slot and t.desired_state <= TaskState.RUNNING and live(t, nodes):
                slots[(t.service_id, t.slot)].append(t)
    for (sid, _), ts in slots.items():
        svc = services.get(sid)
        if svc is None or len(ts) < 2:
            continue
        running_new = [t for t in ts if t.spec_version == svc.spec_version and t.status.state == TaskState.RUNNING]
        if running_new:
            for t in ts:
                if t.spec_version != svc.spec_version:
                    ops.append(_shutdown(t, "replaced by an update"))
    return ops


def _global(svc: Service, tasks: list[Task], ctx: _Context, now: float, out: Pass) -> None:
    job = svc.spec.mode == ServiceMode.GLOBAL_JOB
    nodes = ctx.nodes
    infos = ctx.infos
    eligible = ctx.rules(svc).nodes.reject  # the scheduler's node filters
    by_node: dict[str, list[Task]] = defaultdict(list)
    for t in tasks:
        by_node[t.node_id].append(t)
    for ts in by_node.values():
        ts.sort(key=lambda x: (x.created_at, x.id))
    for n in nodes.values():
        ts = by_node.get(n.id, [])
        refused = eligible(infos[n.id])
        if refused is not None:
            for t in ts:
                if t.desired_state <= TaskState.RUNNING:
                    out.ops.append(_shutdown(t, f"node no longer eligible: {refused}"))
            continue
        live_ts = [t for t in ts if t.desired_state <= TaskState.RUNNING and live(t, nodes)]
        if live_ts:
            stale = [t for t in live_ts if t.spec_version != svc.spec_version]
            for t in stale[: max(1, svc.spec.update_config.parallelism or len(stale))]:
                out.ops.append(_shutdown(t, "replaced by an update"))
                out.ops.append(store_ops.Create("tasks", new_task(svc, 0, n.id, now)))
            continue
        last = ts[-1] if ts else None
        if last is not None and last.desired_state in (TaskState.COMPLETE, TaskState.FAILED):
            continue  # finished here for good
        if last is not None and last.desired_state <= TaskState.RUNNING and last.status.state.terminal:
            restart, nb = _restart_decision(svc, ts, last, now)
            if not restart:
                out.ops.append(store_ops.Update("tasks", evolve(
                    last, desired_state=TaskState.COMPLETE if last.status.state == TaskState.COMPLETE
                    else TaskState.FAILED)))
                continue
            out.ops.append(store_ops.Update("tasks", evolve(last, desired_state=TaskState.SHUTDOWN)))
            out.ops.append(store_ops.Create("tasks", new_task(svc, 0, n.id, now, nb)))
            if nb > now:
                out.wake(nb)
            continue
        if job and any(t.status.state == TaskState.COMPLETE for t in ts):
            continue
        out.ops.append(store_ops.Create("tasks", new_task(svc, 0, n.id, now)))
    # Tasks on nodes that no longer exist.
    for nid, ts in by_node.items():
        if nid and nid not in nodes:
            for t in ts:
                if t.desired_state <= TaskState.RUNNING:
                    out.ops.append(_shutdown(t, "node removed"))


def _reap(tasks: list[Task], nodes: dict[str, Node], history: int, out: Pass) -> None:
    """Keep `history` ended tasks per slot (per node for global services)."""
    groups: dict[tuple[int, str], list[Task]] = defaultdict(list)
    for t in tasks:
        groups[(t.slot, t.node_id if t.slot == 0 else "")].append(t)
    for ts in groups.values():
        ended = [t for t in ts if t.desired_state > TaskState.RUNNING and
                 (t.status.state.terminal or not t.node_id or t.node_id not in nodes)]
        ended.sort(key=lambda x: (x.created_at, x.id))
        for t in ended[: max(0, len(ended) - history)]:
            out.ops.append(store_ops.Delete("tasks", t.id))


class _TaskWrites:
    """Where each task written by the stages sits in the pass's ops, so a
    task moved on by several stages is written once, in its final form: a
    task created in this pass keeps its Create, an existing one gets one
    Update."""

    def __init__(self, out: Pass) -> None:
        self.out = out
        self.at: dict[str, int] = {}
        for i, op in enumerate(out.ops):
            if isinstance(op, store_ops.Create) and op.table == "tasks":
                self.at[op.obj.id] = i

    def created(self) -> list[Task]:
        return [self.out.ops[i].obj for i in self.at.values()]

    def put(self, t: Task) -> None:
        ops = self.out.ops
        i = self.at.get(t.id)
        if i is None:
            self.at[t.id] = len(ops)
            ops.append(store_ops.Update("tasks", t))
        else:
            ops[i] = type(ops[i])("tasks", t)


def _waiting(by_service: dict[str, list[Task]], writes: _TaskWrites, now: float, out: Pass) -> list[Task]:
    """Tasks wanted running that are not yet assigned and are due now:
    earlier ones first (in store order), then this pass's new ones."""
    # Written or deleted by stage 1: not moved on in this pass (an address
    # allocated to a task whose write is dropped would be held by nobody).
    changed = {op.id if isinstance(op, store_ops.Delete) else op.obj.id for op in out.ops
               if op.table == "tasks" and not isinstance(op, store_ops.Create)}
    candidates = [t for ts in by_service.values() for t in ts if t.id not in changed]
    waiting = []
    for t in candidates + writes.created():
        if t.desired_state != TaskState.RUNNING or t.status.state > TaskState.PENDING:
            continue
        if t.not_before > now:
            out.wake(t.not_before)
            continue
        waiting.append(t)
    return waiting


def _allocate(view: Any, tasks: list[Task], allocator: Allocator, writes: _TaskWrites,
              now: float) -> tuple[dict[str, Task], list[Any], list[Any]]:
    """NEW -> PENDING for the tasks the allocator served; the others stay NEW
    with its reason. Returns (task id -> PENDING task, the allocator's other writes).
    The allocator is asked even with no tasks: it may have networks or
    services of its own to allocate."""
    if not tasks and isinstance(allocator, NoAllocation):
        return {}, [], []
    res = allocator.allocate(view, tasks, now)
    asked = {t.id for t in tasks}
    allocated: dict[str, Task] = {}
    for t in res.allocated:
        if t.id not in asked:
            raise ValueError(f"allocator {type(allocator).__name__} returned task {t.id}, which it was not given")
        new = evolve(t, status=TaskStatus(state=TaskState.PENDING, timestamp=now, message="allocated"))
        allocated[t.id] = new
        writes.put(new)
    for t in tasks:
        if t.id in allocated:
            continue
        reason = res.waiting.get(t.id) or "waiting for allocation"
        if t.status.message != reason:
            writes.put(evolve(t, status=TaskStatus(state=TaskState.NEW, timestamp=now, message=reason)))
    return allocated, list(res.ops), list(res.after)


def _host_ports(svc: Service | None) -> list[tuple[str, int]]:
    """(protocol, port) of the host-mode ports the service's tasks listen on."""
    if svc is None:
        return []
    return [(p.protocol, p.published_port) for p in svc.endpoint.ports if p.publish_mode == PublishMode.HOST]


def task_name(svc: Service | None, t: Task) -> str:
    """A task as users name it: web.2 (slot 2), web.<node> (global)."""
    name = svc.spec.name if svc is not None else t.service_id[:12]
    return f"{name}.{t.slot}" if t.slot else f"{name}.{t.node_id[:12]}"


def _schedule(pending: list[Task], ctx: _Context, services: dict[str, Service],
              all_tasks: Callable[[], Iterable[Task]], writes: _TaskWrites, now: float) -> None:
    """PENDING -> ASSIGNED: global tasks to their node, the others where the
    scheduler places them; unplaceable ones stay PENDING with its reason."""
    nodes = ctx.nodes
    groups: dict[tuple[str, int], list[Task]] = defaultdict(list)
    made_for_node: list[Task] = []
    for t in pending:
        if t.node_id:
            made_for_node.append(t)
        else:
            groups[(t.service_id, t.spec_version)].append(t)
    host = any(_host_ports(services.get(t.service_id)) for t in pending)
    if not groups and not host:
        for t in made_for_node:
            # Global tasks are made for a node that passed the node filters.
            writes.put(evolve(t, status=TaskStatus(state=TaskState.ASSIGNED, timestamp=now, message="assigned")))
        return
    infos = ctx.infos
    for t in all_tasks():
        if t.node_id in infos and live(t, nodes):
            ni = infos[t.node_id]
            ni.service_tasks[t.service_id] += 1
            ni.total_tasks += 1
            res = t.spec.resources.reservations
            ni.reserved_cpu += res.nano_cpus
            ni.reserved_memory += res.memory_bytes
        elif t.node_id in infos and t.status.state == TaskState.FAILED and t.created_at > now - 300:
            infos[t.node_id].recent_failures[t.service_id] += 1
        if host and t.node_id in infos and TaskState.ASSIGNED <= t.status.state <= TaskState.RUNNING:
            # On the node and not ended: it holds its host ports there.
            svc = services.get(t.service_id)
            for p in _host_ports(svc):
                infos[t.node_id].host_ports[p] = task_name(svc, t)
    for t in made_for_node:
        svc = services.get(t.service_id)
        ports = _host_ports(svc)
        info = infos.get(t.node_id)
        if ports and info is not None:
            refused = HostPortFilter(ports).reject(info)
            if refused is not None:
                _set_pending(t, refused, writes, now)
                continue
            for p in ports:
                info.host_ports[p] = task_name(svc, t)
        writes.put(evolve(t, status=TaskStatus(state=TaskState.ASSIGNED, timestamp=now, message="assigned")))
    node_list = sorted(infos.values(), key=lambda n: n.id)
    for (sid, _), ts in sorted(groups.items()):
        svc = services.get(sid)
        if svc is None:
            continue
        rules = ctx.rules(svc)
        if rules.error is not None:
            for t in ts:
                _set_pending(t, rules.error, writes, now)
            continue
        res = svc.spec.task.resources.reservations
        g = rules.group(sid, [t.id for t in ts], reserve_cpu=res.nano_cpus, reserve_memory=res.memory_bytes,
                        host_ports=_host_ports(svc), task_names={t.id: task_name(svc, t) for t in ts})
        placed = schedule_group(g, node_list)
        by_id = {t.id: t for t in ts}
        for tid, nid in placed.assignments:
            writes.put(evolve(by_id[tid], node_id=nid, status=TaskStatus(state=TaskState.ASSIGNED, timestamp=now,
                                                                         message="scheduled")))
        for tid in placed.unplaced:
            _set_pending(by_id[tid], placed.reason, writes, now)


def _set_pending(t: Task, reason: str, writes: _TaskWrites, now: float) -> None:
    if t.status.state == TaskState.PENDING and t.status.message == reason:
        return
    writes.put(evolve(t, status=TaskStatus(state=TaskState.PENDING, timestamp=now, message=reason)))
