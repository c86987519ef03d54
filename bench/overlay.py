"""Overlay networks: throughput across hosts (orch vs the underlay vs Docker
Swarm) and how soon a new task is reachable from another host, on the netns
fleet (tests/harness/fleet.py: each host a network namespace on one bridge).

One run, everything real:

1. orch: two `orch daemon`s (host a: manager, host b: worker), an overlay
   network made with `orch network create`, and tasks of
   `orch service create --network` pinned to a host each: an iperf3 server
   task on b, a client task on a. iperf3 runs inside the containers: the
   image is built here from Debian's iperf3 binary and the libraries it
   links (plus busybox), served to the daemons by a registry on a fleet
   host; the client runs by exec in the client task (the API call behind
   `orch container exec`).
2. underlay: the same iperf3 binary between the two hosts' own addresses
   (host a -> host b, MTU 1500).
3. Docker Swarm: a private dockerd (Debian's docker.io; own data/exec root,
   pidfile, unix socket, --bridge=none --iptables=false, the host's cgroup
   parent) in each of two more fleet hosts, `docker swarm init/join` over
   the fleet's underlay, an attachable overlay network, and
   `docker run --network` of the same image (loaded with `docker load` from
   a tarball built here) on each host; client by `docker exec`. If Swarm's
   overlay cannot be built here, the output says why and the run goes on.

Each path gets --rounds runs of one TCP stream for --seconds; the order of
the paths rotates every round; figures are medians. Goals (issue "Overlay
networks"): orch >= 0.85 x the underlay and >= 1.1 x Swarm.

4. Reachability of a new task: a probe in a task's network namespace on
   host b (the host's python, entered with nsenter into the namespace orch
   made for that task) is started before a service pinned to host a is
   scaled up in steps to --tasks tasks (busybox answering TCP on 7000). The
   bench feeds the probe each new task's address as soon as the allocator
   gives it (the API polled every 0.1 s; before the task runs); the probe
   keeps trying (50 ms connect timeout, 10 ms between attempts) until the
   task answers. Per task: the time of that first answered exchange minus
   the RUNNING timestamp in the task's status (taken by host a's agent; same
   clock); negative when the task answered before its agent reported it
   RUNNING (peers learn an endpoint from ASSIGNED on). The probe's
   namespace has its ARP retransmit time set to 50 ms so an attempt made
   before host b learns the address delays the figure by <= 50 ms instead of
   up to 1 s. Goal: p99 <= 1 s.

Everything the run makes (fleet namespaces, daemons, containers, mounts,
cgroups, dockerd state, temp dirs) is removed at the end, also on Ctrl-C or
SIGTERM; a final check lists anything left.

    python3 bench/overlay.py                        # 5 rounds x 3 s, 50 tasks, with Swarm
    python3 bench/overlay.py --rounds 5 --seconds 5 --json
    python3 bench/overlay.py --skip-swarm --skip-latency
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import io
import json
import math
import os
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from container_start import PrivateDockerd, Teardown
    from tests.fixtures.oci_build import BuiltImage, TarBuilder
    from tests.harness.fleet import Fleet, Host

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

IPERF_PORT = 5201
PROBE_PORT = 7000
ORCH_SUBNET = "10.91.0.0/24"
SWARM_SUBNET = "10.92.0.0/24"
NET = "benchnet"
IMAGE_REPO = "bench/iperf"
IMAGE_TAG = "latest"
GOAL_UNDERLAY = 0.85
GOAL_SWARM = 1.1
GOAL_P99_S = 1.0
STEP_TIMEOUT = 60.0  # seconds a scale step may take until every new task answered
PROBE_CONNECT_TIMEOUT = 0.05
PROBE_RETRY = 0.01
PROBE_ARP_RETRANS_MS = 50
# Each latency task answers TCP on 7000 with its hostname (as in tests/services/test_fleet_networks.py).
SERVE = ("echo '#!/bin/sh' > /tmp/who; echo 'echo hi-$(hostname)' >> /tmp/who; "
         f"chmod 755 /tmp/who; exec nc -ll -p {PROBE_PORT} -e /tmp/who")
APPLETS = ("sh", "sleep", "nc", "hostname", "echo", "chmod", "cat", "ls", "ip", "ping", "true", "id", "ps")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the probe (runs inside a task's network namespace on host b) ------------------------------


def probe_main() -> None:
    """Read addresses on stdin; for each, try TCP to PROBE_PORT until a line
    starting with "hi-" comes back; print {"ip", "t", "attempts"} per address."""
    for p in glob.glob("/proc/sys/net/ipv4/neigh/*/retrans_time_ms"):
        if "/lo/" not in p:
            with open(p, "w") as f:
                f.write(str(PROBE_ARP_RETRANS_MS))
    asyncio.run(_probe())


async def _probe() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task[None]] = set()

    async def until_answered(ip: str) -> None:
        attempts = 0
        while True:
            attempts += 1
            w = None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ip, PROBE_PORT), PROBE_CONNECT_TIMEOUT)
                line = await asyncio.wait_for(r.readline(), 1.0)
                if line.startswith(b"hi-"):
                    t = time.time()
                    print(json.dumps({"ip": ip, "t": t, "attempts": attempts}), flush=True)
                    return
            except (OSError, asyncio.TimeoutError):
                pass
            finally:
                if w is not None:
                    w.close()
            await asyncio.sleep(PROBE_RETRY)

    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await reader.readline()
        ip = line.decode().strip()
        if not line or ip == "quit":
            break
        if ip:
            t = asyncio.create_task(until_answered(ip))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    for t in list(tasks):
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- figures (pure) ------------------------------------------------------------------------------


@dataclass
class Sample:
    """One iperf3 run."""

    path: str
    round: int
    position: int
    gbps: float = float("nan")
    retransmits: int | None = None
    mss: int | None = None
    error: str = ""


@dataclass
class Reach:
    """One latency task: when it ran, when host b first exchanged with it."""

    task_id: str
    address: str
    step: int
    fed_ts: float  # the bench gave the probe its address
    running_ts: float = float("nan")  # status.timestamp of RUNNING (host a's agent)
    exchange_ts: float = float("nan")  # the probe's first answered exchange
    attempts: int = 0

    @property
    def latency_s(self) -> float:
        return self.exchange_ts - self.running_ts


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def path_order(paths: list[str], rnd: int) -> list[str]:
    """Round r starts with path r (mod n): every path goes first, middle and last equally often."""
    k = rnd % len(paths)
    return paths[k:] + paths[:k]


def medians(samples: list[Sample]) -> dict[str, float]:
    out: dict[str, list[float]] = {}
    for s in samples:
        out.setdefault(s.path, []).append(s.gbps)
    return {p: median(v) for p, v in out.items()}


def goals(med: dict[str, float], reach: list[Reach] | None, n_tasks: int) -> list[dict[str, Any]]:
    """MET/NOT MET per goal; met is None when the figure is missing."""
    o, u, s = med.get("orch", float("nan")), med.get("underlay", float("nan")), med.get("swarm", float("nan"))
    out = []
    r_u = o / u if u == u and u > 0 else float("nan")
    out.append({"goal": f"orch overlay >= {GOAL_UNDERLAY:g} x underlay", "value": r_u,
                "met": None if r_u != r_u else r_u >= GOAL_UNDERLAY})
    r_s = o / s if s == s and s > 0 else float("nan")
    out.append({"goal": f"orch overlay >= {GOAL_SWARM:g} x Swarm overlay", "value": r_s,
                "met": None if r_s != r_s else r_s >= GOAL_SWARM})
    if reach is not None:
        lat = [r.latency_s for r in reach if r.latency_s == r.latency_s]
        missing = n_tasks - len(lat)
        p99 = pct(lat, 99) if not missing else float("inf")
        out.append({"goal": f"RUNNING on host a -> first TCP exchange from host b: p99 <= {GOAL_P99_S:g} s",
                    "value": p99, "met": None if not reach else (not missing and p99 <= GOAL_P99_S)})
    return out


# -- the image -------------------------------------------------------------------------------------


def _add_host_path(tb: TarBuilder, path: str, added: set[str]) -> None:
    """Put a host file into the layer at the same path, with every symlink on
    the way (Debian's merged /usr: /lib -> usr/lib and so on)."""
    parts = Path(path).parts[1:]
    cur = "/"
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        rel = cur[1:]
        if os.path.islink(cur):
            target = os.readlink(cur)
            if rel not in added:
                tb.symlink(rel, target)
                added.add(rel)
            resolved = target if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(cur), target))
            _add_host_path(tb, os.path.join(resolved, *parts[i + 1:]), added)
            return
        if rel in added:
            continue
        st = os.stat(cur)
        if i < len(parts) - 1:
            tb.dir(rel, mode=0o755)
        else:
            tb.file(rel, Path(cur).read_bytes(), mode=st.st_mode & 0o7777)
        added.add(rel)


def iperf_files() -> list[str]:
    """The iperf3 binary, the libraries it links and the dynamic loader, from ldd."""
    binary = shutil.which("iperf3")
    assert binary is not None
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    files = [binary]
    for line in out.splitlines():
        words = line.split()
        if "=>" in words:
            p = words[words.index("=>") + 1]
            if p.startswith("/"):
                files.append(p)
        elif words and words[0].startswith("/"):
            files.append(words[0])  # the loader
    return files


def build_images(work: Path) -> tuple[BuiltImage, Path, list[str]]:
    """The bench image (busybox + iperf3 and its libraries): for the registry
    (Docker schema 2) and as a `docker load` tarball; returns (image, tarball, files)."""
    from tests.fixtures.oci_build import BUSYBOX, TarBuilder, build_image, make_layer

    tb = TarBuilder()
    added: set[str] = set()
    for d, mode in (("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)):
        tb.dir(d, mode=mode)
        added.add(d)
    files = iperf_files()
    for f in files:
        _add_host_path(tb, f, added)
    # busybox next to iperf3 (in /usr/bin on a merged-/usr host), applets as symlinks to it.
    bb_real = os.path.realpath(str(BUSYBOX))
    _add_host_path(tb, str(BUSYBOX), added)  # also /bin -> usr/bin where /usr is merged: scripts say #!/bin/sh
    bb_dir = os.path.dirname(bb_real)[1:]
    for applet in APPLETS:
        rel = f"{bb_dir}/{applet}"
        if rel not in added:
            tb.symlink(rel, "busybox")
            added.add(rel)
    tb.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    tb.file("etc/group", "root:x:0:\n")
    layer = make_layer(tb, "gzip", docker=True)
    config = {"Env": ["PATH=/usr/bin:/bin:/usr/sbin:/sbin"], "Cmd": ["/bin/sh"]}
    image = build_image([layer], config, docker=True)
    # docker-archive (what `docker save` writes): config, one uncompressed layer, manifest.json.
    cfg_name = image.config.digest.split(":", 1)[1] + ".json"
    layer_name = layer.diff_id.split(":", 1)[1] + "/layer.tar"
    manifest = [{"Config": cfg_name, "RepoTags": [f"{IMAGE_REPO}:{IMAGE_TAG}"], "Layers": [layer_name]}]
    tarball = work / "image.tar"
    with tarfile.open(tarball, "w") as tf:
        for name, data in ((cfg_name, image.config.data), (layer_name, layer.tar),
                           ("manifest.json", json.dumps(manifest).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    return image, tarball, files


def iperf_json(text: str) -> dict[str, Any]:
    """Gbit/s received, retransmits and MSS from `iperf3 -J` client output."""
    try:
        j = json.loads(text)
    except ValueError:
        raise RuntimeError(f"iperf3 printed no JSON: {text[-400:]!r}") from None
    if "error" in j:
        raise RuntimeError(f"iperf3: {j['error']}")
    end = j["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end.get("sum_sent", {}).get("retransmits"),
            "mss": j.get("start", {}).get("tcp_mss_default")}


# -- orch ------------------------------------------------------------------------------------------


class OrchSide:
    """Two orch daemons on hosts a and b, the network and the iperf3 tasks."""

    def __init__(self, fleet: Fleet, reg: str, td: Teardown, args: argparse.Namespace) -> None:
        from tests.harness.fleet_cluster import OrchFleet

        self.fleet, self.td, self.args = fleet, td, args
        self.a, self.b = fleet["a"], fleet["b"]
        self.o = OrchFleet(fleet, heartbeat=1.0, extra=["--insecure-registry", reg])
        self.image = f"{reg}/{IMAGE_REPO}:{IMAGE_TAG}"
        self.services: list[str] = []
        self.srv_ip = ""
        self.cli_cid = ""
        self.notes: list[str] = []

    def api(self, host: Host, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        from cli.client import Endpoint, request

        return request(Endpoint(socket=str(host.socket_path)), method, path, body, timeout=timeout)

    def tasks(self, svc: str) -> list[dict[str, Any]]:
        return [t for t in self.api(self.a, "GET", f"/v1/tasks?service={svc}") if t["desired_state"] == "running"]

    def node_names(self) -> dict[str, str]:
        return {n["id"]: n["description"]["hostname"] for n in self.api(self.a, "GET", "/v1/nodes")}

    def start(self) -> None:
        a, b = self.a, self.b
        self.td.push("stop the orch daemons", self.stop_daemons)
        for h in (a, b):
            self.o.start(h)
        self.o.init_and_join([a], [b])
        self.o.wait_nodes(a, {"a": "ready", "b": "ready"})
        self.td.push("remove the orch services and network", self.remove_all)
        self.o.orch(a, "network", "create", "--subnet", ORCH_SUBNET, NET)
        self.service("ipsrv", "b", ["iperf3", "-s", "-p", str(IPERF_PORT)])
        self.service("ipcli", "a", ["sleep", "3600"])
        nodes = self.node_names()
        (srv,), (cli,) = self.tasks("ipsrv"), self.tasks("ipcli")
        if (nodes[srv["node_id"]], nodes[cli["node_id"]]) != ("b", "a"):
            raise RuntimeError(f"orch placed ipsrv on {nodes[srv['node_id']]}, ipcli on {nodes[cli['node_id']]}")
        self.srv_ip = srv["networks"][0]["addresses"][0].split("/")[0]
        self.cli_cid = cli["status"]["container_id"]
        self.notes.append(f"orch: manager+worker on host a ({a.addr}), worker on host b ({b.addr}); network "
                          f"{NET} {ORCH_SUBNET}; iperf3 server task on b at {self.srv_ip}, client task on a")
        self.check_task_netns()

    def check_task_netns(self) -> None:
        """What differs from a Docker container's network namespace, noted beside the figures."""
        out = self.api(self.a, "POST", f"/v1/containers/{self.cli_cid}/exec",
                       {"cmd": ["sh", "-c", "cat /sys/class/net/eth0/mtu; ip -o link show lo"]})["output"]
        mtu, _, lo = out.partition("\n")
        self.notes.append(f"orch: task eth0 MTU {mtu.strip()}")
        if ",UP" not in lo and "<UP" not in lo:
            self.notes.append("orch PROBLEM: loopback is down in the task's network namespace (127.0.0.1 and the "
                              "127.0.0.11 resolver in its resolv.conf are unreachable); Docker brings it up")
        if "nat" in self.a.run(["nft", "list", "tables"]).stdout + self.a.run(["nft", "list", "ruleset"]).stdout:
            self.notes.append("orch: hosts a and b carry orch's egress nftables nat table (masquerade), so "
                              "conntrack tracks every VXLAN and underlay packet there; the Swarm hosts have no "
                              "firewall rules (dockerd --iptables=false)")

    def service(self, name: str, host: str, cmd: list[str], replicas: int = 1) -> None:
        self.services.append(name)
        self.o.orch(self.a, "service", "create", "--name", name, "--replicas", str(replicas), "--network", NET,
                    "--constraint", f"node.hostname=={host}", "--stop-signal", "KILL", self.image, *cmd,
                    timeout=180)

    def iperf(self, seconds: int) -> dict[str, Any]:
        res = self.api(self.a, "POST", f"/v1/containers/{self.cli_cid}/exec",
                       {"cmd": ["iperf3", "-c", self.srv_ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]},
                       timeout=seconds + 60)
        if res["exit_code"] != 0:
            raise RuntimeError(f"iperf3 in the orch client task exited {res['exit_code']}: {res['output'][-400:]}")
        return iperf_json(res["output"])

    def remove_all(self) -> None:
        for h in (self.a, self.b):
            if not h.alive():
                return
        for name in reversed(self.services):
            self.o.orch(self.a, "service", "rm", name, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            left = sum(len(json.loads(self.o.orch(h, "container", "ls", "-a", "--format", "json",
                                                   check=False).stdout or "[]")) for h in (self.a, self.b))
            if not left:
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            if self.o.orch(self.a, "network", "rm", NET, check=False).returncode == 0:
                break
            time.sleep(0.5)

    def stop_daemons(self) -> None:
        for h in (self.b, self.a):
            h.stop(timeout=10)

    # -- 4: from RUNNING on a to the first exchange from b --

    def reachability(self) -> tuple[list[Reach], list[str], list[float]]:
        args = self.args
        notes: list[str] = []
        self.service("probe", "b", ["sleep", "3600"])
        self.service("lat", "a", ["sh", "-c", SERVE], replicas=0)
        (probe_task,) = self.tasks("probe")
        ns = f"/run/netns/{self.b.name_prefix}task-{probe_task['id']}"
        if not os.path.exists(ns):
            raise RuntimeError(f"the probe task's network namespace {ns} is not there")
        proc = subprocess.Popen(["nsenter", f"--net={ns}", "--", sys.executable, str(Path(__file__).resolve()),
                                 "--probe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                start_new_session=True, cwd=ROOT)

        def stop_probe() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

        self.td.push("stop the probe", stop_probe)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, out_fd = proc.stdin, proc.stdout.fileno()
        buf = b""

        def send(line: str) -> None:
            stdin.write(line.encode() + b"\n")
            stdin.flush()

        def lines(wait: float) -> list[dict[str, Any]]:
            """What the probe printed, waiting up to `wait` seconds for it."""
            nonlocal buf
            if select.select([out_fd], [], [], wait)[0]:
                buf += os.read(out_fd, 1 << 16)
            *full, buf = buf.split(b"\n")
            return [json.loads(x) for x in full if x.strip()]

        deadline = time.monotonic() + 30
        while not any(m.get("ready") for m in lines(0.2)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the probe did not start")
        notes.append(f"probe: host python in the probe task's namespace on host b ({ns}), ARP retransmit "
                     f"{PROBE_ARP_RETRANS_MS} ms there; connect timeout {PROBE_CONNECT_TIMEOUT * 1000:.0f} ms, "
                     f"{PROBE_RETRY * 1000:.0f} ms between attempts")
        reach: dict[str, Reach] = {}
        by_ip: dict[str, Reach] = {}
        scaled_at: list[float] = []
        target = 0
        step = 0
        while target < args.tasks:
            step += 1
            target = min(args.tasks, target + args.step)
            scaled_at.append(time.time())
            self.o.orch(self.a, "service", "scale", f"lat={target}", "-d")
            t_end = time.monotonic() + STEP_TIMEOUT
            while time.monotonic() < t_end:
                for t in self.tasks("lat"):
                    r = reach.get(t["id"])
                    if r is None:
                        addrs = t.get("networks") and t["networks"][0].get("addresses")
                        if not addrs:
                            continue
                        ip = addrs[0].split("/")[0]
                        r = reach[t["id"]] = by_ip[ip] = Reach(t["id"], ip, step, time.time())
                        send(ip)
                    if r.running_ts != r.running_ts and t["status"]["state"] == "running":
                        r.running_ts = t["status"]["timestamp"]
                for m in lines(0.1):
                    if "ip" in m and m["ip"] in by_ip:
                        by_ip[m["ip"]].exchange_ts = m["t"]
                        by_ip[m["ip"]].attempts = m["attempts"]
                done = [r for r in reach.values() if r.running_ts == r.running_ts and r.exchange_ts == r.exchange_ts]
                if len(done) >= target:
                    break
            log(f"orch: lat scaled to {target}: {sum(1 for r in reach.values() if r.exchange_ts == r.exchange_ts)}"
                f" answered")
        send("quit")
        late = [r for r in reach.values() if r.fed_ts > r.running_ts]
        if late:
            notes.append(f"{len(late)} task addresses reached the probe only after the task ran (bench polling): "
                         "their figure includes that delay")
        return sorted(reach.values(), key=lambda r: (r.step, r.running_ts)), notes, scaled_at


# -- Docker Swarm --------------------------------------------------------------------------------


class SwarmSide:
    """A private dockerd in each of fleet hosts sa and sb, one swarm, an attachable overlay."""

    def __init__(self, fleet: Fleet, reg: str, tarball: Path, td: Teardown) -> None:
        self.fleet, self.reg, self.tarball, self.td = fleet, reg, tarball, td
        self.sa, self.sb = fleet["sa"], fleet["sb"]
        self.d: dict[str, PrivateDockerd] = {}
        self.srv_ip = ""
        self.notes: list[str] = []

    def dockerd(self, host: Host) -> PrivateDockerd:
        """Start a dockerd in the host's namespace: state under the host's dir, its cgroup parent."""
        from container_start import DOCKERD, PrivateDockerd

        d = PrivateDockerd(Path(host.dir) / "d", self.reg, host.cgroup_parent)
        self.d[host.name] = d
        d.outside_before = {p: os.path.exists(p) for p in ("/run/docker/plugins", "/run/docker")}
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
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false",
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

    def start(self) -> None:
        sa, sb = self.sa, self.sb
        for h in (sa, sb):
            self.dockerd(h)
        self.td.push("leave the swarm", self.leave)
        self.docker("sa", "swarm", "init", "--advertise-addr", sa.addr, "--listen-addr", f"{sa.addr}:2377", timeout=90)
        token = self.docker("sa", "swarm", "join-token", "-q", "worker").stdout.strip()
        self.docker("sb", "swarm", "join", "--token", token, "--advertise-addr", sb.addr,
                    "--listen-addr", f"{sb.addr}:2377", f"{sa.addr}:2377", timeout=90)
        deadline = time.monotonic() + 30
        while self.docker("sa", "node", "ls", "--format", "{{.Status}}").stdout.split() != ["Ready", "Ready"]:
            if time.monotonic() > deadline:
                raise RuntimeError("swarm nodes not Ready 30 s after join")
            time.sleep(0.3)
        for name in ("sa", "sb"):
            self.docker(name, "load", "-i", str(self.tarball))
        self.td.push("remove the swarm containers and network", self.remove_all)
        self.docker("sa", "network", "create", "-d", "overlay", "--attachable", "--subnet", SWARM_SUBNET, NET)
        self.docker("sb", "run", "-d", "--name", "ipsrv", "--network", NET, f"{IMAGE_REPO}:{IMAGE_TAG}",
                    "iperf3", "-s", "-p", str(IPERF_PORT))
        self.docker("sa", "run", "-d", "--name", "ipcli", "--network", NET, f"{IMAGE_REPO}:{IMAGE_TAG}",
                    "sleep", "3600")
        self.srv_ip = self.docker("sb", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{NET}").IPAddress}}}}',
                                  "ipsrv").stdout.strip()
        if not self.srv_ip:
            raise RuntimeError("the Swarm server container has no address on the overlay")
        version = self.docker("sa", "version", "--format", "{{.Server.Version}}").stdout.strip()
        driver = self.docker("sa", "info", "--format", "{{.Driver}}").stdout.strip()
        mtu = self.docker("sa", "exec", "ipcli", "cat", "/sys/class/net/eth0/mtu", check=False).stdout.strip()
        if "net.ipv4.vs." in self.sa.log_tail(400):
            self.notes.append("swarm: this kernel has no IPVS (dockerd logs net.ipv4.vs.* errors): Swarm service "
                              "VIPs would not work, so the containers are `docker run --network` on an attachable "
                              "overlay, which needs no VIP")
        self.notes.append(f"swarm: dockerd {version} ({driver}) in hosts sa ({sa.addr}, manager) and sb ({sb.addr}, "
                          f"worker); attachable overlay {NET} {SWARM_SUBNET} (MTU {mtu or '?'}); `docker run "
                          f"--network` server on sb at {self.srv_ip}, client on sa")

    def iperf(self, seconds: int) -> dict[str, Any]:
        r = self.docker("sa", "exec", "ipcli", "iperf3", "-c", self.srv_ip, "-p", str(IPERF_PORT), "-t", str(seconds),
                        "-J", timeout=seconds + 60, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 in the Swarm client exited {r.returncode}: {r.stdout[-300:]} {r.stderr[-300:]}")
        return iperf_json(r.stdout)

    def alive(self, h: str) -> bool:
        return h in self.d and self.fleet[h].alive()

    def remove_all(self) -> None:
        for h in ("sa", "sb"):
            if self.alive(h):
                self.docker(h, "rm", "-f", "ipsrv", "ipcli", check=False, timeout=60)
        if self.alive("sa"):
            deadline = time.monotonic() + 20
            while self.docker("sa", "network", "rm", NET, check=False).returncode != 0 and time.monotonic() < deadline:
                time.sleep(0.5)

    def leave(self) -> None:
        for h in ("sb", "sa"):
            if self.alive(h):
                self.docker(h, "swarm", "leave", "--force", check=False, timeout=60)


# -- the underlay ---------------------------------------------------------------------------------


class Underlay:
    """iperf3 (the same binary) between the two orch hosts' own addresses."""

    def __init__(self, fleet: Fleet, td: Teardown) -> None:
        self.a, self.b = fleet["a"], fleet["b"]
        self.td = td
        self.server: subprocess.Popen[bytes] | None = None

    def iperf(self, seconds: int) -> dict[str, Any]:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(["nsenter", f"--net={self.b.netns_path}", "--", "iperf3", "-s", "-p",
                                            str(IPERF_PORT)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
            self.td.push("stop the underlay iperf3 server", self.stop)
            for _ in range(100):
                if self.b.run(["ss", "-ltnH", f"sport = :{IPERF_PORT}"]).stdout.strip():
                    break
                time.sleep(0.05)
        r = self.a.run(["iperf3", "-c", self.b.addr, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
                       timeout=seconds + 60)
        if r.returncode != 0:
            raise RuntimeError(f"iperf3 on the underlay exited {r.returncode}: {r.stdout[-300:]} {r.stderr[-300:]}")
        return iperf_json(r.stdout)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(10)


# -- main ------------------------------------------------------------------------------------------


def fmt(v: float, spec: str = ".2f") -> str:
    return "-" if v != v else ("inf" if v == float("inf") else format(v, spec))


LABELS = {"orch": "orch overlay  (task a -> task b)",
          "underlay": "underlay      (host a -> host b)",
          "swarm": "Swarm overlay (container sa -> sb)"}


def step_spread(reach: list[Reach], scaled_at: list[float]) -> list[dict[str, float]]:
    """Per scale step: seconds from the scale command to its first and last task RUNNING."""
    out = []
    for i, t0 in enumerate(scaled_at):
        ts = [r.running_ts for r in reach if r.step == i + 1 and r.running_ts == r.running_ts]
        out.append({"first_running_s": min(ts) - t0 if ts else float("nan"),
                    "last_running_s": max(ts) - t0 if ts else float("nan")})
    return out


def report(args: argparse.Namespace, samples: list[Sample], reach: list[Reach] | None, scaled_at: list[float],
           notes: list[str], swarm_note: str, elapsed: float, problems: list[str]) -> dict[str, Any]:
    med = medians(samples)
    gs = goals(med, reach, args.tasks)
    lat = [r.latency_s for r in (reach or []) if r.latency_s == r.latency_s]
    out: dict[str, Any] = {
        "seconds": args.seconds, "rounds": args.rounds, "streams": 1,
        "method": "iperf3 inside containers (image built from Debian's iperf3 + libs + busybox); orch client by "
                  "exec in its task, Swarm client by docker exec; underlay between the hosts' netns",
        "samples": [asdict(s) for s in samples], "medians_gbps": med,
        "ratios": {"orch_over_underlay": gs[0]["value"], "orch_over_swarm": gs[1]["value"]},
        "swarm_note": swarm_note, "notes": notes, "goals": gs, "elapsed_s": elapsed, "cleanup_problems": problems,
    }
    if reach is not None:
        out["reachability"] = {
            "tasks": args.tasks, "step": args.step, "answered": len(lat), "p50_s": pct(lat, 50),
            "p90_s": pct(lat, 90), "p99_s": pct(lat, 99), "min_s": min(lat, default=float("nan")),
            "max_s": max(lat, default=float("nan")), "negative": sum(1 for x in lat if x < 0),
            "steps": step_spread(reach, scaled_at),
            "samples": [{**asdict(r), "latency_s": r.latency_s} for r in reach]}
    return out


def print_report(args: argparse.Namespace, res: dict[str, Any]) -> None:
    samples = [Sample(**s) for s in res["samples"]]
    print(f"\noverlay throughput: iperf3, one TCP stream, {args.seconds} s per run, {args.rounds} rounds "
          "(order rotated each round); Gbit/s received")
    print(f"  {'path':36} " + " ".join(f"{'r' + str(i + 1):>6}" for i in range(args.rounds)) + f"  {'median':>7}"
          "  retransmits (median), MSS")
    for p in ("orch", "underlay", "swarm"):
        ss = sorted((s for s in samples if s.path == p), key=lambda s: s.round)
        if not ss:
            continue
        retr = median([float(s.retransmits) for s in ss if s.retransmits is not None])
        mss = next((s.mss for s in ss if s.mss), None)
        print(f"  {LABELS[p]:36} " + " ".join(f"{fmt(s.gbps):>6}" for s in ss) +
              f"  {fmt(res['medians_gbps'][p]):>7}  {fmt(retr, '.0f'):>5}, {mss}")
        for s in ss:
            if s.error:
                print(f"      round {s.round + 1}: {s.error}")
    if res["swarm_note"]:
        print(f"  Swarm: {res['swarm_note']}")
    r = res.get("reachability")
    if r:
        print(f"\nnew task reachable: RUNNING (status.timestamp, host a) -> first answered TCP exchange from "
              f"host b; {r['tasks']} tasks, scaled up {r['step']} at a time")
        print(f"  answered {r['answered']}/{r['tasks']}; p50 {fmt(r['p50_s'], '.3f')} s, p90 {fmt(r['p90_s'], '.3f')}"
              f" s, p99 {fmt(r['p99_s'], '.3f')} s, min {fmt(r['min_s'], '.3f')} s, max {fmt(r['max_s'], '.3f')} s")
        if r["negative"]:
            print(f"  {r['negative']} tasks answered before their RUNNING timestamp (negative figures): host b knows a "
                  "task's endpoint from ASSIGNED on, and its server listens before host a's agent reports RUNNING")
        print("  scale command -> first / last task of the step RUNNING: " + ", ".join(
            f"{fmt(x['first_running_s'], '.1f')}/{fmt(x['last_running_s'], '.1f')} s" for x in r["steps"]))
    for n in res["notes"]:
        print(f"  note: {n}")
    print("\ngoals:")
    for g in res["goals"]:
        met = "n/a" if g["met"] is None else ("MET" if g["met"] else "NOT MET")
        print(f"  {met:8} {g['goal']}: {fmt(g['value'], '.3f')}")
    print(f"\nrun took {res['elapsed_s']:.0f} s")
    if res["cleanup_problems"]:
        print("LEFT BEHIND: " + "; ".join(res["cleanup_problems"]))
    else:
        print("cleanup check: no namespaces, processes, mounts, cgroups or files of this run left")


def leftovers(run_id: str, base_dir: str, pids: list[int], outside_before: dict[str, bool]) -> list[str]:
    out = []
    ns = [n for n in os.listdir("/run/netns") if n.startswith(f"orch-{run_id}-")] if os.path.isdir("/run/netns") else []
    if ns:
        out.append(f"network namespaces: {ns}")
    with open("/proc/self/mountinfo") as f:
        mps = [ln.split()[4] for ln in f if ln.split()[4].startswith(base_dir)]
    if mps:
        out.append(f"{len(mps)} mounts under {base_dir}")
    alive = [p for p in pids if os.path.exists(f"/proc/{p}")]
    if alive:
        out.append(f"processes still running: {alive}")
    cg = Path("/sys/fs/cgroup")
    out += [str(c) for d in [cg, *(x for x in cg.iterdir() if x.is_dir())] for c in d.glob(f"orch-{run_id}-*")]
    if os.path.exists(base_dir):
        out.append(f"{base_dir} still exists")
    out += [f"{p} was made by this run and is still there" for p, was in outside_before.items()
            if not was and os.path.exists(p)]
    return out


def swarm_unavailable(skip: bool, *, host_ports: bool = False) -> str:
    """Why Swarm's side will not be measured ("" when it will): --skip-swarm, or
    Debian's docker.io (or iptables, which dockerd needs for host-mode ports) missing."""
    from container_start import DOCKER_CLI, DOCKERD

    if skip:
        return "skipped (--skip-swarm)"
    if not (os.path.exists(DOCKERD) and os.path.exists(DOCKER_CLI)):
        return f"not measured: {DOCKERD} or {DOCKER_CLI} is missing (Debian package docker.io)"
    if host_ports and shutil.which("iptables") is None:
        return "not measured: dockerd needs iptables for host-mode ports (Debian package iptables)"
    return ""


class FleetRun:
    """One benchmark run on a netns fleet of its own, safe to interrupt.

    Made first thing in a bench's main: from then on SIGTERM and SIGINT
    raise KeyboardInterrupt in this process (a forked helper -- pyroute2
    forks to create namespaces and ends the child with SIGTERM -- dies as it
    would by default instead of cleaning up); leftovers of earlier runs are
    removed. `close()`, in the bench's `finally`, tears everything down and
    returns what was left behind. `outside`: paths outside the run's
    directories the run may create (dockerd's), removed if it did."""

    def __init__(self, tag: str, hosts: list[str], *, outside: tuple[str, ...] = (),
                 keep_logs: Path | None = None) -> None:
        from container_start import Teardown
        from tests.harness.fleet import Fleet, cleanup_stale

        me = os.getpid()

        def on_term(signum: int, frame: Any) -> None:
            if os.getpid() != me:
                os._exit(128 + signum)
            raise KeyboardInterrupt

        # SIGINT too: a shell starts background jobs with SIGINT ignored.
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        cleanup_stale()
        self.outside_before = {p: os.path.exists(p) for p in outside}
        self.work = Path(tempfile.mkdtemp(prefix=f"orch-bench-{tag}-"))
        self.run_id = tag + secrets.token_hex(3)
        self.fleet = Fleet(self.run_id, hosts)
        self.td = Teardown()
        self.pids: list[int] = []  # processes the run started outside the fleet's hosts' records
        self.keep_logs = keep_logs

    def serve_image(self, repo: str, tag: str, image: Any, host: str = "reg") -> str:
        """Push `image` to a seeding registry, then serve the same storage
        from a registry on fleet host `host`; its address."""
        from tests.fixtures.registry import RegistryProcess
        from tests.harness.fleet_cluster import start_registry

        seed = RegistryProcess(self.work / "seed", self.work / "storage")
        self.td.push("stop the seeding registry", seed.stop)
        seed.start()
        seed.pusher().push_image(repo, tag, image)
        seed.stop()
        return start_registry(self.fleet[host], self.work / "storage", self.work / "serve")

    def close(self) -> list[str]:
        """Tear the run down (a second Ctrl-C cannot interrupt it); what is
        left behind, if anything."""
        from tests.harness.fleet import FleetCleanupError

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log("cleaning up")
        if self.keep_logs:
            self.keep_logs.mkdir(parents=True, exist_ok=True)
            for h in self.fleet:
                if os.path.exists(h.log_path):
                    shutil.copy(h.log_path, self.keep_logs / f"{h.name}.log")
        self.td.run()
        base = self.fleet._rec.base_dir if self.fleet._rec else ""
        try:
            self.fleet.close()
        except FleetCleanupError as e:
            self.td.problems.append(str(e))
        shutil.rmtree(self.work, ignore_errors=True)
        for path, was in self.outside_before.items():
            if not was:
                try:
                    os.unlink(path) if path.endswith(".lock") else os.rmdir(path)
                except OSError:
                    pass
        signal.signal(signal.SIGINT, signal.default_int_handler)
        problems = self.td.problems + leftovers(self.run_id, base or str(self.work) + "/", self.pids,
                                                self.outside_before)
        if os.path.exists(self.work):
            problems.append(f"{self.work} still exists")
        return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="iperf3 runs per path (default 5)")
    ap.add_argument("--seconds", type=int, default=3, help="seconds per iperf3 run (default 3)")
    ap.add_argument("--tasks", type=int, default=50, help="tasks for the reachability figure (default 50)")
    ap.add_argument("--step", type=int, default=10, help="tasks added per scale-up step (default 10)")
    ap.add_argument("--skip-swarm", action="store_true", help="no Docker Swarm side")
    ap.add_argument("--skip-latency", action="store_true", help="no reachability figure")
    ap.add_argument("--keep-logs", type=Path, help="copy the daemons' logs into this directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        probe_main()
        return 0
    if args.rounds < 1 or args.seconds < 1 or args.tasks < 1 or args.step < 1:
        ap.error("--rounds, --seconds, --tasks and --step must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, containers)")
    for tool in ("iperf3", "nsenter", "nft", "runc", "conmon", "ldd"):
        if shutil.which(tool) is None:
            ap.error(f"needs {tool} (Debian packages: iperf3 util-linux nftables runc conmon libc-bin)")

    from tests.fixtures.registry import REGISTRY_BIN

    if not os.path.exists(REGISTRY_BIN):
        ap.error(f"needs {REGISTRY_BIN} (Debian package docker-registry)")
    swarm_note = swarm_unavailable(args.skip_swarm)

    t_start = time.monotonic()
    hosts = ["reg", "a", "b"] + ([] if swarm_note else ["sa", "sb"])
    run = FleetRun("ov", hosts, outside=("/run/docker/plugins", "/run/docker"), keep_logs=args.keep_logs)
    fleet, td, work, run_id, pids = run.fleet, run.td, run.work, run.run_id, run.pids
    samples: list[Sample] = []
    reach: list[Reach] | None = None
    scaled_at: list[float] = []
    notes: list[str] = []
    problems: list[str] = []
    rc = 0
    try:
        fleet.up()
        log(f"fleet {run_id}: hosts {', '.join(f'{h.name}={h.addr}' for h in fleet)}")
        image, tarball, files = build_images(work)
        notes.append(f"image {IMAGE_REPO}: busybox + {', '.join(files)} ({len(image.layers[0].blob.data) // 1024} "
                     "KiB gzip)")
        reg = run.serve_image(IMAGE_REPO, IMAGE_TAG, image)
        log(f"registry on host reg at {reg}")
        orch = OrchSide(fleet, reg, td, args)
        log("orch: daemons, network, iperf3 tasks")
        orch.start()
        notes += orch.notes
        for h in (fleet["a"], fleet["b"]):
            if h.pid:
                pids.append(h.pid)
        paths: dict[str, Any] = {"orch": orch, "underlay": Underlay(fleet, td)}
        if not swarm_note:
            swarm = SwarmSide(fleet, reg, tarball, td)
            log("swarm: private dockerds, swarm, overlay, containers")
            try:
                swarm.start()
                paths["swarm"] = swarm
                notes += swarm.notes
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                swarm_note = f"Swarm's overlay could not be measured here: {e}"
                log(swarm_note)
            pids += [d.proc.pid for d in swarm.d.values() if d.proc]
        order = list(paths)
        for rnd in range(args.rounds):
            for pos, p in enumerate(path_order(order, rnd)):
                s = Sample(p, rnd, pos)
                try:
                    got = paths[p].iperf(args.seconds)
                    s.gbps, s.retransmits, s.mss = got["gbps"], got["retransmits"], got["mss"]
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    s.error = str(e)[:500]
                samples.append(s)
                log(f"round {rnd + 1}: {p}: {fmt(s.gbps)} Gbit/s" + (f" ({s.error[:200]})" if s.error else ""))
        if not args.skip_latency:
            log(f"orch: reachability of {args.tasks} new tasks")
            reach, more, scaled_at = orch.reachability()
            notes += more
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
    res = report(args, samples, reach, scaled_at, notes, swarm_note, time.monotonic() - t_start, problems)
    if args.json:
        from container_start import _clean_json

        print(json.dumps(_clean_json(res), indent=2))
    else:
        print_report(args, res)
    return rc


if __name__ == "__main__":
    sys.exit(main())
