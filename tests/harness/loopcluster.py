"""A cluster of real `orch daemon` processes on loopback, for service tests.

Each node has its own data dir, unix socket, manager port (127.0.0.1),
cgroup parent and runtime root, so nodes never collide; all of them reach the
test registry on loopback. The first node runs `orch init`, the others join
with tokens. `close()` stops the daemons and removes everything they left:
containers (which outlive daemons by design), mounts, cgroups, directories.

For tests that need separate network stacks (partitions, pauses of whole
hosts) see the netns fleet in tests/harness/fleet.py.
"""

from __future__ import annotations

import json

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fixtures.cgroups import remove_cgroup_parent

REPO = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopNode:
    name: str
    dir: Path
    port: int
    cgroup_parent: str
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> Path:
        return self.dir / "orch.sock"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(self.dir / "data"),
                "--socket", str(self.sock), "--cgroup-parent", self.cgroup_parent, "--hostname", self.name,
                "--listen-addr", self.addr, *self.extra]

    def start(self) -> None:
        self.sock.unlink(missing_ok=True)
        with open(self.dir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        deadline = time.monotonic() + 20
        while not self.sock.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no socket after 20 s: {self.log_tail()}")
            time.sleep(0.05)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join((self.dir / "daemon.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def orch(self, *args: str, timeout: float = 120, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(self.sock), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"orch {' '.join(args)} on {self.name} failed ({r.returncode}): "
                                 f"{r.stderr.strip()}\n--- {self.name} log ---\n{self.log_tail()}")
        return r

    def json(self, *args: str) -> Any:
        return json.loads(self.orch(*args, "--format", "json").stdout)


class LoopCluster:
    def __init__(self, n: int, *, registry: str | None = None, heartbeat: float = 1.0,
                 managers: int = 1) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="orch-loop-"))
        tag = uuid.uuid4().hex[:6]
        extra = ["--heartbeat-period", str(heartbeat)]
        if registry:
            extra += ["--insecure-registry", registry]
        self.nodes = []
        for i in range(n):
            d = self.base / f"n{i + 1}"
            d.mkdir()
            self.nodes.append(LoopNode(f"node{i + 1}", d, free_port(), f"orch-t{tag}-{i + 1}", list(extra)))
        self.manager_count = managers

    def up(self) -> LoopCluster:
        for node in self.nodes:
            node.start()
        first = self.nodes[0]
        first.orch("init", "--advertise-addr", first.addr, "--listen-addr", first.addr)
        wt = first.orch("join-token", "-q", "worker").stdout.strip()
        mt = first.orch("join-token", "-q", "manager").stdout.strip()
        for i, node in enumerate(self.nodes[1:], start=1):
            tok = mt if i < self.manager_count else wt
            node.orch("join", "--token", tok, "--listen-addr", node.addr, "--advertise-addr", node.addr, first.addr)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.nodes[0].json("node", "ls")
            if len(nodes) == len(self.nodes) and all(n["status"]["state"] == "ready" for n in nodes):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes not ready: {[(n['description']['hostname'], n['status']['state']) for n in nodes]}")
            time.sleep(0.2)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        for node in self.nodes:
            rt = node.dir / "data" / "engine" / "runtime"
            if rt.is_dir():
                r = subprocess.run(["runc", "--root", str(rt), "list", "-q"], capture_output=True, text=True)
                for cid in r.stdout.split():
                    subprocess.run(["runc", "--root", str(rt), "delete", "-f", cid], capture_output=True)
        subprocess.run(["pkill", "-9", "-f", f"conmon.*{self.base}"], capture_output=True)
        time.sleep(0.2)
        with open("/proc/mounts") as f:
            mounts = [line.split()[1] for line in f if str(self.base) in line]
        for m in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        for node in self.nodes:
            for _ in range(20):
                try:
                    remove_cgroup_parent(node.cgroup_parent)
                    break
                except OSError:
                    time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LoopCluster:
        try:
            return self.up()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def leftovers(base: str) -> list[str]:
    """Mounts or conmon processes of a cluster that should be gone."""
    out = []
    with open("/proc/mounts") as f:
        out += [line.split()[1] for line in f if base in line]
    r = subprocess.run(["pgrep", "-af", "conmon"], capture_output=True, text=True)
    out += [line for line in r.stdout.splitlines() if base in line]
    return out



