"""`orch service exec` on the multi-host fleet: two managers (the CLI talks
to the follower, which relays to the leader) and a worker that runs the
task; output, stderr, stdin and the exit status come back, and bad targets
are clear errors. Every exec is in the leader's log."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, Host, fleet_fixture
from tests.harness.fleet_cluster import REPO, OrchFleet, start_registry

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "m2", "w1", "reg"), scope="module")


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    reg = start_registry(fleet["reg"], registry_env.storage, tmp_path_factory.mktemp("fleet-reg"))
    o = OrchFleet(fleet, heartbeat=1.0, extra=["--insecure-registry", reg])
    try:
        for h in ("m1", "m2", "w1"):
            o.start(fleet[h])
        o.init_and_join([fleet["m1"], fleet["m2"]], [fleet["w1"]])
        o.wait_nodes(fleet["m2"], {"m1": "ready", "m2": "ready", "w1": "ready"})
        yield o, reg
    finally:
        o.stop_all()


def exec_(o: OrchFleet, h: Host, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return o.orch(h, "service", "exec", *args, check=False, input=input)


def test_service_exec_through_a_follower(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1, m2 = o.fleet["m1"], o.fleet["m2"]
    o.orch(m2, "service", "create", "--name", "box", "--replicas", "1", "--constraint", "node.hostname==w1",
           "--stop-signal", "KILL", f"{reg}/library/busybox-multi:latest", "sleep", "3600")
    [task] = o.json(m2, "service", "ps", "box")
    assert task["status"]["state"] == "running"
    # Output on both streams and the exit status, from w1 through m2 (follower) and m1 (leader).
    t0 = time.monotonic()
    r = exec_(o, m2, "box", "sh", "-c", "echo out on $(hostname); echo err >&2; exit 7")
    took = time.monotonic() - t0
    assert (r.returncode, r.stderr.strip()) == (7, "err"), r
    assert r.stdout.startswith("out on "), r
    # stdin, to its end; the task by slot and by id.
    r = exec_(o, m2, "-i", "box.1", "sh", "-c", "cat; echo; echo done", input="hello\nworld")
    assert (r.returncode, r.stdout) == (0, "hello\nworld\ndone\n"), r
    r = exec_(o, m1, task["id"][:12], "true")
    assert r.returncode == 0, r
    # A terminal: the command sees one (no stdin needed).
    r = exec_(o, m1, "-t", "box", "sh", "-c", "tty")
    assert r.returncode == 0 and "/dev/pts/" in r.stdout, r
    # Bad targets and commands: exit 1 and a message saying what.
    for args, why in [(("nosuch", "true"), "no service or task 'nosuch'"),
                      (("box.5", "true"), "service box has no task box.5"),
                      (("box", "no-such-binary"), "no-such-binary")]:
        r = exec_(o, m2, *args)
        assert r.returncode == (127 if "binary" in why else 1) and why in r.stderr, (args, r)
    r = exec_(o, o.fleet["w1"], "box", "true")  # a worker has no control API
    assert r.returncode == 1 and "this node is not a manager" in r.stderr, r
    assert "exec service=box task=" + task["id"] in m1.log_tail(400)
    # ... and in `orch events` on the leader that served them.
    evs = o.orch(m1, "events", "--since", "0", "--until", "0s", "-f", "event=exec", "--format", "json").stdout
    execs = [json.loads(line) for line in evs.splitlines() if line.strip()]
    assert len(execs) >= 4 and all(e["attributes"]["service"] == "box" and e["scope"] == "local" for e in execs), evs
    print(f"exec round trip through a follower (CLI start included): {took:.2f} s")
    # A task that is not running any more.
    o.orch(m2, "service", "scale", "box=0")
    r = exec_(o, m2, "box", "true")
    assert r.returncode == 1 and "box has no running task" in r.stderr, r


async def _ws_exec(socket: str, cmd: list[str]) -> tuple[int, int]:
    """One exec straight over the websocket (no CLI start): (exit status, bytes of output)."""
    import aiohttp

    n = 0
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket)) as s:
        async with s.ws_connect("ws://localhost/v1/exec", max_msg_size=4 << 20) as ws:
            await ws.send_str(json.dumps({"target": "perf", "cmd": cmd}))
            async for m in ws:
                if m.type == aiohttp.WSMsgType.BINARY:
                    n += len(m.data) - 1
                elif m.type == aiohttp.WSMsgType.TEXT and "exit" in m.json():
                    return m.json()["exit"], n
    raise AssertionError("no exit status")


@pytest.mark.slow
def test_service_exec_throughput_and_round_trip(of: tuple[OrchFleet, str]) -> None:
    """Figures: `cat` of 64 MiB out (MiB/s) and `true` round trips, on the
    leader and through the follower, at the websocket (the CLI's start,
    ~0.3-1 s on a loaded machine, left out)."""
    o, reg = of
    m1, m2 = o.fleet["m1"], o.fleet["m2"]
    o.orch(m1, "service", "create", "--name", "perf", "--replicas", "1", "--constraint", "node.hostname==w1",
           "--stop-signal", "KILL", f"{reg}/library/busybox-multi:latest", "sleep", "3600")
    for h in (m1, m2):
        t0 = time.monotonic()
        assert asyncio.run(_ws_exec(str(h.socket_path), ["head", "-c", str(64 << 20), "/dev/zero"])) == (0, 64 << 20)
        dt = time.monotonic() - t0
        ts = []
        for _ in range(9):
            t1 = time.monotonic()
            assert asyncio.run(_ws_exec(str(h.socket_path), ["true"]))[0] == 0
            ts.append(time.monotonic() - t1)
        print(f"{h.name}: 64 MiB out at {64 / dt:.1f} MiB/s; `true` round trip median {sorted(ts)[4] * 1000:.0f} ms")
    # The CLI end to end, for the record.
    p = subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(m2.socket_path), "service", "exec",
                        "perf", "head", "-c", str(16 << 20), "/dev/zero"], capture_output=True, cwd=REPO, timeout=120)
    assert p.returncode == 0 and len(p.stdout) == 16 << 20
    o.orch(m1, "service", "rm", "perf")


@pytest.mark.slow
def test_service_exec_interactive_terminal(of: tuple[OrchFleet, str]) -> None:
    """`-it` from a terminal: the CLI's terminal in raw mode, keys typed
    reach a shell in the container, its size follows, the status is the shell's."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios

    o, reg = of
    m2 = o.fleet["m2"]
    o.orch(m2, "service", "create", "--name", "shell", "--replicas", "1", "--constraint", "node.hostname==w1",
           "--stop-signal", "KILL", f"{reg}/library/busybox-multi:latest", "sleep", "3600")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    p = subprocess.Popen([sys.executable, "-m", "cli.main", "--socket", str(m2.socket_path), "service", "exec",
                          "-it", "shell", "sh"], stdin=slave, stdout=slave, stderr=slave, cwd=REPO,
                         start_new_session=True)
    os.close(slave)
    seen = b""

    def read_until(want: bytes, timeout: float = 20) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while want not in seen:
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert want in seen, seen

    try:
        deadline = time.monotonic() + 20
        while termios.tcgetattr(master)[3] & termios.ECHO:  # until the CLI made its terminal raw
            assert time.monotonic() < deadline and p.poll() is None, "the CLI never set raw mode"
            time.sleep(0.05)
        read_until(b"built-in shell")  # the shell's banner: it runs, its terminal has its size
        os.write(master, b"stty size; echo $((6*7))\r")
        read_until(b"33 111")
        read_until(b"42")
        os.write(master, b"exit 3\r")
        assert p.wait(timeout=20) == 3
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
    o.orch(m2, "service", "rm", "shell")
