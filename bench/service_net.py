"""Service discovery, virtual-IP load balancing and the routing mesh (issue 11):
orch against the same workload on Docker Swarm, on the netns fleet
(tests/harness/fleet.py: each host a network namespace on one bridge).

One run, everything real:

- orch: three `orch daemon`s (o1 manager, o2 and o3 workers), an overlay
  network `benchnet`, two client tasks on worker o3 (`sleep`), and busybox
  httpd services (`sh -c '... exec busybox httpd -f -p 8000'`, each task
  serving its hostname): `web` (6 replicas on o1/o2, `-p 8080:8000`: on the
  routing mesh), `one` (1 replica on o2) and `webh` (1 replica on o2,
  published in host mode on 8082). o3 runs no server task.
- Docker Swarm: a private dockerd (Debian's docker.io; own data/exec root,
  socket, cgroup parent; no docker0) in fleet hosts s1 (manager), s2, s3
  (workers), the same services, placed alike, on an overlay network. This kernel has no
  IPVS (CONFIG_IP_VS unset), and Swarm's VIPs and its routing mesh (ingress)
  are built on IPVS: the run first tries both (a VIP-mode service, an
  ingress-published one) and prints what it saw and what dockerd logged; the
  comparison then uses Swarm's `--endpoint-mode dnsrr` (the name resolves to
  the task addresses) and host-mode publishing (`--publish mode=host`: only
  nodes with a task answer). Swarm's dockerds run with iptables on (rules
  inside their fleet hosts' namespaces only): host-mode ports are iptables
  DNAT rules there.
- Both sides get the same image (one layer: the host's static busybox) from
  one registry on fleet host `reg`, and the same flags where both have them
  (`--stop-signal KILL`: busybox httpd as PID 1 ignores SIGTERM; update
  parallelism 1, delay 0; the rest defaults).
- Clients: the host's python. Names are asked of 127.0.0.11 in the client
  task's namespace (dnslib), as the task's libc would (orch: the namespace at
  /run/netns/<prefix>task-<id>; Swarm: the container's, through its pid).
  The load generator is the same for both sides: asyncio, raw HTTP/1.0 GET,
  one connection per request, N connections in a closed loop (or paced to a
  rate), bounded by time and by a request count; a request fails on any
  error, a 2 s timeout or a status other than 200. It runs in fleet host
  `ul` (on the underlay, no daemon) and makes the sockets of a path that
  starts in a client task in that task's namespace (setns around socket()).

Figures:

(a) discovery: --services services of 1 replica (on worker o2, resp. s2),
    created one at a time with `service create -d` (returns once the service
    is accepted), orch and Swarm taking turns going first. From the CLI
    returning, a probe in the client task's namespace on worker o3 (s3) asks
    the name
    every 10 ms until it resolves, then GETs the address it got every 10 ms
    (connect timeout 100 ms) until a 200. p50/p99 of both, and the task's own
    RUNNING timestamp for the breakdown. Goals: orch p99 to the first 200 <=
    1 s, and <= 1/3 of Swarm's.
(b) requests/s from the client task through the name (orch: its VIP; Swarm
    dnsrr: the task addresses, resolved once, used round-robin) against
    straight to one task's address: for `one` (1 replica: both ways reach the
    same single backend, so the ratio is the VIP's own cost; goal >= 0.9) and
    for `web` (6 replicas, shown beside). The direct path runs from the
    second client task: from one client, connections to one backend through
    its VIP and straight to it reuse each other's ports while the backend
    still holds them in TIME_WAIT, and as the client's TCP timestamp offset
    depends on the destination it connected to (the VIP or the task), the
    backend drops such SYNs as old duplicates (PAWS; TcpExtPAWSTimewait on
    the backend, TCPSynRetrans on the client): 1 s stalls that halved both
    paths within a minute when they shared a client.
(c) the same from the underlay (host ul) to a node's address: orch's routing
    mesh on 8080 through o3 (no task) and o2 (3 tasks), host mode on both
    sides (o2:8082, s2:8082); against "direct": the same busybox httpd run
    straight in o2's (s2's) own namespace on port 8001 (no container, no NAT,
    no overlay). Goal: mesh >= 0.8 x direct (both nodes). The mesh over (b)'s
    task-to-task direct is printed too.
(d) failed requests during a rolling update of `web` (6 replicas, one at a
    time) under paced load (200 requests/s per client, resolving the name
    before each request, so Swarm's dnsrr clients follow the task changes),
    from the client task, and (orch) through the mesh from the underlay via
    o3. --update-rounds updates per side, sides taking turns. Goal: 0
    (Swarm's reported).

(b) and (c): every path of both sides runs in one load generator, taking
turns in --slice slices until each had --seconds, each round starting the
cycle elsewhere; --rounds rounds; figures are medians over rounds. Others
using the machine's CPUs then weigh on all paths alike; how busy the CPUs
were just before each round (this run idle) is printed. On a 2-core machine
the client, the servers and the kernel share the cores (busy ~100% during a
round): requests/s compares the CPU each path costs per request.

Everything the run makes (fleet namespaces, daemons, containers, mounts,
cgroups, dockerd state, temp dirs) is removed at the end, also on Ctrl-C or
SIGTERM; a final check lists anything left.

    python3 bench/service_net.py                          # ~10 min on 2 cores
    python3 bench/service_net.py --services 10 --rounds 3 --seconds 2 --update-rounds 1 --json
    python3 bench/service_net.py --skip-swarm --skip d
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import errno
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from container_start import PrivateDockerd, Teardown
    from tests.harness.fleet import Fleet, Host

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from overlay import FleetRun, fmt, log, pct, swarm_unavailable  # noqa: E402  (stdlib only at import)

HTTP_PORT = 8000
MESH_PORT = 8080
CHECK_PORT = 8081  # Swarm's ingress check
HOST_PORT = 8082  # host-mode publishing (both sides)
UNDERLAY_PORT = 8001
NET = "benchnet"
ORCH_SUBNET = "10.93.0.0/24"
SWARM_SUBNET = "10.94.0.0/24"
IMAGE_REPO = "bench/httpd"
IMAGE_TAG = "latest"
WEB_REPLICAS = 6
HTTPD = (f"busybox mkdir -p /tmp/www && busybox hostname > /tmp/www/index.html && "
         f"exec busybox httpd -f -p {HTTP_PORT} -h /tmp/www")
GOAL_A_P99_S = 1.0
GOAL_A_SWARM = 1 / 3
GOAL_B = 0.9
GOAL_C = 0.8
REQUEST_TIMEOUT = 2.0
PROBE_CONNECT_TIMEOUT = 0.1
PROBE_RETRY = 0.01
PROBE_ARP_RETRANS_MS = 50
DISCOVERY_TIMEOUT = 60.0  # seconds a new service may take to answer before it counts as failed
UPDATE_RATE = 200.0  # requests/s per load generator during a rolling update
UPDATE_CONNS = 4
WARMUP_S = 0.2  # uncounted load per path before an interleaved run
OUTSIDE = ("/run/docker/plugins", "/run/docker", "/run/xtables.lock")


# -- inside a namespace: DNS, one GET, the load generator, the discovery probe ----------------


_CLONE_NEWNET = 0x40000000


class Netns:
    """Sockets made in a network namespace other than this process's: the thread enters it for the socket()
    call only (a socket stays in the namespace it was made in). None: this process's own."""

    def __init__(self, path: str | None) -> None:
        import ctypes

        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path else -1
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC) if path else -1
        self._libc = ctypes.CDLL(None, use_errno=True)

    def _setns(self, fd: int) -> None:
        import ctypes

        if self._libc.setns(fd, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns: {os.strerror(e)}")

    def socket(self, kind: int) -> socket.socket:
        if self.fd < 0:
            return socket.socket(socket.AF_INET, kind)
        self._setns(self.fd)
        try:
            return socket.socket(socket.AF_INET, kind)
        finally:
            self._setns(self.home)


def _sock(ns: Netns | None, kind: int) -> socket.socket:
    return ns.socket(kind) if ns is not None else socket.socket(socket.AF_INET, kind)


async def dns_a(name: str, timeout: float = 0.5, ns: Netns | None = None) -> tuple[str, list[str]]:
    """(rcode, A addresses) of one query to 127.0.0.11 in the namespace."""
    from dnslib import QTYPE, RCODE, DNSRecord

    loop = asyncio.get_running_loop()
    q = DNSRecord.question(name)
    s = _sock(ns, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        s.connect(("127.0.0.11", 53))
        await loop.sock_sendall(s, q.pack())
        async with asyncio.timeout(timeout):
            while True:
                r = DNSRecord.parse(await loop.sock_recv(s, 4096))
                if r.header.id == q.header.id:
                    break
        return RCODE[r.header.rcode], [str(a.rdata) for a in r.rr if a.rtype == QTYPE.A]
    except TimeoutError:
        return "TIMEOUT", []
    except OSError as e:
        return type(e).__name__, []
    finally:
        s.close()


async def http_get(ip: str, port: int, timeout: float, connect_timeout: float | None = None,
                   ns: Netns | None = None) -> tuple[str, str]:
    """One GET / over HTTP/1.0 from the namespace: ("ok", body) on a 200, else (what failed, "")."""
    loop = asyncio.get_running_loop()
    s = _sock(ns, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        async with asyncio.timeout(timeout):
            if connect_timeout is not None:
                async with asyncio.timeout(connect_timeout):
                    await loop.sock_connect(s, (ip, port))
            else:
                await loop.sock_connect(s, (ip, port))
            await loop.sock_sendall(s, b"GET / HTTP/1.0\r\n\r\n")
            buf = b""
            while chunk := await loop.sock_recv(s, 65536):
                buf += chunk
    except TimeoutError:
        return "timeout", ""
    except OSError as e:
        return os_error(e), ""
    finally:
        s.close()
    if not buf:
        return "empty reply", ""
    if buf[9:12] != b"200":
        return f"status {buf[9:12].decode(errors='replace')}", ""
    return "ok", buf.partition(b"\r\n\r\n")[2].decode(errors="replace").strip()


def os_error(e: OSError) -> str:
    """ConnectionRefusedError, or the errno's name where Python has no class for it (EHOSTUNREACH)."""
    if type(e) is OSError and e.errno is not None and e.errno in errno.errorcode:
        return errno.errorcode[e.errno]
    return type(e).__name__


@dataclass
class LoadSpec:
    """What one load path does (passed as JSON on the load generator's command line)."""

    key: str = ""
    netns: str = ""  # the client's network namespace (a path); "": the load generator's own
    targets: list[str] = field(default_factory=list)  # "ip:port", used round-robin
    name: str = ""  # or a name asked of 127.0.0.11 ...
    port: int = HTTP_PORT
    resolve: str = "once"  # ... once (its addresses then round-robin) or before each request (the first address)
    conns: int = 8
    seconds: float = 3.0  # time on this path (over all its slices)
    max_requests: int = 50_000
    rate: float = 0.0  # requests/s over all connections; 0: as fast as it goes (closed loop)
    stop_file: str = ""  # end early once this file exists


class Runner:
    """One path's load and counters; run() may be called for several time slices."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.errors: collections.Counter[str] = collections.Counter()
        self.bodies: collections.Counter[str] = collections.Counter()
        self.lat: list[float] = []
        self.failures: list[tuple[float, str, str]] = []
        self.ok = self.started = self.rr = 0
        self.elapsed = 0.0
        self.targets: list[tuple[str, int]] = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in spec.targets]
        self.error = ""
        self.ns = Netns(spec.netns) if spec.netns else None

    def reset(self) -> None:
        """Forget the counts (after a warm-up)."""
        self.errors.clear()
        self.bodies.clear()
        self.lat.clear()
        self.failures.clear()
        self.ok = self.started = 0
        self.elapsed = 0.0

    async def prepare(self) -> None:
        if not self.targets and self.spec.resolve == "once":
            rcode, addrs = await dns_a(self.spec.name, 2.0, self.ns)
            if not addrs:
                self.error = f"{self.spec.name} did not resolve ({rcode})"
            self.targets = [(a, self.spec.port) for a in addrs]

    def _failed(self, kind: str, ip: str) -> None:
        self.errors[kind] += 1
        if len(self.failures) < 200:
            self.failures.append((time.time(), kind, ip))

    async def one(self) -> None:
        ts = time.monotonic()
        if not self.targets:
            rcode, addrs = await dns_a(self.spec.name, 1.0, self.ns)
            if not addrs:
                self._failed(f"dns {rcode}", "")
                return
            ip, port = addrs[0], self.spec.port
        else:
            ip, port = self.targets[self.rr % len(self.targets)]
            self.rr += 1
        kind, body = await http_get(ip, port, REQUEST_TIMEOUT, None, self.ns)
        if kind == "ok":
            self.ok += 1
            self.lat.append(time.monotonic() - ts)
            if len(self.bodies) < 64 or body in self.bodies:
                self.bodies[body] += 1
        else:
            self._failed(kind, ip)

    async def run(self, seconds: float) -> None:
        """spec.conns connections for `seconds` (or to the stop file, or the request cap); in-flight requests
        are waited for and their time counted."""
        spec = self.spec
        if self.error:
            return
        t0 = time.monotonic()
        end = t0 + seconds
        stop = False
        gap = spec.conns / spec.rate if spec.rate > 0 else 0.0

        async def worker(i: int) -> None:
            nonlocal stop
            nxt = time.monotonic() + gap * i / spec.conns
            while not stop:
                now = time.monotonic()
                if now >= end or self.started >= spec.max_requests:
                    break
                if spec.stop_file and self.started % 50 == 0 and os.path.exists(spec.stop_file):
                    stop = True
                    break
                if gap:
                    if now < nxt:
                        await asyncio.sleep(nxt - now)
                    nxt += gap
                self.started += 1
                await self.one()

        await asyncio.gather(*(worker(i) for i in range(spec.conns)))
        self.elapsed += time.monotonic() - t0

    def result(self) -> dict[str, Any]:
        lat = sorted(self.lat)
        return {"ok": self.ok, "fail": sum(self.errors.values()), "elapsed_s": self.elapsed,
                "rps": self.ok / self.elapsed if self.elapsed > 0 else float("nan"),
                "p50_ms": pct(lat, 50) * 1000 if lat else float("nan"),
                "p99_ms": pct(lat, 99) * 1000 if lat else float("nan"),
                "errors": dict(self.errors), "answered_by": len(self.bodies), "error": self.error,
                "targets": [f"{a}:{p}" for a, p in self.targets], "failures": self.failures[:50]}


async def _loads(specs: list[LoadSpec], slice_s: float) -> dict[str, Any]:
    """Several paths from this namespace, interleaved in slices of slice_s seconds (each cycle starting one
    path further), until each has had its spec.seconds: background load that comes and goes then weighs on
    all of them alike. One path: one slice of its whole time."""
    runners = [Runner(sp) for sp in specs]
    for r in runners:
        await r.prepare()
    if len(runners) > 1:  # warm up (neighbour entries, conntrack, caches): a short uncounted run per path
        for r in runners:
            await r.run(WARMUP_S)
            r.reset()
    cpu0 = os.times()
    t0 = time.monotonic()
    if len(runners) == 1:
        await runners[0].run(specs[0].seconds)
    else:
        cycles = max(1, round(max(sp.seconds for sp in specs) / slice_s))
        for c in range(cycles):
            k = c % len(runners)
            for r in runners[k:] + runners[:k]:
                await r.run(r.spec.seconds / cycles)
    wall = time.monotonic() - t0
    cpu1 = os.times()
    return {"paths": {r.spec.key: r.result() for r in runners}, "wall_s": wall,
            "client_cpu_pct": 100.0 * ((cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)) / wall}


def paced(stop_file: str, *, name: str = "", targets: list[str] | None = None, resolve: str = "once") -> LoadSpec:
    """The load during a rolling update: UPDATE_RATE requests/s until stop_file exists (600 s at most)."""
    return LoadSpec(targets=targets or [], name=name, resolve=resolve, conns=UPDATE_CONNS, rate=UPDATE_RATE,
                    seconds=600.0, max_requests=int(UPDATE_RATE * 600), stop_file=stop_file)


def loadgen_main(arg: str) -> None:
    j = json.loads(arg)
    specs = [LoadSpec(**x) for x in j["specs"]]
    print(json.dumps(asyncio.run(_loads(specs, j["slice"]))), flush=True)


def probe_main() -> None:
    """Read "NAME T0" lines on stdin; for each, ask 127.0.0.11 for NAME every
    PROBE_RETRY s until it resolves, then GET its first address until a 200;
    print {"name", "resolved", "ok", "addr", ...} (epoch seconds)."""
    for p in Path("/proc/sys/net/ipv4/neigh").glob("*/retrans_time_ms"):
        if p.parent.name != "lo":
            p.write_text(str(PROBE_ARP_RETRANS_MS))
    asyncio.run(_probe())


async def _probe() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def discover(name: str, port: int, timeout: float) -> None:
        out: dict[str, Any] = {"name": name, "got": time.time(), "dns_tries": 0, "http_tries": 0}
        deadline = time.monotonic() + timeout
        addrs: list[str] = []
        while time.monotonic() < deadline:
            out["dns_tries"] += 1
            rcode, addrs = await dns_a(name, 0.2)
            if addrs:
                out["resolved"], out["addr"], out["addrs"] = time.time(), addrs[0], addrs
                break
            out["last_rcode"] = rcode
            await asyncio.sleep(PROBE_RETRY)
        while addrs and time.monotonic() < deadline:
            out["http_tries"] += 1
            kind, _ = await http_get(addrs[0], port, 1.0, PROBE_CONNECT_TIMEOUT)
            if kind == "ok":
                out["ok"] = time.time()
                break
            out["last_error"] = kind
            await asyncio.sleep(PROBE_RETRY)
        print(json.dumps(out), flush=True)

    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        name, port, timeout = line.split()
        t = asyncio.create_task(discover(name, int(port), float(timeout)))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- running clients in namespaces (from the bench) -------------------------------------------


def in_netns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={ns}", "--", sys.executable, str(Path(__file__).resolve()), *argv]


def start_load(ns: str, specs: list[LoadSpec], slice_s: float = 0.5) -> subprocess.Popen[str]:
    arg = json.dumps({"specs": [asdict(sp) for sp in specs], "slice": slice_s})
    return subprocess.Popen(in_netns(ns, "--loadgen", arg), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=ROOT)


def finish_load(p: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate(timeout=10)
        return {"error": "the load generator overran its time"}
    try:
        return dict(json.loads(out.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {"error": f"the load generator exited {p.returncode}: {err.strip()[-400:]}"}


class Probe:
    """The discovery probe, running in a client namespace."""

    def __init__(self, ns: str, td: Teardown, pids: list[int]) -> None:
        self.proc = subprocess.Popen(in_netns(ns, "--probe"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True, cwd=ROOT)
        pids.append(self.proc.pid)
        td.push("stop a discovery probe", self.stop)
        self.buf = b""
        self.results: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 30
        while not any(m.get("ready") for m in self._lines(0.2)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the probe in {ns} did not start")

    def _lines(self, wait: float) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if select.select([fd], [], [], wait)[0]:
            self.buf += os.read(fd, 1 << 16)
        *full, self.buf = self.buf.split(b"\n")
        return [json.loads(x) for x in full if x.strip()]

    def discover(self, name: str, port: int = HTTP_PORT, timeout: float = DISCOVERY_TIMEOUT) -> dict[str, Any]:
        """Until the probe gives up (after `timeout` s) or has a 200 from the name."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{name} {port} {timeout}\n".encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout + 10
        while time.monotonic() < deadline:
            for m in self._lines(0.2):
                if "name" in m:
                    self.results[m["name"]] = m
            if name in self.results:
                return self.results[name]
            if self.proc.poll() is not None:
                raise RuntimeError("the discovery probe exited")
        raise RuntimeError(f"the probe gave no answer for {name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def cpu_busy_pct(window: float) -> float:
    """How busy the machine's CPUs were over `window` seconds (% of all cores)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    t0, i0 = sample()
    time.sleep(window)
    t1, i1 = sample()
    return 100.0 * (1 - (i1 - i0) / (t1 - t0)) if t1 > t0 else float("nan")


class CpuMeter:
    """Machine CPU busy % between start() and stop()."""

    def __init__(self) -> None:
        self.t = self.i = 0

    @staticmethod
    def _sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    def start(self) -> None:
        self.t, self.i = self._sample()

    def stop(self) -> float:
        t, i = self._sample()
        return 100.0 * (1 - (i - self.i) / (t - self.t)) if t > self.t else float("nan")


# -- figures (pure) ---------------------------------------------------------------------------


@dataclass
class Discovery:
    """(a) one service: seconds from `service create -d` returning."""

    side: str
    name: str
    index: int
    position: int  # 0: this side went first for this service
    created: float  # epoch s, the CLI returned
    resolve_s: float = float("nan")
    ok_s: float = float("nan")
    running_s: float = float("nan")  # the task's RUNNING timestamp (its agent/daemon)
    addr: str = ""
    dns_tries: int = 0
    http_tries: int = 0
    busy_before_pct: float = float("nan")  # machine CPU in the 0.2 s before the create (this run idle)
    error: str = ""


@dataclass
class Load:
    """(b), (c) one load run."""

    path: str
    round: int
    position: int
    rps: float = float("nan")
    ok: int = 0
    fail: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    busy_before_pct: float = float("nan")
    busy_during_pct: float = float("nan")
    client_cpu_pct: float = float("nan")
    answered_by: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error: str = ""


@dataclass
class Update:
    """(d) one rolling update under load."""

    side: str
    round: int
    started: float = float("nan")  # epoch s, the update command was given
    update_s: float = float("nan")
    loads: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if a == a and b == b and b > 0 else float("nan")


def discovery_stats(ds: list[Discovery], side: str) -> dict[str, Any]:
    mine = [d for d in ds if d.side == side]
    ok = [d.ok_s for d in mine if d.ok_s == d.ok_s]
    res = [d.resolve_s for d in mine if d.resolve_s == d.resolve_s]
    run = [d.running_s for d in mine if d.running_s == d.running_s]
    r2o = [d.ok_s - d.running_s for d in mine if d.ok_s == d.ok_s and d.running_s == d.running_s]
    missing = len(mine) - len(ok)
    return {"services": len(mine), "answered": len(ok),
            "resolve_p50_s": pct(res, 50), "resolve_p99_s": pct(res, 99),
            "ok_p50_s": pct(ok, 50), "ok_p99_s": pct(ok, 99) if not missing else float("inf"),
            "ok_max_s": max(ok, default=float("nan")),
            "running_p50_s": pct(run, 50), "running_p99_s": pct(run, 99),
            "busy_before_p50_pct": median([d.busy_before_pct for d in mine]),
            "run_to_ok_p50_s": pct(r2o, 50), "run_to_ok_p99_s": pct(r2o, 99)}


def load_medians(loads: list[Load]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for s in loads:
        out.setdefault(s.path, []).append(s.rps)
    return {p: median(v) for p, v in out.items()}


def goals(disc: dict[str, dict[str, Any]], med: dict[str, float],
          updates: list[Update]) -> list[dict[str, Any]]:
    """MET/NOT MET per goal; met is None when the figure is missing."""
    out: list[dict[str, Any]] = []

    def add(goal: str, value: float, met: bool | None, detail: str = "") -> None:
        out.append({"goal": goal, "value": value, "met": None if value != value else met, "detail": detail})

    o, s = disc.get("orch"), disc.get("swarm")
    if o:
        v = o["ok_p99_s"]
        add(f"(a) create -> name resolves on another host and first HTTP 200 through the VIP: orch p99 <= "
            f"{GOAL_A_P99_S:g} s", v, v <= GOAL_A_P99_S, "s")
        if s:
            r = ratio(v, s["ok_p99_s"]) if s["ok_p99_s"] != float("inf") else 0.0
            add("(a) orch p99 <= 1/3 x Swarm's (dnsrr) p99", r, r <= GOAL_A_SWARM, "orch/Swarm")
    r1 = ratio(med.get("orch.vip1", float("nan")), med.get("orch.direct", float("nan")))
    add(f"(b) requests/s through the VIP >= {GOAL_B:g} x straight to the task (1 replica: same backend)", r1,
        r1 >= GOAL_B, "vip/direct")
    for key, where in (("orch.mesh_notask", "via o3, no task"), ("orch.mesh_task", "via o2, with tasks")):
        r = ratio(med.get(key, float("nan")), med.get("orch.underlay", float("nan")))
        add(f"(c) requests/s through the routing mesh from the underlay ({where}) >= {GOAL_C:g} x direct", r,
            r >= GOAL_C, "mesh/direct")
    ou = [u for u in updates if u.side == "orch"]
    if ou:
        fails = sum(int(ld.get("fail", 0)) for u in ou for ld in u.loads.values())
        total = fails + sum(int(ld.get("ok", 0)) for u in ou for ld in u.loads.values())
        broken = [u.error for u in ou if u.error] + [str(ld["error"]) for u in ou for ld in u.loads.values()
                                                     if ld.get("error")]
        add("(d) failed requests during a rolling update of 6 replicas under load (VIP and mesh): orch == 0",
            float(fails), None if broken else fails == 0,
            f"failed of {total}" + (f"; not judged: {broken[0][:200]}" if broken else ""))
    return out


# -- the image ------------------------------------------------------------------------------------


def build_images(work: Path) -> Any:
    """One layer: the host's static busybox and its applet links (container_start's), root user."""
    from container_start import IMAGE_CONFIG, busybox_layer
    from tests.fixtures.oci_build import build_image, make_layer

    return build_image([make_layer(busybox_layer(), "gzip", docker=True)], IMAGE_CONFIG, docker=True)


# -- orch -----------------------------------------------------------------------------------------


class OrchSide:
    """Three orch daemons (o1 manager, o2 o3 workers), the network, client (o3), web (o1, o2), one, webh (o2)."""

    name = "orch"

    def __init__(self, fleet: Fleet, reg: str, td: Teardown) -> None:
        from tests.harness.fleet_cluster import OrchFleet

        self.fleet, self.td = fleet, td
        self.h1, self.h2, self.h3 = fleet["o1"], fleet["o2"], fleet["o3"]
        self.o = OrchFleet(fleet, heartbeat=1.0, extra=["--insecure-registry", reg])
        self.image = f"{reg}/{IMAGE_REPO}:{IMAGE_TAG}"
        self.services: list[str] = []
        self.net_id = ""
        self.client_ns = self.client2_ns = ""
        self.one_ip = ""
        self.notes: list[str] = []
        self.checks: dict[str, str] = {}

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        from cli.client import Endpoint, request

        return request(Endpoint(socket=str(self.h1.socket_path)), method, path, body, timeout=timeout)

    def tasks(self, svc: str) -> list[dict[str, Any]]:
        return [t for t in self.api("GET", f"/v1/tasks?service={svc}") if t["desired_state"] == "running"]

    def node_names(self) -> dict[str, str]:
        return {n["id"]: n["description"]["hostname"] for n in self.api("GET", "/v1/nodes")}

    def addr(self, t: dict[str, Any]) -> str:
        for n in t.get("networks") or []:
            if n["network_id"] == self.net_id and n.get("addresses"):
                return str(n["addresses"][0].split("/")[0])
        return ""

    def wait_running(self, svc: str, n: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            ts = [t for t in self.tasks(svc) if t["status"]["state"] == "running"]
            if len(ts) == n:
                return ts
            if time.monotonic() > deadline:
                raise RuntimeError(f"orch: {svc}: {len(ts)} of {n} tasks running after {timeout:.0f} s")
            time.sleep(0.3)

    def create(self, name: str, *flags: str, detach: bool = False, timeout: float = 180) -> None:
        self.services.append(name)
        self.o.orch(self.h1, "service", "create", "--name", name, "--network", NET, "--stop-signal", "KILL",
                    *(["-d"] if detach else []), *flags, self.image, "sh", "-c", HTTPD, timeout=timeout)

    def up(self) -> None:
        """The cluster: three daemons, o1 the manager (also used by bench/stack_deploy.py)."""
        h1, h2, h3 = self.h1, self.h2, self.h3
        self.td.push("stop the orch daemons", self.stop_daemons)
        for h in (h1, h2, h3):
            self.o.start(h)
        self.o.init_and_join([h1], [h2, h3])
        self.o.wait_nodes(h1, {"o1": "ready", "o2": "ready", "o3": "ready"})

    def start(self) -> None:
        h1, h2, h3 = self.h1, self.h2, self.h3
        self.up()
        self.td.push("remove the orch services and network", self.remove_all)
        self.o.orch(h1, "network", "create", "--subnet", ORCH_SUBNET, NET)
        self.net_id = next(n["id"] for n in self.api("GET", "/v1/networks") if n["spec"]["name"] == NET)
        self.services.append("client")
        self.o.orch(h1, "service", "create", "--name", "client", "--replicas", "2", "--network", NET,
                    "--constraint", "node.hostname==o3", "--stop-signal", "KILL", self.image, "sleep", "1000000",
                    timeout=180)
        self.create("web", "--replicas", str(WEB_REPLICAS), "-p", f"{MESH_PORT}:{HTTP_PORT}", "--constraint",
                    "node.hostname!=o3", "--update-parallelism", "1", "--update-delay", "0s")
        self.create("one", "--constraint", "node.hostname==o2")
        self.create("webh", "--publish", f"mode=host,published={HOST_PORT},target={HTTP_PORT}", "--constraint",
                    "node.hostname==o2")
        nodes = self.node_names()
        clients = sorted(self.wait_running("client", 2), key=lambda t: t["slot"] or 0)
        self.client_ns, self.client2_ns = (f"/run/netns/{h3.name_prefix}task-{t['id']}" for t in clients)
        for ns in (self.client_ns, self.client2_ns):
            if not os.path.exists(ns):
                raise RuntimeError(f"orch: the client task's network namespace {ns} is not there")
        web = self.wait_running("web", WEB_REPLICAS)
        (one,) = self.wait_running("one", 1)
        self.wait_running("webh", 1)
        self.one_ip = self.addr(one)
        where = collections.Counter(nodes[t["node_id"]] for t in web)
        svc = self.api("GET", "/v1/services/web")
        vip = next((v["addr"] for v in svc["endpoint"]["virtual_ips"] if v["network_id"] == self.net_id), "?")
        self.notes.append(f"orch: o1 {h1.addr} manager, o2 {h2.addr} and o3 {h3.addr} (client task) workers; network "
                          f"{NET} {ORCH_SUBNET}; web VIP {vip}, tasks {dict(where)}, -p {MESH_PORT}:{HTTP_PORT} "
                          f"(ingress); one on o2 at {self.one_ip}; webh: host mode {HOST_PORT}:{HTTP_PORT} on o2")

    # (a)
    def create_detached(self, name: str) -> float:
        self.create(name, "--constraint", "node.hostname==o2", detach=True)
        return time.time()

    def running_s(self, name: str, created: float) -> float:
        ts = [t for t in self.tasks(name) if t["status"]["state"] == "running"]
        return ts[0]["status"]["timestamp"] - created if ts else float("nan")

    def remove(self, names: list[str]) -> None:
        self.o.orch(self.h1, "service", "rm", *names, timeout=120)
        for n in names:
            self.services.remove(n)
        from cli.client import APIError

        deadline = time.monotonic() + 120
        for n in names:
            while time.monotonic() < deadline:
                try:
                    if not self.api("GET", f"/v1/tasks?service={n}"):
                        break
                except APIError:  # the service is gone, and its tasks with it
                    break
                time.sleep(0.5)
        self.settle_containers()

    def settle_containers(self, timeout: float = 60) -> None:
        """Until each host runs only the containers of the services left."""
        want = sum(len(self.tasks(s)) for s in self.services)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            have = sum(len(json.loads(self.o.orch(h, "container", "ls", "--format", "json", check=False).stdout
                                      or "[]")) for h in (self.h1, self.h2, self.h3))
            if have <= want:
                return
            time.sleep(0.5)

    # (b), (c)
    def paths(self, ul_ns: str, under: str) -> dict[str, tuple[str, LoadSpec]]:
        return {
            "orch.vip": (self.client_ns, LoadSpec(name="web")),
            "orch.vip1": (self.client_ns, LoadSpec(name="one")),
            "orch.direct": (self.client2_ns, LoadSpec(targets=[f"{self.one_ip}:{HTTP_PORT}"])),
            "orch.mesh_notask": (ul_ns, LoadSpec(targets=[f"{self.h3.addr}:{MESH_PORT}"])),
            "orch.mesh_task": (ul_ns, LoadSpec(targets=[f"{self.h2.addr}:{MESH_PORT}"])),
            "orch.hostmode": (ul_ns, LoadSpec(targets=[f"{self.h2.addr}:{HOST_PORT}"])),
            "orch.underlay": (ul_ns, LoadSpec(targets=[under])),
        }

    # (d)
    def update_loads(self, ul_ns: str, stop: str) -> dict[str, tuple[str, LoadSpec]]:
        return {"vip (name web, resolved per request)": (self.client_ns, paced(stop, name="web", resolve="each")),
                "mesh (underlay -> o3:8080, no task)": (ul_ns, paced(stop, targets=[f"{self.h3.addr}:{MESH_PORT}"]))}

    def update(self, rnd: int) -> float:
        before = {t["id"] for t in self.tasks("web")}
        t0 = time.monotonic()
        self.o.orch(self.h1, "service", "update", "--env", f"V={rnd + 1}", "--update-parallelism", "1",
                    "--update-delay", "0s", "web", timeout=600)
        took = time.monotonic() - t0
        now = self.wait_running("web", WEB_REPLICAS)
        if {t["id"] for t in now} & before:
            raise RuntimeError("orch: web tasks not all replaced by the update")
        return took

    def remove_all(self) -> None:
        for h in (self.h1, self.h2, self.h3):
            if not h.alive():
                return
        if self.services:
            self.o.orch(self.h1, "service", "rm", *reversed(self.services), check=False, timeout=120)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            left = sum(len(json.loads(self.o.orch(h, "container", "ls", "-a", "--format", "json",
                                                   check=False).stdout or "[]")) for h in (self.h1, self.h2, self.h3))
            if not left:
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            if self.o.orch(self.h1, "network", "rm", NET, check=False).returncode == 0:
                break
            time.sleep(0.5)

    def stop_daemons(self) -> None:
        for h in (self.h3, self.h2, self.h1):
            h.stop(timeout=10)


# -- Docker Swarm --------------------------------------------------------------------------------


class SwarmSide:
    """A private dockerd in fleet hosts s1 (manager), s2, s3; one swarm; an overlay network."""

    name = "swarm"

    def __init__(self, fleet: Fleet, reg: str, td: Teardown) -> None:
        self.fleet, self.reg, self.td = fleet, reg, td
        self.h1, self.h2, self.h3 = fleet["s1"], fleet["s2"], fleet["s3"]
        self.d: dict[str, PrivateDockerd] = {}
        self.image = f"{reg}/{IMAGE_REPO}:{IMAGE_TAG}"
        self.services: list[str] = []
        self.client_ns = self.client2_ns = ""
        self.one_ip = ""
        self.notes: list[str] = []
        self.checks: dict[str, str] = {}
        self.hostmode = False

    def dockerd(self, host: Host) -> PrivateDockerd:
        """A dockerd in the host's namespace: state under the host's dir, its cgroup parent;
        iptables on (rules inside this namespace only), no docker0."""
        from container_start import DOCKERD, PrivateDockerd

        d = PrivateDockerd(Path(host.dir) / "d", self.reg, host.cgroup_parent)
        self.d[host.name] = d
        d.outside_before = {p: os.path.exists(p) for p in OUTSIDE}
        (d.root / "cli").mkdir(parents=True, exist_ok=True)
        cfg = d.root / "daemon.json"
        cfg.write_text(json.dumps({"deprecated-key-path": str(d.root / "key.json")}))
        self.td.push(f"clean up after dockerd on {host.name}", d.force_cleanup)

        def stop() -> None:
            host.stop(timeout=30)  # SIGTERM: dockerd stops its containerd and shims with it

        self.td.push(f"stop dockerd on {host.name}", stop)
        d.proc = host.start([
            DOCKERD, "--data-root", str(d.root / "data"), "--exec-root", str(d.exec_root),
            "--pidfile", str(d.root / "dockerd.pid"), "-H", f"unix://{d.sock}", "--config-file", str(cfg),
            "--cgroup-parent", d.cgroup_parent, "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--insecure-registry", self.reg, "--bridge=none", "--ip6tables=false",
        ], env={"DOCKER_CONFIG": str(d.root / "cli")})
        deadline = time.monotonic() + 60
        while True:
            if not host.alive():
                raise RuntimeError(f"dockerd on {host.name} exited:\n{host.log_tail(20)}")
            if d.sock.exists() and d.docker("version", timeout=10).returncode == 0:
                return d
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd on {host.name} did not come up:\n{host.log_tail(20)}")
            time.sleep(0.2)

    def docker(self, host: str, *a: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = self.d[host].docker(*a, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(a)} on {host}: {r.stderr.strip()[-600:]}\n"
                               f"--- dockerd log on {host} ---\n{self.fleet[host].log_tail(15)}")
        return r

    def alive(self, h: str) -> bool:
        return h in self.d and self.fleet[h].alive()

    def create(self, name: str, *flags: str, detach: bool = True, cmd: tuple[str, ...] = ()) -> None:
        self.services.append(name)
        self.docker("s1", "service", "create", "--name", name, "--network", NET, "--stop-signal", "KILL",
                    "--detach" if detach else "--detach=false", *flags, self.image,
                    *(cmd or ("sh", "-c", HTTPD)), timeout=300)

    def tasks(self, svc: str) -> list[dict[str, Any]]:
        ids = self.docker("s1", "service", "ps", svc, "--filter", "desired-state=running", "-q",
                          "--no-trunc").stdout.split()
        return json.loads(self.docker("s1", "inspect", "--type", "task", *ids).stdout or "[]") if ids else []

    def wait_running(self, svc: str, n: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            ts = [t for t in self.tasks(svc) if t["Status"]["State"] == "running"]
            if len(ts) == n:
                return ts
            if time.monotonic() > deadline:
                errs = {t["Status"].get("Err") or t["Status"].get("Message") for t in self.tasks(svc)}
                raise RuntimeError(f"swarm: {svc}: {len(ts)} of {n} tasks running after {timeout:.0f} s ({errs})")
            time.sleep(0.3)

    def addr(self, t: dict[str, Any]) -> str:
        for na in t.get("NetworksAttachments") or []:
            if na["Network"]["Spec"]["Name"] == NET and na.get("Addresses"):
                return str(na["Addresses"][0].split("/")[0])
        return ""

    def container_ns(self, host: str, svc: str, n: int) -> list[str]:
        """The network namespaces (through the containers' pids) of svc's n containers on host."""
        cids = self.docker(host, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={svc}").stdout.split()
        if len(cids) != n:
            raise RuntimeError(f"swarm: {len(cids)} containers of {svc} on {host}, wanted {n}")
        pids = self.docker(host, "inspect", "-f", "{{.State.Pid}}", *cids).stdout.split()
        return [f"/proc/{pid}/ns/net" for pid in sorted(pids, key=int)]

    def up(self) -> None:
        """The swarm: three dockerds, s1 the manager, nodes labelled h=<host> (also used by bench/stack_deploy.py)."""
        for h in (self.h1, self.h2, self.h3):
            self.dockerd(h)
        self.td.push("leave the swarm", self.leave)
        s1 = self.h1
        self.docker("s1", "swarm", "init", "--advertise-addr", s1.addr, "--listen-addr", f"{s1.addr}:2377",
                    timeout=90)
        token = self.docker("s1", "swarm", "join-token", "-q", "worker").stdout.strip()
        for h in (self.h2, self.h3):
            self.docker(h.name, "swarm", "join", "--token", token, "--advertise-addr", h.addr,
                        "--listen-addr", f"{h.addr}:2377", f"{s1.addr}:2377", timeout=90)
        deadline = time.monotonic() + 30
        while self.docker("s1", "node", "ls", "--format", "{{.Status}}").stdout.split() != ["Ready"] * 3:
            if time.monotonic() > deadline:
                raise RuntimeError("swarm nodes not Ready 30 s after join")
            time.sleep(0.3)
        # All hosts share one UTS namespace (one hostname): place by node label.
        for h in (self.h1, self.h2, self.h3):
            nid = self.docker(h.name, "info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
            self.docker("s1", "node", "update", "--label-add", f"h={h.name}", nid)

    def start(self) -> None:
        s1 = self.h1
        self.up()
        self.td.push("remove the swarm services and network", self.remove_all)
        self.docker("s1", "network", "create", "-d", "overlay", "--subnet", SWARM_SUBNET, NET)
        self.create("client", "--endpoint-mode", "dnsrr", "--replicas", "2", "--constraint", "node.labels.h==s3",
                    cmd=("sleep", "1000000"))
        self.create("web", "--endpoint-mode", "dnsrr", "--replicas", str(WEB_REPLICAS), "--constraint",
                    "node.labels.h!=s3", "--update-parallelism", "1", "--update-delay", "0s")
        self.create("one", "--endpoint-mode", "dnsrr", "--constraint", "node.labels.h==s2")
        self.create("webh", "--endpoint-mode", "dnsrr", "--publish",
                    f"mode=host,published={HOST_PORT},target={HTTP_PORT}", "--constraint", "node.labels.h==s2")
        self.wait_running("client", 2)
        self.client_ns, self.client2_ns = self.container_ns("s3", "client", 2)
        web = self.wait_running("web", WEB_REPLICAS)
        (one,) = self.wait_running("one", 1)
        self.wait_running("webh", 1)
        self.one_ip = self.addr(one)
        version = self.docker("s1", "version", "--format", "{{.Server.Version}}").stdout.strip()
        self.notes.append(f"swarm: dockerd {version} in s1 {s1.addr} (manager), s2 {self.h2.addr} and s3 "
                          f"{self.h3.addr} (client) workers; overlay {NET} {SWARM_SUBNET}; web (dnsrr) {len(web)} "
                          "tasks on s1/s2, "
                          f"one on s2 at {self.one_ip}; webh: host mode {HOST_PORT}:{HTTP_PORT} on s2")

    def ipvs_log(self) -> str:
        lines: list[str] = []
        for h in ("s1", "s2", "s3"):
            for ln in self.fleet[h].log_tail(4000).splitlines():
                low = ln.lower()
                if ("ipvs" in low or "net.ipv4.vs" in low or "ip_vs" in low) and len(lines) < 200:
                    lines.append(f"{h}: {ln.strip()}")
        # The distinct messages (without timestamps).
        seen: dict[str, str] = {}
        for ln in lines:
            msg = ln.split('msg="', 1)[-1].split('"', 1)[0] if 'msg="' in ln else ln
            seen.setdefault(msg.replace("\\", "")[:160], ln)
        return " | ".join(list(seen)[:4])

    def check_vip_and_mesh(self, probe: Probe, ul: Host) -> None:
        """Try what needs IPVS: a VIP-mode service and an ingress-published one; say what happened."""
        self.create("vipchk", "--constraint", "node.labels.h==s2")
        self.create("meshchk", "--constraint", "node.labels.h==s2", "--publish",
                    f"published={CHECK_PORT},target={HTTP_PORT}")
        try:
            self.wait_running("vipchk", 1, timeout=60)
            svc = json.loads(self.docker("s1", "service", "inspect", "vipchk").stdout)[0]
            vips = [v.get("Addr", "") for v in svc.get("Endpoint", {}).get("VirtualIPs", [])]
            r = probe.discover("vipchk", timeout=10)
            self.checks["vip"] = (f"a VIP-mode service (VIPs {vips}): its name resolved to {r.get('addrs')}; "
                                  + ("a GET through it answered" if "ok" in r else
                                     f"no GET through it answered in 10 s (last: {r.get('last_error', '?')})"))
        except RuntimeError as e:
            self.checks["vip"] = f"a VIP-mode service: {e}"
        try:
            self.wait_running("meshchk", 1, timeout=60)
            got = ul.run([sys.executable, str(Path(__file__).resolve()), "--once", f"{self.h2.addr}:{CHECK_PORT}",
                          f"{self.h3.addr}:{CHECK_PORT}"], timeout=30).stdout.strip()
            self.checks["mesh"] = (f"a service published on {CHECK_PORT} through the ingress routing mesh, GET from "
                                   f"the underlay to s2 (task) and s3 (no task): {got}")
        except RuntimeError as e:
            self.checks["mesh"] = f"a service published through the ingress routing mesh: {e}"
        log_seen = self.ipvs_log()
        if log_seen:
            self.checks["dockerd log"] = log_seen
        self.remove(["vipchk", "meshchk"])

    def check_hostmode(self, ul: Host) -> None:
        got = ul.run([sys.executable, str(Path(__file__).resolve()), "--once",
                      f"{self.h2.addr}:{HOST_PORT}", f"{self.h3.addr}:{HOST_PORT}"], timeout=30).stdout.strip()
        self.checks["host mode"] = (f"a service published in host mode on {HOST_PORT}, GET from the underlay to s2 "
                                    f"(task) and s3 (no task): {got}")
        self.hostmode = got.split(";")[0].strip().endswith("ok")

    # (a)
    def create_detached(self, name: str) -> float:
        self.create(name, "--endpoint-mode", "dnsrr", "--constraint", "node.labels.h==s2")
        return time.time()

    def running_s(self, name: str, created: float) -> float:
        from service_converge import parse_rfc3339

        ts = [t for t in self.tasks(name) if t["Status"]["State"] == "running"]
        return parse_rfc3339(ts[0]["Status"]["Timestamp"]) - created if ts else float("nan")

    def remove(self, names: list[str]) -> None:
        self.docker("s1", "service", "rm", *names, timeout=120)
        for n in names:
            self.services.remove(n)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            left = set()
            for h in ("s1", "s2", "s3"):
                left |= set(self.docker(h, "ps", "-a", "--format", '{{.Label "com.docker.swarm.service.name"}}')
                            .stdout.split())
            if not left & set(names):
                break
            time.sleep(0.5)

    # (b), (c)
    def paths(self, ul_ns: str, under: str) -> dict[str, tuple[str, LoadSpec]]:
        out = {
            "swarm.dnsrr": (self.client_ns, LoadSpec(name="web")),
            "swarm.dnsrr1": (self.client_ns, LoadSpec(name="one")),
            "swarm.direct": (self.client2_ns, LoadSpec(targets=[f"{self.one_ip}:{HTTP_PORT}"])),
        }
        if self.hostmode:
            out["swarm.hostmode"] = (ul_ns, LoadSpec(targets=[f"{self.h2.addr}:{HOST_PORT}"]))
        out["swarm.underlay"] = (ul_ns, LoadSpec(targets=[under]))
        return out

    # (d)
    def update_loads(self, ul_ns: str, stop: str) -> dict[str, tuple[str, LoadSpec]]:
        return {"dnsrr (name web, resolved per request)": (self.client_ns, paced(stop, name="web", resolve="each"))}

    def update(self, rnd: int) -> float:
        before = {t["ID"] for t in self.tasks("web")}
        t0 = time.monotonic()
        self.docker("s1", "service", "update", "--env-add", f"V={rnd + 1}", "--update-parallelism", "1",
                    "--update-delay", "0s", "--detach=false", "web", timeout=600)
        took = time.monotonic() - t0
        now = self.wait_running("web", WEB_REPLICAS)
        if {t["ID"] for t in now} & before:
            raise RuntimeError("swarm: web tasks not all replaced by the update")
        return took

    def remove_all(self) -> None:
        if not self.alive("s1"):
            return
        if self.services:
            self.docker("s1", "service", "rm", *self.services, check=False, timeout=120)
        deadline = time.monotonic() + 90
        for h in ("s1", "s2", "s3"):
            while self.alive(h) and self.docker(h, "ps", "-aq", check=False).stdout.split() \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
        while self.docker("s1", "network", "rm", NET, check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)

    def leave(self) -> None:
        for h in ("s3", "s2", "s1"):
            if self.alive(h):
                self.docker(h, "swarm", "leave", "--force", check=False, timeout=60)


# -- the underlay baseline: busybox httpd straight in a node's namespace ------------------------


class UnderlayHttpd:
    def __init__(self, host: Host, td: Teardown, pids: list[int]) -> None:
        from container_start import BUSYBOX

        www = Path(host.dir) / "www"
        www.mkdir(exist_ok=True)
        (www / "index.html").write_text(f"{host.name}-underlay\n")
        self.proc = subprocess.Popen(["nsenter", f"--net={host.netns_path}", "--", str(BUSYBOX), "httpd", "-f",
                                      "-p", f"{host.addr}:{UNDERLAY_PORT}", "-h", str(www)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        pids.append(self.proc.pid)
        td.push(f"stop the underlay httpd on {host.name}", self.stop)
        self.target = f"{host.addr}:{UNDERLAY_PORT}"
        for _ in range(100):
            if host.run(["ss", "-ltnH", f"sport = :{UNDERLAY_PORT}"]).stdout.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"busybox httpd on {host.name} did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def once_main(targets: list[str]) -> None:
    """One GET to each ip:port; prints "target -> result; ..."."""
    async def go() -> list[str]:
        out = []
        for t in targets:
            ip, port = t.rsplit(":", 1)
            kind, _ = await http_get(ip, int(port), 3.0)
            out.append(f"{t} {kind}")
        return out

    print("; ".join(asyncio.run(go())))


# -- report ---------------------------------------------------------------------------------------


LABELS = {
    "orch.vip1": "orch   name one -> its VIP (1 replica, o2)",
    "orch.direct": "orch   straight to one's task (2nd client)",
    "orch.vip": "orch   name web -> its VIP (6 replicas)",
    "swarm.dnsrr1": "Swarm  name one -> its task (dnsrr)",
    "swarm.direct": "Swarm  straight to one's task (2nd client)",
    "swarm.dnsrr": "Swarm  name web -> 6 tasks (dnsrr, rr)",
    "orch.mesh_notask": "orch   mesh -> o3:8080 (no task)",
    "orch.mesh_task": "orch   mesh -> o2:8080 (web tasks there)",
    "orch.hostmode": "orch   host mode -> o2:8082",
    "orch.underlay": "orch   direct: httpd in o2's netns",
    "swarm.hostmode": "Swarm  host mode -> s2:8082",
    "swarm.underlay": "Swarm  direct: httpd in s2's netns",
}
RATIOS = (  # key, numerator, denominator, what
    ("b.orch_vip1_over_direct", "orch.vip1", "orch.direct", "(b) orch VIP / direct, same single backend [goal]"),
    ("b.orch_vip6_over_direct", "orch.vip", "orch.direct", "(b) orch VIP over 6 replicas / direct to one"),
    ("b.swarm_dnsrr1_over_direct", "swarm.dnsrr1", "swarm.direct",
     "(b) Swarm dnsrr / direct, same single backend (same traffic: shows the noise)"),
    ("b.swarm_dnsrr6_over_direct", "swarm.dnsrr", "swarm.direct", "(b) Swarm dnsrr over 6 replicas / direct to one"),
    ("b.orch_vip6_over_swarm_dnsrr6", "orch.vip", "swarm.dnsrr", "(b) orch VIP / Swarm dnsrr, 6 replicas"),
    ("b.orch_direct_over_swarm_direct", "orch.direct", "swarm.direct", "(b) orch overlay / Swarm overlay, direct"),
    ("c.orch_mesh_notask_over_direct", "orch.mesh_notask", "orch.underlay",
     "(c) orch mesh via a node with no task / direct [goal]"),
    ("c.orch_mesh_task_over_direct", "orch.mesh_task", "orch.underlay",
     "(c) orch mesh via a node with tasks / direct [goal]"),
    ("c.orch_hostmode_over_direct", "orch.hostmode", "orch.underlay", "(c) orch host mode / direct"),
    ("c.swarm_hostmode_over_direct", "swarm.hostmode", "swarm.underlay", "(c) Swarm host mode / direct"),
    ("c.orch_mesh_notask_over_b_direct", "orch.mesh_notask", "orch.direct",
     "(c) orch mesh via no-task node / (b)'s task-to-task direct"),
)


def report(args: argparse.Namespace, disc: list[Discovery], loads: list[Load], updates: list[Update],
           notes: list[str], checks: dict[str, str], swarm_note: str, elapsed: float,
           problems: list[str]) -> dict[str, Any]:
    sides = sorted({d.side for d in disc})
    dstats = {s: discovery_stats(disc, s) for s in sides}
    med = load_medians(loads)
    nan = float("nan")
    ratios = {k: ratio(med.get(a, nan), med.get(b, nan)) for k, a, b, _ in RATIOS if a in med and b in med}
    if "orch" in dstats and "swarm" in dstats:
        ratios["a.orch_p99_over_swarm_p99"] = ratio(dstats["orch"]["ok_p99_s"], dstats["swarm"]["ok_p99_s"])
    return {
        "services": args.services, "rounds": args.rounds, "update_rounds": args.update_rounds,
        "seconds": args.seconds, "conns": args.conns,
        "discovery": dstats, "discovery_samples": [asdict(d) for d in disc],
        "loads": [asdict(s) for s in loads], "medians_rps": med, "ratios": ratios,
        "updates": [asdict(u) for u in updates],
        "goals": goals(dstats, med, updates), "swarm_note": swarm_note, "swarm_checks": checks,
        "notes": notes, "elapsed_s": elapsed, "cleanup_problems": problems,
    }


def print_report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    ds = res["discovery"]
    if ds:
        print(f"\n(a) discovery, {args.services} services of 1 replica created one at a time with `service create -d`;"
              " seconds from the CLI returning to: the task RUNNING (its own timestamp), the name resolving in the "
              "client's namespace on another host, the first HTTP 200 through what it resolved to")
        print(f"  {'':26} {'RUNNING p50':>11} {'p99':>6}  {'resolves p50':>12} {'p99':>6}  {'first 200 p50':>13} "
              f"{'p99':>6} {'max':>6}  {'RUNNING->200 p50':>16} {'p99':>6}")
        for side, name in (("orch", "orch (VIP)"), ("swarm", "Swarm (dnsrr)")):
            s = ds.get(side)
            if not s:
                continue
            label = f"{name}, {s['answered']}/{s['services']} answered"
            print(f"  {label:26} {fmt(s['running_p50_s'], '.3f'):>11} {fmt(s['running_p99_s'], '.3f'):>6}  "
                  f"{fmt(s['resolve_p50_s'], '.3f'):>12} {fmt(s['resolve_p99_s'], '.3f'):>6}  "
                  f"{fmt(s['ok_p50_s'], '.3f'):>13} {fmt(s['ok_p99_s'], '.3f'):>6} {fmt(s['ok_max_s'], '.3f'):>6}  "
                  f"{fmt(s['run_to_ok_p50_s'], '.3f'):>16} {fmt(s['run_to_ok_p99_s'], '.3f'):>6}")
        if "a.orch_p99_over_swarm_p99" in res["ratios"]:
            print(f"  first 200, orch p99 / Swarm p99 = {fmt(res['ratios']['a.orch_p99_over_swarm_p99'], '.3f')}")
        print("  machine CPU busy in the 0.2 s before each create (this run idle: others' load), median: "
              + ", ".join(f"{side} {fmt(s['busy_before_p50_pct'], '.0f')}%" for side, s in ds.items()))
        for d in [d for d in res["discovery_samples"] if d["error"]][:6]:
            print(f"  {d['side']} {d['name']}: {d['error']}")
    loads = [Load(**s) for s in res["loads"]]
    if loads:
        print(f"\n(b) from the client's namespace, (c) from the underlay (host ul): requests/s, HTTP/1.0 GET, one "
              f"connection per request, {args.conns} connections in a closed loop; all paths in one load generator "
              f"taking turns in {args.slice:g} s slices, {args.seconds:g} s per path and round, {args.rounds} rounds")
        print(f"  {'path':40} " + " ".join(f"{'r' + str(i + 1):>5}" for i in range(args.rounds))
              + f" {'median':>6}   ms p50/p99")
        for p, label in LABELS.items():
            ss = sorted((s for s in loads if s.path == p), key=lambda s: s.round)
            if not ss:
                continue
            print(f"  {label:40} " + " ".join(f"{fmt(s.rps, '.0f'):>5}" for s in ss)
                  + f" {fmt(res['medians_rps'][p], '.0f'):>6}   {fmt(median([s.p50_ms for s in ss]), '.1f'):>5}/"
                  f"{fmt(median([s.p99_ms for s in ss]), '.1f'):<6}"
                  + (f"   failed {sum(s.fail for s in ss)}" if any(s.fail for s in ss) else ""))
            for s in ss:
                if s.error or s.errors:
                    print(f"      round {s.round + 1}: {s.error} {s.errors}")
        per_round = sorted({(s.round, s.busy_before_pct, s.busy_during_pct, s.client_cpu_pct) for s in loads})
        print("  machine CPU busy per round, before (this run idle: others' load) / during; the load generator's CPU "
              "(% of one core): " + ", ".join(f"r{r + 1} {fmt(b, '.0f')}/{fmt(d, '.0f')}% {fmt(c, '.0f')}%"
                                              for r, b, d, c in per_round))
        print("  ratios of the medians:")
        for key, _, _, what in RATIOS:
            if key in res["ratios"]:
                print(f"    {what:72} {fmt(res['ratios'][key], '.3f')}")
    ups = res["updates"]
    if ups:
        print(f"\n(d) rolling update of web ({WEB_REPLICAS} replicas, parallelism 1, delay 0, --stop-signal KILL) "
              f"under paced load ({UPDATE_CONNS} connections, {UPDATE_RATE:.0f} requests/s per client); failed "
              "requests")
        for u in ups:
            if u["error"]:
                print(f"  {u['side']:5} round {u['round'] + 1}: {u['error']}")
            parts = []
            for k, ld in u["loads"].items():
                extra = f" {ld.get('errors')}" if ld.get("fail") else ""
                if ld.get("failures"):
                    extra += " at +" + ", +".join(f"{f[0] - u['started']:.1f}" for f in ld["failures"][:8]) + " s"
                if ld.get("error"):
                    extra += f" ({ld['error']})"
                parts.append(f"{k}: {ld.get('fail', 0)} of {ld.get('ok', 0) + ld.get('fail', 0)}{extra}")
            print(f"  {u['side']:5} round {u['round'] + 1} (the update took {fmt(u['update_s'], '.1f')} s): "
                  + "; ".join(parts))
    if res["swarm_note"]:
        print(f"\nSwarm: {res['swarm_note']}")
    if res["swarm_checks"]:
        print("\nSwarm on this kernel (no IPVS; what the run tried and saw):")
        for k, v in res["swarm_checks"].items():
            print(f"  {k}: {v}")
    if res["notes"]:
        print()
    for n in res["notes"]:
        print(f"note: {n}")
    print("\ngoals:")
    for g in res["goals"]:
        met = "n/a" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        print(f"  {met:8} {g['goal']}: {fmt(g['value'], '.3f')} ({g['detail']})")
    print(f"\nrun took {res['elapsed_s']:.0f} s")
    if res["cleanup_problems"]:
        print("LEFT BEHIND: " + "; ".join(res["cleanup_problems"]))
    else:
        print("cleanup check: no namespaces, processes, mounts, cgroups or files of this run left")


# -- main -----------------------------------------------------------------------------------------


def measure(ns: str, specs: list[LoadSpec], rnd: int, slice_s: float) -> list[Load]:
    """One load generator in `ns` running these paths interleaved; a Load per path."""
    busy = cpu_busy_pct(0.3)
    meter = CpuMeter()
    meter.start()
    got = finish_load(start_load(ns, specs, slice_s), sum(sp.seconds for sp in specs) + 60)
    during = meter.stop()
    out = []
    for i, sp in enumerate(specs):
        s = Load(sp.key, rnd, i, busy_before_pct=busy, busy_during_pct=during,
                 client_cpu_pct=got.get("client_cpu_pct", float("nan")))
        r = got.get("paths", {}).get(sp.key, {})
        s.error = str(got.get("error") or r.get("error") or "")[:300]
        s.rps, s.ok, s.fail = r.get("rps", float("nan")), r.get("ok", 0), r.get("fail", 0)
        s.p50_ms, s.p99_ms = r.get("p50_ms", float("nan")), r.get("p99_ms", float("nan"))
        s.answered_by, s.errors = r.get("answered_by", 0), r.get("errors", {})
        out.append(s)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=20, help="services for (a) (default 20)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of (b)/(c) (default 5)")
    ap.add_argument("--update-rounds", type=int, default=2, help="rolling updates per side in (d) (default 2)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per path and round in (b)/(c) (default 3)")
    ap.add_argument("--conns", type=int, default=8, help="concurrent connections in (b)/(c) (default 8)")
    ap.add_argument("--max-requests", type=int, default=50_000, help="request cap per path and round (default 50000)")
    ap.add_argument("--slice", type=float, default=0.5,
                    help="in (b)/(c) the paths take turns in slices of this many seconds (default 0.5)")
    ap.add_argument("--skip-swarm", action="store_true", help="no Docker Swarm side")
    ap.add_argument("--skip", default="", help="figures to skip, e.g. --skip a,d")
    ap.add_argument("--keep-logs", type=Path, help="copy the daemons' logs into this directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--once", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(args.loadgen)
        return 0
    if args.probe:
        probe_main()
        return 0
    if args.once:
        once_main(args.once)
        return 0
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    if skip - {"a", "b", "c", "d"}:
        ap.error("--skip takes a comma-separated subset of a,b,c,d")
    if min(args.services, args.rounds, args.update_rounds, args.conns, args.max_requests) < 1 or args.seconds <= 0:
        ap.error("--services, --rounds, --update-rounds, --conns, --max-requests and --seconds must be positive")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, containers)")
    for tool in ("nsenter", "nft", "runc", "conmon", "ss"):
        if shutil.which(tool) is None:
            ap.error(f"needs {tool} (Debian packages: util-linux nftables runc conmon iproute2)")
    try:
        import dnslib  # noqa: F401
    except ImportError:
        ap.error("needs the dnslib Python package (make install)")

    from tests.fixtures.registry import REGISTRY_BIN

    if not os.path.exists(REGISTRY_BIN):
        ap.error(f"needs {REGISTRY_BIN} (Debian package docker-registry)")
    swarm_note = swarm_unavailable(args.skip_swarm, host_ports=True)

    t_start = time.monotonic()
    hosts = ["reg", "ul", "o1", "o2", "o3"] + ([] if swarm_note else ["s1", "s2", "s3"])
    run = FleetRun("sn", hosts, outside=OUTSIDE, keep_logs=args.keep_logs)
    fleet, td, work, run_id, pids = run.fleet, run.td, run.work, run.run_id, run.pids
    disc: list[Discovery] = []
    loads: list[Load] = []
    updates: list[Update] = []
    notes: list[str] = []
    checks: dict[str, str] = {}
    problems: list[str] = []
    rc = 0
    try:
        fleet.up()
        log(f"fleet {run_id}: hosts {', '.join(f'{h.name}={h.addr}' for h in fleet)}")
        image = build_images(work)
        reg = run.serve_image(IMAGE_REPO, IMAGE_TAG, image)
        log(f"registry on host reg at {reg}")
        ul = fleet["ul"]
        log("orch: daemons, network, client, web (6), one")
        orch = OrchSide(fleet, reg, td)
        orch.start()
        notes += orch.notes
        pids += [h.pid for h in (orch.h1, orch.h2, orch.h3) if h.pid]
        sides: list[Any] = [orch]
        swarm: SwarmSide | None = None
        if not swarm_note:
            log("swarm: private dockerds, swarm, overlay, client, web (6), one, webh (host mode)")
            swarm = SwarmSide(fleet, reg, td)
            try:
                swarm.start()
                notes += swarm.notes
                sides.append(swarm)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                swarm_note = f"Swarm could not be set up here: {e}"
                log(swarm_note)
                swarm = None
            pids += [h.pid for h in (fleet["s1"], fleet["s2"], fleet["s3"]) if h.pid]
        probes = {s.name: Probe(s.client_ns, td, pids) for s in sides}
        if swarm is not None:
            log("swarm: trying a VIP-mode service and the ingress routing mesh (both need IPVS)")
            swarm.check_vip_and_mesh(probes["swarm"], ul)
            swarm.check_hostmode(ul)
            checks.update(swarm.checks)
            for k, v in checks.items():
                log(f"swarm {k}: {v[:300]}")

        if "a" not in skip:
            for i in range(args.services):
                order = sides if i % 2 == 0 else list(reversed(sides))
                for pos, side in enumerate(order):
                    name = f"svc{i + 1}"
                    busy = cpu_busy_pct(0.2)
                    created = side.create_detached(name)
                    d = Discovery(side.name, name, i, pos, created, busy_before_pct=busy)
                    try:
                        r = probes[side.name].discover(name)
                    except RuntimeError as e:
                        d.error = str(e)
                    else:
                        d.resolve_s = r.get("resolved", float("nan")) - created
                        d.ok_s = r.get("ok", float("nan")) - created
                        d.addr, d.dns_tries, d.http_tries = r.get("addr", ""), r["dns_tries"], r["http_tries"]
                        if "ok" not in r:
                            d.error = (f"no 200 within {DISCOVERY_TIMEOUT:.0f} s: last DNS {r.get('last_rcode')}, "
                                       f"last GET {r.get('last_error')}")
                    disc.append(d)
                    log(f"(a) {side.name} {name}: resolved {fmt(d.resolve_s, '.3f')} s, 200 {fmt(d.ok_s, '.3f')} s"
                        + (f" ({d.error})" if d.error else ""))
            for side in sides:
                for d in disc:
                    if d.side == side.name:
                        d.running_s = side.running_s(d.name, d.created)
                side.remove([d.name for d in disc if d.side == side.name])

        under = {"orch": UnderlayHttpd(fleet["o2"], td, pids).target}
        if swarm is not None:
            under["swarm"] = UnderlayHttpd(fleet["s2"], td, pids).target
        # One load generator (in host ul, the underlay client) runs every path of both sides, taking turns
        # in short slices; a path from a client task makes its sockets in that task's namespace.
        specs: dict[str, LoadSpec] = {}
        wanted = {k for k in ("b", "c") if k not in skip}
        for side in sides:
            for key, (ns, spec) in side.paths(ul.netns_path, under[side.name]).items():
                if ("c" if ns == ul.netns_path else "b") in wanted:
                    spec.key, spec.seconds, spec.conns, spec.max_requests = (key, args.seconds, args.conns,
                                                                             args.max_requests)
                    spec.netns = "" if ns == ul.netns_path else ns
                    specs[key] = spec
        order = [specs[k] for k in LABELS if k in specs]
        for rnd in range(args.rounds if order else 0):
            k = rnd * len(order) // args.rounds  # each round starts elsewhere in the cycle
            got = measure(ul.netns_path, order[k:] + order[:k], rnd, args.slice)
            loads += got
            log(f"round {rnd + 1}: " + ", ".join(f"{s.path} {fmt(s.rps, '.0f')}" for s in got)
                + f" req/s; CPU busy {fmt(got[0].busy_before_pct, '.0f')}% before, "
                f"{fmt(got[0].busy_during_pct, '.0f')}% during"
                + "".join(f"; {s.path}: {s.error or ''} {s.errors or ''}" for s in got if s.error or s.fail))

        if "d" not in skip:
            for rnd in range(args.update_rounds):
                order = sides if rnd % 2 == 0 else list(reversed(sides))
                for side in order:
                    u = Update(side.name, rnd)
                    stop = work / f"stop-{side.name}-{rnd}"
                    procs = {k: start_load(ns, [spec]) for k, (ns, spec) in
                             side.update_loads(ul.netns_path, str(stop)).items()}
                    pids += [p.pid for p in procs.values()]
                    try:
                        time.sleep(1.0)
                        u.started = time.time()
                        u.update_s = side.update(rnd)
                        time.sleep(1.0)
                    except (RuntimeError, AssertionError, subprocess.TimeoutExpired) as e:
                        u.error = str(e)[:500]
                    finally:
                        stop.touch()
                        for k, p in procs.items():
                            res = finish_load(p, 60)
                            u.loads[k] = res.get("paths", {}).get("") or {"error": res.get("error", "?")}
                    updates.append(u)
                    log(f"(d) {side.name} round {rnd + 1}: update {fmt(u.update_s, '.1f')} s; " + "; ".join(
                        f"{k}: {ld.get('fail')} failed of {ld.get('ok', 0) + ld.get('fail', 0)} {ld.get('errors')}"
                        for k, ld in u.loads.items()) + (f" ({u.error[:200]})" if u.error else ""))
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        rc = 130
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}")
        rc = 1
    finally:
        problems = run.close()
    if problems:
        rc = rc or 1
    res = report(args, disc, loads, updates, notes, checks, swarm_note, time.monotonic() - t_start, problems)
    if args.json:
        from container_start import _clean_json

        print(json.dumps(_clean_json(res), indent=2))
    else:
        print_report(args, res)
    return rc


if __name__ == "__main__":
    sys.exit(main())
