"""Tests of the multi-host fleet harness: real namespaces, veths, bridge,
nftables partitions and processes; and that teardown leaves nothing behind."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.fleet import (
    NETNS_DIR,
    STATE_DIR,
    Fleet,
    Host,
    cleanup_stale,
    fleet_fixture,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.multihost,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

fleet = fleet_fixture(("a", "b", "c"))

REPO = str(Path(__file__).resolve().parents[2])
PORT = 8000

# Prints the HTTP status, or 'timeout' / 'refused' / the error: a test can
# tell a dropped packet (timeout) from a host that answers with RST.
PROBE = textwrap.dedent("""
    import sys, urllib.request
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).status)
    except Exception as e:
        r = getattr(e, "reason", e)
        print("timeout" if isinstance(r, TimeoutError) else
              "refused" if isinstance(r, ConnectionRefusedError) else repr(e))
""")


def fetch(frm: Host, to: Host, timeout: float = 1.0) -> str:
    cp = frm.run([sys.executable, "-c", PROBE, f"http://{to.addr}:{PORT}/", str(timeout)], timeout=timeout + 10)
    return cp.stdout.strip() or cp.stderr.strip()


def wait_for(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def serve(host: Host, via: Host) -> None:
    """Start an HTTP server on host and wait until via reaches it."""
    host.start([sys.executable, "-m", "http.server", str(PORT), "--bind", host.addr])
    wait_for(lambda: fetch(via, host) == "200", what=f"http server on {host.name}")


def ns_ids(names: list[str]) -> set[tuple[int, int]]:
    out = set()
    for n in names:
        st = os.stat(os.path.join(NETNS_DIR, n))
        out.add((st.st_dev, st.st_ino))
    return out


def pids_in(ids: set[tuple[int, int]]) -> set[int]:
    found = set()
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                st = os.stat(f"/proc/{e.name}/ns/net")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in ids:
                found.add(int(e.name))
    return found


def group_members(pgid: int) -> set[int]:
    out = set()
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                stat = Path(f"/proc/{e.name}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                out.add(int(e.name))
    return out


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def run_netns(run_id: str) -> list[str]:
    return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"orch-{run_id}-")) if os.path.isdir(NETNS_DIR) else []


def assert_run_gone(run_id: str, ids: set[tuple[int, int]], base_dir: str, cgroup_dirs: list[Path]) -> None:
    assert run_netns(run_id) == []
    assert pids_in(ids) == set()
    assert not os.path.exists(base_dir)
    assert [d for d in cgroup_dirs if d.exists()] == []
    assert not os.path.exists(os.path.join(STATE_DIR, f"{run_id}.json"))
    with open("/proc/self/mountinfo") as f:
        assert base_dir not in f.read()
    # Nothing of the run in the root namespace: links, iptables, nftables.
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert " v-" not in links and "br0" not in links
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    rules += subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert run_id not in rules and "orch_partition" not in rules


def test_underlay_reachability_partition_and_heal(fleet: Fleet) -> None:
    a, b, c = fleet["a"], fleet["b"], fleet["c"]
    assert (a.addr, b.addr, c.addr) == ("10.213.0.1", "10.213.0.2", "10.213.0.3")
    assert a.netns_path == f"/run/netns/orch-{fleet.run_id}-a"
    serve(a, via=b)
    assert fetch(c, a) == "200"
    assert fetch(b, c) == "refused"  # c is up and answers, nothing listens

    fleet.partition([a], [b])
    t0 = time.monotonic()
    assert fetch(b, a, timeout=1.0) == "timeout"
    assert time.monotonic() - t0 < 3.0
    assert fetch(c, a) == "200"
    # Both directions: a's SYN to b is dropped (no RST comes back) while
    # b still answers c.
    assert fetch(a, b, timeout=0.5) == "timeout"
    assert fetch(c, b) == "refused"
    assert fleet.partitions == {("a", "b"), ("b", "a")}

    fleet.heal()
    assert fleet.partitions == frozenset()
    assert fetch(b, a) == "200"
    assert fetch(a, b) == "refused"

    fleet.isolate(c)
    assert fetch(c, a, timeout=0.5) == "timeout"
    assert fetch(b, a) == "200"
    fleet.heal()
    assert fetch(c, a) == "200"


def test_pause_and_resume(fleet: Fleet) -> None:
    a, b = fleet["a"], fleet["b"]
    serve(a, via=b)
    a.pause()
    wait_for(lambda: a.state() == "T", 2.0, "state T")
    assert a.alive()
    # The kernel still accepts the connection; the stopped server never answers.
    assert fetch(b, a, timeout=0.5) == "timeout"
    a.resume()
    wait_for(lambda: a.state() in ("S", "R"), 2.0, "running again")
    assert fetch(b, a) == "200"
    # stop() of a paused process still ends it (SIGTERM needs the SIGCONT).
    a.pause()
    wait_for(lambda: a.state() == "T", 2.0, "state T")
    assert a.stop(timeout=3.0) == -15
    assert not a.alive()


def test_kill9_and_restart(fleet: Fleet) -> None:
    a, b = fleet["a"], fleet["b"]
    # A child in the same process group must die with its leader.
    a.start(["sh", "-c", f"sleep 600 & exec {sys.executable} -m http.server {PORT} --bind {a.addr}"])
    wait_for(lambda: fetch(b, a) == "200", what="http server")
    first = a.pid
    assert first is not None
    members = group_members(first)
    assert len(members) == 2
    assert a.kill9() == -9
    assert not a.alive()
    assert not any(pid_alive(p) for p in members)
    assert fetch(b, a) == "refused"
    a.restart()
    with pytest.raises(Exception, match="already running"):
        a.start(["true"])
    wait_for(lambda: fetch(b, a) == "200", what="restarted server")
    assert a.pid != first and a.alive()
    assert "start: sh -c" in a.log_tail()
    # one-shot commands: exit codes, timeouts kill the process group
    assert a.run(["sh", "-c", "exit 3"]).returncode == 3
    with pytest.raises(subprocess.TimeoutExpired):
        a.run(["sleep", "30"], timeout=0.3)
    # A daemonized grandchild holding the pipes does not hang run() past its timeout.
    t0 = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        a.run(["setsid", "-f", "sleep", "30"], timeout=0.3)
    assert time.monotonic() - t0 < 5


def _cgroup_with_frozen_process(parent: str) -> tuple[subprocess.Popen[bytes], list[Path]]:
    """A process in a frozen child cgroup of parent, like a paused container."""
    p = subprocess.Popen(["sleep", "600"], start_new_session=True)
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # v2
        d = root / parent / "c1"
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text(str(p.pid))
        (d / "cgroup.freeze").write_text("1")
        return p, [root / parent]
    dirs = []
    for ctrl in ("pids", "freezer"):
        d = root / ctrl / parent / "c1"
        d.mkdir(parents=True)
        (d / "cgroup.procs").write_text(str(p.pid))
        dirs.append(root / ctrl / parent)
    (root / "freezer" / parent / "c1" / "freezer.state").write_text("FROZEN")
    return p, dirs


def test_teardown_leaves_nothing() -> None:
    run_id = "x" + secrets.token_hex(3)
    f = Fleet(run_id, ["a", "b"])
    child: subprocess.Popen[bytes] | None = None
    try:
        f.up()
        a, b = f["a"], f["b"]
        a.start(["sleep", "600"])
        # Escapes the process group, like conmon does.
        a.run(["sh", "-c", "setsid -f sleep 600 >/dev/null 2>&1"], check=True)
        mnt = os.path.join(a.data_dir, "mnt")
        os.makedirs(mnt)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", mnt], check=True)
        child, cgroup_dirs = _cgroup_with_frozen_process(a.cgroup_parent)
        f.partition([a], [b])
        names = run_netns(run_id)
        assert names == sorted([f"orch-{run_id}-a", f"orch-{run_id}-b", f.bridge_netns])
        ids = ns_ids(names)
        inside = pids_in(ids)
        assert len(inside) == 2  # the daemon and the escaped sleep
        base = f.base_dir
        assert os.path.exists(os.path.join(STATE_DIR, f"{run_id}.json"))
    finally:
        f.close()
    assert child.wait(5) == -9
    assert not any(pid_alive(p) for p in inside)
    assert_run_gone(run_id, ids, base, cgroup_dirs)
    f.close()  # idempotent


def test_cleanup_stale_after_owner_crash(fleet: Fleet) -> None:
    run_id = "s" + secrets.token_hex(3)
    script = textwrap.dedent(f"""
        import os, sys
        from tests.harness.fleet import Fleet
        f = Fleet({run_id!r}, ["a", "b"])
        f.up()
        f["a"].start(["sleep", "600"])
        f.partition(["a"], ["b"])
        print(f.base_dir, f["a"].pid, flush=True)
        os._exit(1)  # a crash: no atexit, no teardown
    """)
    cp = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30)
    base, pid = cp.stdout.split()
    names = run_netns(run_id)
    assert len(names) == 3 and pid_alive(int(pid))
    ids = ns_ids(names)
    cleaned = cleanup_stale()
    assert run_id in cleaned
    assert fleet.run_id not in cleaned  # a live fleet is left alone
    assert os.path.exists(fleet["a"].netns_path)
    assert not pid_alive(int(pid))
    assert_run_gone(run_id, ids, base, [])


def test_fleets_with_same_subnet_are_isolated(fleet: Fleet) -> None:
    with Fleet("y" + secrets.token_hex(3), ["a", "b"]) as other:
        serve(fleet["a"], via=fleet["b"])
        assert other["a"].addr == fleet["a"].addr
        # other's b reaches other's a (nothing listening), not ours.
        assert fetch(other["b"], other["a"]) == "refused"


def test_bad_input_is_named(fleet: Fleet) -> None:
    with pytest.raises(ValueError, match="run_id 'Bad-id'"):
        Fleet("Bad-id")
    with pytest.raises(ValueError, match="host name 'a-b'"):
        Fleet("ok", ["a-b"])
    with pytest.raises(ValueError, match="subnet"):
        Fleet("ok", subnet="10.300.0.0/24")
    with pytest.raises(ValueError, match="both sides"):
        fleet.partition(["a"], ["a", "b"])
    with pytest.raises(KeyError, match="no host 'z'"):
        fleet.partition(["a"], ["z"])
    with pytest.raises(Exception, match="in use"):
        Fleet(fleet.run_id, ["a"]).up()
