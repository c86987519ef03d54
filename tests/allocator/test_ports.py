"""Published ports and the ingress network in the allocation stage, over
real reconciliation passes on a real store: ports filled in, kept across
updates, freed; the ingress VIP and task addresses following the ports;
one ingress sandbox per node; and, over random histories, no port held
twice and none leaked."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.objects import (
    DYNAMIC_PORT_MAX,
    DYNAMIC_PORT_MIN,
    INGRESS_ATTACHMENT,
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkSpec,
    NodeAvailability,
    NodeState,
    PortConfig,
    PublishMode,
    Service,
    TaskState,
    TaskStatus,
    UpdateConfig,
    evolve,
    held_ports,
    port_claims,
    port_conflict,
    trim_endpoint,
)
from manager.allocator import Allocator
from manager.allocator.ports import PublishedPorts
from manager.allocator.stage import NetworkStage
from manager.bootstrap import ingress_network
from manager.orchestrator.reconcile import INGRESS_RESTART_DELAY, plan
from manager.store import Create, Delete, Update
from tests.allocator.test_stage import Leader
from tests.orchestrator.test_reconcile import mknode, mkservice


def port(target: int, published: int = 0, mode: str = "ingress", proto: str = "tcp") -> PortConfig:
    return PortConfig(target_port=target, published_port=published, publish_mode=PublishMode(mode), protocol=proto)


class Mesh(Leader):
    """The leader's loop with an ingress network, and the control API's
    service writes (a spec change drops the ports it no longer asks for, and
    bumps the spec version when ports change)."""

    def __init__(self) -> None:
        super().__init__()
        self.tx(Create("networks", ingress_network(self.now)))
        self.settle()
        self.ingress = next(n for n in self.store.view().list("networks") if n.spec.ingress)

    def create(self, sid: str, *ports: PortConfig, replicas: int = 2, **kw: Any) -> None:
        s = mkservice(sid, replicas, update_config=UpdateConfig(parallelism=0), **kw)
        self.tx(Create("services", evolve(s, spec__endpoint_spec=EndpointSpec(ports=ports))))

    def set_ports(self, sid: str, *ports: PortConfig) -> None:
        s = self.store.view().get("services", sid)
        spec = evolve(s.spec, endpoint_spec=EndpointSpec(ports=ports))
        self.tx(Update("services", evolve(s, spec=spec, spec_version=s.spec_version + 1,
                                          endpoint=trim_endpoint(spec.endpoint_spec, s.endpoint))))

    def svc(self, sid: str) -> Service:
        return self.store.view().get("services", sid)

    def sandboxes(self) -> list[Any]:
        return [t for t in self.store.view().list("tasks") if t.attachment == INGRESS_ATTACHMENT]

    def restored_counts(self) -> dict[str, int]:
        v = self.store.view()
        return Allocator.restore(None, v.list("networks"), v.list("services"), v.list("tasks")).counts()


def test_ports_are_filled_in_kept_across_updates_and_given_back() -> None:
    c = Mesh()
    c.create("web", port(80), port(81, 8080))
    c.settle()
    web = c.svc("web")
    assert web.endpoint.ports == (port(80, DYNAMIC_PORT_MIN), port(81, 8080))
    assert c.stage.counts()["ports"] == 2
    # Another service's dynamic port is the next one; 8080 is not offered.
    c.create("api", port(9000), replicas=1)
    c.settle()
    assert c.svc("api").endpoint.ports == (port(9000, DYNAMIC_PORT_MIN + 1),)
    # An update keeping the dynamic port keeps its number; a new one gets another.
    c.set_ports("web", port(81, 8080), port(80), port(82))
    c.settle()
    assert c.svc("web").endpoint.ports == (port(81, 8080), port(80, DYNAMIC_PORT_MIN),
                                           port(82, DYNAMIC_PORT_MIN + 2))
    # Removing a port gives it back at once: another service may take it.
    c.set_ports("web", port(81, 8080), port(82))
    assert port_claims(c.svc("web").spec.endpoint_spec, c.svc("web").endpoint) == (
        ("tcp", 8080, "ingress"), ("tcp", DYNAMIC_PORT_MIN + 2, "ingress"))
    c.create("late", port(1, DYNAMIC_PORT_MIN), replicas=1)
    c.settle()
    assert c.svc("late").endpoint.ports == (port(1, DYNAMIC_PORT_MIN),)
    assert c.stage.counts() == c.restored_counts()
    # Removing the services gives everything back.
    ts = c.store.view().list("tasks")
    c.tx(*[Delete("tasks", t.id) for t in ts if t.service_id], *[Delete("services", s) for s in ("web", "api", "late")])
    c.settle()
    assert c.stage.counts()["ports"] == 0 and c.stage.counts() == c.restored_counts()


def test_ingress_vip_and_task_addresses_follow_the_ingress_ports() -> None:
    c = Mesh()
    c.tx(Create("networks", Network(id="app", spec=NetworkSpec(name="app"))))
    c.create("web", port(80, 8080), networks=("app",))
    c.settle()
    web = c.svc("web")
    assert [v.network_id for v in web.endpoint.virtual_ips] == [c.ingress.id, "app"]
    for t in c.tasks("web"):
        assert t.status.state == TaskState.ASSIGNED
        assert [a.network_id for a in t.networks] == [c.ingress.id, "app"]  # ingress first, as Swarm
        assert t.spec.networks == web.spec.task.networks  # not written into the task's spec
    # Host-mode ports keep the tasks on ingress (the node finds its tasks'
    # host ports in their ingress entries).
    c.set_ports("web", port(80, 8080, mode="host"))
    c.settle()
    assert [v.network_id for v in c.svc("web").endpoint.virtual_ips] == [c.ingress.id, "app"]
    live = [t for t in c.tasks("web") if t.desired_state <= TaskState.RUNNING]
    assert len(live) == 2 and all(t.spec_version == 2 for t in live)
    assert all([a.network_id for a in t.networks] == [c.ingress.id, "app"] for t in live)
    # No port left: new tasks are detached, the VIP on ingress goes.
    c.set_ports("web")
    c.settle()
    assert [v.network_id for v in c.svc("web").endpoint.virtual_ips] == ["app"]
    live = [t for t in c.tasks("web") if t.desired_state <= TaskState.RUNNING]
    assert len(live) == 2 and all(t.spec_version == 3 for t in live)
    assert all([a.network_id for a in t.networks] == ["app"] for t in live)
    # Back again (no other network): the VIP and addresses again.
    c.set_ports("web", port(80, 8080))
    c.settle()
    live = [t for t in c.tasks("web") if t.desired_state <= TaskState.RUNNING]
    assert all([a.network_id for a in t.networks] == [c.ingress.id, "app"] for t in live)
    assert c.stage.counts() == c.restored_counts()


def test_dnsrr_services_publish_host_ports_over_ingress_without_a_vip() -> None:
    c = Mesh()
    s = mkservice("dns", 1)
    c.tx(Create("services", evolve(s, spec__endpoint_spec=EndpointSpec(
        mode=EndpointMode.DNSRR, ports=[port(53, 5353, mode="host", proto="udp")]))))
    c.settle()
    assert c.svc("dns").endpoint.virtual_ips == ()
    assert c.svc("dns").endpoint.ports == (port(53, 5353, mode="host", proto="udp"),)
    (t,) = c.tasks("dns")
    assert [a.network_id for a in t.networks] == [c.ingress.id]


def test_without_an_ingress_network_tasks_wait_with_the_reason() -> None:
    c = Leader()
    s = mkservice("web", 1)
    c.tx(Create("services", evolve(s, spec__endpoint_spec=EndpointSpec(ports=[port(80, 8080)]))))
    c.settle()
    (t,) = c.tasks("web")
    assert t.status.state == TaskState.NEW and "no ingress network" in t.status.message
    c.tx(Create("networks", ingress_network(c.now)))
    c.settle()
    (t,) = c.tasks("web")
    assert t.status.state == TaskState.ASSIGNED and len(t.networks) == 1


def test_one_ingress_sandbox_per_node_replaced_and_removed() -> None:
    c = Mesh()
    boxes = c.sandboxes()
    assert sorted(t.node_id for t in boxes) == ["n1", "n2"]
    for t in boxes:
        assert t.service_id == "" and t.status.state == TaskState.ASSIGNED and t.desired_state == TaskState.RUNNING
        assert [a.network_id for a in t.networks] == [c.ingress.id] and t.networks[0].addresses
    # A drained or down node keeps its sandbox; a new node gets one.
    n1 = c.store.view().get("nodes", "n1")
    c.tx(Update("nodes", evolve(n1, spec__availability=NodeAvailability.DRAIN, status__state=NodeState.DOWN)),
         Create("nodes", mknode("n3")))
    c.settle()
    assert sorted(t.node_id for t in c.sandboxes()) == ["n1", "n2", "n3"]
    # One that ended is replaced, after a delay.
    old = next(t for t in c.sandboxes() if t.node_id == "n2")
    c.tx(Update("tasks", evolve(old, status=TaskStatus(state=TaskState.FAILED, timestamp=c.now, err="no netns"))))
    p = plan(c.store.view(), c.now, allocator=c.stage)
    assert p.wake_at == c.now + INGRESS_RESTART_DELAY
    c.settle()
    (new,) = [t for t in c.sandboxes() if t.node_id == "n2"]
    assert new.id != old.id and new.status.state == TaskState.NEW and new.not_before > c.now
    c.now += INGRESS_RESTART_DELAY
    c.settle()
    (new,) = [t for t in c.sandboxes() if t.node_id == "n2"]
    assert new.status.state == TaskState.ASSIGNED and new.networks
    # Two live ones (two leaders' passes racing): the younger goes.
    twin = evolve(new, id="twin", created_at=new.created_at + 1, networks=(),
                  status=TaskStatus(state=TaskState.NEW, timestamp=c.now))
    c.tx(Create("tasks", twin))
    c.settle()
    assert [t.id for t in c.sandboxes() if t.node_id == "n2"] == [new.id]
    # A removed node's sandbox goes, and its address with it.
    before = c.stage.counts()[f"addrs:{c.ingress.id}"]
    c.tx(Delete("nodes", "n3"))
    c.settle()
    assert sorted(t.node_id for t in c.sandboxes()) == ["n1", "n2"]
    assert c.stage.counts()[f"addrs:{c.ingress.id}"] == before - 1
    assert c.stage.counts() == c.restored_counts()
    # No ingress network, no sandboxes.
    c.tx(Delete("networks", c.ingress.id))
    c.settle()
    assert c.sandboxes() == []


def test_the_port_table() -> None:
    ports = PublishedPorts(lo=100, hi=102)
    ports.hold("a", [("tcp", 101, PublishMode.INGRESS)])
    assert [ports.allocate("tcp"), ports.allocate("tcp")] == [100, 102]  # next fit, around what is held
    try:
        ports.allocate("tcp")
        raise AssertionError("the range is full")
    except Exception as e:
        assert "no free tcp port left in 100-102" in str(e)
    assert ports.allocate("udp") == 100
    ports.unused("tcp", 100)
    ports.hold("b", [("tcp", 102, PublishMode.HOST)])
    assert ports.conflict("c", ("tcp", 102, PublishMode.HOST)) is None
    assert ports.conflict("c", ("tcp", 102, PublishMode.INGRESS)) == "b"
    assert ports.conflict("c", ("tcp", 101, PublishMode.HOST)) == "a"
    ports.drop("a")
    assert ports.conflict("c", ("tcp", 101, PublishMode.INGRESS)) is None


# -- random histories -----------------------------------------------------------

_port = st.builds(
    port,
    target=st.sampled_from([80, 81]),
    published=st.sampled_from([0, 0, 8080, 8081, DYNAMIC_PORT_MIN, DYNAMIC_PORT_MIN + 1]),
    mode=st.sampled_from(["ingress", "ingress", "host"]),
    proto=st.sampled_from(["tcp", "tcp", "udp"]),
)
_ports = st.lists(_port, max_size=3)
_op = st.one_of(
    st.tuples(st.just("create"), st.sampled_from("abcd"), _ports),
    st.tuples(st.just("update"), st.sampled_from("abcd"), _ports),
    st.tuples(st.just("remove"), st.sampled_from("abcd"), st.just([])),
    st.tuples(st.just("new-leader"), st.just(""), st.just([])),
)


def _valid(ports: list[PortConfig]) -> bool:
    keys = [(p.protocol, p.published_port) for p in ports if p.published_port]
    return len(keys) == len(set(keys))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_op, min_size=1, max_size=10))
def test_no_port_is_held_twice_and_none_leaks(ops: list[tuple[str, str, list[PortConfig]]]) -> None:
    c = Mesh()
    for kind, sid, ports in ops:
        have = c.store.view().get("services", sid)
        if kind == "new-leader":
            c.stage = NetworkStage()  # rebuilt from the store at its first pass
        elif kind == "remove" and have is not None:
            c.tx(*[Delete("tasks", t.id) for t in c.tasks(sid)], Delete("services", sid))
        elif kind in ("create", "update") and _valid(ports):
            if kind == "create" and have is None:
                s = mkservice(sid, 1)
                new = evolve(s, spec__endpoint_spec=EndpointSpec(ports=ports))
                op: Any = Create("services", new)
            elif kind == "update" and have is not None:
                spec = evolve(have.spec, endpoint_spec=EndpointSpec(ports=ports))
                new = evolve(have, spec=spec, endpoint=trim_endpoint(spec.endpoint_spec, have.endpoint))
                op = Update("services", new)
            else:
                continue
            taken = port_conflict(new, c.store.view().list("services"))
            r = c.feed.tx(op)  # the store judges as the control API's write would be judged
            assert r.ok == (taken is None), (r.error, taken)
            c.stage.observe(c.watch.poll())
        c.settle()
        services = c.store.view().list("services")
        owners: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for s in services:
            assert len(s.endpoint.ports) == len(s.spec.endpoint_spec.ports)
            assert all(h is not None for h in held_ports(s.spec.endpoint_spec, s.endpoint))
            for p in s.endpoint.ports:
                assert p.published_port
                if p not in s.spec.endpoint_spec.ports:
                    # Allocated, or kept from when the spec fixed it (a port
                    # made dynamic keeps the number it had).
                    assert DYNAMIC_PORT_MIN <= p.published_port <= DYNAMIC_PORT_MAX or p.published_port in (8080, 8081)
                owners.setdefault((p.protocol, p.published_port), []).append((s.id, p.publish_mode))
            want_ingress = s.spec.endpoint_spec.needs_ingress
            assert any(v.network_id == c.ingress.id for v in s.endpoint.virtual_ips) == want_ingress
        for key, holders in owners.items():
            if len(holders) > 1:
                assert all(mode == "host" for _, mode in holders), (key, holders)
                assert len({sid for sid, _ in holders}) == len(holders)
        assert c.stage.counts() == c.restored_counts()
    left = [*[Delete("tasks", t.id) for t in c.store.view().list("tasks") if t.service_id],
            *[Delete("services", s.id) for s in c.store.view().list("services")]]
    if left:
        c.tx(*left)
    c.settle()
    assert c.stage.counts()["ports"] == 0
