"""The `depends_on` gate: whether a service's tasks may be scheduled yet.

A service with `depends_on` gets its tasks created and allocated as any
other's, but the scheduling stage leaves them PENDING, with the reason as
their status message, until every service it depends on satisfies its
condition:

- service_started: one of its tasks is RUNNING (a replicated service scaled
  to 0 wants none, so it is satisfied at once);
- service_healthy: the same test, because a node reports a task that has a
  health check RUNNING only once the check passed (STARTING before, see
  `agent.worker`); the reason says "running and healthy";
- service_completed_successfully: one of its tasks COMPLETE and none failing
  right now (ended FAILED or REJECTED and not replaced by a restart);
  meant for jobs, and for a service that wants no task it holds at once.

A dependency that does not exist (removed, or never created) holds the
service with a reason saying so.

Order of start only, as compose: once one of the service's own tasks is on a
node (assigned up to running, wanted running), the service has started and
the gate stays open for its other tasks (scale up, restarts, updates) even
if a dependency goes down later; nothing that runs is ever stopped here.

Pure and cheap: `DependsGate` answers once per service per pass from the
tasks the pass read, whatever the number of tasks waiting. The leader's
loop runs a pass on every task change, so a dependency whose task starts
releases its dependents in the next pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from api.objects import DependsCondition, Service, ServiceDependency, ServiceMode, Task, TaskState

_FAILED = (TaskState.FAILED, TaskState.REJECTED)


def _tasks(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


def _wants_none(svc: Service) -> bool:
    spec = svc.spec
    if spec.mode == ServiceMode.REPLICATED:
        return spec.replicas == 0
    if spec.mode == ServiceMode.REPLICATED_JOB:
        return (spec.total_completions or spec.replicas) == 0
    return False


def _wanted(svc: Service, tasks: Sequence[Task]) -> int:
    """How many tasks the service runs at once (for the reason)."""
    spec = svc.spec
    if spec.mode == ServiceMode.REPLICATED:
        return spec.replicas
    if spec.mode == ServiceMode.REPLICATED_JOB:
        return spec.max_concurrent or spec.replicas
    return sum(1 for t in tasks if t.desired_state <= TaskState.RUNNING)


def started(tasks: Sequence[Task]) -> bool:
    """Whether a service already started: one of its tasks wanted running is
    on a node (assigned or further, not ended)."""
    return any(t.desired_state <= TaskState.RUNNING and TaskState.ASSIGNED <= t.status.state <= TaskState.RUNNING
               for t in tasks)


def unmet(dep: ServiceDependency, svc: Service | None, tasks: Sequence[Task]) -> str | None:
    """Why dependency `dep` does not hold, given the service it names
    (None: no such service) and that service's tasks; None when it holds."""
    if svc is None:
        return f'waiting for service "{dep.service}", which does not exist'
    cond = dep.condition
    if _wants_none(svc):
        return None
    if cond == DependsCondition.SERVICE_COMPLETED_SUCCESSFULLY:
        failing = next((t for t in tasks if t.status.state in _FAILED and
                        (t.desired_state <= TaskState.RUNNING or t.desired_state == TaskState.FAILED)), None)
        if failing is not None:
            name = f"{dep.service}.{failing.slot}" if failing.slot else f"{dep.service}.{failing.node_id[:12]}"
            why = failing.status.err or failing.status.message or failing.status.state.label
            return f'waiting for service "{dep.service}" ({cond}: task {name} failed: {why})'
        if any(t.status.state == TaskState.COMPLETE for t in tasks):
            return None
        if svc.spec.mode == ServiceMode.REPLICATED_JOB:
            want = svc.spec.total_completions or svc.spec.replicas
        else:
            want = _wanted(svc, tasks)
        return f'waiting for service "{dep.service}" ({cond}: 0 of {_tasks(want)} completed)'
    if any(t.status.state == TaskState.RUNNING and t.desired_state <= TaskState.RUNNING for t in tasks):
        return None
    what = "running and healthy" if cond == DependsCondition.SERVICE_HEALTHY else "running"
    return f'waiting for service "{dep.service}" ({cond}: 0 of {_tasks(_wanted(svc, tasks))} {what})'


class DependsGate:
    """The gate of every service, for one pass: `reason(svc)` is None when
    its tasks may be scheduled, else why they wait. Computed once per
    service and pass."""

    def __init__(self, services: Mapping[str, Service], by_service: Mapping[str, Sequence[Task]]) -> None:
        self.services = services  # id -> service
        self.by_service = by_service  # service id -> its tasks, as the pass read them
        self._by_name: dict[str, Service] | None = None
        self._reasons: dict[str, str | None] = {}

    def by_name(self, name: str) -> Service | None:
        if self._by_name is None:
            self._by_name = {s.spec.name: s for s in self.services.values()}
        return self._by_name.get(name)

    def reason(self, svc: Service) -> str | None:
        if not svc.spec.depends_on:
            return None
        if svc.id in self._reasons:
            return self._reasons[svc.id]
        r = None
        if not started(self.by_service.get(svc.id, ())):
            waits = []
            for dep in svc.spec.depends_on:
                other = self.by_name(dep.service)
                why = unmet(dep, other, self.by_service.get(other.id, ()) if other is not None else ())
                if why is not None:
                    waits.append(why)
            if waits:
                more = len(waits) - 1
                r = waits[0] + (f" (and {more} more {'dependency' if more == 1 else 'dependencies'})"
                                if more else "")
        self._reasons[svc.id] = r
        return r
