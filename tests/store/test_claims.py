"""Claims checked on apply: published ports (ingress exclusive, host shared)
and the ingress role. Two writers racing for one key are two entries: the
second fails on every replica and writes nothing."""

from __future__ import annotations

from api.objects import (
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    Network,
    NetworkSpec,
    PortConfig,
    PublishMode,
    Service,
    ServiceSpec,
    TaskSpec,
    evolve,
)
from manager.store import ClaimConflict, Conflict, Create, Delete, MemoryStore, Update
from tests.store import Feeder, cfg


def svc(id: str, *published: int, mode: PublishMode = PublishMode.INGRESS, dynamic: int = 0) -> Service:
    """Ports 80->each published; `dynamic`: one more spec port (published 0),
    allocated to that port in the endpoint."""
    ports = [PortConfig(target_port=80, published_port=p, publish_mode=mode) for p in published]
    allocated = list(ports)
    if dynamic:
        ports.append(PortConfig(target_port=81))
        allocated.append(PortConfig(target_port=81, published_port=dynamic))
    return Service(id=id, spec=ServiceSpec(name=id, task=TaskSpec(container=ContainerSpec(image="x")),
                                           endpoint_spec=EndpointSpec(ports=ports)),
                   endpoint=Endpoint(ports=tuple(allocated)))


def test_an_ingress_port_is_one_service_s_and_the_loser_writes_nothing() -> None:
    a, b = MemoryStore(), MemoryStore()
    f = Feeder(a, b)
    assert f.tx(Create("services", svc("web", 8080))).ok
    r = f.tx(Create("services", svc("api", 8080)), Create("configs", cfg("c1")))
    assert not r.ok and isinstance(r.error, ClaimConflict) and isinstance(r.error, Conflict)
    assert str(r.error) == 'services/api: published port 8080/tcp is already used by service "web" (services/web)'
    for s in (a, b):
        assert [x.id for x in s.view().list("services")] == ["web"] and s.view().list("configs") == []
        assert s.index == f.index
    # Host mode cannot share a port held in ingress mode either.
    assert not f.tx(Create("services", svc("h", 8080, mode=PublishMode.HOST))).ok
    # A dynamic port, once allocated, is held the same way.
    assert f.tx(Create("services", svc("dyn", dynamic=30000))).ok
    r = f.tx(Create("services", svc("x", 30000)))
    assert not r.ok and 'used by service "dyn"' in str(r.error)


def test_host_ports_are_shared_among_host_mode_services_only() -> None:
    f = Feeder(MemoryStore())
    assert f.tx(Create("services", svc("h1", 9000, mode=PublishMode.HOST))).ok
    assert f.tx(Create("services", svc("h2", 9000, mode=PublishMode.HOST))).ok
    r = f.tx(Create("services", svc("i", 9000)))
    assert not r.ok and 'used by service "h1"' in str(r.error)  # the least id is named


def test_one_transaction_is_judged_as_it_leaves_the_store() -> None:
    s = MemoryStore()
    f = Feeder(s)
    assert f.tx(Create("services", svc("web", 8080))).ok
    web = s.view().get("services", "web")
    # Giving the port up and taking it elsewhere in one entry is fine...
    moved = evolve(web, spec__endpoint_spec=EndpointSpec(), endpoint=Endpoint())
    assert f.tx(Update("services", moved), Create("services", svc("api", 8080))).ok
    # ...two new holders of one port in one entry are not.
    r = f.tx(Create("services", svc("a", 7000)), Create("services", svc("b", 7000)))
    assert not r.ok and "published port 7000/tcp" in str(r.error)
    # Deleting the holder frees the port in the same entry.
    assert f.tx(Delete("services", "api"), Create("services", svc("c", 8080))).ok


def test_an_update_that_keeps_its_claims_is_not_judged_again() -> None:
    s = MemoryStore()
    f = Feeder(s)
    assert f.tx(Create("services", svc("h1", 9000, mode=PublishMode.HOST))).ok
    assert f.tx(Create("services", svc("h2", 9000, mode=PublishMode.HOST))).ok
    h2 = s.view().get("services", "h2")
    # Its port changes mode: judged, refused (h1 holds it).
    to_ingress = evolve(h2, spec__endpoint_spec=EndpointSpec(ports=[PortConfig(target_port=80, published_port=9000)]),
                        endpoint=Endpoint())
    assert not f.tx(Update("services", to_ingress)).ok
    assert f.tx(Update("services", evolve(h2, spec__replicas=5))).ok  # same claims


def test_claims_survive_a_snapshot_restore() -> None:
    s = MemoryStore()
    f = Feeder(s)
    f.tx(Create("services", svc("web", 8080)), Create("networks", _ingress("ingress")))
    other = MemoryStore()
    other.restore(s.snapshot())
    g = Feeder(other, start=other.index)
    r = g.tx(Create("services", svc("api", 8080)))
    assert not r.ok and isinstance(r.error, ClaimConflict)
    r = g.tx(Create("networks", _ingress("mesh")))
    assert not r.ok and str(r.error) == ('networks/mesh: the ingress role is already used by network "ingress" '
                                         "(networks/ingress)")


def test_one_ingress_network() -> None:
    f = Feeder(MemoryStore())
    assert f.tx(Create("networks", _ingress("ingress"))).ok
    assert f.tx(Create("networks", Network(id="app", spec=NetworkSpec(name="app")))).ok
    assert not f.tx(Create("networks", _ingress("mesh"))).ok
    assert f.tx(Delete("networks", "ingress"), Create("networks", _ingress("mesh"))).ok


def _ingress(id: str) -> Network:
    return Network(id=id, spec=NetworkSpec(name=id, ingress=True))
