"""Start real `orch daemon` manager processes on loopback, for tests and
benchmarks: free ports, one data dir each, kill -9 / restart helpers, and
cleanup of every process the harness started."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ManagerProc:
    node_id: int
    addr: str
    data_dir: str
    socket_path: str
    log_path: str
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def start(self) -> None:
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
        logf.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                self.proc.wait(10)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def status(self) -> dict[str, Any] | None:
        try:
            return self.get("/v1/cluster/status")["raft"]
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


@dataclass
class ManagerCluster:
    size: int = 3
    extra_args: list[str] = field(default_factory=list)
    base_dir: str | None = None
    nodes: list[ManagerProc] = field(default_factory=list)
    _own_dir: bool = False

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="orch-managers-")
            self._own_dir = True
        ports = [free_port() for _ in range(self.size)]
        cluster = ",".join(f"{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports))
        for i, p in enumerate(ports):
            nid = i + 1
            d = os.path.join(self.base_dir, f"m{nid}")
            os.makedirs(d, exist_ok=True)
            sock = os.path.join(d, "orch.sock")
            args = [
                sys.executable, "-m", "cli.main", "daemon",
                "--node-id", str(nid),
                "--data-dir", d,
                "--listen-addr", f"127.0.0.1:{p}",
                "--initial-cluster", cluster,
                "--socket", sock,
                *self.extra_args,
            ]
            self.nodes.append(
                ManagerProc(nid, f"127.0.0.1:{p}", d, sock, os.path.join(d, "daemon.log"), args)
            )

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def node(self, node_id: int) -> ManagerProc:
        return self.nodes[node_id - 1]

    def leader(self, timeout: float = 10.0, exclude: set[int] | frozenset[int] = frozenset()) -> ManagerProc:
        """Wait until the live nodes agree on one leader and return it."""
        deadline = time.monotonic() + timeout
        while True:
            seen: set[int] = set()
            for n in self.nodes:
                if not n.alive or n.node_id in exclude:
                    continue
                st = n.status()
                if st and st["leader"] and st["leader"] not in exclude:
                    seen.add(st["leader"])
            if len(seen) == 1:
                lid = seen.pop()
                ld = self.node(lid)
                st = ld.status()
                if ld.alive and st and st["role"] == "leader":
                    return ld
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- m{n.node_id}\n{n.log_tail()}" for n in self.nodes)
                raise TimeoutError(f"no single leader within {timeout}s\n{logs}")
            time.sleep(0.05)

    def stop(self) -> None:
        for n in self.nodes:
            n.kill(signal.SIGTERM) if n.alive else None
        for n in self.nodes:
            try:
                n.kill(signal.SIGKILL)
            except subprocess.TimeoutExpired:
                pass

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir and self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ManagerCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
