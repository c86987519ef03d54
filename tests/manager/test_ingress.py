"""Published ports and the ingress network on three real managers (Raft over
loopback, in one process, control API over HTTP): `orch init`'s cluster
has an `ingress` network; every node gets exactly one ingress sandbox task
with an address on it; a service publishing 8080:80 gets its ports, a VIP
on ingress and its tasks addresses there; a conflicting create is a 409
that writes nothing; and a new leader carries on from the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from api.objects import (
    INGRESS_ATTACHMENT,
    Node,
    NodeDescription,
    NodeState,
    NodeStatus,
    TaskState,
    evolve,
)
from manager.allocator import Allocator
from manager.bootstrap import create_cluster
from manager.process import ManagerOptions, ManagerProcess
from manager.raft.driver import RaftSettings
from manager.store import Create, Delete, Update
from manager.tx import commit
from pki import RootCA
from tests.harness.managers import free_port
from tests.harness.wait import until_async

GiB = 1 << 30
DESC = {"hostname": "", "os": "linux", "arch": "amd64", "nano_cpus": 4 * 10**9, "memory_bytes": 8 * GiB}


async def eventually(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    return await until_async(cond, timeout, what)


def sandboxes(m: ManagerProcess) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for t in m.store.view().list("tasks"):
        if t.attachment == INGRESS_ATTACHMENT:
            out.setdefault(t.node_id, []).append(t)
    return out


def one_sandbox_each(m: ManagerProcess, nodes: list[str], ingress_id: str) -> bool:
    got = sandboxes(m)
    return sorted(got) == sorted(nodes) and all(
        len(ts) == 1 and ts[0].status.state == TaskState.ASSIGNED and ts[0].service_id == ""
        and [a.network_id for a in ts[0].networks] == [ingress_id] and ts[0].networks[0].addresses
        for ts in got.values())


def from_store(m: ManagerProcess) -> dict[str, int]:
    v = m.store.view()
    pool = v.list("clusters")[0].default_addr_pool
    return Allocator.restore(pool, v.list("networks"), v.list("services"), v.list("tasks")).counts()


def service_spec(name: str, *ports: dict[str, Any], replicas: int = 3) -> dict[str, Any]:
    return {"name": name, "replicas": replicas, "task": {"container": {"image": "busybox@sha256:" + "0" * 64}},
            "endpoint_spec": {"ports": list(ports)}}


async def test_ingress_and_published_ports_across_a_leader_change(tmp_path: Path) -> None:
    members = {i + 1: f"127.0.0.1:{free_port()}" for i in range(3)}
    ms = [ManagerProcess(ManagerOptions(node_id=i, data_dir=str(tmp_path / f"m{i}"), listen_addr=addr,
                                        initial_cluster=members, settings=RaftSettings(tick_interval=0.05)))
          for i, addr in members.items()]
    running = list(ms)
    http = aiohttp.ClientSession()

    def leader() -> ManagerProcess | None:
        lead = [m for m in running if m.leadership is not None and m.leadership.leading]
        return lead[0] if len(lead) == 1 and lead[0].raft.is_leader else None

    async def post(m: ManagerProcess, path: str, body: Any) -> tuple[int, Any]:
        async with http.post(f"http://{m.opts.listen_addr}{path}", json=body) as r:
            return r.status, await r.json()

    async def get(m: ManagerProcess, path: str) -> Any:
        async with http.get(f"http://{m.opts.listen_addr}{path}") as r:
            assert r.status == 200, await r.text()
            return await r.json()

    try:
        for m in ms:
            await m.start()
        first = await eventually(leader, "a leader")
        # `orch init` on the first manager, then two more nodes (as joins would write them).
        await create_cluster(first.raft, first.store, cluster_id="c1", node_id="node1", raft_id=first.raft.id,
                             root=RootCA.create("c1"), advertise_addr=first.opts.listen_addr,
                             description={**DESC, "hostname": "h1"})
        n1 = first.store.view().get("nodes", "node1")
        await commit(first.raft, first.store, [
            Update("nodes", evolve(n1, status=NodeStatus(state=NodeState.READY, addr="127.0.0.1"))),
            *[Create("nodes", Node(id=f"node{i}", description=NodeDescription(**{**DESC, "hostname": f"h{i}"}),
                                   status=NodeStatus(state=NodeState.READY, addr=f"127.0.0.{i}")))
              for i in (2, 3)]])
        nodes = ["node1", "node2", "node3"]

        # init made `ingress`; the allocator gave it a subnet from the pool.
        ingress = await eventually(lambda: next((n for n in first.store.view().list("networks")
                                                 if n.spec.ingress and n.allocation), None), "ingress allocated")
        assert ingress.spec.name == "ingress" and not ingress.spec.attachable
        assert ingress.allocation.subnet == "10.0.0.0/24"
        assert [n["spec"]["name"] for n in await get(first, "/v1/networks")] == ["ingress"]
        await eventually(lambda: one_sandbox_each(first, nodes, ingress.id), "one ingress sandbox per node")

        # A service publishing 8080:80, created through a follower.
        follower = next(m for m in running if m is not first)
        st, web = await post(follower, "/v1/services", service_spec("web", {"target_port": 80,
                                                                             "published_port": 8080}))
        assert st == 201, web

        def ports_of(m: Any, sid: str) -> Any:
            s = m.store.view().get("services", sid)
            return s.endpoint.ports if s is not None else None

        def web_allocated() -> Any:
            view = first.store.view()
            s = view.get("services", web["id"])
            ts = [t for t in view.find("tasks", "service_id", web["id"]) if t.status.state == TaskState.ASSIGNED]
            # The follower answered once it applied the write; the leader's
            # store may apply it a moment later (seen under load in CI).
            return s if s is not None and s.endpoint.ports and len(ts) == 3 else None

        svc = await eventually(web_allocated, "web's ports, VIP and 3 assigned tasks")
        assert [(p.published_port, p.target_port, p.protocol, p.publish_mode) for p in svc.endpoint.ports] == [
            (8080, 80, "tcp", "ingress")]
        assert [v.network_id for v in svc.endpoint.virtual_ips] == [ingress.id]
        tasks = first.store.view().find("tasks", "service_id", web["id"])
        assert sorted(t.node_id for t in tasks) == nodes
        addrs = [t.networks[0].addresses[0] for t in tasks if t.networks[0].network_id == ingress.id]
        assert len(addrs) == 3
        body = await get(follower, "/v1/services/web")
        assert body["virtual_ips"][0]["network"] == "ingress"
        net = await get(first, "/v1/networks/ingress")
        per_node = {g["node"]: sorted(e["kind"] for e in g["endpoints"]) for g in net["nodes"]}
        assert per_node == {h: ["ingress-sandbox", "task"] for h in ("h1", "h2", "h3")}

        # A conflicting create: 409 naming web, nothing written.
        st, body = await post(follower, "/v1/services", service_spec("api", {"target_port": 81,
                                                                              "published_port": 8080}))
        assert st == 409 and 'published port 8080/tcp is already used by service "web"' in body["error"]["message"]
        assert [s.spec.name for s in first.store.view().list("services")] == ["web"]
        # A dynamic port, from the first leader's allocator.
        st, dyn = await post(first, "/v1/services", service_spec("dyn", {"target_port": 80}, replicas=1))
        assert st == 201
        got = await eventually(lambda: ports_of(first, dyn["id"]), "dyn's port")
        assert got[0].published_port == 30000

        # The leader goes; the next one rebuilds its allocator from the store.
        await first.stop()
        running.remove(first)
        second = await eventually(leader, "a new leader")
        st, api = await post(second, "/v1/services", service_spec("api", {"target_port": 80}, replicas=1))
        assert st == 201
        got = await eventually(lambda: ports_of(second, api["id"]), "api's port")
        assert got[0].published_port == 30001, "a port handed out twice"
        await eventually(lambda: second.orchestrator.allocator.counts() == from_store(second),
                         "the new allocator agrees with the store")
        assert one_sandbox_each(second, nodes, ingress.id)
        # A node removed: its sandbox goes, the others stay.
        await commit(second.raft, second.store, [Delete("nodes", "node3")])
        await eventually(lambda: one_sandbox_each(second, ["node1", "node2"], ingress.id), "node3's sandbox gone")
        await eventually(lambda: second.orchestrator.allocator.counts() == from_store(second), "addresses released")
    finally:
        await http.close()
        for m in running:
            await m.stop()
