"""The whole control plane at fleet scale: 3 managers, N simulated nodes, 100,000 tasks.

Three real `orch daemon` managers on loopback (fsync on, as always): the
first runs `orch init`, the others join with the manager token. N nodes join
through the real join endpoint (token + CSR -> certificate, as
bench/fleet_scale.py does), then K agent processes run, for N/K nodes each,
the agent's own session (agent.session, websocket over mutual TLS, knowing
all three managers) and its own worker (agent.worker.Worker) over
`NullEngine`, a `TaskEngine` that starts nothing: every assigned task's
"container" runs at once, so the worker reports it RUNNING in its next
status batch; a task wanted stopped exits at once and is reported SHUTDOWN.

The run, timed from outside through each manager's unix socket (control
API) and its --metrics-addr (task counts by state, read from a follower so
polling costs the leader nothing):

1. create: S services of R replicas (constraint node.role==worker) are
   created back to back; timed until the store holds S x R tasks RUNNING.
2. failover: the leader is killed with kill -9 holding those tasks; a
   one-replica probe service is created through a surviving manager as
   soon as one accepts it; "resume" is the time from the kill until the
   probe's task is ASSIGNED by the new leader (election, read barrier,
   first orchestrator pass and scheduling), and also until RUNNING (the
   node's session had to find the new leader too).
3. restore: the killed manager is started again; it restores its newest
   Raft snapshot (taken with the tasks in the store) and catches up.
4. scale-down: all S services scaled to 0; timed until the store holds no
   task of theirs (each stopped, reported SHUTDOWN and removed).

The cluster's ingress network is removed after init: the simulated nodes
run no overlay networking (their worker has no `TaskNetworks`), so they
could only reject their ingress sandbox tasks, one more every 2 s each.

(The issue lists scale-down before the kill; here the kill comes first so
the leader dies holding S x R tasks, and their snapshot is what a
restarting manager restores: scaled-down tasks are removed from the store.)

Prints tasks/s for create and scale-down (goal >= 5,000/s), the leader's
CPU seconds and peak RSS (goal <= 1.5 GB), the largest Raft snapshot's size
and the time to write it (the leader's own log line) and to restore it (the
restarted manager's log line; goal <= 5 s each), the failover resume time
(goal <= 5 s), heartbeat round trips during create and scale-down (p50,
p99; and no node marked DOWN), and a manager's RSS at 10,000 tasks (goal
<= 250 MB: taken during create when the store first holds 10,000 tasks,
and from each manager at the end of create when S x R is 10,000). CPU is
given as process CPU seconds as well as wall time: the machine may be
shared; the load average is printed.

    python3 bench/cluster_scale.py                           # 1,000 nodes, 100 x 1,000 tasks
    python3 bench/cluster_scale.py --nodes 100 --services 10 --replicas 1000
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import fleet_scale as fs
from fleet_scale import cpu_seconds, pct, rss_mb

from agent.engine import RunRequest, TaskFile
from agent.runtime.execproc import ExecProcess
from agent.runtime.runtime import ContainerRecord, NotFound
from api.session import ExecStart
from tests.fixtures.cgroups import remove_cgroup_parent
from tests.harness.loopcluster import LoopNode, free_port

ROOT = fs.ROOT
IMAGE = fs.IMAGE  # pinned: the managers never ask a registry
GOAL_RATE = 5000.0  # tasks/s
GOAL_RSS_MB = 1536.0  # leader peak at 100,000 tasks
GOAL_RSS_10K_MB = 250.0
GOAL_SNAPSHOT_S = 5.0
GOAL_RESUME_S = 5.0


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# -- the simulated nodes' engine ---------------------------------------------------------


class NullEngine:
    """A `agent.worker.TaskEngine` that starts nothing: a task's container
    runs as soon as it is created and exits (143) as soon as it is stopped."""

    def __init__(self) -> None:
        self.records: dict[str, ContainerRecord] = {}
        self.callback: Callable[[ContainerRecord], None] | None = None
        self._ids = itertools.count(1)

    def list_containers(self) -> list[ContainerRecord]:
        return list(self.records.values())

    def subscribe(self, callback: Callable[[ContainerRecord], None]) -> None:
        self.callback = callback

    async def ensure_image(self, ref: str) -> Any:
        return {}

    async def run(self, req: RunRequest, *, files: list[TaskFile] | None = None) -> ContainerRecord:
        cid = f"c{next(self._ids)}"
        now = time.time()
        rec = ContainerRecord(id=cid, name=req.name or cid, image=req.image, spec={"labels": dict(req.labels)},
                              created=now, status="running", started=now)
        self.records[cid] = rec
        return rec

    async def stop(self, cid: str) -> int | None:
        rec = self.records.get(cid)
        if rec is None:
            raise NotFound(cid)
        if rec.status != "exited":
            rec.status, rec.exit_code, rec.finished = "exited", 143, time.time()
            if self.callback is not None:
                self.callback(rec)
        return rec.exit_code

    async def remove(self, cid: str, force: bool = False) -> None:
        if self.records.pop(cid, None) is None:
            raise NotFound(cid)

    def logs(self, cid: str, *, follow: bool = False, tail: int | None = None) -> Any:
        raise NotFound(cid)

    def exec_process(self, cid: str, start: ExecStart) -> ExecProcess:
        raise NotFound(cid)


# -- agent worker process ------------------------------------------------------------------


async def agent_worker(spec_file: str) -> None:
    """Sessions and workers for the nodes in spec_file; answers the driver's
    command lines with one JSON line each: "rtts" (heartbeat round trips
    since the last "rtts"), "quit"."""
    import gc

    from agent.session import AgentSession
    from agent.worker import Worker
    from pki.tls import NodeTLS, client_ssl

    gc.freeze()
    spec = json.loads(Path(spec_file).read_text())
    sessions: list[AgentSession] = []
    workers: list[Worker] = []
    for n in spec["nodes"]:
        ctx = client_ssl(NodeTLS(cert=n["cert"], key=n["key"], ca=spec["ca"]))
        holder: list[Worker] = []
        s = AgentSession(spec["managers"], ctx,
                         lambda n=n: {"hostname": n["hostname"], "os": "linux", "arch": "amd64"},
                         addr="127.0.0.1", on_message=lambda f, h=holder: h[0].on_message(f))
        w = Worker(NullEngine(), s.send)
        holder.append(w)
        s.state.rtts = []
        sessions.append(s)
        workers.append(w)
    for i, (s, w) in enumerate(zip(sessions, workers)):
        w.start()
        s.start()
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # a fleet coming up, not all at once
    deadline = time.monotonic() + 180
    while not all(s.state.connected for s in sessions) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    print(json.dumps({"ready": sum(s.state.connected for s in sessions)}), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd in ("", "quit"):
            break
        if cmd == "rtts":
            rtts = [r for s in sessions for r in (s.state.rtts or [])]
            for s in sessions:
                s.state.rtts = []
            print(json.dumps({"rtts": rtts, "connected": sum(s.state.connected for s in sessions)}), flush=True)
    for s in sessions:
        await s.stop()
    for w in workers:
        await w.stop()


# -- talking to a manager --------------------------------------------------------------------


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def api(node: LoopNode, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
    """One control API call on a manager's local socket: (status, JSON body)."""
    c = _UnixHTTP(str(node.sock), timeout)
    try:
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None
    finally:
        c.close()


_SAMPLE = re.compile(r'^(orch_[a-z_]+)(?:\{(?:state|table)="([a-z_]+)"\})? ([0-9.e+-]+)$')


def metrics(port: int) -> dict[str, float]:
    """A manager's gauges: "name" or "name/label" -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m[1] + (f"/{m[2]}" if m[2] else "")] = float(m[3])
    return out


class Cluster:
    """Three managers on loopback, N joined nodes, K agent processes;
    everything it started is stopped and removed on exit."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.base = Path(tempfile.mkdtemp(prefix="orch-bench-cluster-"))
        tag = uuid.uuid4().hex[:6]
        self.managers: list[LoopNode] = []
        self.metrics_port: dict[str, int] = {}
        for i in range(3):
            d = self.base / f"m{i + 1}"
            d.mkdir()
            mport = free_port()
            node = LoopNode(f"m{i + 1}", d, free_port(), f"orch-bench-cl{tag}-{i + 1}",
                            ["--heartbeat-period", str(args.period), "--metrics-addr", f"127.0.0.1:{mport}",
                             "--snapshot-every", str(args.snapshot_every),
                             *(["--election-ticks", str(args.election_ticks)] if args.election_ticks else []),
                             "--log-level", "info"])
            self.managers.append(node)
            self.metrics_port[node.name] = mport
        self.agents: list[subprocess.Popen[str]] = []
        self.join_s = 0.0

    def __enter__(self) -> Self:
        try:
            self._up()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _up(self) -> None:
        for m in self.managers:
            m.start()
        first = self.managers[0]
        first.orch("init", "--advertise-addr", first.addr, "--listen-addr", first.addr)
        mt = first.orch("join-token", "-q", "manager").stdout.strip()
        wt = first.orch("join-token", "-q", "worker").stdout.strip()
        for m in self.managers[1:]:
            m.orch("join", "--token", mt, "--listen-addr", m.addr, "--advertise-addr", m.addr, first.addr)
        # The simulated nodes run no overlay networking: without this they would
        # reject their ingress sandbox task, and get a new one, every 2 s.
        first.orch("network", "rm", "ingress")
        ca_pem = (first.dir / "data/cluster/certs/ca.crt").read_text()
        t0 = time.monotonic()
        nodes = asyncio.run(fs.join_nodes(first.addr, wt, ca_pem, self.args.nodes))
        self.join_s = time.monotonic() - t0
        k = max(1, min(self.args.procs, self.args.nodes))
        addrs = [m.addr for m in self.managers]
        for i in range(k):
            f = self.base / f"agents-{i}.json"
            f.write_text(json.dumps({"managers": addrs, "ca": ca_pem, "nodes": nodes[i::k]}))
            self.agents.append(subprocess.Popen([sys.executable, __file__, "--agent-worker", str(f)],
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                cwd=ROOT))
        ready = sum(json.loads(a.stdout.readline())["ready"] for a in self.agents)  # type: ignore[union-attr]
        if ready != self.args.nodes:
            raise SystemExit(f"only {ready} of {self.args.nodes} agent sessions came up")
        deadline = time.monotonic() + 120
        while self.nodes_not_ready() and time.monotonic() < deadline:
            time.sleep(2)

    def close(self) -> None:
        if self.args.keep:
            print(f"keeping {self.base} (--keep)", flush=True)
        for a in self.agents:
            if a.poll() is None:
                a.kill()
            a.wait()
        for m in self.managers:
            m.stop()
        for m in self.managers:
            for _ in range(20):
                try:
                    remove_cgroup_parent(m.cgroup_parent)
                    break
                except OSError:
                    time.sleep(0.1)
        if not self.args.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    # -- queries --

    def alive(self) -> list[LoopNode]:
        return [m for m in self.managers if m.proc is not None and m.proc.poll() is None]

    def role(self, m: LoopNode) -> str:
        try:
            code, body = api(m, "GET", "/v1/cluster/status", timeout=5)
        except OSError:
            return ""
        return str(body["raft"]["role"]) if code == 200 else ""

    def leader(self, timeout: float = 30) -> LoopNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.alive():
                if self.role(m) == "leader":
                    return m
            time.sleep(0.05)
        raise SystemExit("no leader")

    def follower(self) -> LoopNode:
        for _ in range(600):
            for m in self.alive():
                if self.role(m) == "follower":
                    return m
            time.sleep(0.05)
        raise SystemExit("no follower")

    def gauges(self, m: LoopNode) -> dict[str, float]:
        return metrics(self.metrics_port[m.name])

    def nodes_not_ready(self) -> list[str]:
        """Hostnames of nodes not READY, asked of a follower (a 1,000-node
        listing is work the leader need not do for the benchmark)."""
        code, body = api(self.follower(), "GET", "/v1/nodes")
        if code != 200:
            raise SystemExit(f"GET /v1/nodes: HTTP {code}: {body}")
        return [n["description"]["hostname"] for n in body if n["status"]["state"] != "ready"]

    def rtts(self) -> list[float]:
        for a in self.agents:
            assert a.stdin is not None
            a.stdin.write("rtts\n")
            a.stdin.flush()
        return [r for a in self.agents for r in json.loads(a.stdout.readline())["rtts"]]  # type: ignore[union-attr]

    def agents_cpu(self) -> float:
        return sum(cpu_seconds(a.pid) for a in self.agents)


# -- the run -----------------------------------------------------------------------------


def service_spec(name: str, replicas: int) -> dict[str, Any]:
    return {"name": name, "replicas": replicas,
            "task": {"container": {"image": IMAGE, "args": ["sleep", "1d"]},
                     "placement": {"constraints": ["node.role==worker"]}}}


def wait_for(what: str, cond: Callable[[], bool], timeout: float, every: float = 0.5) -> float:
    """Poll `cond` until true; the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Phase:
    """CPU, wall time and heartbeats of one timed phase."""

    def __init__(self, cl: Cluster, leader: LoopNode) -> None:
        self.cl, self.leader = cl, leader
        assert leader.proc is not None
        self.pid = leader.proc.pid
        cl.rtts()  # drop what came before
        self.cpu0 = cpu_seconds(self.pid)
        self.others0 = {m.name: cpu_seconds(m.proc.pid) for m in cl.alive() if m is not leader and m.proc}
        self.agents0 = cl.agents_cpu()
        self.t0 = time.monotonic()

    def end(self, t1: float, tasks: int) -> dict[str, Any]:
        cl = self.cl
        others = [cpu_seconds(m.proc.pid) - self.others0[m.name] for m in cl.alive()
                  if m.proc and m.name in self.others0]
        rtts = cl.rtts()
        wall = t1 - self.t0
        return {
            "tasks": tasks, "seconds": round(wall, 2), "tasks_per_s": tasks / wall if wall > 0 else float("inf"),
            "leader": self.leader.name, "leader_cpu_s": round(cpu_seconds(self.pid) - self.cpu0, 1),
            "followers_cpu_s": [round(c, 1) for c in others],
            "agents_cpu_s": round(cl.agents_cpu() - self.agents0, 1),
            "leader_rss_mb": round(rss_mb(self.pid)), "leader_peak_rss_mb": round(peak_rss_mb(self.pid)),
            "heartbeats": len(rtts), "hb_p50_ms": round(pct(rtts, 50) * 1000, 1),
            "hb_p99_ms": round(pct(rtts, 99) * 1000, 1), "hb_max_ms": round(max(rtts, default=0.0) * 1000, 1),
            "nodes_not_ready": cl.nodes_not_ready(), "load": os.getloadavg(),
        }


def create_phase(cl: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    total = args.services * args.replicas
    leader = cl.leader()
    watcher = cl.follower()
    ph = Phase(cl, leader)
    for i in range(args.services):
        for _attempt in range(5):
            code, body = api(leader, "POST", "/v1/services", service_spec(f"s{i}", args.replicas))
            if code in (201, 409):  # 409: an attempt that timed out took effect after all
                break
            print(f"  create s{i}: HTTP {code}: {body}; again", flush=True)
            leader = cl.leader(timeout=60)  # it may have changed
        else:
            raise SystemExit(f"create s{i}: HTTP {code}: {body}")
    created_s = time.monotonic() - ph.t0
    rss_at_10k: dict[str, float] = {}
    progress = {"t": time.monotonic()}

    def all_running() -> bool:
        g = cl.gauges(watcher)
        if g.get("orch_store_objects/tasks", 0) >= 10_000 and not rss_at_10k:
            rss_at_10k.update({m.name: round(rss_mb(m.proc.pid)) for m in cl.alive() if m.proc})
        if time.monotonic() - progress["t"] > 10:
            progress["t"] = time.monotonic()
            print(f"  ... {g.get('orch_orchestrator_tasks/running', 0):,.0f} of {total:,} running "
                  f"({g.get('orch_store_objects/tasks', 0):,.0f} stored) at {time.monotonic() - ph.t0:.0f} s",
                  flush=True)
        return g.get("orch_orchestrator_tasks/running", 0) >= total

    t1 = wait_for(f"{total} tasks RUNNING", all_running, args.timeout)
    out = ph.end(t1, total)
    out["requests_s"] = round(created_s, 2)
    out["rss_at_10k_mb"] = rss_at_10k
    time.sleep(2)  # the last status writes and passes settle
    out["managers_rss_mb"] = {m.name: round(rss_mb(m.proc.pid)) for m in cl.alive() if m.proc}
    out["store_tasks"] = int(cl.gauges(watcher).get("orch_store_objects/tasks", 0))
    return out


def failover_phase(cl: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    total = args.services * args.replicas
    old = cl.leader()
    tasks_held = int(cl.gauges(old).get("orch_store_objects/tasks", 0))
    assert old.proc is not None
    t_kill = time.monotonic()
    old.kill9()
    new = cl.leader(timeout=60)
    t_leader = time.monotonic()
    while True:
        try:
            code, body = api(new, "POST", "/v1/services", service_spec("probe", 1), timeout=30)
        except OSError as e:
            code, body = 0, str(e)
        if code == 201:
            break
        if code == 409:  # created by an attempt whose answer was lost
            break
        if time.monotonic() - t_kill > args.timeout:
            raise SystemExit(f"probe service not created: HTTP {code}: {body}")
        time.sleep(0.05)
        new = cl.leader(timeout=60)
    t_created = time.monotonic()
    seen: dict[str, float] = {}

    def probe_reached(*states: str) -> Callable[[], bool]:
        def check() -> bool:
            code, body = api(new, "GET", "/v1/tasks?service=probe")
            for t in body if code == 200 else []:
                seen.setdefault(t["status"]["state"], time.monotonic())
            return any(s in seen for s in states)
        return check

    on_node = ("assigned", "accepted", "preparing", "starting", "running")
    wait_for("the probe task ASSIGNED", probe_reached(*on_node), args.timeout, every=0.02)
    t_assigned = min(seen[s] for s in on_node if s in seen)
    t_running = wait_for("the probe task RUNNING", probe_reached("running"), args.timeout, every=0.05)
    # Every node back with the new leader and the tasks still RUNNING.
    wait_for("all tasks RUNNING after failover",
             lambda: cl.gauges(new).get("orch_orchestrator_tasks/running", 0) >= total + 1, args.timeout)
    t_all = time.monotonic()
    return {"killed": old.name, "tasks_held": tasks_held, "new_leader": new.name,
            "election_s": round(t_leader - t_kill, 2), "probe_accepted_s": round(t_created - t_kill, 2),
            "resume_s": round(t_assigned - t_kill, 2), "probe_running_s": round(t_running - t_kill, 2),
            "all_running_again_s": round(t_all - t_kill, 2), "new_leader_node": new}


_SNAP_WRITE = re.compile(r"snapshot at (\d+) \((\d+) bytes\) written in ([0-9.]+) s")
_SNAP_RESTORE = re.compile(r"restored snapshot at (\d+) \((\d+) bytes\) in ([0-9.]+) s")


def restore_phase(cl: Cluster, killed: str, args: argparse.Namespace) -> dict[str, Any]:
    m = next(x for x in cl.managers if x.name == killed)
    log = m.dir / "daemon.log"
    before = log.stat().st_size
    t0 = time.monotonic()
    m.start()
    leader = cl.leader()
    target = int(cl.gauges(leader).get("orch_raft_applied_index", 0))
    wait_for(f"{killed} caught up", lambda: cl.gauges(m).get("orch_raft_applied_index", 0) >= target,
             args.timeout)
    caught_up = time.monotonic() - t0
    with open(log, "rb") as f:
        f.seek(before)
        text = f.read().decode(errors="replace")
    r = _SNAP_RESTORE.search(text)
    return {"restarted": killed, "caught_up_s": round(caught_up, 2),
            "restore_bytes": int(r[2]) if r else None, "restore_s": float(r[3]) if r else None}


def snapshots_written(cl: Cluster) -> list[tuple[str, int, int, float]]:
    """(manager, index, bytes, seconds) of every snapshot the managers logged."""
    out = []
    for m in cl.managers:
        text = (m.dir / "daemon.log").read_text(errors="replace")
        out += [(m.name, int(x[1]), int(x[2]), float(x[3])) for x in _SNAP_WRITE.finditer(text)]
    return out


def scale_down_phase(cl: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    total = args.services * args.replicas
    leader = cl.leader()
    watcher = cl.follower()
    ph = Phase(cl, leader)
    for i in range(args.services):
        code, svc = api(leader, "GET", f"/v1/services/s{i}")
        if code != 200:
            raise SystemExit(f"inspect s{i}: HTTP {code}: {svc}")
        spec = dict(svc["spec"], replicas=0)
        code, body = api(leader, "POST", f"/v1/services/s{i}/update", {"spec": spec, "version": svc["meta"]["version"]})
        if code != 200:
            raise SystemExit(f"scale s{i}: HTTP {code}: {body}")
    progress = {"t": time.monotonic()}

    def all_gone() -> bool:
        g = cl.gauges(watcher)
        left = g.get("orch_store_objects/tasks", 0) - 1  # the probe's task stays
        if time.monotonic() - progress["t"] > 10:
            progress["t"] = time.monotonic()
            print(f"  ... {left:,.0f} tasks left ({g.get('orch_orchestrator_tasks/running', 0):,.0f} running) "
                  f"at {time.monotonic() - ph.t0:.0f} s", flush=True)
        return left <= 0

    t1 = wait_for("all tasks stopped and removed", all_gone, args.timeout)
    return ph.end(t1, total)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    c, f, rs, d = r["create"], r["failover"], r["restore"], r["scale_down"]
    total = c["tasks"]
    print(f"\n== {args.nodes:,} nodes, {args.services} services x {args.replicas:,} = {total:,} tasks; "
          f"3 managers (fsync on, snapshot every {args.snapshot_every:,} entries, election after "
          f"{args.election_ticks or 10} ticks of 100 ms), heartbeat period "
          f"{args.period:g} s; {os.cpu_count()} CPUs; "
          f"load average at start {r['load_start'][0]:.1f}, end {r['load_end'][0]:.1f}")
    print(f"setup: {args.nodes} joins in {r['join_s']:.1f} s")

    def phase(name: str, p: dict[str, Any]) -> None:
        print(f"{name}: {p['tasks']:,} tasks in {p['seconds']:.1f} s = {p['tasks_per_s']:,.0f} tasks/s "
              f"(goal >= {GOAL_RATE:,.0f}: {verdict(p['tasks_per_s'] >= GOAL_RATE)}) | leader {p['leader']} CPU "
              f"{p['leader_cpu_s']:.1f} s ({p['leader_cpu_s'] / p['seconds'] * 100:.0f}% of a core), followers "
              f"{', '.join(f'{x:.1f}' for x in p['followers_cpu_s'])} s, agents {p['agents_cpu_s']:.1f} s | "
              f"load {p['load'][0]:.1f}")
        print(f"  heartbeats during it: {p['heartbeats']:,}, RTT p50 {p['hb_p50_ms']:.1f} ms, "
              f"p99 {p['hb_p99_ms']:.1f} ms, max {p['hb_max_ms']:.1f} ms; nodes not READY at the end: "
              f"{len(p['nodes_not_ready'])} ({verdict(not p['nodes_not_ready'])}: no node marked DOWN)")

    phase("create -> all RUNNING stored", c)
    print(f"  (the {args.services} create requests took {c['requests_s']:.1f} s)")
    print(f"leader peak RSS {c['leader_peak_rss_mb']:,} MB at {c['store_tasks']:,} tasks stored (goal <= "
          f"{GOAL_RSS_MB:,.0f} MB at 100,000: {verdict(c['leader_peak_rss_mb'] <= GOAL_RSS_MB)}); RSS now "
          + ", ".join(f"{k} {v:,} MB" for k, v in c["managers_rss_mb"].items()))
    if c["rss_at_10k_mb"]:
        worst = max(c["rss_at_10k_mb"].values())
        print("managers' RSS when the store first held 10,000 tasks (during create): "
              + ", ".join(f"{k} {v:,} MB" for k, v in c["rss_at_10k_mb"].items())
              + f" (goal <= {GOAL_RSS_10K_MB:.0f} MB: {verdict(worst <= GOAL_RSS_10K_MB)})")
    if total == 10_000:
        worst = max(c["managers_rss_mb"].values())
        print(f"managers holding 10,000 tasks, settled: max {worst:,} MB "
              f"(goal <= {GOAL_RSS_10K_MB:.0f} MB: {verdict(worst <= GOAL_RSS_10K_MB)})")
    snaps = r["snapshots"]
    if snaps:
        big = max(snaps, key=lambda s: (s[2], s[3]))
        slowest = max(s[3] for s in snaps)
        print(f"Raft snapshots: {len(snaps)} written; largest {big[2] / 1e6:.1f} MB at index {big[1]} "
              f"({big[0]}), written in {big[3]:.2f} s; slowest write {slowest:.2f} s "
              f"(goal <= {GOAL_SNAPSHOT_S:.0f} s: {verdict(slowest <= GOAL_SNAPSHOT_S)})")
    else:
        print("Raft snapshots: none written (fewer entries than --snapshot-every)")
    if rs["restore_s"] is not None:
        print(f"restore: {rs['restarted']} restarted, restored {rs['restore_bytes'] / 1e6:.1f} MB in "
              f"{rs['restore_s']:.2f} s (goal <= {GOAL_SNAPSHOT_S:.0f} s: "
              f"{verdict(rs['restore_s'] <= GOAL_SNAPSHOT_S)}); caught up in {rs['caught_up_s']:.1f} s")
    else:
        print(f"restore: {rs['restarted']} restarted without a snapshot to restore; caught up in "
              f"{rs['caught_up_s']:.1f} s")
    print(f"failover: kill -9 of {f['killed']} holding {f['tasks_held']:,} tasks; {f['new_leader']} leads after "
          f"{f['election_s']:.2f} s, accepts a service at {f['probe_accepted_s']:.2f} s, its task ASSIGNED at "
          f"{f['resume_s']:.2f} s (resume; goal <= {GOAL_RESUME_S:.0f} s: {verdict(f['resume_s'] <= GOAL_RESUME_S)}),"
          f" RUNNING at {f['probe_running_s']:.2f} s; all {total:,} RUNNING again at {f['all_running_again_s']:.1f} s")
    phase("scale to 0 -> all stopped and removed", d)


def run(args: argparse.Namespace) -> dict[str, Any]:
    r: dict[str, Any] = {"load_start": os.getloadavg()}
    with Cluster(args) as cl:
        r["join_s"] = cl.join_s
        print(f"cluster up: 3 managers, {args.nodes} nodes ({len(cl.agents)} agent processes); creating "
              f"{args.services} x {args.replicas} tasks", flush=True)
        r["create"] = create_phase(cl, args)
        print(f"create: {r['create']['seconds']} s; killing the leader", flush=True)
        f = failover_phase(cl, args)
        f.pop("new_leader_node")
        r["failover"] = f
        print(f"failover: resumed at {f['resume_s']} s; restarting {f['killed']}", flush=True)
        r["restore"] = restore_phase(cl, f["killed"], args)
        print("scaling to 0", flush=True)
        r["scale_down"] = scale_down_phase(cl, args)
        r["snapshots"] = snapshots_written(cl)
    r["load_end"] = os.getloadavg()
    return r


def _interrupted(signum: int, frame: Any) -> None:
    # Once: a second signal (timeout(1) forwards its own, Ctrl-C pressed
    # twice) must not break off the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000, help="simulated nodes (default 1,000)")
    ap.add_argument("--services", type=int, default=100, help="services (default 100)")
    ap.add_argument("--replicas", type=int, default=1000, help="replicas per service (default 1,000)")
    ap.add_argument("--procs", type=int, default=4, help="agent processes (default 4)")
    ap.add_argument("--period", type=float, default=5.0, help="heartbeat period (s), default Swarm's 5")
    ap.add_argument("--snapshot-every", type=int, default=1000,
                    help="the managers' --snapshot-every (entries; default 1,000 here, 10,000 in the daemon: "
                         "a run makes a few thousand entries of up to 200 writes, so the default would take "
                         "no snapshot to measure)")
    ap.add_argument("--election-ticks", type=int, default=0,
                    help="the managers' --election-ticks (default: the daemon's, 10 ticks of 100 ms)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds any one wait may take")
    ap.add_argument("--json", action="store_true", help="the figures as JSON too")
    ap.add_argument("--keep", action="store_true", help="keep the managers' data and logs (path printed)")
    ap.add_argument("--agent-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_worker:
        asyncio.run(agent_worker(args.agent_worker))
        return
    # Ctrl-C and SIGTERM both unwind through the cleanup.
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)
    r = run(args)
    report(r, args)
    if args.json:
        print(json.dumps(r, indent=1, default=str))


if __name__ == "__main__":
    main()
