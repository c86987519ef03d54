"""The control routes reach the manager through the provider they are given,
as on the node daemon's local socket: with no manager they answer 503
`not_manager`, with one they serve its real Raft node and store; a Raft
timeout is 504 on the routes that were the cluster's and the node's alike."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from manager.controlapi.common import NOT_MANAGER, ManagerContext, ManagerOf
from manager.controlapi.errors import error_middleware
from manager.controlapi.server import add_routes
from manager.raft.driver import RaftNode, RaftSettings
from manager.store import MemoryStore

FAST = RaftSettings(tick_interval=0.02, proposal_timeout=0.5)


async def start_manager(path: Path, members: dict[int, str]) -> ManagerContext:
    store = MemoryStore()
    raft = RaftNode(1, str(path), store, settings=FAST, initial_members=members, advertise_addr=members[1])
    raft.open()
    await raft.start()
    return ManagerContext(raft, store)


async def wait_leader(raft: RaftNode, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not raft.is_leader:
        assert time.monotonic() < deadline, "the single member did not elect itself"
        await asyncio.sleep(0.02)


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[ManagerContext]:
    m = await start_manager(tmp_path / "raft", {1: "127.0.0.1:1"})
    try:
        await wait_leader(m.raft)
        yield m
    finally:
        await m.raft.stop()


async def serve(manager_of: ManagerOf) -> TestClient:
    app = web.Application(middlewares=[error_middleware])
    add_routes(app, manager_of)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_routes_follow_the_provider(single: ManagerContext) -> None:
    current: list[ManagerContext | None] = [None]
    client = await serve(lambda: current[0])
    try:
        for path in ("/v1/services", "/v1/nodes", "/v1/configs", "/v1/join-tokens", "/v1/cluster/status"):
            r = await client.get(path)
            assert r.status == 503, path
            assert (await r.json())["error"] == {"code": "not_manager", "message": NOT_MANAGER}, path
        # The request is checked before a manager is needed, as before.
        r = await client.post("/v1/configs", data=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]

        current[0] = single
        body = {"name": "app.conf", "data": base64.b64encode(b"x=1").decode()}
        r = await client.post("/v1/configs", json=body)
        assert r.status == 201, await r.text()
        created = await r.json()
        assert single.store.view().get("configs", created["id"]) is not None
        r = await client.post("/v1/configs", json=body)
        assert r.status == 409 and (await r.json())["error"]["code"] == "conflict"
        r = await client.get("/v1/configs/app.conf")
        assert r.status == 200 and (await r.json())["id"] == created["id"]
        r = await client.delete("/v1/configs/nothing-like-it")
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
        r = await client.post("/v1/secrets", json={"name": "s", "data": "eA=="})
        assert r.status == 409 and (await r.json())["error"]["code"] == "no_key"
        r = await client.get("/v1/join-tokens")
        assert r.status == 503 and "no cluster state" in (await r.json())["error"]["message"]

        current[0] = None  # demoted: the same routes stop answering for it
        r = await client.get("/v1/configs")
        assert r.status == 503 and (await r.json())["error"]["code"] == "not_manager"
    finally:
        await client.close()


async def test_raft_timeout_is_504_on_every_route(tmp_path: Path) -> None:
    # Two voters, the other one never reachable: no leader, so a linearizable
    # read waits for its barrier until the proposal timeout.
    m = await start_manager(tmp_path / "raft", {1: "127.0.0.1:1", 2: "127.0.0.1:1"})
    client = await serve(lambda: m)
    try:
        for path in ("/v1/configs", "/v1/services", "/v1/nodes", "/v1/join-tokens"):
            r = await client.get(path)
            assert r.status == 504, path
            assert (await r.json())["error"]["code"] == "timeout", path
        r = await client.post("/v1/configs", json={"name": "c", "data": ""})
        assert r.status == 503 and (await r.json())["error"]["code"] == "unavailable"  # NoLeader
    finally:
        await client.close()
        await m.raft.stop()
