"""Log rotation (size-capped files kept as hard-linked segments, read and
followed across rotations) and exec healthchecks, on real runc containers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agent.runtime.health import HealthConfig
from agent.runtime.runtime import ContainerManager, ContainerRecord
from agent.runtime.spec import ContainerSpec
from tests.runtime.test_runtime import pytestmark, rootfs  # noqa: F401  (fixture and marks)


async def test_logs_rotate_and_follow_across_rotations(mgr: ContainerManager, rootfs: Path) -> None:
    mgr.log_size_max = 4096
    mgr.log_max_files = 3
    mgr.start_supervisor(period=0.02)
    n = 300
    # About 50 bytes a line with the timestamp: a rotation every ~80 lines.
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", f"for i in $(seq 1 {n}); do echo line-$i; usleep 3000; done"]),
                        str(rootfs), {})
    followed = [line async for _, _, line in mgr.logs(rec.id, follow=True)]
    assert await mgr.wait(rec.id, timeout=30) == 0
    assert followed == [f"line-{i}" for i in range(1, n + 1)], "follow lost or repeated lines across rotations"
    files = mgr.log_files(rec.id)
    segs = files.segments()
    assert len(segs) == 3, segs  # rotated several times, only the newest three kept
    assert all(os.path.getsize(s) <= 4096 + 200 for s in segs)
    kept = [line async for _, _, line in mgr.logs(rec.id)]
    first = int(kept[0].split("-")[1])
    assert first > 1, "old segments were not pruned"
    assert kept == [f"line-{i}" for i in range(first, n + 1)], "the kept history is not contiguous"
    assert [line async for _, _, line in mgr.logs(rec.id, tail=5)] == [f"line-{i}" for i in range(n - 4, n + 1)]


async def test_healthcheck_transitions(mgr: ContainerManager, rootfs: Path) -> None:
    changes: list[tuple[str, str]] = []

    def on_change(r: ContainerRecord) -> None:
        changes.append((r.status, (r.health_state or {}).get("status", "")))

    mgr.on_change = on_change
    hc = HealthConfig(test=["CMD-SHELL", "test -f /tmp/ok"], interval=0.2, timeout=2, retries=2)
    rec = await mgr.create(ContainerSpec(args=["sleep", "60"]), str(rootfs), {}, healthcheck=hc)
    await mgr.start(rec.id)

    async def status_becomes(want: str, within: float) -> None:
        for _ in range(int(within / 0.05)):
            if (rec.health_state or {}).get("status") == want:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"health stayed {rec.health_state}")

    await asyncio.sleep(0.5)
    assert rec.health_state is not None and rec.health_state["status"] in ("starting", "unhealthy")
    code, _ = await mgr.exec(rec.id, ["touch", "/tmp/ok"])
    assert code == 0
    await status_becomes("healthy", 3)
    await mgr.exec(rec.id, ["rm", "/tmp/ok"])
    await status_becomes("unhealthy", 3)
    assert rec.health_state["failing_streak"] >= 2
    assert rec.health_state["log"][-1]["exit_code"] == 1
    assert ("running", "healthy") in changes and ("running", "unhealthy") in changes
    # A check that hangs is cut at its timeout, and its process does not linger in the container.
    rec2 = await mgr.create(ContainerSpec(args=["sleep", "60"]), str(rootfs), {},
                            healthcheck=HealthConfig(test=["CMD", "sleep", "30"], interval=0.1, timeout=0.3, retries=1))
    await mgr.start(rec2.id)
    await status_becomes_for(rec2, "unhealthy", 5)
    assert "timeout" in rec2.health_state["log"][-1]["output"]
    await asyncio.sleep(1.0)  # several checks timed out by now
    code, out = await mgr.exec(rec2.id, ["sh", "-c", "for p in /proc/[0-9]*; do tr -d '\\0' < $p/cmdline; echo; done"])
    hung = [x for x in out.decode().splitlines() if x == "sleep30"]
    assert len(hung) <= 1, f"timed-out health checks left processes behind: {out.decode()!r}"  # one may be running now
    # The image's Healthcheck applies when the task sets none (durations in ns).
    image = {"Healthcheck": {"Test": ["CMD", "true"], "Interval": 100_000_000, "Retries": 1}}
    from agent.runtime.health import resolve

    rec3 = await mgr.create(ContainerSpec(args=["sleep", "60"]), str(rootfs), image, healthcheck=resolve(None, image))
    await mgr.start(rec3.id)
    await status_becomes_for(rec3, "healthy", 3)
    assert resolve({"test": ["NONE"]}, image) is None


async def status_becomes_for(rec: ContainerRecord, want: str, within: float) -> None:
    for _ in range(int(within / 0.05)):
        if (rec.health_state or {}).get("status") == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health stayed {rec.health_state}")
