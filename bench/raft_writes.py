#!/usr/bin/env python3
"""Write throughput and latency of the replicated store, against etcd.

In one run: a 3-manager orch cluster on loopback (fsync on) and a 3-member
etcd cluster on loopback, each driven by the same client: C concurrent
clients for D seconds, each write a 256-byte value (orch: create a Config;
etcd: POST /v3/kv/put through its JSON gateway). Prints writes/s, p50, p99
and the ratio orch/etcd; then the same for a single orch manager.

    python3 bench/raft_writes.py [--clients 64] [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests.harness.managers import ManagerCluster, free_port  # noqa: E402

VALUE = os.urandom(192)  # 256 bytes once base64-encoded


@dataclass
class Result:
    name: str
    writes: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rate(self) -> float:
        return self.writes / self.seconds

    def line(self) -> str:
        return (
            f"{self.name:<24} {self.rate:9.0f} writes/s   p50 {self.p50_ms:6.1f} ms   "
            f"p99 {self.p99_ms:6.1f} ms   ({self.writes} ok, {self.errors} errors in {self.seconds:.1f} s)"
        )


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


async def drive(
    name: str,
    url: str,
    body: Callable[[int, int], dict[str, str]],
    ok_status: set[int],
    clients: int,
    duration: float,
) -> Result:
    lat: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration
    conn = aiohttp.TCPConnector(limit=clients)

    async def client(cid: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < stop_at:
            t0 = time.monotonic()
            try:
                async with session.post(url, json=body(cid, i)) as r:
                    await r.read()
                    if r.status in ok_status:
                        lat.append(time.monotonic() - t0)
                    else:
                        errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            i += 1

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        await asyncio.gather(*(client(c, s) for c in range(clients)))
    secs = time.monotonic() - t0
    return Result(name, len(lat), errors, secs, _pct(lat, 0.5), _pct(lat, 0.99))


def orch_body(run: str) -> Callable[[int, int], dict[str, str]]:
    data = base64.b64encode(VALUE).decode()
    return lambda c, i: {"name": f"{run}-{c}-{i}", "data": data}


def etcd_body() -> Callable[[int, int], dict[str, str]]:
    val = base64.b64encode(base64.b64encode(VALUE)).decode()
    return lambda c, i: {"key": base64.b64encode(f"k-{c}-{i}".encode()).decode(), "value": val}


def bench_orch(size: int, clients: int, duration: float) -> Result:
    with ManagerCluster(size) as cl:
        leader = cl.leader(timeout=20)
        # Warm up connections and the leader's first entry.
        asyncio.run(drive("warmup", f"{leader.url}/v1/configs", orch_body("warm"), {201}, 4, 0.5))
        return asyncio.run(
            drive(
                f"orch {size}-manager",
                f"{leader.url}/v1/configs",
                orch_body("bench"),
                {201},
                clients,
                duration,
            )
        )


class EtcdCluster:
    def __init__(self, size: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="orch-bench-etcd-")
        self.ports = [(free_port(), free_port()) for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> str:
        initial = ",".join(f"e{i}=http://127.0.0.1:{pp}" for i, (_, pp) in enumerate(self.ports))
        for i, (cp, pp) in enumerate(self.ports):
            log = open(os.path.join(self.dir, f"e{i}.log"), "wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        "etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.dir, f"e{i}"),
                        "--listen-client-urls", f"http://127.0.0.1:{cp}",
                        "--advertise-client-urls", f"http://127.0.0.1:{cp}",
                        "--listen-peer-urls", f"http://127.0.0.1:{pp}",
                        "--initial-advertise-peer-urls", f"http://127.0.0.1:{pp}",
                        "--initial-cluster", initial, "--initial-cluster-state", "new",
                        "--log-level", "error",
                    ],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
        url = f"http://127.0.0.1:{self.ports[0][0]}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if b'"true"' in r.read():
                        return url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("etcd cluster did not become healthy")
            time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def bench_etcd(clients: int, duration: float) -> Result:
    if shutil.which("etcd") is None:
        raise SystemExit("etcd not found: apt-get install etcd-server")
    cl = EtcdCluster(3)
    try:
        url = cl.start() + "/v3/kv/put"
        asyncio.run(drive("warmup", url, etcd_body(), {200}, 4, 0.5))
        return asyncio.run(drive("etcd 3-member", url, etcd_body(), {200}, clients, duration))
    finally:
        cl.stop()


def _median(rs: list[Result], name: str) -> Result:
    by_rate = sorted(rs, key=lambda r: r.rate)
    mid = by_rate[len(by_rate) // 2]
    p99 = sorted(r.p99_ms for r in rs)[len(rs) // 2]
    p50 = sorted(r.p50_ms for r in rs)[len(rs) // 2]
    return Result(name, mid.writes, mid.errors, mid.seconds, p50, p99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3, help="alternating orch/etcd rounds; medians are reported")
    ap.add_argument("--skip-etcd", action="store_true")
    a = ap.parse_args()
    print(f"{a.clients} concurrent clients, {a.duration:.0f} s per round, {a.rounds} rounds, "
          f"256-byte values, fsync on")
    orch3: list[Result] = []
    etcd: list[Result] = []
    for i in range(a.rounds):
        orch3.append(bench_orch(3, a.clients, a.duration))
        print(f"  round {i + 1}: {orch3[-1].line()}", flush=True)
        if not a.skip_etcd:
            etcd.append(bench_etcd(a.clients, a.duration))
            print(f"  round {i + 1}: {etcd[-1].line()}", flush=True)
    o = _median(orch3, "orch 3-manager (median)")
    print(o.line())
    if etcd:
        e = _median(etcd, "etcd 3-member (median)")
        print(e.line())
        print(
            f"ratio orch/etcd: writes/s {o.rate / e.rate:.2f}x   "
            f"p99 {o.p99_ms / e.p99_ms:.2f}x (lower is better)   "
            f"p50 {o.p50_ms / e.p50_ms:.2f}x"
        )
    print(bench_orch(1, a.clients, a.duration).line().replace("orch 1-manager", "orch 1-manager   "))


if __name__ == "__main__":
    main()
