"""`agent.runtime.execproc`: processes run in real runc containers (output,
exit status, stdin, a terminal and its size, kill); `agent.execs` over it
(flow control, input acks, cancel, errors)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agent.execs import Execs
from agent.runtime.execproc import STDERR, STDOUT, ExecProcess
from agent.runtime.runtime import ContainerManager, RuntimeError_
from agent.runtime.spec import ContainerSpec
from api.session import (
    EXEC_CHUNK,
    EXEC_WINDOW,
    ExecCancel,
    ExecExit,
    ExecInput,
    ExecInputAck,
    ExecOutput,
    ExecOutputAck,
    ExecStart,
    Frame,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(not (shutil.which("runc") and shutil.which("conmon") and os.path.exists("/bin/busybox")),
                       reason="needs runc, conmon and busybox-static"),
]

APPLETS = ["sh", "echo", "sleep", "cat", "true", "false", "tty", "stty", "head", "wc", "dd", "kill"]


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "rootfs"
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (r / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", r / "bin/busybox")
    for a in APPLETS:
        os.symlink("busybox", r / "bin" / a)
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return r


async def run(p: ExecProcess, stdin: bytes | None = None) -> tuple[bytes, bytes, int]:
    await p.start()
    try:
        if stdin is not None:
            await p.write(stdin)
            await p.close_stdin()
        out = {STDOUT: b"", STDERR: b""}
        while (chunk := await asyncio.wait_for(p.read(), 20)) is not None:
            out[chunk[0]] += chunk[1]
        return out[STDOUT], out[STDERR], await asyncio.wait_for(p.wait(), 10)
    finally:
        await p.close()


async def test_exec_output_exit_stdin_tty_and_kill(mgr: ContainerManager, rootfs: Path) -> None:
    rec = await mgr.run(ContainerSpec(args=["sleep", "60"], env={"FROM_IMAGE": "yes"}), str(rootfs), {})
    # Output on both streams, the exit status, the container's env as the base.
    out, err, code = await run(ExecProcess(mgr, rec.id, ["sh", "-c", "echo out $FROM_IMAGE $X; echo err >&2; exit 3"],
                                           env=["X=1"]))
    assert (out, err, code) == (b"out yes 1\n", b"err\n", 3)
    # stdin, through to its end; no terminal.
    out, _, code = await run(ExecProcess(mgr, rec.id, ["sh", "-c", "wc -c; tty"], stdin=True), stdin=b"x" * 100000)
    assert out.split(b"\n")[0].strip() == b"100000" and b"not a tty" in out and code == 1
    # A terminal of the asked size; input is echoed by it; stderr goes to it too.
    # (`stty size` after the input: runc sets the size just after the process
    # started, so a command that asks at once may see 0x0, as with docker exec.)
    p = ExecProcess(mgr, rec.id, ["sh", "-c", "tty; read l; stty size; echo got $l >&2"], tty=True, stdin=True,
                    width=100, height=30)
    await p.start()
    try:
        seen = b""
        while b"/dev/pts/" not in seen:
            chunk = await asyncio.wait_for(p.read(), 20)
            assert chunk is not None, seen
            assert chunk[0] == STDOUT
            seen += chunk[1]
        await p.write(b"hello\r")
        while (chunk := await asyncio.wait_for(p.read(), 20)) is not None:
            seen += chunk[1]
        assert b"30 100" in seen and b"got hello" in seen and await p.wait() == 0, seen
    finally:
        await p.close()
    # The end of input on a terminal: its EOF character.
    out, _, code = await run(ExecProcess(mgr, rec.id, ["sh", "-c", "cat; echo end"], tty=True, stdin=True),
                             stdin=b"abc\r")
    assert code == 0 and out.endswith(b"abc\r\nend\r\n"), out
    # A resize reaches the process's terminal.
    p = ExecProcess(mgr, rec.id, ["sh", "-c", "read l; stty size"], tty=True, stdin=True)
    await p.start()
    try:
        await asyncio.sleep(0.3)
        p.resize(132, 43)
        await asyncio.sleep(0.3)
        await p.write(b"\r")
        seen = b""
        while (chunk := await asyncio.wait_for(p.read(), 20)) is not None:
            seen += chunk[1]
        assert b"43 132" in seen, seen
    finally:
        await p.close()
    # kill() ends a process that would run on; 128+9 is its status.
    p = ExecProcess(mgr, rec.id, ["sleep", "100"])
    await p.start()
    await asyncio.sleep(0.3)
    p.kill()
    assert await asyncio.wait_for(p.wait(), 10) == 137
    await p.close()
    await mgr.stop(rec.id, timeout=2)
    with pytest.raises(RuntimeError_, match="not running"):
        await ExecProcess(mgr, rec.id, ["true"]).start()


async def test_agent_execs_flow_control_and_errors(mgr: ContainerManager, rootfs: Path) -> None:
    """`agent.execs.Execs` as the worker runs it: output stops at the window
    until acknowledged; input is acknowledged; every exec ends with one
    ExecExit (the status, or why nothing ran); cancel kills."""
    rec = await mgr.run(ContainerSpec(args=["sleep", "60"]), str(rootfs), {})
    sent: list[Frame] = []
    arrived = asyncio.Event()

    async def send(f: Frame) -> bool:
        sent.append(f)
        arrived.set()
        return True

    def spawn(cid: str, s: ExecStart) -> ExecProcess:
        return ExecProcess(mgr, cid, s.argv, tty=s.tty, stdin=s.stdin)

    execs = Execs(send, lambda tid: mgr.get(rec.id) if tid == "t1" else None, spawn)

    async def until_exit(xid: str) -> ExecExit:
        for _ in range(200):
            ends = [f for f in sent if isinstance(f, ExecExit) and f.id == xid]
            if ends:
                return ends[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no exit for {xid}: {[f.KIND for f in sent]}")

    def out_bytes(xid: str) -> int:
        return sum(len(f.data) for f in sent if isinstance(f, ExecOutput) and f.id == xid)

    size = 4 * EXEC_WINDOW
    execs.on_frame(ExecStart(id="x1", task="t1", argv=("head", "-c", str(size), "/dev/zero")))
    await asyncio.sleep(1.0)
    held = out_bytes("x1")
    assert EXEC_WINDOW <= held <= EXEC_WINDOW + EXEC_CHUNK, held  # stopped at the window
    acked = 0
    while not any(isinstance(f, ExecExit) for f in sent):
        n = out_bytes("x1") - acked
        if n:
            execs.on_frame(ExecOutputAck(id="x1", n=n))
            acked += n
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
    assert (await until_exit("x1")).code == 0 and out_bytes("x1") == size
    # Input, acknowledged as written; its end closes stdin.
    execs.on_frame(ExecStart(id="x2", task="t1", argv=("wc", "-c"), stdin=True))
    execs.on_frame(ExecInput(id="x2", data=b"12345"))
    execs.on_frame(ExecInput(id="x2", data=b"678", eof=True))
    assert (await until_exit("x2")).code == 0
    assert [f.n for f in sent if isinstance(f, ExecInputAck) and f.id == "x2"] == [5, 3]
    assert b"".join(f.data for f in sent if isinstance(f, ExecOutput) and f.id == "x2").strip() == b"8"
    # Cancel kills it; a task without a container here and a missing binary are errors.
    execs.on_frame(ExecStart(id="x3", task="t1", argv=("sleep", "100")))
    await asyncio.sleep(0.3)
    execs.on_frame(ExecCancel(id="x3"))
    assert (await until_exit("x3")).error == "exec cancelled" and not execs.running
    execs.on_frame(ExecStart(id="x4", task="t2", argv=("true",)))
    assert "task t2 has no container on this node" in (await until_exit("x4")).error
    execs.on_frame(ExecStart(id="x5", task="t1", argv=("no-such-binary",)))
    x5 = await until_exit("x5")
    assert x5.code == 127 and b"no-such-binary" in b"".join(
        f.data for f in sent if isinstance(f, ExecOutput) and f.id == "x5")
    await mgr.stop(rec.id, timeout=2)


def test_terminal_under_uvloop(tmp_path: Path, rootfs: Path) -> None:
    """The daemon runs uvloop: a terminal's output and input work there too
    (its pipe transports end at once on a pty, hence the hand-made reader)."""
    uvloop = pytest.importorskip("uvloop")
    from tests.fixtures.cgroups import remove_cgroup_parent

    async def main() -> bytes:
        m = ContainerManager(str(tmp_path / "engine"), cgroup_parent=f"orch-test-{os.urandom(4).hex()}")
        try:
            rec = await m.run(ContainerSpec(args=["sleep", "60"]), str(rootfs), {})
            p = ExecProcess(m, rec.id, ["sh", "-c", "read l; echo got $l; exit 5"], tty=True, stdin=True)
            await p.start()
            try:
                await p.write(b"typed\r")
                seen = b""
                while (chunk := await asyncio.wait_for(p.read(), 20)) is not None:
                    seen += chunk[1]
                assert await p.wait() == 5
                return seen
            finally:
                await p.close()
        finally:
            for r in list(m.records.values()):
                await m.remove(r.id, force=True)
            remove_cgroup_parent(m.cgroup_parent)

    assert b"got typed" in uvloop.run(main())
