"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.runtime.runtime import ContainerManager
from tests.fixtures.cgroups import remove_cgroup_parent


@pytest.fixture
async def mgr(tmp_path: Path) -> AsyncIterator[ContainerManager]:
    m = ContainerManager(str(tmp_path / "engine"), cgroup_parent=f"orch-test-{uuid.uuid4().hex[:8]}")
    try:
        yield m
    finally:
        await m.recover()
        for r in list(m.records.values()):
            await m.remove(r.id, force=True)
        remove_cgroup_parent(m.cgroup_parent)
