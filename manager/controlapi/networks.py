"""Control API: overlay networks.

A network is written by the handler without its allocation; the leader's
allocator stage gives it a VNI and a subnet in its next pass (tasks on it
wait NEW until then). The handler still checks, against the store, that the
allocation will be possible, so `orch network create` fails at once with the
reason (a VNI taken, the pool exhausted) instead of leaving a network that
never gets one. A user's subnet may overlap other networks' (each is
isolated) but not the host's routes or the nodes' own addresses: containers
would lose the route to them.

The ingress network (the routing mesh's, made at `orch init`) is one per
cluster: another can be created only when none exists (the store refuses a
second even to racing requests), and it cannot be removed while a service
publishes a port. The nodes' ingress sandbox tasks on it are
the orchestrator's: they go with the network and do not keep it in use.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from aiohttp import web

from api import codec
from api.errors import ValidationError
from api.objects import INGRESS_ATTACHMENT, Meta, Network, NetworkSpec, Task, TaskState
from manager import store as store_ops
from manager.allocator import AllocationError, Allocator
from manager.allocator.routes import host_routes, overlapping_route
from manager.clusterinfo import cluster_of
from manager.store import MemoryStore

from .common import Route, barrier, commit, json_body, resolve
from .errors import bad_request, conflict, http_error, json_response


def network_users(store: MemoryStore, network_id: str) -> tuple[list[str], list[str], list[str]]:
    """(names of services whose tasks go on the network, plain containers on
    it as "NAME on NODE", ids of service tasks that still hold an address on it)."""
    view = store.view()
    services = sorted(s.spec.name for s in view.list("services")
                      if any(a.target == network_id for a in s.spec.task.networks))
    containers, tasks = [], []
    for t in view.find("tasks", "network", network_id):
        if t.attachment == INGRESS_ATTACHMENT:
            continue  # the orchestrator removes them with the network
        if t.attachment:
            node = view.get("nodes", t.node_id)
            containers.append(f"{t.attachment} on {node.description.hostname if node else t.node_id}")
        else:
            tasks.append(t.id)
    return services, sorted(containers), sorted(tasks)


def ingress_users(store: MemoryStore) -> list[str]:
    """Names of the services publishing ports (their tasks are on the
    ingress network)."""
    return sorted(s.spec.name for s in store.view().list("services") if s.spec.endpoint_spec.needs_ingress)


def _endpoint_kind(t: Task) -> str:
    if t.attachment == INGRESS_ATTACHMENT:
        return "ingress-sandbox"
    return "container" if t.attachment else "task"


def endpoints(store: MemoryStore, net: Network) -> list[dict[str, Any]]:
    """Who is on the network: each task's address and node, each service's VIP."""
    view = store.view()
    names = {s.id: s.spec.name for s in view.list("services")}
    out: list[dict[str, Any]] = []
    for s in view.list("services"):
        for v in s.endpoint.virtual_ips:
            if v.network_id == net.id:
                out.append({"kind": "vip", "service": s.spec.name, "address": v.addr})
    for t in view.find("tasks", "network", net.id):
        for a in t.networks:
            if a.network_id == net.id and t.desired_state <= TaskState.RUNNING:
                node = view.get("nodes", t.node_id) if t.node_id else None
                kind = _endpoint_kind(t)
                if kind == "task":
                    svc = names.get(t.service_id, t.service_id[:12])
                    name = f"{svc}.{t.slot}" if t.slot else f"{svc}.{t.node_id[:12]}"
                else:
                    name = t.attachment
                out.append({"kind": kind, "task": t.id, "name": name,
                            **({"container": t.attachment} if kind == "container" else {}),
                            "service": names.get(t.service_id, t.service_id),
                            "slot": t.slot, "node": node.description.hostname if node else t.node_id,
                            "node_id": t.node_id, "address": a.addresses[0] if a.addresses else "",
                            "aliases": list(a.aliases), "state": t.status.state.name.lower()})
    return out


def by_node(eps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task endpoints grouped per node (VIPs are on no node; tasks not
    placed yet are under node ""), ordered by node name."""
    groups: dict[str, dict[str, Any]] = {}
    for e in eps:
        if e["kind"] == "vip":
            continue
        g = groups.setdefault(e["node_id"], {"node_id": e["node_id"], "node": e["node"], "endpoints": []})
        g["endpoints"].append({k: e[k] for k in ("kind", "name", "task", "service", "address", "state")})
    for g in groups.values():
        g["endpoints"].sort(key=lambda e: (e["kind"] != "ingress-sandbox", e["name"], e["task"]))
    return sorted(groups.values(), key=lambda g: (g["node"], g["node_id"]))


EGRESS_SUBNET = ipaddress.IPv4Network("172.18.0.0/16")
"""The nodes' egress bridges' range (overlay_net's default): containers route out through it."""


def check_subnet(store: MemoryStore, spec: NetworkSpec) -> None:
    if not spec.ipam:
        return
    subnet = ipaddress.IPv4Network(spec.ipam[0].subnet)
    if subnet.overlaps(EGRESS_SUBNET):
        raise bad_request(f"ipam[0].subnet: {subnet} overlaps {EGRESS_SUBNET}, the nodes' egress range; "
                          "choose another subnet", field="ipam.0.subnet")
    r = overlapping_route(subnet, host_routes())
    if r is not None:
        raise bad_request(f"ipam[0].subnet: {subnet} overlaps the host's route {r}: containers on the network "
                          "could not reach it; choose another subnet", field="ipam.0.subnet")
    for n in store.view().list("nodes"):
        host = n.status.addr.rsplit(":", 1)[0].strip("[]") if n.status.addr else ""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if ip in subnet:
            raise bad_request(f"ipam[0].subnet: {subnet} contains the address {ip} of node "
                              f"{n.description.hostname or n.id}; choose another subnet", field="ipam.0.subnet")


def check_allocatable(store: MemoryStore, net: Network) -> None:
    view = store.view()
    c = cluster_of(store)
    trial = Allocator.restore(c.default_addr_pool if c else None, view.list("networks"), (), ())
    try:
        for pending in view.list("networks"):  # created, not yet allocated: their fixed VNIs are taken
            fixed = pending.spec.options.get("vni")
            if pending.allocation is None and fixed:
                trial.vnis.reserve(int(fixed))
        trial.allocate_network(net)
    except AllocationError as e:
        raise bad_request(str(e), field=e.field or None) from None


async def list_networks(request: web.Request) -> web.Response:
    m = await barrier(request)
    return json_response([codec.to_json(n) for n in m.store.view().list("networks")])


async def get_network(request: web.Request) -> web.Response:
    m = await barrier(request)
    net = resolve(m.store, "networks", request.match_info["ref"])
    eps = endpoints(m.store, net)
    return json_response({**codec.to_json(net), "endpoints": eps, "nodes": by_node(eps)})


async def create_network(request: web.Request) -> web.Response:
    body = await json_body(request)
    try:
        spec = codec.from_json(NetworkSpec, body, what="network")
    except ValidationError as e:
        raise http_error(e) from None
    store = (await barrier(request)).store
    if store.view().get_by_name("networks", spec.name) is not None:
        raise conflict(f"a network named {spec.name} exists already")
    if spec.ingress:
        have = next((n for n in store.view().list("networks") if n.spec.ingress), None)
        if have is not None:
            raise conflict(f"the cluster has an ingress network already ({have.spec.name}); there is one per "
                           f"cluster: remove it first (`orch network rm {have.spec.name}`) to replace it")
    check_subnet(store, spec)
    now = time.time()
    net = Network(id=codec.new_id(), meta=Meta(created_at=now, updated_at=now), spec=spec)
    check_allocatable(store, net)
    result = await commit(request, [store_ops.Create("networks", net)])
    return json_response(codec.to_json(result.events[0].obj), 201)


async def delete_network(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    net = resolve(store, "networks", request.match_info["ref"])
    if net.spec.ingress:
        publishing = ingress_users(store)
        if publishing:
            raise conflict(f"network {net.spec.name} is the routing mesh of service(s) {', '.join(publishing)}, "
                           "which publish ports: remove them or their ports "
                           "(`orch service update --publish-rm`) first")
    services, containers, tasks = network_users(store, net.id)
    if services:
        raise conflict(f"network {net.spec.name} is in use by service(s) {', '.join(services)}: "
                       "remove them or `orch service update --network-rm` first")
    if containers:
        raise conflict(f"network {net.spec.name} is in use by container(s) {', '.join(containers)}: "
                       "remove them first")
    if tasks:
        raise conflict(f"network {net.spec.name} is still held by {len(tasks)} task(s) that are shutting down "
                       f"({', '.join(tasks[:3])}{'...' if len(tasks) > 3 else ''}); retry in a moment")
    await commit(request, [store_ops.Delete("networks", net.id, expect_version=net.meta.version)])
    return web.Response(status=204)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/networks", list_networks),
    Route("POST", "/v1/networks", create_network),
    Route("GET", "/v1/networks/{ref}", get_network),
    Route("DELETE", "/v1/networks/{ref}", delete_network),
)
