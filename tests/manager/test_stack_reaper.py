"""Stacks on a real manager process with its leader-only components (the
orchestrator with its allocator, the stack reaper), agents simulated by
a loop that reports tasks running and stopped as nodes would: a deploy
over HTTP places every task; a secret whose content changes rolls the
services onto a new version; `stack rm` removes the services at once and
the stack's networks, secrets and the Stack object once their tasks have
stopped, without anyone calling again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from api.objects import Node, NodeDescription, NodeState, NodeStatus, TaskState, evolve
from manager.bootstrap import create_cluster
from manager.process import ManagerOptions, ManagerProcess
from manager.raft.driver import RaftSettings
from manager.store import Create, Update
from manager.tx import TxFailed, commit
from pki import RootCA
from tests.harness.managers import free_port
from tests.manager.stackutil import PIN, request
from tests.manager.test_ingress import DESC, eventually

TEXT = """
services:
  web:
    image: busybox{pin}
    ports: ["8080:80"]
    secrets: [pw]
    deploy: {{replicas: 2, update_config: {{parallelism: 0, monitor: 0s}}}}
  api:
    image: busybox{pin}
    networks: [back]
    secrets: [pw]
networks:
  back: {{}}
secrets:
  pw: {{file: ./pw.txt}}
"""


async def agents(m: ManagerProcess) -> None:
    """Every node: start what is assigned to it, stop what is wanted stopped."""
    while True:
        ops = []
        for t in m.store.view().list("tasks"):
            if not t.node_id or t.attachment:
                continue
            if t.desired_state <= TaskState.RUNNING and TaskState.ASSIGNED <= t.status.state < TaskState.RUNNING:
                ops.append(Update("tasks", evolve(t, status=evolve(t.status, state=TaskState.RUNNING))))
            elif t.desired_state > TaskState.RUNNING and not t.status.state.terminal:
                ops.append(Update("tasks", evolve(t, status=evolve(t.status, state=TaskState.SHUTDOWN))))
        if ops:
            try:
                await commit(m.raft, m.store, ops)
            except TxFailed:
                pass
        await asyncio.sleep(0.05)


async def test_deploy_roll_and_remove_with_the_leaders_components(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    m = ManagerProcess(ManagerOptions(node_id=1, data_dir=str(tmp_path / "m1"), listen_addr=addr,
                                      initial_cluster={1: addr}, settings=RaftSettings(tick_interval=0.05),
                                      secrets_key=b"k" * 32))
    http = aiohttp.ClientSession()
    sim: asyncio.Task[None] | None = None

    async def call(method: str, path: str, body: Any = None) -> Any:
        async with http.request(method, f"http://{addr}{path}", json=body) as r:
            out = await r.json()
            assert r.status == 200, out
            return out

    def tasks(name: str) -> list[Any]:
        view = m.store.view()
        svc = view.get_by_name("services", name)
        return [t for t in view.find("tasks", "service_id", svc.id)] if svc is not None else []

    def running(name: str, n: int, version: int) -> bool:
        ts = [t for t in tasks(name) if t.desired_state == TaskState.RUNNING]
        return len(ts) == n and all(t.status.state == TaskState.RUNNING and t.spec_version == version for t in ts)

    try:
        await m.start()
        await eventually(lambda: m.leadership is not None and m.leadership.leading and m.raft.is_leader, "leader")
        await create_cluster(m.raft, m.store, cluster_id="c1", node_id="node1", raft_id=1, root=RootCA.create("c1"),
                             advertise_addr=addr, description={**DESC, "hostname": "h1"})
        n1 = m.store.view().get("nodes", "node1")
        await commit(m.raft, m.store, [
            Update("nodes", evolve(n1, status=NodeStatus(state=NodeState.READY, addr="127.0.0.1"))),
            Create("nodes", Node(id="node2", description=NodeDescription(**{**DESC, "hostname": "h2"}),
                                 status=NodeStatus(state=NodeState.READY, addr="127.0.0.2")))])
        sim = asyncio.create_task(agents(m))

        def deploy_body(pw: bytes) -> Any:
            return request(TEXT.format(pin=PIN), files={"pw.txt": pw}, stack="app").model_dump(mode="json")

        out = await call("POST", "/v1/stacks/app/deploy", deploy_body(b"one"))
        assert out["stack"]["version"] == 1
        await eventually(lambda: running("app_web", 2, 1) and running("app_api", 1, 1), "every task running")
        (v1,) = m.store.view().list("secrets")

        # New content: a new version; web and api roll onto it.
        out = await call("POST", "/v1/stacks/app/deploy", deploy_body(b"two"))
        v2 = next(e for e in out["plan"]["entries"] if e["kind"] == "secret")
        await eventually(lambda: running("app_web", 2, 2) and running("app_api", 1, 2), "the services rolled")
        for t in tasks("app_web") + tasks("app_api"):
            if t.desired_state == TaskState.RUNNING:
                assert t.spec.container.secrets[0].secret_id == v2["id"]
        # v1: no task uses it any more, but a rollback would: it stays in the stack's garbage.
        assert m.store.view().get("secrets", v1.id) is not None
        assert [g.id for g in m.store.view().get_by_name("stacks", "app").garbage] == [v1.id]

        # stack rm: services at once; networks and the secret once the tasks stopped (the reaper).
        out = await call("DELETE", "/v1/stacks/app")
        assert out["removing"] and sorted(out["services"]) == ["app_api", "app_web"]
        assert [s.spec.name for s in m.store.view().list("services")] == []

        def all_gone() -> bool:
            view = m.store.view()
            return (view.get_by_name("stacks", "app") is None and not view.list("secrets")
                    and [n.spec.name for n in view.list("networks")] == ["ingress"]
                    and not [t for t in view.list("tasks") if t.service_id])
        await eventually(all_gone, "the stack, its networks, secrets and tasks gone", timeout=20)
        assert m.stack_reaper.removed >= 3  # back, default, a secret version
    finally:
        if sim is not None:
            sim.cancel()
        await http.close()
        await m.stop()
