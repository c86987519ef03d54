"""The allocator over api objects: networks, task addresses, service VIPs;
with hypothesis, random create/scale/update/rm/leader-change sequences never
hand an address out twice and never leak one."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.objects import (
    AddressPoolSpec,
    ContainerSpec,
    EndpointMode,
    EndpointSpec,
    Network,
    NetworkSpec,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
)
from manager.allocator import AllocationError, Allocator, Pending


def net(nid: str, **spec: object) -> Network:
    return Network(id=nid, spec=NetworkSpec(name=nid, **spec))


def svc(sid: str, networks: tuple[str, ...], mode: EndpointMode = EndpointMode.VIP) -> Service:
    return Service(id=sid, spec=ServiceSpec(name=sid, task=TaskSpec(container=ContainerSpec(image="img"),
                                                                     networks=networks),
                                            endpoint_spec=EndpointSpec(mode=mode)))


def task(tid: str, s: Service) -> Task:
    return Task(id=tid, service_id=s.id, spec=s.spec.task)


def test_network_gets_vni_and_pool_subnet_or_its_own() -> None:
    a = Allocator(AddressPoolSpec(pools=("10.20.0.0/16",), subnet_size=24))
    n1 = a.allocate_network(net("n1"))
    n2 = a.allocate_network(net("n2", ipam=[{"subnet": "192.168.7.0/24", "gateway": "192.168.7.254"}]))
    n3 = a.allocate_network(net("n3", options={"vni": "77"}))
    assert n1.allocation and n1.allocation.subnet == "10.20.0.0/24" and n1.allocation.gateway == "10.20.0.1"
    assert n2.allocation and n2.allocation.subnet == "192.168.7.0/24" and n2.allocation.gateway == "192.168.7.254"
    assert n3.allocation and n3.allocation.vni == 77 and n3.allocation.subnet == "10.20.1.0/24"
    assert len({n1.allocation.vni, n2.allocation.vni, 77}) == 3
    with pytest.raises(AllocationError, match="options.vni: VXLAN id 77 is already used"):
        a.allocate_network(net("n4", options={"vni": "77"}))
    assert a.allocate_network(n1) is n1, "allocating an allocated network changes nothing"


def test_task_addresses_all_or_nothing_and_pending_reasons() -> None:
    a = Allocator()
    small = a.allocate_network(net("small", ipam=[{"subnet": "10.1.0.0/30"}]))  # one usable address
    big = a.allocate_network(net("big"))
    nets = {n.id: n for n in (small, big)}
    s = svc("s", ("big", "small"))
    t1 = a.allocate_task(task("t1", s), nets)
    assert isinstance(t1, Task)
    assert [x.network_id for x in t1.networks] == ["big", "small"]
    assert t1.networks[1].addresses == ("10.1.0.2/30",)
    before = a.counts()
    t2 = a.allocate_task(task("t2", s), nets)
    assert isinstance(t2, Pending) and "network small: " in t2.reason and "no free address" in t2.reason
    assert a.counts() == before, "a refused task holds nothing on the networks it did get"
    missing = a.allocate_task(task("t3", svc("x", ("nope",))), nets)
    assert isinstance(missing, Pending) and missing.reason == "network nope does not exist"
    unalloc = a.allocate_task(task("t4", svc("y", ("later",))), {**nets, "later": net("later")})
    assert isinstance(unalloc, Pending) and "not allocated yet" in unalloc.reason
    assert a.allocate_task(t1, nets) is t1
    a.release_task(t1)
    assert isinstance(a.allocate_task(task("t2", s), nets), Task)


def test_service_vips_follow_its_networks_and_mode() -> None:
    a = Allocator()
    nets = {n.id: a.allocate_network(net(n.id)) for n in (net("a"), net("b"))}
    s = a.allocate_service(svc("s", ("a",)), nets)
    assert isinstance(s, Service) and [v.network_id for v in s.endpoint.virtual_ips] == ["a"]
    assert a.allocate_service(s, nets) is s
    vip_a = s.endpoint.virtual_ips[0]
    s2 = a.allocate_service(s.model_copy(update={"spec": svc("s", ("a", "b")).spec}), nets)
    assert isinstance(s2, Service) and s2.endpoint.virtual_ips[0] == vip_a and len(s2.endpoint.virtual_ips) == 2
    s3 = a.allocate_service(s2.model_copy(update={"spec": svc("s", ("a", "b"), EndpointMode.DNSRR).spec}), nets)
    assert isinstance(s3, Service) and s3.endpoint.virtual_ips == ()
    assert a.counts()["addrs:a"] == 0 and a.counts()["addrs:b"] == 0


def test_restore_agrees_and_survives_a_duplicate_in_the_store() -> None:
    a = Allocator()
    n = a.allocate_network(net("n"))
    s = a.allocate_service(svc("s", ("n",)), {"n": n})
    assert isinstance(s, Service)
    ts = [a.allocate_task(task(f"t{i}", s), {"n": n}) for i in range(5)]
    assert all(isinstance(t, Task) for t in ts)
    b = Allocator.restore(None, [n], [s], ts)  # type: ignore[arg-type]
    assert b.counts() == a.counts()
    dup = ts[0].model_copy(update={"id": "dup"})  # only a bug could store this
    c = Allocator.restore(None, [n], [s], [*ts, dup])  # type: ignore[list-item]
    assert c.counts() == a.counts()


# -- the property: random operation sequences ------------------------------------------


@dataclass
class World:
    """A store stand-in: the objects that exist, as the leader would see them."""

    networks: dict[str, Network] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=itertools.count)

    def restore(self) -> Allocator:
        return Allocator.restore(POOL, self.networks.values(), self.services.values(), self.tasks.values())


POOL = AddressPoolSpec(pools=("10.50.0.0/22",), subnet_size=26)  # small, to hit exhaustion

ops = st.lists(st.tuples(st.sampled_from(["net", "usernet", "svc", "scale", "update", "rmsvc", "rmnet",
                                          "leader", "reap"]),
                         st.integers(0, 7), st.integers(0, 9)), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_no_address_twice_and_no_leak(seq: list[tuple[str, int, int]]) -> None:
    w = World()
    a = w.restore()
    initial = a.counts()

    def place(s: Service, n: int) -> None:
        for _ in range(n):
            t = a.allocate_task(task(f"t{next(w.ids)}", s), w.networks)
            if isinstance(t, Task):
                w.tasks[t.id] = t

    def remove_task(t: Task) -> None:
        del w.tasks[t.id]
        a.release_task(t)

    for op, x, y in seq:
        nets = sorted(w.networks)
        svcs = sorted(w.services)
        if op in ("net", "usernet"):
            nid = f"n{next(w.ids)}"
            spec = {"ipam": [{"subnet": f"192.168.{x}.0/28"}]} if op == "usernet" else {}
            try:
                w.networks[nid] = a.allocate_network(net(nid, **spec))
            except AllocationError:
                pass
        elif op == "svc" and nets:
            chosen = tuple(nets[i % len(nets)] for i in range(x % 3))
            s = a.allocate_service(svc(f"s{next(w.ids)}", tuple(dict.fromkeys(chosen)),
                                       EndpointMode.DNSRR if y % 4 == 0 else EndpointMode.VIP), w.networks)
            if isinstance(s, Service):
                w.services[s.id] = s
                place(s, y % 5)
        elif op == "scale" and svcs:
            s = w.services[svcs[x % len(svcs)]]
            mine = [t for t in w.tasks.values() if t.service_id == s.id]
            if y % 2:
                place(s, y % 4)
            else:
                for t in mine[: y % 4]:
                    remove_task(t)
        elif op == "update" and svcs and nets:
            s = w.services[svcs[x % len(svcs)]]
            new = s.model_copy(update={"spec": svc(s.id, (nets[y % len(nets)],)).spec})
            s2 = a.allocate_service(new, w.networks)
            if isinstance(s2, Service):
                w.services[s.id] = s2
                old = [t for t in w.tasks.values() if t.service_id == s.id]
                place(s2, len(old))
                for t in old:  # the rolling update retires the old tasks
                    remove_task(t)
        elif op == "rmsvc" and svcs:
            s = w.services.pop(svcs[x % len(svcs)])
            a.release_service(s)
            for t in [t for t in w.tasks.values() if t.service_id == s.id]:
                remove_task(t)
        elif op == "rmnet" and nets:
            nid = nets[x % len(nets)]
            in_use = any(att.target == nid for s in w.services.values() for att in s.spec.task.networks) or \
                any(att.network_id == nid for t in w.tasks.values() for att in t.networks)
            if not in_use:  # the control API refuses to remove a network in use
                a.release_network(w.networks.pop(nid))
        elif op == "leader":
            a = w.restore()
        elif op == "reap" and w.tasks:
            remove_task(sorted(w.tasks.values(), key=lambda t: t.id)[x % len(w.tasks)])

        # Invariant: no address held twice on a network; memory agrees with the store.
        held: Counter[tuple[str, str]] = Counter()
        for t in w.tasks.values():
            for att in t.networks:
                held.update((att.network_id, ad.split("/")[0]) for ad in att.addresses)
        for s in w.services.values():
            held.update((v.network_id, v.addr.split("/")[0]) for v in s.endpoint.virtual_ips)
        assert not [k for k, c in held.items() if c > 1]
        vnis = [n.allocation.vni for n in w.networks.values() if n.allocation]
        assert len(vnis) == len(set(vnis))
        assert a.counts() == w.restore().counts()

    for s in list(w.services.values()):
        a.release_service(s)
        del w.services[s.id]
    for t in list(w.tasks.values()):
        remove_task(t)
    for n in list(w.networks.values()):
        a.release_network(n)
    assert a.counts() == initial


def test_restore_in_any_order_keeps_pool_networks_that_a_user_subnet_overlaps() -> None:
    a = Allocator()
    pool_net = a.allocate_network(net("zz-pool"))
    user_net = a.allocate_network(net("aa-user", ipam=[{"subnet": "10.0.0.0/16"}]))
    assert pool_net.allocation and pool_net.allocation.subnet == "10.0.0.0/24"
    t = a.allocate_task(task("t1", svc("s", ("zz-pool",))), {"zz-pool": pool_net})
    assert isinstance(t, Task)
    for order in ([pool_net, user_net], [user_net, pool_net]):
        b = Allocator.restore(None, order, [], [t])
        assert b.counts() == a.counts(), order
        fresh = b.allocate_network(net("dd-new"))
        assert fresh.allocation and fresh.allocation.vni not in (pool_net.allocation.vni, user_net.allocation.vni)
        assert isinstance(b.allocate_task(task("t2", svc("s", ("zz-pool",))), {"zz-pool": pool_net}), Task)
