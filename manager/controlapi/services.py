"""Control API: services and tasks.

A service write is one store transaction. Changing the task template or
the published ports bumps `spec_version` (the orchestrator then rolls tasks
over to it, following update_config: as Swarm, a task listens on the ports
and networks of the spec it was made from) and keeps the previous spec for
`rollback`; changing only replicas or other service-level fields does not
restart anything.

Published ports: a port another service holds (any ingress-mode port, or a
host-mode one held in ingress mode) is refused with 409 naming that service.
The handler checks against what it reads; the store checks again when the
write is applied (`manager.store.tables` claims), so of two requests racing
for one port exactly one wins and the other writes nothing. A spec change
drops the ports it no longer asks for from the service's endpoint in the
same write; the allocator fills in new ones.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from api import codec
from api.errors import ValidationError
from api.objects import (
    VXLAN_PORT,
    EndpointMode,
    Meta,
    PublishMode,
    Service,
    ServiceSpec,
    TaskState,
    UpdateState,
    UpdateStatus,
    depends_on_problems,
    evolve,
    port_conflict,
    trim_endpoint,
)
from manager import store as store_ops
from manager.store import MemoryStore
from scheduler.constraints import ConstraintError, parse_constraint

from .common import Route, barrier, commit, json_body, manager, resolve
from .errors import HTTPError, bad_request, conflict, http_error, json_response


def parse_spec(body: Any) -> ServiceSpec:
    try:
        spec = codec.from_json(ServiceSpec, body, what="service")
    except ValidationError as e:
        raise http_error(e) from None
    for i, c in enumerate(spec.task.placement.constraints):
        where = f"task.placement.constraints[{i}]"
        try:
            parse_constraint(c, where)
        except ConstraintError as e:
            raise bad_request(str(e), field=where) from None
    for i, p in enumerate(spec.task.placement.preferences):
        if not p.startswith("node.labels.") or len(p) <= len("node.labels."):
            where = f"task.placement.preferences[{i}]"
            raise bad_request(f"{where}: spread over node.labels.NAME (got {p!r})", field=where)
    return spec


def _counts(store: MemoryStore, svc: Service) -> dict[str, int]:
    running = desired = completed = 0
    for t in store.view().find("tasks", "service_id", svc.id):
        if t.desired_state <= TaskState.RUNNING:
            desired += 1
            if t.status.state == TaskState.RUNNING:
                running += 1
        if t.status.state == TaskState.COMPLETE:
            completed += 1
    return {"running": running, "desired": desired, "completed": completed}


def service_json(store: MemoryStore, svc: Service) -> dict[str, Any]:
    """The service as stored, its task counts, and its virtual IPs with
    their networks' names (what `service inspect` shows)."""
    view = store.view()
    vips = []
    for v in svc.endpoint.virtual_ips:
        net = view.get("networks", v.network_id)
        vips.append({"network_id": v.network_id, "network": net.spec.name if net is not None else v.network_id,
                     "addr": v.addr})
    return {**codec.to_json(svc), "replicas_status": _counts(store, svc), "virtual_ips": vips}


async def list_services(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    return json_response([service_json(store, s) for s in store.view().list("services")])


async def get_service(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    return json_response(service_json(store, resolve(store, "services", request.match_info["ref"])))


def _check_refs(store: MemoryStore, spec: ServiceSpec) -> None:
    view = store.view()
    c = spec.task.container
    for i, r in enumerate(c.secrets):
        if view.get("secrets", r.secret_id) is None:
            where = f"task.container.secrets[{i}]"
            raise bad_request(f"{where}: no secret with id {r.secret_id} ({r.secret_name})", field=where)
    for i, r in enumerate(c.configs):
        if view.get("configs", r.config_id) is None:
            where = f"task.container.configs[{i}]"
            raise bad_request(f"{where}: no config with id {r.config_id} ({r.config_name})", field=where)


def check_depends_on(specs: Mapping[str, ServiceSpec], existing: Mapping[str, ServiceSpec]) -> None:
    """400 naming the field of the first bad dependency among `specs` (name
    -> spec, the services one transaction writes: one for a create or an
    update, a whole stack for a deploy), checked against the services stored
    besides them (`existing`, name -> spec; see `api.objects.depends_on_problems`):
    a dependency on itself or on an unknown name, or a cycle. With several
    specs the message says which service it is about."""
    problems = depends_on_problems(specs, existing)
    if not problems:
        return
    p = problems[0]
    who = f'service "{p.service}": ' if len(specs) > 1 else ""
    raise HTTPError(400, "invalid_argument", f"{who}{p.field}: {p.message}", field=p.field, service=p.service)


def stored_specs(store: MemoryStore) -> dict[str, ServiceSpec]:
    """Every stored service's spec by name (`existing` of `check_depends_on`)."""
    return {s.spec.name: s.spec for s in store.view().list("services")}


def _subnets_overlap(a: Any, b: Any) -> bool:
    import ipaddress

    def subnet(n: Any) -> Any:
        if n.allocation is not None:
            return ipaddress.IPv4Network(n.allocation.subnet)
        return ipaddress.IPv4Network(n.spec.ipam[0].subnet) if n.spec.ipam else None

    sa, sb = subnet(a), subnet(b)
    return sa is not None and sb is not None and sa.overlaps(sb)


def _resolve_networks(store: MemoryStore, spec: ServiceSpec) -> ServiceSpec:
    """The spec with each network given by name or id prefix replaced by
    its id (the store keeps ids, so a network can be found after renames);
    an unknown network is an error naming the field."""
    out = []
    seen: set[str] = set()
    for i, att in enumerate(spec.task.networks):
        where = f"task.networks[{i}]"
        try:
            net = resolve(store, "networks", att.target)
        except HTTPError as e:
            raise bad_request(f"{where}: {e.message}", field=where) from None
        if net.spec.ingress:
            raise bad_request(f"{where}: network {net.spec.name} is the ingress network: services join it by "
                              "publishing a port (--publish), not with --network", field=where)
        if net.id in seen:
            raise bad_request(f"{where}: network {net.spec.name} is given twice", field=where)
        for other in seen:
            o = store.view().get("networks", other)
            if o is not None and _subnets_overlap(o, net):
                raise bad_request(f"{where}: network {net.spec.name} and network {o.spec.name} have overlapping "
                                  "subnets: a task on both could not route to either", field=where)
        seen.add(net.id)
        out.append(evolve(att, target=net.id))
    if not out:
        return spec
    return evolve(spec, task=evolve(spec.task, networks=tuple(out)))


def _check_ports(store: MemoryStore, svc: Service) -> None:
    """The published ports `svc` (as it is about to be written) would hold
    are free, and they can be served (over the ingress network)."""
    view = store.view()
    spec = svc.spec.endpoint_spec
    reserved = _reserved_ports(view)
    for i, p in enumerate(spec.ports):
        why = reserved.get((str(p.protocol), p.published_port))
        if why is not None:
            where = f"endpoint_spec.ports[{i}]"
            raise conflict(f"{where}: port {p.published_port}/{p.protocol} is {why} on the nodes; publishing it "
                           "would take it over on every node: choose another")
        if p.publish_mode == PublishMode.INGRESS and spec.mode == EndpointMode.DNSRR:
            where = f"endpoint_spec.ports[{i}]"
            raise bad_request(f"{where}: port {p.target_port}/{p.protocol} is published in ingress mode, which "
                              "balances over the service's virtual IP: use endpoint mode vip, or publish it "
                              "with mode=host", field=where)
    if spec.needs_ingress and not any(n.spec.ingress for n in view.list("networks")):
        raise conflict("endpoint_spec.ports: the service publishes ports but the cluster has no ingress "
                       "network: create one (`orch network create --ingress ingress`)")
    taken = port_conflict(svc, view.list("services"))
    if taken is not None:
        proto, port, other, other_mode = taken
        at = next((i for i, p in enumerate(spec.ports) if (p.protocol, p.published_port) == (proto, port)), None)
        where = f"endpoint_spec.ports[{at}]" if at is not None else "endpoint_spec.ports"
        how = "" if other_mode == PublishMode.INGRESS else " in host mode"
        raise conflict(f'{where}: published port {port}/{proto} is already used by service "{other.spec.name}"'
                       f"{how}; publish another port, or leave the published port out to get a free one")


def _reserved_ports(view: Any) -> dict[tuple[str, int], str]:
    """Ports the cluster itself uses on the nodes' addresses: VXLAN's, and
    each manager's (Raft, control API and agent sessions)."""
    out = {("udp", VXLAN_PORT): "the overlay networks' VXLAN port"}
    for n in view.list("nodes"):
        addr = n.manager_status.addr if n.manager_status is not None else ""
        port = addr.rsplit(":", 1)[-1] if ":" in addr else ""
        if port.isdigit():
            out[("tcp", int(port))] = f"the manager port of {n.description.hostname or n.id}"
    return out


async def _pin_image(request: web.Request, spec: ServiceSpec) -> tuple[ServiceSpec, str]:
    """The spec with its image pinned to the registry's current digest, so
    every node runs the same bits; if the registry cannot be asked, the
    reference stays as given and a warning says so (as Swarm does)."""
    resolve_image = manager(request).resolve_image
    image = spec.task.container.image
    if resolve_image is None or "@" in image:
        return spec, ""
    try:
        pinned = await resolve_image(image)
    except Exception as e:  # registry unreachable, unknown tag, auth...
        return spec, f"image {image} could not be resolved to a digest ({e}); nodes pull the tag as it is then"
    return evolve(spec, task=evolve(spec.task, container=evolve(spec.task.container, image=pinned))), ""


async def create_service(request: web.Request) -> web.Response:
    spec = parse_spec(await json_body(request))
    store = (await barrier(request)).store
    _check_refs(store, spec)
    if spec.depends_on:
        check_depends_on({spec.name: spec}, stored_specs(store))
    spec = _resolve_networks(store, spec)
    now = time.time()
    svc = Service(id=codec.new_id(), meta=Meta(created_at=now, updated_at=now), spec=spec, spec_version=1)
    _check_ports(store, svc)  # before asking the registry: a taken port fails fast
    spec, warning = await _pin_image(request, spec)
    # The store judges the ports again when the write is applied: a service
    # created meanwhile may have taken one (then this is a 409 too).
    result = await commit(request, [store_ops.Create("services", evolve(svc, spec=spec))])
    out = service_json(store, result.events[0].obj)
    if warning:
        out["warnings"] = [warning]
    return json_response(out, 201)


async def update_service(request: web.Request) -> web.Response:
    body = await json_body(request)
    if "spec" not in body:
        raise bad_request("spec: the service's new spec is required", field="spec")
    spec = parse_spec(body["spec"])
    store = (await barrier(request)).store
    svc = resolve(store, "services", request.match_info["ref"])
    _check_refs(store, spec)
    spec = _resolve_networks(store, spec)
    version = body.get("version")
    if version is not None and version != svc.meta.version:
        raise conflict(f"service {svc.spec.name} changed since version {version} (now {svc.meta.version}); "
                       "inspect it again")
    if spec.name != svc.spec.name:
        raise bad_request("spec.name: a service cannot be renamed", field="spec.name")
    if spec.mode != svc.spec.mode:
        raise bad_request("spec.mode: the mode of a service cannot change", field="spec.mode")
    if spec.depends_on:
        check_depends_on({spec.name: spec}, stored_specs(store))
    warning = ""
    if spec.task.container.image != svc.spec.task.container.image:
        spec, warning = await _pin_image(request, spec)
    changes: dict[str, Any] = {"spec": spec, "endpoint": trim_endpoint(spec.endpoint_spec, svc.endpoint)}
    if spec.task != svc.spec.task or spec.endpoint_spec.ports != svc.spec.endpoint_spec.ports:
        changes.update(previous_spec=svc.spec, spec_version=svc.spec_version + 1,
                       update_status=UpdateStatus(state=UpdateState.UPDATING, started_at=time.time(),
                                                  message="update in progress"))
    new = evolve(svc, **changes)
    _check_ports(store, new)
    result = await commit(request, [store_ops.Update("services", new)])
    out = service_json(store, result.events[0].obj)
    if warning:
        out["warnings"] = [warning]
    return json_response(out)


async def rollback_service(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    svc = resolve(store, "services", request.match_info["ref"])
    if svc.previous_spec is None:
        raise conflict(f"service {svc.spec.name} has no previous spec to roll back to")
    new = evolve(svc, spec=svc.previous_spec, previous_spec=svc.spec, spec_version=svc.spec_version + 1,
                 endpoint=trim_endpoint(svc.previous_spec.endpoint_spec, svc.endpoint),
                 update_status=UpdateStatus(state=UpdateState.ROLLBACK_STARTED, started_at=time.time(),
                                            message="manually requested rollback"))
    _check_ports(store, new)
    result = await commit(request, [store_ops.Update("services", new)])
    return json_response(service_json(store, result.events[0].obj))


async def delete_service(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    svc = resolve(store, "services", request.match_info["ref"])
    # Its tasks are shut down and reaped by the orchestrator.
    await commit(request, [store_ops.Delete("services", svc.id)])
    return web.Response(status=204)


async def list_tasks(request: web.Request) -> web.Response:
    store = (await barrier(request)).store
    view = store.view()
    q = request.query
    if "service" in q:
        svc = resolve(store, "services", q["service"])
        tasks = view.find("tasks", "service_id", svc.id)
    elif "node" in q:
        tasks = view.find("tasks", "node_id", q["node"])
    else:
        tasks = view.list("tasks")
    if q.get("desired") == "running":
        tasks = [t for t in tasks if t.desired_state <= TaskState.RUNNING]
    return json_response([codec.to_json(t) for t in tasks])


ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/services", list_services),
    Route("POST", "/v1/services", create_service),
    Route("GET", "/v1/services/{ref}", get_service),
    Route("POST", "/v1/services/{ref}/update", update_service),
    Route("POST", "/v1/services/{ref}/rollback", rollback_service),
    Route("DELETE", "/v1/services/{ref}", delete_service),
    Route("GET", "/v1/tasks", list_tasks),
)
