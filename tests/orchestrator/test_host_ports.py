"""Host-mode published ports in the scheduling stage: two tasks holding the
same host port never share a node; a task that fits nowhere stays PENDING
saying which task holds the port; an ended task gives its port back."""

from __future__ import annotations

from api.objects import (
    Endpoint,
    EndpointSpec,
    PortConfig,
    PublishMode,
    Service,
    ServiceMode,
    TaskState,
    evolve,
)
from manager.store import Create
from tests.orchestrator.test_reconcile import Cluster, mknode, mkservice


def host_service(id: str, replicas: int, port: int = 8080, *, mode: ServiceMode = ServiceMode.REPLICATED,
                 proto: str = "tcp") -> Service:
    # As the allocator leaves it: the endpoint's ports filled in.
    p = PortConfig(target_port=80, published_port=port, protocol=proto, publish_mode=PublishMode.HOST)
    s = mkservice(id, replicas, mode=mode)
    return evolve(s, spec__endpoint_spec=EndpointSpec(ports=[p]), endpoint=Endpoint(ports=(p,)))


def test_tasks_with_one_host_port_spread_and_the_rest_wait_with_the_reason() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", host_service("web", 3)))
    c.converge()
    placed = [t for t in c.live("web") if t.status.state == TaskState.RUNNING]
    assert sorted(t.node_id for t in placed) == ["n1", "n2"]
    (waiting,) = [t for t in c.live("web") if t.status.state == TaskState.PENDING]
    holders = {f"web.{t.slot}" for t in placed}
    assert waiting.status.message.startswith("no suitable node: 2 nodes checked")
    for h in holders:
        assert f"host port 8080/tcp is in use by task {h}" in waiting.status.message
    # The same port over udp, or another port, is free: another service lands.
    c.tx(Create("services", host_service("dns", 2, proto="udp")))
    c.tx(Create("services", host_service("other", 2, port=9090)))
    c.converge()
    assert all(t.status.state == TaskState.RUNNING for t in c.live("dns") + c.live("other"))

    # A task that ended gives its port back: the waiting one takes the node.
    victim = next(t for t in placed if t.slot == 1)
    c.end(victim, TaskState.FAILED)
    c.now += 10
    c.converge()
    running = [t for t in c.live("web") if t.status.state == TaskState.RUNNING]
    assert len(running) == 2 and sorted(t.node_id for t in running) == ["n1", "n2"]


def test_a_second_host_mode_service_on_the_same_port_goes_elsewhere_or_waits() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", host_service("a", 1)))
    c.converge()
    (a,) = c.live("a")
    c.tx(Create("services", host_service("b", 2)))
    c.converge()
    b = c.live("b")
    assert [t.node_id for t in b if t.status.state == TaskState.RUNNING] == [n for n in ("n1", "n2") if n != a.node_id]
    (stuck,) = [t for t in b if t.status.state == TaskState.PENDING]
    assert "host port 8080/tcp is in use by task a.1" in stuck.status.message


def test_global_tasks_wait_on_a_node_whose_host_port_is_taken() -> None:
    c = Cluster(mknode("n1"), mknode("n2"))
    c.tx(Create("services", host_service("a", 1)))
    c.converge()
    (a,) = c.live("a")
    c.tx(Create("services", host_service("g", 0, mode=ServiceMode.GLOBAL)))
    c.converge()
    g = {t.node_id: t for t in c.live("g")}
    assert g[a.node_id].status.state == TaskState.PENDING
    assert g[a.node_id].status.message == "host port 8080/tcp is in use by task a.1"
    other = "n2" if a.node_id == "n1" else "n1"
    assert g[other].status.state == TaskState.RUNNING
