"""Real processes: 3 managers on loopback, kill -9 of the leader under a
write load, fail-over time, and no acknowledged write lost."""

from __future__ import annotations

import asyncio
import base64
import signal
import time

import aiohttp
import pytest

from tests.harness.managers import ManagerCluster


async def _write(session: aiohttp.ClientSession, addr: str, name: str) -> bool:
    body = {"name": name, "data": base64.b64encode(name.encode()).decode()}
    try:
        async with session.post(f"http://{addr}/v1/configs", json=body, timeout=aiohttp.ClientTimeout(total=2)) as r:
            if r.status == 201:
                return True
            if r.status == 409:  # an earlier attempt of ours did commit
                return True
            return False
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _names(addr: str) -> set[str]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{addr}/v1/configs", timeout=aiohttp.ClientTimeout(total=10)) as r:
            assert r.status == 200, await r.text()
            return {c["spec"]["name"] for c in await r.json()}


def test_kill_leader_failover_and_no_acknowledged_write_lost() -> None:
    with ManagerCluster(3) as cl:
        leader = cl.leader(timeout=15)
        acked: list[str] = []
        killed_at: list[float] = []
        first_after_kill: list[float] = []

        async def writer(stop: asyncio.Event) -> None:
            i = 0
            async with aiohttp.ClientSession() as s:
                while not stop.is_set():
                    name = f"w-{i}"
                    ok = False
                    for n in sorted(cl.nodes, key=lambda n: n.node_id != leader.node_id):
                        if not n.alive:
                            continue
                        if await _write(s, n.addr, name):
                            ok = True
                            break
                    if ok:
                        acked.append(name)
                        if killed_at and not first_after_kill:
                            first_after_kill.append(time.monotonic())
                        i += 1
                    else:
                        await asyncio.sleep(0.02)

        async def scenario() -> None:
            stop = asyncio.Event()
            w = asyncio.create_task(writer(stop))
            await asyncio.sleep(1.5)
            before = len(acked)
            assert before > 10, "writes were not flowing before the kill"
            killed_at.append(time.monotonic())
            leader.kill(signal.SIGKILL)
            deadline = time.monotonic() + 10
            while not first_after_kill and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            stop.set()
            await w

        asyncio.run(scenario())
        assert first_after_kill, "no write succeeded after the leader was killed"
        failover = first_after_kill[0] - killed_at[0]
        print(f"failover: first acknowledged write {failover:.2f}s after kill -9 of the leader")
        assert failover < 3.0, f"writes resumed only after {failover:.2f}s"

        # Restart the killed node; it must catch up and hold every acked write.
        leader.start()
        new_leader = cl.leader(timeout=10)
        target = new_leader.status()["commit"]
        deadline = time.monotonic() + 20
        while True:
            st = leader.status()
            if st and st["applied"] >= target:
                break
            assert time.monotonic() < deadline, f"restarted node did not catch up: {st}\n{leader.log_tail()}"
            time.sleep(0.1)
        for n in cl.nodes:
            names = asyncio.run(_names(n.addr))
            missing = [a for a in acked if a not in names]
            assert not missing, f"node {n.node_id} lacks {len(missing)} acknowledged writes, e.g. {missing[:5]}"
        print(f"{len(acked)} acknowledged writes present on all 3 nodes")
