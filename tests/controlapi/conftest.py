"""The control API on a real single-member Raft node and store, served by
aiohttp's test server (the `api` fixture: client and manager context)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from manager.controlapi.common import ManagerContext
from tests.controlapi.test_manager_provider import serve, start_manager, wait_leader


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient, ManagerContext]]:
    m = await start_manager(tmp_path / "raft", {1: "127.0.0.1:1"})
    client = await serve(lambda: m)
    try:
        await wait_leader(m.raft)
        yield client, m
    finally:
        await client.close()
        await m.raft.stop()
