"""The dispatcher's pure assignment diff (manager/dispatcher/assignments.py),
driven on a real store: each test writes transactions, then asks a node's
`NodeAssignments` what to send, as the dispatcher does after a watch batch."""

from __future__ import annotations

from typing import Any

from api.objects import (
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
    evolve,
)
from api.session import (
    AssignmentChanges,
    ConfigRemove,
    ConfigUpdate,
    SecretRemove,
    SecretUpdate,
    TaskRemove,
    TaskUpdate,
    decode,
    encode,
)
from manager.dispatcher.assignments import NodeAssignments
from pki.secretbox import new_key, open_, seal
from manager.store import Create, Delete, MemoryStore, Update
from tests.store import Feeder

KEY = new_key()


def open_secret(s: Secret) -> Secret | None:
    return evolve(s, spec__data=open_(KEY, s.id, s.spec.data))


def mktask(id: str, node: str = "n1", *, state: TaskState = TaskState.ASSIGNED,
           desired: TaskState = TaskState.RUNNING, secrets: tuple[str, ...] = (),
           configs: tuple[str, ...] = (), image: str = "busybox") -> Task:
    c = ContainerSpec(image=image,
                      secrets=tuple(SecretReference(secret_id=s, secret_name=s) for s in secrets),
                      configs=tuple(ConfigReference(config_id=c, config_name=c) for c in configs))
    return Task(id=id, service_id="svc", slot=1, node_id=node, desired_state=desired,
                spec=TaskSpec(container=c), spec_version=1, status=TaskStatus(state=state))


class World:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.feed = Feeder(self.store)
        self.tx(Create("services", Service(id="svc", spec=ServiceSpec(
            name="web", task=TaskSpec(container=ContainerSpec(image="busybox"))))))

    def tx(self, *ops: Any) -> None:
        r = self.feed.tx(*ops)
        assert r.ok, r.error

    def get(self, table: str, id: str) -> Any:
        return self.store.view().get(table, id)

    def secret(self, id: str, data: bytes) -> None:
        self.tx(Create("secrets", Secret(id=id, spec=SecretSpec(name=id, data=seal(KEY, id, data)))))

    def config(self, id: str, data: bytes) -> None:
        self.tx(Create("configs", Config(id=id, spec=ConfigSpec(name=id, data=data))))

    def full(self, a: NodeAssignments) -> list[Any]:
        return list(a.full(self.store.view(), open_secret).changes)

    def changes(self, a: NodeAssignments, tasks: tuple[str, ...] = (), deps: tuple[tuple[str, str], ...] = ()
                ) -> AssignmentChanges | None:
        return a.changes(self.store.view(), open_secret, tasks=tasks, deps=deps)

    def clist(self, a: NodeAssignments, tasks: Any = (), deps: Any = (), endpoints: Any = ()) -> list[Any]:
        f = a.changes(self.store.view(), open_secret, tasks=tasks, deps=deps, endpoints=endpoints)
        return list(f.changes) if f is not None else []


def ops(frame: AssignmentChanges | None) -> list[tuple[str, str]]:
    """(op, object id) of each change, in order."""
    out = []
    for c in frame.changes if frame is not None else ():
        obj = getattr(c, "task", None) or getattr(c, "secret", None) or getattr(c, "config", None)
        out.append((c.op, obj.id if obj is not None else c.id))
    return out


def test_full_set_is_what_the_node_must_know() -> None:
    w = World()
    w.secret("pw", b"hunter2")
    w.config("conf", b"a=1")
    w.tx(Create("tasks", mktask("run", state=TaskState.RUNNING, secrets=("pw",), configs=("conf",))),
         Create("tasks", mktask("assigned")),
         Create("tasks", mktask("pending", state=TaskState.PENDING)),  # not scheduled yet
         Create("tasks", mktask("other", node="n2")),  # another node's
         Create("tasks", mktask("stopping", state=TaskState.RUNNING, desired=TaskState.SHUTDOWN,
                                secrets=("pw",))),  # still runs: the node must stop it
         Create("tasks", mktask("gone", state=TaskState.SHUTDOWN, desired=TaskState.SHUTDOWN)))
    full = w.full(NodeAssignments("n1"))
    assert sorted(ops(AssignmentChanges(changes=tuple(full)))) == [
        ("config_update", "conf"), ("secret_update", "pw"), ("task_update", "assigned"), ("task_update", "run"),
        ("task_update", "stopping")]
    # Dependencies come before the tasks that use them.
    assert sorted(c.op for c in full[:2]) == ["config_update", "secret_update"]
    sec = next(c for c in full if isinstance(c, SecretUpdate)).secret
    assert sec.spec.data == b"hunter2"  # opened for the node, sealed in the store
    t = next(c for c in full if isinstance(c, TaskUpdate))
    assert t.service_name == "web"


def test_a_task_added_is_one_update() -> None:
    w = World()
    w.tx(Create("tasks", mktask("a")))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Create("tasks", mktask("b")))
    assert ops(w.changes(a, tasks=("b",))) == [("task_update", "b")]
    assert a.task_ids == {"a", "b"}


def test_a_task_updated_is_sent_again_a_status_change_is_not() -> None:
    w = World()
    w.tx(Create("tasks", mktask("a")))
    a = NodeAssignments("n1")
    w.full(a)
    # The node's own report comes back as a store change: nothing to tell it.
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), status__state=TaskState.RUNNING)))
    assert w.changes(a, tasks=("a",)) is None
    # Wanted stopped: the node must hear it.
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), desired_state=TaskState.SHUTDOWN)))
    frame = w.changes(a, tasks=("a",))
    assert ops(frame) == [("task_update", "a")]
    assert frame is not None and frame.changes[0].task.desired_state == TaskState.SHUTDOWN  # type: ignore[union-attr]
    # A new spec too.
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), spec__container__image="busybox:2", spec_version=2)))
    assert ops(w.changes(a, tasks=("a",))) == [("task_update", "a")]


def test_a_task_removed() -> None:
    w = World()
    w.tx(Create("tasks", mktask("a", state=TaskState.RUNNING)), Create("tasks", mktask("b")))
    a = NodeAssignments("n1")
    w.full(a)
    # Stopped and wanted stopped: out of the set.
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), desired_state=TaskState.SHUTDOWN,
                                status__state=TaskState.SHUTDOWN)))
    assert ops(w.changes(a, tasks=("a",))) == [("task_remove", "a")]
    # Deleted from the store (task reaper).
    w.tx(Delete("tasks", "b"))
    assert ops(w.changes(a, tasks=("b",))) == [("task_remove", "b")]
    assert a.task_ids == frozenset()
    # Removing what was already removed tells nothing.
    assert w.changes(a, tasks=("a", "b")) is None


def test_a_secret_no_longer_needed_is_removed() -> None:
    w = World()
    w.secret("pw", b"s3cret")
    w.config("conf", b"x")
    w.tx(Create("tasks", mktask("a", state=TaskState.RUNNING, secrets=("pw",), configs=("conf",))),
         Create("tasks", mktask("b", state=TaskState.RUNNING, secrets=("pw",))))
    a = NodeAssignments("n1")
    w.full(a)
    assert a.dependencies == {("secrets", "pw"), ("configs", "conf")}
    # "a" wanted stopped: it needs no files now; "b" still uses the secret.
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), desired_state=TaskState.SHUTDOWN)))
    assert ops(w.changes(a, tasks=("a",))) == [("task_update", "a"), ("config_remove", "conf")]
    # The last user goes: so does the secret.
    w.tx(Delete("tasks", "b"))
    assert ops(w.changes(a, tasks=("b",))) == [("task_remove", "b"), ("secret_remove", "pw")]
    assert a.dependencies == frozenset()


def test_a_secret_used_by_a_new_task_is_sent_once() -> None:
    w = World()
    w.secret("pw", b"s3cret")
    w.tx(Create("tasks", mktask("a", secrets=("pw",))))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Create("tasks", mktask("b", secrets=("pw",))), Create("tasks", mktask("c", node="n2", secrets=("pw",))))
    assert ops(w.changes(a, tasks=("b", "c"))) == [("task_update", "b")]  # the node has the secret already
    other = NodeAssignments("n2")
    assert [c.op for c in w.full(other)] == ["secret_update", "task_update"]


def test_a_changed_config_is_sent_again() -> None:
    w = World()
    w.config("conf", b"v1")
    w.tx(Create("tasks", mktask("a", configs=("conf",))))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Update("configs", evolve(w.get("configs", "conf"), spec__labels={"x": "y"})))
    frame = w.changes(a, deps=(("configs", "conf"),))
    assert ops(frame) == [("config_update", "conf")]
    assert isinstance(frame.changes[0], ConfigUpdate)  # type: ignore[union-attr]
    # A dependency this node does not use is not its business.
    w.config("other", b"z")
    assert w.changes(a, deps=(("configs", "other"),)) is None
    assert not a.uses(("configs", "other"))


def test_a_secret_that_cannot_be_opened_is_not_sent_and_retried() -> None:
    w = World()
    w.tx(Create("secrets", Secret(id="bad", spec=SecretSpec(name="bad", data=b"not sealed"))))
    w.tx(Create("tasks", mktask("a", secrets=("bad",))))
    a = NodeAssignments("n1")
    calls = []

    def failing(s: Secret) -> Secret | None:
        calls.append(s.id)
        return None

    full = a.full(w.store.view(), failing)
    assert [c.op for c in full.changes] == ["task_update"] and calls == ["bad"]
    assert a.uses(("secrets", "bad"))
    frame = a.changes(w.store.view(), lambda s: evolve(s, spec__data=b"opened"), deps=(("secrets", "bad"),))
    assert ops(frame) == [("secret_update", "bad")]


def test_no_change_no_frame() -> None:
    w = World()
    w.tx(Create("tasks", mktask("a")), Create("tasks", mktask("x", node="n2")))
    a = NodeAssignments("n1")
    w.full(a)
    assert w.changes(a) is None
    assert w.changes(a, tasks=("a",)) is None  # touched, unchanged
    assert w.changes(a, tasks=("x", "nonexistent")) is None  # not this node's
    assert a.resync(w.store.view(), open_secret) is None


def test_a_reconnect_gets_the_full_set() -> None:
    w = World()
    w.secret("pw", b"s")
    w.tx(Create("tasks", mktask("a", secrets=("pw",))), Create("tasks", mktask("b")))
    a = NodeAssignments("n1")
    first = w.full(a)
    w.tx(Delete("tasks", "b"))
    assert ops(w.changes(a, tasks=("b",))) == [("task_remove", "b")]
    # A new session of the same node starts from nothing: everything again.
    again = w.full(NodeAssignments("n1"))
    assert [c.op for c in again] == ["secret_update", "task_update"]
    # And full() on the same object forgets what it had sent.
    assert [c.op for c in w.full(a)] == ["secret_update", "task_update"]
    assert len(first) == 3


def test_resync_catches_up_after_missed_events() -> None:
    w = World()
    w.secret("pw", b"s")
    w.tx(Create("tasks", mktask("a", secrets=("pw",))), Create("tasks", mktask("b")))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Delete("tasks", "a"), Create("tasks", mktask("c")),
         Update("tasks", evolve(w.get("tasks", "b"), desired_state=TaskState.SHUTDOWN)))
    frame = a.resync(w.store.view(), open_secret)
    assert sorted(ops(frame)) == [("secret_remove", "pw"), ("task_remove", "a"), ("task_update", "b"),
                                  ("task_update", "c")]
    assert a.resync(w.store.view(), open_secret) is None


def test_a_task_moved_to_another_node_is_removed_here() -> None:
    w = World()
    w.tx(Create("tasks", mktask("a")))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Update("tasks", evolve(w.get("tasks", "a"), node_id="n2")))
    assert ops(w.changes(a, tasks=("a",))) == [("task_remove", "a")]


class CountingView:
    """A real store view that counts reads."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.reads = 0

    def get(self, table: str, id: str) -> Any:
        self.reads += 1
        return self.view.get(table, id)

    def find(self, table: str, index: str, value: Any) -> list[Any]:
        rows = self.view.find(table, index, value)
        self.reads += len(rows)
        return rows


def test_work_is_proportional_to_what_changed_not_to_the_set() -> None:
    w = World()
    w.tx(*(Create("tasks", mktask(f"t{i:04d}")) for i in range(1000)))
    a = NodeAssignments("n1")
    w.full(a)
    w.tx(Update("tasks", evolve(w.get("tasks", "t0500"), desired_state=TaskState.SHUTDOWN)))
    view = CountingView(w.store.view())
    frame = a.changes(view, open_secret, tasks=("t0500",))
    assert ops(frame) == [("task_update", "t0500")]
    assert view.reads <= 3  # the task, its service: not the node's 1,000 tasks


def test_change_frames_survive_the_wire() -> None:
    w = World()
    w.secret("pw", b"\x00\xffbinary")
    w.tx(Create("tasks", mktask("a", secrets=("pw",))))
    a = NodeAssignments("n1")
    full = a.full(w.store.view(), open_secret)
    assert decode(encode(full)) == full
    w.tx(Delete("tasks", "a"))
    frame = w.changes(a, tasks=("a",))
    assert frame is not None and decode(encode(frame)) == frame
    assert [type(c) for c in frame.changes] == [TaskRemove, SecretRemove]
    assert ConfigRemove(id="x").op == "config_remove"


# -- networks and endpoint tables ------------------------------------------------------


def _net(world: World, nid: str, vni: int) -> None:
    from api.objects import Network, NetworkAllocation, NetworkSpec

    world.tx(Create("networks", Network(id=nid, spec=NetworkSpec(name=nid), allocation=NetworkAllocation(
        vni=vni, subnet="10.0.9.0/24", gateway="10.0.9.1"))))


def _node(world: World, nid: str, addr: str) -> None:
    from api.objects import Node, NodeStatus

    world.tx(Create("nodes", Node(id=nid, status=NodeStatus(addr=addr))))


def _on(t: Task, nid: str, addr: str) -> Task:
    from api.objects import NetworkAttachment

    return evolve(t, networks=(NetworkAttachment(network_id=nid, addresses=(addr,)),))


def test_a_network_goes_with_its_first_task_and_brings_its_endpoint_table() -> None:
    from api.session import EndpointRemove, EndpointUpdate, NetworkRemove, NetworkUpdate

    w = World()
    _node(w, "n1", "192.0.2.1")
    _node(w, "n2", "192.0.2.2")
    _net(w, "app", 4096)
    w.tx(Create("tasks", _on(mktask("remote", node="n2", state=TaskState.RUNNING), "app", "10.0.9.3/24")))
    a1 = NodeAssignments("n1")
    assert w.full(a1) == []
    w.tx(Create("tasks", _on(mktask("local", node="n1"), "app", "10.0.9.2/24")))
    ch = w.clist(a1, tasks=["local"], endpoints=["local"])
    kinds = [type(c).__name__ for c in ch]
    assert kinds == ["NetworkUpdate", "EndpointUpdate", "EndpointUpdate", "TaskUpdate"]
    eps = {c.endpoint.task_id: c.endpoint for c in ch if isinstance(c, EndpointUpdate)}
    assert eps["remote"].node_addr == "192.0.2.2" and eps["remote"].address == "10.0.9.3/24"
    assert eps["local"].node_id == "n1" and eps["local"].service_name == "web"
    assert isinstance(ch[0], NetworkUpdate) and ch[0].network.allocation.vni == 4096

    # A peer appears on another node: one endpoint update, nothing else.
    w.tx(Create("tasks", _on(mktask("peer", node="n2"), "app", "10.0.9.4/24")))
    ch = w.clist(a1, tasks=[], endpoints=["peer"])
    assert [type(c).__name__ for c in ch] == ["EndpointUpdate"] and ch[0].endpoint.task_id == "peer"
    # It starts running: it becomes a backend (serving), one update.
    w.tx(Update("tasks", evolve(w.get("tasks", "peer"), status=TaskStatus(state=TaskState.RUNNING))))
    ch = w.clist(a1, endpoints=["peer"])
    assert [type(c).__name__ for c in ch] == ["EndpointUpdate"] and ch[0].endpoint.serving
    # Its status moves on otherwise (a newer report): nothing is sent.
    w.tx(Update("tasks", evolve(w.get("tasks", "peer"), status=TaskStatus(state=TaskState.RUNNING,
                                                                         timestamp=5.0))))
    assert w.clist(a1, endpoints=["peer"]) == []
    # It is wanted stopped: it stops being a backend before it stops, and
    # keeps its entry (the path of open connections) until it has stopped.
    w.tx(Update("tasks", evolve(w.get("tasks", "peer"), desired_state=TaskState.SHUTDOWN)))
    ch = w.clist(a1, endpoints=["peer"])
    assert [type(c).__name__ for c in ch] == ["EndpointUpdate"] and not ch[0].endpoint.serving
    w.tx(Update("tasks", evolve(w.get("tasks", "peer"), status=TaskStatus(state=TaskState.SHUTDOWN))))
    ch = w.clist(a1, endpoints=["peer"])
    assert ch == [EndpointRemove(network_id="app", task_id="peer")]
    # An endpoint on a network this node is not on concerns it not at all.
    _net(w, "other", 4097)
    w.tx(Create("tasks", _on(mktask("elsewhere", node="n2"), "other", "10.0.9.9/24")))
    assert w.clist(a1, endpoints=["elsewhere"]) == []
    # The last local task on the network goes: the network goes with it.
    w.tx(Delete("tasks", "local"))
    ch = w.clist(a1, tasks=["local"], endpoints=["local"])
    assert [type(c).__name__ for c in ch] == ["TaskRemove", "NetworkRemove"]
    assert isinstance(ch[-1], NetworkRemove) and ch[-1].id == "app"
    assert not a1.on_network("app")
    for c in ch:  # every change survives the wire
        assert decode(encode(AssignmentChanges(changes=(c,)))) == AssignmentChanges(changes=(c,))


def test_an_unallocated_network_is_not_sent_until_allocated() -> None:
    from api.objects import Network, NetworkAllocation, NetworkSpec

    w = World()
    _node(w, "n1", "192.0.2.1")
    w.tx(Create("networks", Network(id="late", spec=NetworkSpec(name="late"))))
    w.tx(Create("tasks", _on(mktask("t", node="n1"), "late", "10.0.9.2/24")))
    a = NodeAssignments("n1")
    assert [type(c).__name__ for c in w.full(a)] == ["TaskUpdate"]
    n = w.get("networks", "late")
    w.tx(Update("networks", evolve(n, allocation=NetworkAllocation(vni=5000, subnet="10.0.9.0/24",
                                                                 gateway="10.0.9.1"))))
    ch = w.clist(a, deps=[("networks", "late")])
    assert [type(c).__name__ for c in ch] == ["NetworkUpdate", "EndpointUpdate"]


def test_a_peer_whose_node_moves_to_a_new_address_is_sent_again() -> None:
    from api.objects import NodeStatus
    from api.session import EndpointUpdate

    w = World()
    _node(w, "n1", "192.0.2.1")
    _node(w, "n2", "192.0.2.2")
    _net(w, "app", 4096)
    w.tx(Create("tasks", _on(mktask("local", node="n1"), "app", "10.0.9.2/24")))
    w.tx(Create("tasks", _on(mktask("remote", node="n2", state=TaskState.RUNNING), "app", "10.0.9.3/24")))
    a = NodeAssignments("n1")
    w.full(a)
    assert w.clist(a, endpoints=["remote"]) == []
    n2 = w.get("nodes", "n2")
    w.tx(Update("nodes", evolve(n2, status=NodeStatus(addr="192.0.2.22"))))
    ch = w.clist(a, endpoints=["remote"])
    assert len(ch) == 1 and isinstance(ch[0], EndpointUpdate) and ch[0].endpoint.node_addr == "192.0.2.22"


def test_entries_carry_the_services_vip_and_on_ingress_its_published_ports() -> None:
    from api.objects import Endpoint as ServiceEndpoint
    from api.objects import EndpointMode, EndpointSpec, Network, NetworkAllocation, NetworkSpec, PortConfig, VirtualIP
    from api.session import PublishedPort
    from manager.dispatcher.assignments import endpoint_facts, endpoint_of

    w = World()
    _node(w, "n1", "192.0.2.1")
    _net(w, "app", 4096)
    w.tx(Create("networks", Network(id="ing", spec=NetworkSpec(name="ingress", ingress=True),
                                    allocation=NetworkAllocation(vni=4097, subnet="10.0.0.0/24", gateway="10.0.0.1"))))
    t = mktask("t1", state=TaskState.RUNNING)
    t = evolve(t, networks=_on(t, "app", "10.0.9.5/24").networks + _on(t, "ing", "10.0.0.5/24").networks)
    w.tx(Create("tasks", t))
    svc = w.get("services", "svc")
    before = endpoint_facts(svc)
    w.tx(Update("services", evolve(svc, endpoint=ServiceEndpoint(
        virtual_ips=(VirtualIP(network_id="app", addr="10.0.9.2/24"), VirtualIP(network_id="ing", addr="10.0.0.2/24")),
        ports=(PortConfig(target_port=80, published_port=8080), PortConfig(target_port=81, published_port=0))))))
    assert endpoint_facts(w.get("services", "svc")) != before
    view = w.store.view()
    app, ing = endpoint_of(view, t, "app"), endpoint_of(view, t, "ing")
    assert app is not None and ing is not None
    assert app.vip == "10.0.9.2/24" and app.ports == () and app.serving
    # Only allocated ports, and only on the ingress network.
    assert ing.ports == (PublishedPort(target=80, published=8080),)
    # dnsrr: no VIP in the entries.
    svc = w.get("services", "svc")
    w.tx(Update("services", evolve(svc, spec=evolve(svc.spec, endpoint_spec=EndpointSpec(mode=EndpointMode.DNSRR)))))
    assert endpoint_of(w.store.view(), t, "app").vip == ""  # type: ignore[union-attr]
    # Wanted stopped: still an entry (open connections keep their path), not a backend.
    w.tx(Update("tasks", evolve(w.get("tasks", "t1"), desired_state=TaskState.SHUTDOWN)))
    gone = endpoint_of(w.store.view(), w.get("tasks", "t1"), "app")
    assert gone is not None and not gone.serving
