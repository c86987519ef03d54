"""Real processes: 3 managers on loopback; `orch events` follows the leader
under a write load, the leader is killed -9, and the client resumes with
--since on another manager: no event missing, none repeated."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time

import aiohttp

from tests.harness.managers import ManagerCluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def _write(session: aiohttp.ClientSession, addr: str, name: str) -> bool:
    body = {"name": name, "data": base64.b64encode(name.encode()).decode()}
    try:
        async with session.post(f"http://{addr}/v1/configs", json=body,
                                timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status in (201, 409)  # 409: an earlier attempt of ours did commit
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


async def _follow(addr: str, out: list[dict], *extra: str) -> tuple[int, str]:
    """Run `orch -H addr events --format json ...` until it ends; collect its events."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli.main", "-H", addr, "events", "--format", "json", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=ROOT)
    assert p.stdout is not None and p.stderr is not None
    try:
        async for line in p.stdout:
            out.append(json.loads(line))
        err = (await p.stderr.read()).decode()
        return await p.wait(), err
    finally:
        if p.returncode is None:
            p.kill()
            await p.wait()


def test_events_resume_on_another_manager_after_leader_kill() -> None:
    with ManagerCluster(3) as cl:
        leader = cl.leader(timeout=15)
        acked: list[str] = []
        first: list[dict] = []
        second: list[dict] = []

        async def scenario() -> tuple[int, str]:
            stop = asyncio.Event()

            async def writer() -> None:
                i = 0
                async with aiohttp.ClientSession() as s:
                    while not stop.is_set():
                        name = f"w-{i}"
                        for n in sorted(cl.nodes, key=lambda n: n.node_id != leader.node_id):
                            if n.alive and await _write(s, n.addr, name):
                                acked.append(name)
                                i += 1
                                break
                        else:
                            await asyncio.sleep(0.02)

            follower = asyncio.create_task(_follow(leader.addr, first, "--since", "0"))
            w = asyncio.create_task(writer())
            await asyncio.sleep(1.5)
            deadline = time.monotonic() + 10
            while not any(e["type"] == "config" for e in first) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert len(acked) > 10, "writes were not flowing before the kill"
            assert first, "the client saw no events before the kill"
            leader.kill(signal.SIGKILL)
            rc1, err1 = await asyncio.wait_for(follower, 15)
            assert first, "no event before the kill"
            # Resume on another manager from the last id seen.
            other = next(n for n in cl.nodes if n.alive)
            resumed = asyncio.create_task(_follow(other.addr, second, "--since", first[-1]["id"]))
            deadline = time.monotonic() + 10
            n_before = len(acked)
            while len(acked) < n_before + 20 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            stop.set()
            await w
            # Let the stream catch up with the last acknowledged write, then end it.
            last_name = acked[-1]
            deadline = time.monotonic() + 10
            while (not any(e["actor"]["name"] == last_name for e in second)
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.1)
            resumed.cancel()
            try:
                await resumed
            except asyncio.CancelledError:
                pass
            return rc1, err1

        rc1, err1 = asyncio.run(scenario())
        assert rc1 != 0 and "resume with --since" in err1, err1
        seen = first + second
        ids = [(e["index"], e["seq"]) for e in seen]
        assert len(set(ids)) == len(ids), "an event was repeated"
        assert ids == sorted(ids)
        # No gap: the survivor's own full history over the same range is what the client saw.
        survivor = next(n for n in cl.nodes if n.alive)
        full: list[dict] = []
        rc, err = asyncio.run(_follow(survivor.addr, full, "--since", "0", "--until", str(seen[-1]["index"])))
        assert rc == 0, err
        full_ids = [(e["index"], e["seq"]) for e in full if (e["index"], e["seq"]) <= ids[-1]]
        assert full_ids == ids
        created = [e["actor"]["name"] for e in seen if e["type"] == "config" and e["action"] == "create"]
        assert len(created) == len(set(created))
        assert set(acked) <= set(created), sorted(set(acked) - set(created))[:5]
        leaders = [e for e in seen if e["type"] == "cluster" and e["action"] == "leader"]
        assert len(leaders) >= 2, "the new leader's term start is an event"
        assert leaders[-1]["attributes"]["raft_id"] not in ("0", str(leader.node_id)), leaders[-1]
        print(f"events: {len(first)} before the kill, {len(second)} after; {len(acked)} writes acknowledged")
