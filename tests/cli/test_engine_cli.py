"""The node-local engine from the CLI: `orch daemon` (engine only) and
`orch image pull/ls/inspect/rm/prune` against a real registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cgroups import remove_cgroup_parent
from tests.fixtures.registry import SeededRegistry

pytestmark = pytest.mark.root


class Daemon:
    """An engine-only `orch daemon` that a test can SIGKILL and restart."""

    def __init__(self, tmp_path: Path, registry_addr: str) -> None:
        self.dir = tmp_path
        self.sock = tmp_path / "orch.sock"
        self.cgroup_parent = f"orch-test-{uuid.uuid4().hex[:8]}"
        self.argv = [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(tmp_path / "data"),
                     "--socket", str(self.sock), "--insecure-registry", registry_addr,
                     "--cgroup-parent", self.cgroup_parent]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while not self.sock.exists():
            assert self.proc.poll() is None, (self.dir / "daemon.log").read_text()
            assert time.monotonic() < deadline, "daemon socket did not appear"
            time.sleep(0.05)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.sock.unlink(missing_ok=True)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _remove_all_containers(d: Daemon) -> None:
    """Containers outlive the daemon by design, so the test removes them."""
    if d.proc is None or d.proc.poll() is not None:
        d.start()
    r = orch(d.sock, "container", "ls", "-a", "--format", "json")
    for c in json.loads(r.stdout or "[]"):
        orch(d.sock, "container", "rm", "-f", c["id"])


@pytest.fixture
def engine(tmp_path: Path, open_registry: SeededRegistry) -> Iterator[Daemon]:
    d = Daemon(tmp_path, open_registry.addr)
    d.start()
    try:
        yield d
    finally:
        try:
            _remove_all_containers(d)
        finally:
            d.stop()
            remove_cgroup_parent(d.cgroup_parent)
    assert not d.sock.exists(), "daemon left its socket behind"


@pytest.fixture
def daemon(engine: Daemon) -> Path:
    return engine.sock


def orch(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=120)


def test_image_pull_ls_inspect_rm(daemon: Path, open_registry: SeededRegistry) -> None:
    assert oct(os.stat(daemon).st_mode & 0o777) == "0o600"
    ref = open_registry.ref("library/busybox-multi:latest")
    r = orch(daemon, "image", "pull", ref)
    assert r.returncode == 0, r.stderr
    assert "sha256:" in r.stdout
    r = orch(daemon, "image", "ls", "--format", "json")
    images = json.loads(r.stdout)
    assert len(images) == 1 and ref in images[0]["names"]
    r = orch(daemon, "image", "ls")
    assert "busybox-multi" in r.stdout
    r = orch(daemon, "image", "inspect", ref)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)[0]["config"]
    assert cfg.get("User") == "app"
    r = orch(daemon, "image", "rm", ref)
    assert r.returncode == 0 and "Untagged" in r.stdout, r.stderr
    assert json.loads(orch(daemon, "image", "ls", "--format", "json").stdout) == []
    r = orch(daemon, "image", "prune")
    assert r.returncode == 0 and "removed" in r.stdout


def test_image_errors_are_clear(daemon: Path, open_registry: SeededRegistry) -> None:
    r = orch(daemon, "image", "pull", open_registry.ref("library/busybox-multi:nope"))
    assert r.returncode != 0 and "nope" in r.stderr, r.stderr
    r = orch(daemon, "image", "pull", "127.0.0.1:1/x/y:z")
    assert r.returncode != 0 and "127.0.0.1:1" in r.stderr, r.stderr
    r = orch(daemon, "image", "inspect", "no-such-image")
    assert r.returncode != 0 and "no-such-image" in r.stderr, r.stderr
    assert json.loads(orch(daemon, "image", "ls", "--format", "json").stdout) == []


def test_container_run_logs_exec_stop_rm(daemon: Path, open_registry: SeededRegistry) -> None:
    ref = open_registry.ref("library/busybox-multi:latest")
    # Foreground run: output and exit code come back (image pulled on demand).
    r = orch(daemon, "container", "run", "--name", "once", ref, "sh", "-c", "echo hi from $(id -un); exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == "hi from app"
    r = orch(daemon, "container", "run", "-d", "--name", "web", "-m", "64m", "--pids-limit", "40", ref,
             "sh", "-c", "echo started; sleep 300")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    time.sleep(0.5)
    r = orch(daemon, "container", "logs", "web")
    assert r.stdout.strip() == "started", r.stderr
    r = orch(daemon, "container", "exec", "web", "sh", "-c", "cat /etc/removed-later; id -u")
    # (cat's error and id's output come through two pipes: in either order.)
    assert r.returncode == 0 and "1000" in r.stdout.splitlines(), (r.stdout, r.stderr)
    assert "No such file" in r.stdout  # the whiteout in the image's second layer
    r = orch(daemon, "container", "ls", "--format", "json")
    assert [c["name"] for c in json.loads(r.stdout)] == ["web"]
    r = orch(daemon, "container", "rm", "web")
    assert r.returncode != 0 and "running" in r.stderr
    r = orch(daemon, "container", "stop", "-t", "2", "web")
    assert r.returncode == 0, r.stderr
    r = orch(daemon, "container", "rm", "web", "once")
    assert r.returncode == 0, r.stderr
    assert json.loads(orch(daemon, "container", "ls", "-a", "--format", "json").stdout) == []
    r = orch(daemon, "container", "inspect", cid)
    assert r.returncode != 0 and "no container" in r.stderr
    r = orch(daemon, "container", "run", ref, "no-such-command")
    assert r.returncode != 0 and "no-such-command" in r.stderr, r.stderr
    with open("/proc/mounts") as f:
        assert str(daemon.parent) not in f.read(), "a container rootfs is still mounted"


def test_volumes_tmpfs_and_healthcheck(engine: Daemon, open_registry: SeededRegistry) -> None:
    sock = engine.sock
    ref = open_registry.ref("library/busybox-multi:latest")
    r = orch(sock, "container", "run", "-d", "--name", "svc", "-v", "data:/data", "--tmpfs", "/scratch:size=1m",
             "--user", "root", "--health-cmd", "test -f /tmp/ok", "--health-interval", "200ms",
             "--health-retries", "2", ref, "sleep", "300")
    assert r.returncode == 0, r.stderr
    r = orch(sock, "container", "exec", "svc", "sh", "-c",
             "echo kept > /data/f; df -k /scratch | tail -1; touch /tmp/ok")
    assert r.returncode == 0, r.stdout
    assert r.stdout.split()[1] == "1024", r.stdout  # the tmpfs has the size asked for
    deadline = time.monotonic() + 5
    while True:
        c = json.loads(orch(sock, "container", "inspect", "svc").stdout)[0]
        if c["health_state"]["status"] == "healthy":
            break
        assert time.monotonic() < deadline, c["health_state"]
        time.sleep(0.1)
    assert "(healthy)" in orch(sock, "container", "ls").stdout
    r = orch(sock, "volume", "rm", "data")
    assert r.returncode != 0 and "in use by container(s) svc" in r.stderr, r.stderr
    assert orch(sock, "container", "rm", "-f", "svc").returncode == 0
    # The named volume outlives its container; a new container sees the data.
    r = orch(sock, "container", "run", "--user", "root", "-v", "data:/d:ro", ref, "sh", "-c",
             "cat /d/f; touch /d/x 2>&1 | grep -c Read-only")
    assert r.stdout.split() == ["kept", "1"], (r.stdout, r.stderr)
    r = orch(sock, "volume", "ls", "--format", "json")
    assert [v["name"] for v in json.loads(r.stdout)] == ["data"]
    # Bad mounts are refused with the flag or field named, and nothing is left.
    r = orch(sock, "container", "run", "--mount", "type=bind,source=/no/such/dir,target=/x", ref, "true")
    assert r.returncode != 0 and "mounts[0].source" in r.stderr and "/no/such/dir" in r.stderr, r.stderr
    r = orch(sock, "container", "run", "--mount", "type=nfs,target=/x", ref, "true")
    assert r.returncode != 0 and "mounts[0]" in r.stderr and "type" in r.stderr, r.stderr
    r = orch(sock, "container", "run", "--health-interval", "1s", ref, "true")
    assert r.returncode != 0 and "--health-cmd" in r.stderr, r.stderr
    for c in json.loads(orch(sock, "container", "ls", "-a", "--format", "json").stdout):
        orch(sock, "container", "rm", c["id"])
    assert orch(sock, "volume", "rm", "data").returncode == 0
    assert json.loads(orch(sock, "volume", "ls", "--format", "json").stdout) == []


def test_containers_survive_daemon_kill9(engine: Daemon, open_registry: SeededRegistry) -> None:
    sock = engine.sock
    ref = open_registry.ref("library/busybox-multi:latest")
    r = orch(sock, "container", "run", "-d", "--name", "long", ref, "sleep", "300")
    assert r.returncode == 0, r.stderr
    r = orch(sock, "container", "run", "-d", "--name", "short", ref, "sh", "-c", "sleep 1.5; echo bye; exit 7")
    assert r.returncode == 0, r.stderr
    before = {c["name"]: c for c in json.loads(orch(sock, "container", "ls", "--format", "json").stdout)}
    pid = before["long"]["pid"]
    engine.kill9()
    time.sleep(2.5)  # "short" ends while no daemon watches it
    assert os.path.exists(f"/proc/{pid}"), "the container died with the daemon"
    engine.start()
    after = {c["name"]: c for c in json.loads(orch(sock, "container", "ls", "-a", "--format", "json").stdout)}
    assert after["long"]["status"] == "running" and after["long"]["pid"] == pid
    assert after["short"]["status"] == "exited" and after["short"]["exit_code"] == 7
    assert orch(sock, "container", "logs", "short").stdout.strip() == "bye"
    # The re-adopted container is fully managed: exec, stop, rm.
    r = orch(sock, "container", "exec", "long", "echo", "still here")
    assert r.stdout.strip() == "still here"
    assert orch(sock, "container", "stop", "-t", "1", "long").returncode == 0
    assert not os.path.exists(f"/proc/{pid}")


def test_devices_and_seccomp_opt_ins(daemon: Path, open_registry: SeededRegistry) -> None:
    ref = open_registry.ref("library/busybox-multi:latest")
    r = orch(daemon, "container", "run", "--user", "root", "--device", "/dev/null:/dev/mynull:rw", ref,
             "sh", "-c", "echo x > /dev/mynull && echo wrote; grep Seccomp: /proc/self/status")
    assert r.returncode == 0, r.stderr
    out = r.stdout.split()
    assert out[0] == "wrote" and out[1:] == ["Seccomp:", "2"]  # the default profile is on
    r = orch(daemon, "container", "run", "--security-opt", "seccomp=unconfined", ref, "grep", "Seccomp:",
             "/proc/self/status")
    assert r.stdout.split() == ["Seccomp:", "0"], (r.stdout, r.stderr)
    # Without the opt-in the device node is not there.
    r = orch(daemon, "container", "run", "--user", "root", ref, "sh", "-c", "test -e /dev/mynull || echo absent")
    assert r.stdout.strip() == "absent"
    r = orch(daemon, "container", "run", "--device", "/etc/hostname", ref, "true")
    assert r.returncode != 0 and "devices[0]" in r.stderr and "not a device node" in r.stderr, r.stderr
    r = orch(daemon, "container", "run", "--security-opt", "apparmor=x", ref, "true")
    assert r.returncode != 0 and "--security-opt" in r.stderr
    # --init (tini as PID 1), --ulimit, --sysctl, as for services.
    r = orch(daemon, "container", "run", "--init", "--ulimit", "nofile=111:222", "--sysctl", "net.core.somaxconn=555",
             ref, "sh", "-c", "echo $(cat /proc/1/comm) $(ulimit -n) $(ulimit -Hn) $(cat /proc/sys/net/core/somaxconn)")
    assert r.returncode == 0 and r.stdout.split() == ["orch-init", "111", "222", "555"], (r.stdout, r.stderr)
    r = orch(daemon, "container", "run", "--sysctl", "kernel.pid_max=1", ref, "true")
    assert r.returncode != 0 and "--sysctl" in r.stderr and "not allowed" in r.stderr, r.stderr
    for c in json.loads(orch(daemon, "container", "ls", "-a", "--format", "json").stdout):
        orch(daemon, "container", "rm", c["id"])
