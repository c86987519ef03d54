"""`agent.runtime.execproc`: processes run in real runc containers (output,
exit status, stdin, a terminal and its size, kill)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from agent.runtime.execproc import STDERR, STDOUT, ExecProcess
from agent.runtime.runtime import ContainerManager, RuntimeError_
from agent.runtime.spec import ContainerSpec

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
    p = ExecProcess(mgr, rec.id, ["sh", "-c", "tty; stty size; read l; echo got $l >&2"], tty=True, stdin=True,
                    width=100, height=30)
    await p.start()
    try:
        seen = b""
        while b"30 100" not in seen:
            chunk = await asyncio.wait_for(p.read(), 20)
            assert chunk is not None, seen
            assert chunk[0] == STDOUT
            seen += chunk[1]
        assert b"/dev/pts/" in seen
        await p.write(b"hello\r")
        while (chunk := await asyncio.wait_for(p.read(), 20)) is not None:
            seen += chunk[1]
        assert b"got hello" in seen and await p.wait() == 0
    finally:
        await p.close()
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
