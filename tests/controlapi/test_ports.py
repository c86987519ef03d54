"""Published ports and the ingress network through the control API, on a
real single-member Raft node and store: a taken port is a 409 naming its
service and writes nothing, racing creates cannot both win, and the ingress
network is one per cluster and stays while services publish over it."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient

from manager.controlapi.common import ManagerContext
from tests.controlapi.test_manager_provider import serve


def spec(name: str, *ports: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": name, "task": {"container": {"image": "busybox@sha256:" + "0" * 64}, **kw.pop("task", {})},
            "endpoint_spec": {"ports": list(ports), **kw.pop("endpoint", {})}, **kw}


def p(target: int, published: int = 0, **kw: Any) -> dict[str, Any]:
    return {"target_port": target, "published_port": published, **kw}


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    r = await client.post(path, json=body)
    return r.status, await r.json()


def names(m: ManagerContext) -> list[str]:
    return sorted(s.spec.name for s in m.store.view().list("services"))


async def test_a_taken_port_is_a_conflict_naming_the_service(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    # No ingress network yet: ingress-mode ports cannot be served.
    st, body = await post(client, "/v1/services", spec("web", p(80, 8080)))
    assert st == 409 and "no ingress network" in body["error"]["message"]
    st, _ = await post(client, "/v1/networks", {"name": "ingress", "ingress": True})
    assert st == 201
    st, web = await post(client, "/v1/services", spec("web", p(80, 8080)))
    assert st == 201 and web["spec"]["endpoint_spec"]["ports"][0]["published_port"] == 8080
    version = m.store.index
    for ports in ([p(80, 8080)], [p(80, 8080, publish_mode="host")], [p(81, 9, protocol="udp"), p(80, 8080)]):
        st, body = await post(client, "/v1/services", spec("api", *ports))
        assert st == 409, body
        err = body["error"]
        assert err["code"] == "conflict"
        assert 'published port 8080/tcp is already used by service "web"' in err["message"]
        assert err["message"].startswith(f"endpoint_spec.ports[{len(ports) - 1}]: ")
    assert names(m) == ["web"] and m.store.index == version  # nothing written
    # Another protocol is another port; host mode shares with host mode only.
    assert (await post(client, "/v1/services", spec("dns", p(53, 8080, protocol="udp"))))[0] == 201
    assert (await post(client, "/v1/services", spec("h1", p(80, 9000, publish_mode="host"))))[0] == 201
    assert (await post(client, "/v1/services", spec("h2", p(80, 9000, publish_mode="host"))))[0] == 201
    st, body = await post(client, "/v1/services", spec("i", p(80, 9000)))
    assert st == 409 and 'used by service "h1" in host mode' in body["error"]["message"]

    # An update to a taken port: refused, nothing changes.
    st, api_svc = await post(client, "/v1/services", spec("api"))
    assert st == 201
    st, body = await post(client, f"/v1/services/{api_svc['id']}/update", {"spec": spec("api", p(80, 8080))})
    assert st == 409 and 'service "web"' in body["error"]["message"]
    assert m.store.view().get("services", api_svc["id"]).meta.version == api_svc["meta"]["version"]
    # Once web gives the port up (same write), api may take it; tasks roll over.
    st, _ = await post(client, f"/v1/services/{web['id']}/update", {"spec": spec("web")})
    assert st == 200
    st, body = await post(client, f"/v1/services/{api_svc['id']}/update", {"spec": spec("api", p(80, 8080))})
    assert st == 200 and body["spec_version"] == api_svc["spec_version"] + 1


async def test_racing_creates_for_one_port_one_wins(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    assert (await post(client, "/v1/networks", {"name": "ingress", "ingress": True}))[0] == 201
    arrived = 0
    go = asyncio.Event()

    async def slow_registry(ref: str) -> str:
        # Every request has checked the ports against the store before any
        # of them writes: only the store's own check on apply can decide.
        nonlocal arrived
        arrived += 1
        if arrived == 6:
            go.set()
        await go.wait()
        return ref + "@sha256:" + "1" * 64

    m2 = ManagerContext(m.raft, m.store, resolve_image=slow_registry)
    racing = await serve(lambda: m2)
    try:
        bodies = [spec(f"s{i}", p(80, 7000)) for i in range(6)]
        for b in bodies:
            b["task"]["container"]["image"] = "busybox"
        results = await asyncio.gather(*[post(racing, "/v1/services", b) for b in bodies])
    finally:
        await racing.close()
    assert sorted(st for st, _ in results) == [201, 409, 409, 409, 409, 409], results
    (winner,) = names(m)
    for st, body in results:
        if st == 409:
            assert body["error"]["code"] == "conflict"
            assert f'published port 7000/tcp is already used by service "{winner}"' in body["error"]["message"]
            assert "(services/" in body["error"]["message"]  # decided by the store, on apply


async def test_the_ingress_network_rules(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    st, body = await post(client, "/v1/networks", {"name": "mesh", "ingress": True, "attachable": True})
    assert st == 400 and "cannot be attachable" in body["error"]["message"]
    st, ingress = await post(client, "/v1/networks", {"name": "ingress", "ingress": True})
    assert st == 201 and ingress["spec"]["ingress"] is True
    st, body = await post(client, "/v1/networks", {"name": "mesh", "ingress": True})
    assert st == 409 and "has an ingress network already (ingress)" in body["error"]["message"]
    assert (await post(client, "/v1/networks", {"name": "app"}))[0] == 201
    # Racing second ingress networks: the store keeps one.
    results = await asyncio.gather(*[post(client, "/v1/networks", {"name": f"m{i}", "ingress": True})
                                     for i in range(3)])
    assert {st for st, _ in results} == {409}
    assert [n.spec.name for n in m.store.view().list("networks") if n.spec.ingress] == ["ingress"]

    # Services join it by publishing, not with --network; dnsrr cannot publish through it.
    st, body = await post(client, "/v1/services", spec("x", task={"networks": ["ingress"]}))
    assert st == 400 and body["error"]["field"] == "task.networks[0]" and "publishing a port" in body["error"]["message"]
    st, body = await post(client, "/v1/services", spec("x", p(80, 8080), endpoint={"mode": "dnsrr"}))
    assert st == 400 and body["error"]["field"] == "endpoint_spec.ports[0]"
    st, x = await post(client, "/v1/services", spec("x", p(80, 8081, publish_mode="host"), endpoint={"mode": "dnsrr"}))
    assert st == 201

    st, web = await post(client, "/v1/services", spec("web", p(80, 8080)))
    assert st == 201
    st, api_ = await post(client, "/v1/services", spec("api", p(80)))
    assert st == 201
    r = await client.delete("/v1/networks/ingress")
    assert r.status == 409
    msg = (await r.json())["error"]["message"]
    assert "routing mesh of service(s) api, web, x" in msg and "--publish-rm" in msg
    for s in (web, api_, x):
        assert (await client.delete(f"/v1/services/{s['id']}")).status == 204
    assert (await client.delete("/v1/networks/ingress")).status == 204
    # Now one may be made again (as `docker network create --ingress`).
    assert (await post(client, "/v1/networks", {"name": "mesh", "ingress": True}))[0] == 201


async def test_service_json_names_the_networks_of_its_vips(api: tuple[TestClient, ManagerContext]) -> None:
    from api.objects import Endpoint, VirtualIP, evolve
    from manager.store import Update
    from manager.tx import commit

    client, m = api
    st, net = await post(client, "/v1/networks", {"name": "ingress", "ingress": True})
    st, web = await post(client, "/v1/services", spec("web", p(80, 8080)))
    s = m.store.view().get("services", web["id"])
    await commit(m.raft, m.store, [Update("services", evolve(s, endpoint=Endpoint(
        spec=s.spec.endpoint_spec, ports=s.spec.endpoint_spec.ports,
        virtual_ips=(VirtualIP(network_id=net["id"], addr="10.0.0.2/24"),))))])
    body = await (await client.get("/v1/services/web")).json()
    assert body["virtual_ips"] == [{"network_id": net["id"], "network": "ingress", "addr": "10.0.0.2/24"}]
    assert body["endpoint"]["ports"] == [{"name": "", "protocol": "tcp", "target_port": 80, "published_port": 8080,
                                          "publish_mode": "ingress"}]


async def test_the_clusters_own_ports_cannot_be_published(api: tuple[TestClient, ManagerContext]) -> None:
    from api.objects import ManagerStatus, Node, NodeDescription, NodeRole, NodeSpec
    from manager import store as store_ops
    from manager.tx import commit

    client, m = api
    assert (await post(client, "/v1/networks", {"name": "ingress", "ingress": True}))[0] == 201
    await commit(m.raft, m.store, [store_ops.Create("nodes", Node(
        id="mgr1", spec=NodeSpec(role=NodeRole.MANAGER), description=NodeDescription(hostname="m1"),
        manager_status=ManagerStatus(raft_id=1, addr="10.0.0.1:4242")))])
    version = m.store.index
    st, body = await post(client, "/v1/services", spec("vx", p(80, 4789, protocol="udp")))
    assert st == 409 and "4789/udp is the overlay networks' VXLAN port" in body["error"]["message"], body
    st, body = await post(client, "/v1/services", spec("mg", p(80, 4242, publish_mode="host")))
    assert st == 409 and "4242/tcp is the manager port of m1" in body["error"]["message"], body
    assert names(m) == [] and m.store.index == version
    # The same numbers with the other protocol are free.
    assert (await post(client, "/v1/services", spec("ok", p(80, 4789), p(53, 4242, protocol="udp"))))[0] == 201
