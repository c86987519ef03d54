"""From the endpoint tables a node holds to what it programs: load-balancing
tables per namespace, the ports it publishes, and the resolver's names.
Pure functions of agent/networking.py; the kernel side is tested in
tests/overlay_net/test_lb.py and end to end in tests/services."""

from __future__ import annotations

import logging
from ipaddress import IPv4Address

import pytest

from agent.networking import balancers, desired, host_ports, name_table
from api.objects import (
    INGRESS_ATTACHMENT,
    ContainerSpec,
    Network,
    NetworkAllocation,
    NetworkAttachment,
    NetworkSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from api.session import Endpoint, PublishedPort
from overlay_net.lb import IngressPort, VirtualService
from overlay_net.model import HostPort

P = "orch-"
ME = "192.0.2.1"


def net(id: str, name: str, subnet: str, *, ingress: bool = False) -> Network:
    spec = NetworkSpec(name=name, ingress=ingress)
    return Network(id=id, spec=spec, allocation=NetworkAllocation(vni=4096 + len(id), subnet=subnet,
                                                                   gateway=subnet.rsplit(".", 1)[0] + ".1"))


NETS = {"app": net("app", "app", "10.1.0.0/24"), "ing": net("ing", "ingress", "10.0.0.0/24", ingress=True)}


def task(id: str, *nets: tuple[str, str], attachment: str = "") -> Task:
    return Task(id=id, service_id="" if attachment else "s", node_id="n1", attachment=attachment,
                spec=TaskSpec(container=ContainerSpec(image="busybox")),
                status=TaskStatus(state=TaskState.RUNNING),
                networks=tuple(NetworkAttachment(network_id=n, addresses=(a,)) for n, a in nets))


def ep(net: str, tid: str, address: str, *, svc: str = "web", serving: bool = True, vip: str = "",
       node: str = "192.0.2.2", ports: tuple[PublishedPort, ...] = (), aliases: tuple[str, ...] = ()) -> Endpoint:
    return Endpoint(network_id=net, task_id=tid, service_id=svc and "s-" + svc, service_name=svc, slot=1,
                    node_id="n2" if node != ME else "n1", node_addr=node, address=address, serving=serving,
                    vip=vip, ports=ports, aliases=aliases)


def path(tid: str) -> str:
    return f"/run/netns/{P}task-{tid}"


def test_a_task_balances_the_vips_of_its_networks_over_serving_tasks() -> None:
    t = task("c1", ("app", "10.1.0.9/24"))
    tables = {"app": {
        "w1": ep("app", "w1", "10.1.0.5/24", vip="10.1.0.2/24"),
        "w2": ep("app", "w2", "10.1.0.6/24", vip="10.1.0.2/24"),
        "w3": ep("app", "w3", "10.1.0.7/24", vip="10.1.0.2/24", serving=False),  # starting, or draining
        "d1": ep("app", "d1", "10.1.0.8/24", svc="db", vip=""),  # dnsrr: no VIP
        "x1": ep("app", "x1", "10.1.0.10/24", svc="idle", vip="10.1.0.3/24", serving=False),
    }}
    got = balancers(P, [t], NETS, tables, {"c1"})
    assert list(got) == [path("c1")]
    assert got[path("c1")].vips == (
        VirtualService(IPv4Address("10.1.0.2"), (IPv4Address("10.1.0.5"), IPv4Address("10.1.0.6"))),
        VirtualService(IPv4Address("10.1.0.3"), ()),  # known, nothing serving: refused
    )
    # A namespace that does not exist yet gets nothing.
    assert balancers(P, [t], NETS, tables, set()) == {}


def test_the_ingress_sandbox_balances_published_ports_and_the_node_forwards_them() -> None:
    sbox = task("sb", ("ing", "10.0.0.2/24"), attachment=INGRESS_ATTACHMENT)
    mine = task("w1", ("ing", "10.0.0.5/24"))
    web = (PublishedPort(target=80, published=8080),)
    hostp = (PublishedPort(target=80, published=9090, mode="host"),)
    tables = {"ing": {
        "sb": Endpoint(network_id="ing", task_id="sb", node_id="n1", node_addr=ME, address="10.0.0.2/24"),
        "w1": ep("ing", "w1", "10.0.0.5/24", node=ME, ports=web),
        "w2": ep("ing", "w2", "10.0.0.6/24", ports=web),
        "w3": ep("ing", "w3", "10.0.0.7/24", ports=web, serving=False),
        "h1": ep("ing", "h1", "10.0.0.8/24", svc="api", ports=hostp),  # host mode, on another node
    }}
    got = balancers(P, [sbox, mine], NETS, tables, {"sb", "w1"})
    assert got[path("sb")].ingress_ifname == "eth0"
    assert got[path("sb")].ports == (IngressPort("tcp", 8080, ((IPv4Address("10.0.0.5"), 80),
                                                              (IPv4Address("10.0.0.6"), 80))),)
    # The ingress network has no virtual IPs for the task itself.
    assert got[path("w1")].vips == ()
    # Every node forwards the mesh's ports to its sandbox; host-mode ports
    # only where their task runs.
    assert host_ports(P, [sbox, mine], NETS, tables, {"sb", "w1"}) == (HostPort("tcp", 8080, path("sb"), 8080),)
    tables["ing"]["w1"] = ep("ing", "w1", "10.0.0.5/24", node=ME, svc="api", ports=hostp)
    assert host_ports(P, [sbox, mine], NETS, tables, {"sb", "w1"}) == (
        HostPort("tcp", 8080, path("sb"), 8080), HostPort("tcp", 9090, path("w1"), 80))
    # And the node state carries them (validated: both namespaces have egress).
    state = desired(P, ME, [sbox, mine], NETS, tables, {"sb", "w1"})
    assert {h.port for h in state.published} == {8080, 9090}


def test_names_answer_vips_in_vip_mode_and_serving_tasks_in_dnsrr_mode() -> None:
    tables = {"app": {
        "w1": ep("app", "w1", "10.1.0.5/24", vip="10.1.0.2/24", aliases=("front",)),
        "w2": ep("app", "w2", "10.1.0.6/24", vip="10.1.0.2/24", serving=False, aliases=("front",)),
        "d1": ep("app", "d1", "10.1.0.8/24", svc="db", aliases=("store",)),
        "d2": ep("app", "d2", "10.1.0.9/24", svc="db", serving=False, aliases=("store",)),
    }, "ing": {"w1": ep("ing", "w1", "10.0.0.5/24")}}
    t = name_table(NETS, tables)
    a = t.resolve(["app"], "web")
    assert a.addrs == (IPv4Address("10.1.0.2"),)
    # A vip-mode service's alias is a name of the service: its VIP (as Swarm).
    assert t.resolve(["app"], "front").addrs == (IPv4Address("10.1.0.2"),)
    assert t.resolve(["app"], "tasks.web").addrs == (IPv4Address("10.1.0.5"),)
    assert t.resolve(["app"], "db").addrs == (IPv4Address("10.1.0.8"),)
    assert t.resolve(["app"], "store").addrs == (IPv4Address("10.1.0.8"),)  # dnsrr: its serving tasks
    # Nothing is named on the ingress network.
    assert t.resolve(["ing"], "tasks.web").name == "NXDOMAIN"  # type: ignore[union-attr]


def test_a_task_on_internal_networks_only_publishes_nothing_and_logs_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    """Every change recomputes the node's tables: a task on an internal
    network (which publishes nothing) once logged a warning each time."""
    nets = {**NETS, "back": Network(id="back", spec=NetworkSpec(name="back", internal=True),
                                    allocation=NetworkAllocation(vni=4200, subnet="10.2.0.0/24", gateway="10.2.0.1"))}
    t = task("b1", ("back", "10.2.0.5/24"))
    tables = {"back": {"b1": ep("back", "b1", "10.2.0.5/24", node=ME)}, "ing": {}}
    with caplog.at_level(logging.WARNING, logger="agent.networking"):
        for _ in range(3):
            assert host_ports(P, [t], nets, tables, {"b1"}) == ()
            desired(P, ME, [t], nets, tables, {"b1"})
    assert caplog.records == []
