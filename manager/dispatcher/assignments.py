"""What a node has been told to run, and what to tell it next.

Pure: no I/O, no clock. `NodeAssignments` holds what one session has been
sent (the tasks, and the secrets and configs those tasks use) and turns a
read view of the store into frames for it:

- `full(view)`: the node's whole set, once per session (`AssignmentsFull`);
- `changes(view, tasks=..., deps=...)`: re-examines only the tasks and the
  secrets/configs named (those a batch of store events touched) and returns
  an `AssignmentChanges` with what differs from what was sent, or None when
  nothing does. Work is proportional to what was touched, not to the node's
  set nor to the cluster;
- `resync(view)`: the same over everything the node has or should have,
  after events may have been missed (a new watch).

Rules (as Swarm): a node knows the tasks assigned to it from ASSIGNED on,
until they are wanted stopped *and* have stopped; a task is re-sent when
what the node acts on changed (spec, desired state, ...), not when only its
status did (the node itself reported that). Secrets and configs go only to
the nodes whose tasks, wanted running, use them; they are re-sent when their
version changes and removed when no such task is left.

Secrets are stored sealed; `open_secret` turns a stored secret into the
plaintext one the node gets (None: it cannot be opened now, so it is not
sent and is tried again the next time it is touched).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

from api.objects import Config, EndpointMode, Network, Secret, Task, TaskState
from api.session import (
    AssignmentChanges,
    AssignmentsFull,
    ConfigRemove,
    ConfigUpdate,
    Endpoint,
    EndpointRemove,
    EndpointUpdate,
    NetworkRemove,
    NetworkUpdate,
    PublishedPort,
    SecretRemove,
    SecretUpdate,
    TaskRemove,
    TaskUpdate,
)

__all__ = ["DepKey", "NodeAssignments", "OpenSecret", "StoreView", "dependencies", "endpoint_facts", "endpoint_of",
           "in_set",
           "needs_dependencies"]

DepKey = tuple[str, str]
"""A task's dependency: (store table, object id), e.g. ("secrets", id).
Network and endpoint tables will be dependencies of the same shape."""

OpenSecret = Callable[[Secret], Secret | None]

_DEP_TABLES = ("secrets", "configs", "networks")


class StoreView(Protocol):
    """The part of `manager.store` ReadView used here."""

    def get(self, table: str, id: str) -> Any | None: ...

    def find(self, table: str, index: str, value: Hashable) -> list[Any]: ...


def in_set(task: Task) -> bool:
    """Whether a task belongs to its node's set: scheduled (ASSIGNED or
    later), and not both wanted stopped and stopped."""
    if task.status.state < TaskState.ASSIGNED:
        return False
    return not (task.desired_state > TaskState.RUNNING and task.status.state.terminal)


def needs_dependencies(task: Task) -> bool:
    """A task wanted stopped needs no secrets or configs any more."""
    return task.desired_state <= TaskState.RUNNING


def dependencies(task: Task) -> set[DepKey]:
    """What a task needs sent with it: its secrets and configs while it is
    wanted running; its networks while its container may still run (a task
    wanted stopped keeps its interfaces through its stop grace period)."""
    deps: set[DepKey] = set()
    if not task.status.state.terminal:
        deps |= {("networks", a.network_id) for a in task.networks}
    if not needs_dependencies(task):
        return deps
    c = task.spec.container
    return deps | {("secrets", r.secret_id) for r in c.secrets} | {("configs", r.config_id) for r in c.configs}


def endpoint_of(view: StoreView, task: Task, network_id: str) -> Endpoint | None:
    """The task's entry in the endpoint table of a network: while it is
    placed and wanted running, from ASSIGNED until it ends, and its node's
    address is known. Peers learn it before the task starts, so it is
    reachable the moment it runs; it becomes a load-balancing backend
    (`serving`) when it runs and stops being one as soon as it is wanted
    stopped, before its node stops it (drain, then stop). The entry itself
    stays until the task has stopped: connections already open to it keep
    their path (peer entries) to the end."""
    if not task.node_id or not TaskState.ASSIGNED <= task.status.state <= TaskState.RUNNING:
        return None
    att = next((a for a in task.networks if a.network_id == network_id), None)
    if att is None or not att.addresses:
        return None
    node = view.get("nodes", task.node_id)
    if node is None or not node.status.addr:
        return None
    svc = view.get("services", task.service_id) if task.service_id else None
    vip = ""
    ports: tuple[PublishedPort, ...] = ()
    if svc is not None:
        if svc.spec.endpoint_spec.mode == EndpointMode.VIP:
            vip = next((v.addr for v in svc.endpoint.virtual_ips if v.network_id == network_id), "")
        net = view.get("networks", network_id)
        if net is not None and net.spec.ingress:
            ports = published_ports(svc)
    return Endpoint(network_id=network_id, task_id=task.id, service_id=task.service_id,
                    service_name=svc.spec.name if svc is not None else "", slot=task.slot,
                    node_id=task.node_id, node_addr=node.status.addr, address=att.addresses[0],
                    aliases=att.aliases, vip=vip, ports=ports,
                    serving=task.status.state == TaskState.RUNNING and task.desired_state <= TaskState.RUNNING)


def endpoint_facts(svc: Any) -> tuple[Any, ...]:
    """What of a service `endpoint_of` puts in its tasks' entries: when
    these change, every entry of its tasks must be sent again."""
    return (svc.spec.name, svc.spec.endpoint_spec.mode, svc.endpoint.virtual_ips, svc.endpoint.ports)


def published_ports(svc: Any) -> tuple[PublishedPort, ...]:
    """A service's allocated published ports, as nodes get them (ports the
    allocator has not given a number yet are left out)."""
    return tuple(PublishedPort(protocol=str(p.protocol), target=p.target_port, published=p.published_port,
                               mode=str(p.publish_mode))
                 for p in svc.endpoint.ports if p.published_port)


def _same_for_node(a: Task, b: Task) -> bool:
    """Equal in everything the node acts on (status and meta excluded)."""
    return (
        a.desired_state == b.desired_state
        and a.spec_version == b.spec_version
        and a.slot == b.slot
        and a.service_id == b.service_id
        and (a.spec is b.spec or a.spec == b.spec)
    )


class NodeAssignments:
    """What one session of node `node_id` has been sent."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._tasks: dict[str, Task] = {}  # as last sent
        self._users: dict[DepKey, set[str]] = {}  # dependency -> ids of the sent tasks needing it
        self._sent: dict[DepKey, int] = {}  # dependency -> meta.version sent
        self._endpoints: dict[str, dict[str, Endpoint]] = {}  # network id -> task id -> endpoint sent

    @property
    def task_ids(self) -> frozenset[str]:
        return frozenset(self._tasks)

    @property
    def dependencies(self) -> frozenset[DepKey]:
        """Dependencies sent to the node (and not removed since)."""
        return frozenset(self._sent)

    @property
    def networks(self) -> frozenset[str]:
        """Networks whose endpoint tables this node has been sent."""
        return frozenset(self._endpoints)

    def on_network(self, network_id: str) -> bool:
        """Whether this node has been sent the endpoint table of a network."""
        return network_id in self._endpoints

    def uses(self, dep: DepKey) -> bool:
        """Whether a change to `dep` may concern this node."""
        return dep in self._users or dep in self._sent

    def full(self, view: StoreView, open_secret: OpenSecret) -> AssignmentsFull:
        """The node's whole set; what was sent before is forgotten."""
        self._tasks.clear()
        self._users.clear()
        self._sent.clear()
        self._endpoints.clear()
        ids = [t.id for t in view.find("tasks", "node_id", self.node_id)]
        return AssignmentsFull(changes=tuple(self._diff(view, ids, (), open_secret)))  # updates only: nothing was sent

    def changes(
        self, view: StoreView, open_secret: OpenSecret, *, tasks: Iterable[str] = (), deps: Iterable[DepKey] = (),
        endpoints: Iterable[str] = (),
    ) -> AssignmentChanges | None:
        """Changes for the tasks (ids) and dependencies named, which may or
        may not concern this node, and for the endpoints of the tasks named in
        `endpoints` (tasks on networks this node is on, wherever they run);
        None when the node needs to hear nothing."""
        changes = self._diff(view, tasks, deps, open_secret, endpoints)
        return AssignmentChanges(changes=tuple(changes)) if changes else None

    def resync(self, view: StoreView, open_secret: OpenSecret) -> AssignmentChanges | None:
        """Changes over everything this node has or should have."""
        ids = set(self._tasks)
        ids.update(t.id for t in view.find("tasks", "node_id", self.node_id))
        eps: set[str] = set()
        for nid, sent in self._endpoints.items():
            eps.update(sent)
            eps.update(t.id for t in view.find("tasks", "network", nid))
        return self.changes(view, open_secret, tasks=sorted(ids), deps=set(self._users) | set(self._sent),
                            endpoints=sorted(eps))

    # -- the one diff ------------------------------------------------------------

    def _diff(
        self, view: StoreView, task_ids: Iterable[str], deps: Iterable[DepKey], open_secret: OpenSecret,
        endpoint_tasks: Iterable[str] = (),
    ) -> list[Any]:
        task_updates: list[Any] = []
        removals: list[Any] = []
        touched: dict[DepKey, None] = dict.fromkeys(deps)  # ordered, for stable frames
        for tid in task_ids:
            t = view.get("tasks", tid)
            old = self._tasks.get(tid)
            if t is None or t.node_id != self.node_id or not in_set(t):
                if old is not None:
                    del self._tasks[tid]
                    removals.append(TaskRemove(id=tid))
                    self._release(tid, dependencies(old), touched)
                continue
            if old is not None and _same_for_node(old, t):
                self._tasks[tid] = t  # newer status; nothing the node needs
                continue
            self._tasks[tid] = t
            svc = view.get("services", t.service_id)
            task_updates.append(TaskUpdate(task=t, service_name=svc.spec.name if svc is not None else ""))
            new_deps = dependencies(t)
            old_deps = dependencies(old) if old is not None else set()
            self._release(tid, old_deps - new_deps, touched)
            for d in sorted(new_deps - old_deps):
                self._users.setdefault(d, set()).add(tid)
                touched[d] = None
        dep_updates: list[Any] = []
        ep_updates: list[Any] = []
        ep_removals: list[Any] = []
        for d in touched:
            table, oid = d
            if table not in _DEP_TABLES:
                continue
            if self._users.get(d):
                obj = view.get(table, oid)
                if obj is None:  # deleted while in use: the node cannot have it either
                    if self._sent.pop(d, None) is not None:
                        removals.append(_remove(table, oid))
                        self._endpoints.pop(oid, None)
                    continue
                if self._sent.get(d) == obj.meta.version:
                    continue
                update = self._update(obj, open_secret)
                if update is None:
                    continue
                self._sent[d] = obj.meta.version
                dep_updates.append(update)
                if table == "networks" and oid not in self._endpoints:
                    # A network new to this node: its whole endpoint table.
                    sent = self._endpoints[oid] = {}
                    for t in view.find("tasks", "network", oid):
                        ep = endpoint_of(view, t, oid)
                        if ep is not None:
                            sent[t.id] = ep
                            ep_updates.append(EndpointUpdate(endpoint=ep))
            else:
                self._users.pop(d, None)
                if self._sent.pop(d, None) is not None:
                    removals.append(_remove(table, oid))
                    self._endpoints.pop(oid, None)  # the node drops the table with the network
        for tid in dict.fromkeys(endpoint_tasks):
            t = view.get("tasks", tid)
            nets = {a.network_id for a in t.networks} if t is not None else set()
            nets.update(nid for nid, sent in self._endpoints.items() if tid in sent)
            for nid in sorted(nets):
                sent = self._endpoints.get(nid)
                if sent is None:
                    continue  # not a network of this node
                ep = endpoint_of(view, t, nid) if t is not None else None
                old_ep = sent.get(tid)
                if ep == old_ep:
                    continue
                if ep is None:
                    del sent[tid]
                    ep_removals.append(EndpointRemove(network_id=nid, task_id=tid))
                else:
                    sent[tid] = ep
                    ep_updates.append(EndpointUpdate(endpoint=ep))
        # Dependencies (networks with their endpoints) before the tasks that
        # use them; removals last, endpoints before their networks.
        return dep_updates + ep_updates + task_updates + ep_removals + removals

    def _release(self, tid: str, deps: Iterable[DepKey], touched: dict[DepKey, None]) -> None:
        for d in deps:
            users = self._users.get(d)
            if users is not None:
                users.discard(tid)
            touched[d] = None

    @staticmethod
    def _update(obj: Any, open_secret: OpenSecret) -> Any:
        if isinstance(obj, Secret):
            opened = open_secret(obj)
            return SecretUpdate(secret=opened) if opened is not None else None
        if isinstance(obj, Config):
            return ConfigUpdate(config=obj)
        if isinstance(obj, Network):
            # Not before the allocator gave it its VNI and subnet.
            return NetworkUpdate(network=obj) if obj.allocation is not None else None
        return None


def _remove(table: str, oid: str) -> Any:
    if table == "networks":
        return NetworkRemove(id=oid)
    return SecretRemove(id=oid) if table == "secrets" else ConfigRemove(id=oid)
