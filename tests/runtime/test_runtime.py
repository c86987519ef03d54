"""Containers under real conmon + runc, from a busybox-static rootfs."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.runtime.runtime import ContainerManager, RuntimeError_
from agent.runtime.spec import DEFAULT_CAPS, ContainerSpec, SpecError, resolve_user

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not (shutil.which("runc") and shutil.which("conmon") and os.path.exists("/bin/busybox")),
                       reason="needs runc, conmon and busybox-static"),
]

APPLETS = ["sh", "echo", "sleep", "cat", "id", "ls", "head", "tail", "grep", "true", "false", "usleep", "seq",
           "test", "touch", "rm", "df", "wc", "mount", "tr"]
# Bit numbers of Docker's default capabilities (linux/capability.h).
CAP_BITS = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
            "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10,
            "CAP_NET_RAW": 13, "CAP_SYS_CHROOT": 18, "CAP_MKNOD": 27, "CAP_AUDIT_WRITE": 29,
            "CAP_SETFCAP": 31}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "home/app"):
        (r / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", r / "bin/busybox")
    for a in APPLETS:
        os.symlink("busybox", r / "bin" / a)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (r / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    return r


async def logs(m: ContainerManager, cid: str) -> list[tuple[str, str]]:
    return [(s, line) async for _, s, line in m.logs(cid)]


async def test_run_logs_and_exit_code(mgr: ContainerManager, rootfs: Path) -> None:
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", "echo hello; echo oops >&2; exit 7"]), str(rootfs), {})
    assert await mgr.wait(rec.id, timeout=10) == 7
    assert await logs(mgr, rec.id) == [("stdout", "hello"), ("stderr", "oops")]
    assert mgr.get(rec.id).status == "exited"


async def test_image_config_user_env_and_caps(mgr: ContainerManager, rootfs: Path) -> None:
    image = {"User": "app", "Env": ["GREETING=hi"], "Cmd": ["sh", "-c", "id -u; id -G; echo $GREETING $HOME; grep CapEff /proc/self/status"]}
    rec = await mgr.run(ContainerSpec(), str(rootfs), image)
    assert await mgr.wait(rec.id, timeout=10) == 0
    out = [line for _, line in await logs(mgr, rec.id)]
    assert out[0] == "1000"
    assert out[1].split() == ["1000", "2000"]
    assert out[2] == "hi /home/app"
    # A non-root user has an empty effective set; check root's instead.
    rec = await mgr.run(ContainerSpec(args=["grep", "CapEff", "/proc/self/status"]), str(rootfs), {})
    await mgr.wait(rec.id, timeout=10)
    eff = int((await logs(mgr, rec.id))[0][1].split()[1], 16)
    want = sum(1 << CAP_BITS[c] for c in DEFAULT_CAPS)
    assert eff == want, f"CapEff {eff:x} != docker default {want:x}"


async def test_masked_paths_and_limits(mgr: ContainerManager, rootfs: Path) -> None:
    masked = [p for p in ("/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug")
              if os.path.exists(p) and os.path.getsize(p) >= 0]
    host_nonempty = [p for p in masked if open(p, "rb").read(10)]
    assert host_nonempty, "no masked /proc file has content on this host to compare with"
    script = "; ".join(f"cat {p} | wc -c" for p in host_nonempty) + "; ls /sys/firmware | wc -l"
    rec = await mgr.run(
        ContainerSpec(args=["sh", "-c", script], memory=64 << 20, pids_limit=50), str(rootfs), {}
    )
    assert await mgr.wait(rec.id, timeout=10) == 0, await logs(mgr, rec.id)
    out = [line.strip() for _, line in await logs(mgr, rec.id)]
    assert out == ["0"] * (len(host_nonempty) + 1), (host_nonempty, out)
    cg = Path(f"/sys/fs/cgroup/memory/{mgr.cgroup_parent}/{rec.id}/memory.limit_in_bytes")
    if not cg.parent.is_dir():
        cg = Path(f"/sys/fs/cgroup/{mgr.cgroup_parent}/{rec.id}/memory.max")
    # The limit is on the container's cgroup while it exists (runc removes it on delete).
    rec2 = await mgr.run(ContainerSpec(args=["sleep", "30"], memory=64 << 20, pids_limit=50), str(rootfs), {})
    cg2 = Path(str(cg).replace(rec.id, rec2.id))
    assert cg2.read_text().strip() == str(64 << 20)
    pids = Path(f"/sys/fs/cgroup/pids/{mgr.cgroup_parent}/{rec2.id}/pids.max")
    if pids.exists():
        assert pids.read_text().strip() == "50"
    await mgr.stop(rec2.id, timeout=2)


async def test_a_container_gone_with_its_conmon_is_exited_after_recover(mgr: ContainerManager, rootfs: Path) -> None:
    """What a host restart leaves: the record says running, and there is no process, no conmon
    and no exit file. The engine that starts again reports it ended (255, as Docker), and
    stop, wait and remove return at once (they waited for an exit file that never comes)."""
    rec = await mgr.run(ContainerSpec(args=["sleep", "300"]), str(rootfs), {}, name="lost")
    conmon = int(Path(mgr.cdir(rec.id), "conmon.pid").read_text())
    os.kill(conmon, signal.SIGKILL)  # first, so that it writes no exit file
    os.kill(rec.pid, signal.SIGKILL)
    for _ in range(100):
        if not os.path.exists(f"/proc/{rec.pid}") and not os.path.exists(f"/proc/{conmon}"):
            break
        await asyncio.sleep(0.05)
    assert not os.path.exists(os.path.join(mgr.cdir(rec.id), "exits", rec.id))
    again = ContainerManager(mgr.root, cgroup_parent=mgr.cgroup_parent)
    (lost,) = await again.recover()
    assert (lost.status, lost.exit_code) == ("exited", 255), lost
    assert "host restarted" in lost.error
    assert await again.wait(rec.id, timeout=5) == 255
    assert await again.stop(rec.id, timeout=1) == 255
    await again.remove(rec.id)  # not forced: it has ended
    assert again.list() == []


async def test_stop_uses_signal_then_kill_after_grace(mgr: ContainerManager, rootfs: Path) -> None:
    rec = await mgr.run(ContainerSpec(args=["sh", "-c", "trap 'echo got term' TERM; while true; do sleep 0.1; done"],
                                      stop_grace=1.0), str(rootfs), {})
    await asyncio.sleep(0.5)
    code = await mgr.stop(rec.id)
    assert code == 137  # SIGKILL after the grace period: the trap kept it alive
    assert ("stdout", "got term") in await logs(mgr, rec.id)


async def test_exec_and_command_not_found(mgr: ContainerManager, rootfs: Path) -> None:
    rec = await mgr.run(ContainerSpec(args=["sleep", "30"]), str(rootfs), {})
    code, out = await mgr.exec(rec.id, ["sh", "-c", "echo inside; exit 3"])
    assert (code, out.strip()) == (3, b"inside")
    await mgr.stop(rec.id, timeout=2)
    with pytest.raises(RuntimeError_, match="no-such-binary"):
        await mgr.run(ContainerSpec(args=["no-such-binary"]), str(rootfs), {})


def test_user_resolution_errors(rootfs: Path) -> None:
    assert resolve_user(str(rootfs), "app")[:2] == (1000, 1000)
    assert resolve_user(str(rootfs), "1000:2000")[:2] == (1000, 2000)
    assert resolve_user(str(rootfs), "4242")[:2] == (4242, 0)
    with pytest.raises(SpecError, match="nobody"):
        resolve_user(str(rootfs), "nobody")
    with pytest.raises(SpecError, match="group 'nogroup'"):
        resolve_user(str(rootfs), "app:nogroup")


AGENT = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    from agent.runtime.runtime import ContainerManager
    from agent.runtime.spec import ContainerSpec
    async def main():
        m = ContainerManager({root!r}, cgroup_parent={cg!r})
        a = await m.run(ContainerSpec(args=["sleep", "60"]), {rootfs!r}, {{}}, name="long")
        b = await m.run(ContainerSpec(args=["sh", "-c", "sleep 1; exit 7"]), {rootfs!r}, {{}}, name="short")
        print("started", flush=True)
        await asyncio.sleep(3600)
    asyncio.run(main())
""")


async def test_containers_survive_agent_kill_and_are_readopted(mgr: ContainerManager, rootfs: Path) -> None:
    script = AGENT.format(repo=os.getcwd(), root=mgr.root, cg=mgr.cgroup_parent, rootfs=str(rootfs))
    agent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "started"
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait()
    await asyncio.sleep(2.0)  # "short" exits while no agent runs
    recs = {r.name: r for r in await mgr.recover()}
    assert recs["long"].status == "running", recs["long"]
    assert recs["short"].status == "exited" and recs["short"].exit_code == 7
    code, out = await mgr.exec("long", ["echo", "still here"])
    assert code == 0 and out.strip() == b"still here"
