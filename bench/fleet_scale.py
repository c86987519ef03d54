"""Fleet scale: one manager and N simulated agents heartbeating over mutual TLS.

One real `orch daemon` is initialised as a single manager on loopback. N
nodes join it through the real join endpoint (token + CSR -> certificate),
then K worker processes run the agent's own session code (agent.session)
for N/K nodes each: real websocket sessions over mutual TLS, no containers.
Once every session is up, the manager's CPU time and RSS are sampled over a
window of several heartbeat periods; each agent records its heartbeat round
trips (send -> ack), which is how long the manager took to handle them.

Prints, per N: manager CPU as a share of one core, RSS, heartbeat RTT p50 and
p99, and the N at which one core would saturate (extrapolated linearly from
the measured share). Goal for N = 1,000 at the default 5 s period: <= 25% of
one core and <= 300 MB RSS.

    python3 bench/fleet_scale.py                # N = 250, 500, 1000
    python3 bench/fleet_scale.py --nodes 1000 --window 30

--assignments measures what one task change costs the leader, at N = 500
by default: services of 100 replicas give every simulated node
--tasks-per-node tasks (they stay ASSIGNED: the simulated agents run no
containers, they keep their assignment set as the real worker does). Then
--changes changes of two kinds, one at a time: a task added (a service
scaled up by one) and a task's status reported by its agent. Both are run
twice, with the dispatcher sending each touched node its full set (the
protocol before change frames: DispatcherSettings.full_sets, set through a
launcher in this file since the CLI has no flag for it) and sending change
frames. Per change it prints the assignment frames and bytes the leader
sent (its /v1/dispatcher/stats), the dispatcher's own CPU for them (event
loop thread time computing and encoding assignment frames) and the leader
process's CPU (everything: control API, Raft, orchestrator pass, dispatcher;
minus the idle rate measured before).

    python3 bench/fleet_scale.py --assignments
    python3 bench/fleet_scale.py --assignments --nodes 500 --tasks-per-node 20 --changes 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


# -- agent worker process ------------------------------------------------------


async def agent_worker(spec_file: str, period_window: float, assignments: bool = False) -> None:
    """Run sessions for the nodes in spec_file; report RTTs as JSON on stdout
    (or, with `assignments`, answer the driver's commands)."""
    from agent.session import AgentSession
    from agent.worker import AssignmentSet
    from api.session import AssignmentChanges, AssignmentsFull, Frame
    from pki.tls import NodeTLS, client_ssl

    spec = json.loads(Path(spec_file).read_text())
    sessions = []
    sets: list[AssignmentSet] = []
    for n in spec["nodes"]:
        ctx = client_ssl(NodeTLS(cert=n["cert"], key=n["key"], ca=spec["ca"]))
        aset = AssignmentSet()

        def on_message(f: Frame, aset: AssignmentSet = aset) -> None:
            if isinstance(f, (AssignmentsFull, AssignmentChanges)):
                aset.apply(f)

        s = AgentSession([spec["manager"]], ctx, lambda n=n: {"hostname": n["hostname"], "os": "linux",
                                                                 "arch": "amd64"},
                         addr="127.0.0.1", on_message=on_message if assignments else None)
        sessions.append(s)
        sets.append(aset)
    # Stagger the connects over a second, as a fleet coming up would.
    for i, s in enumerate(sessions):
        s.start()
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 120
    while not all(s.state.connected for s in sessions):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    print(json.dumps({"ready": sum(s.state.connected for s in sessions)}), flush=True)
    if assignments:
        await assignment_commands(sessions, sets)
        await asyncio.gather(*(s.stop() for s in sessions))
        return
    # Wait for the parent's go, then record one window.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for s in sessions:
        s.state.rtts = []
    await asyncio.sleep(period_window)
    rtts = [r for s in sessions for r in (s.state.rtts or [])]
    print(json.dumps({"rtts": rtts, "connected": sum(s.state.connected for s in sessions)}), flush=True)
    await asyncio.gather(*(s.stop() for s in sessions))


async def assignment_commands(sessions: list[Any], sets: list[Any]) -> None:
    """One JSON line per command line: "tasks" (assigned tasks held), "report"
    (one agent reports one not yet reported task ACCEPTED), "quit"."""
    from api.objects import TaskState
    from api.session import StatusBatch, StatusUpdate

    reported: set[str] = set()
    loop = asyncio.get_running_loop()
    while True:
        cmd = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if cmd in ("", "quit"):
            return
        if cmd == "tasks":
            print(json.dumps({"tasks": sum(len(a.tasks) for a in sets)}), flush=True)
        elif cmd == "report":
            sent = ""
            for s, a in zip(sessions, sets):
                tid = next((t for t in a.tasks if t not in reported), "")
                if tid and await s.send(StatusBatch(updates=(StatusUpdate(
                        id=tid, state=TaskState.ACCEPTED, message="accepted", timestamp=time.time()),))):
                    reported.add(tid)
                    sent = tid
                    break
            print(json.dumps({"sent": sent}), flush=True)


# -- driver ----------------------------------------------------------------------


def orch(sock: Path, *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(sock), *args],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"orch {' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


async def join_nodes(manager: str, token: str, ca_pem: str, n: int, concurrency: int = 32) -> list[dict[str, Any]]:
    import ssl

    import aiohttp

    from pki import make_key_and_csr

    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.check_hostname = False
    out: list[dict[str, Any]] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=concurrency)) as http:
        async def one(i: int) -> None:
            key, csr = make_key_and_csr("sim")
            async with sem:
                async with http.post(f"https://{manager}/v1/join", json={
                    "token": token, "csr": csr, "advertise_addr": "127.0.0.1:1",
                    "description": {"hostname": f"sim-{i:05d}", "os": "linux", "arch": "amd64"},
                }) as r:
                    body = await r.json()
                    if r.status != 201:
                        raise SystemExit(f"join {i}: HTTP {r.status}: {body}")
            out.append({"cert": body["cert"], "key": key, "hostname": f"sim-{i:05d}"})

        await asyncio.gather(*(one(i) for i in range(n)))
    return out


class BenchFleet:
    """One `orch daemon` initialised as the only manager on loopback, n nodes
    joined through the real join endpoint, and agent processes running their
    sessions; everything it started is stopped and removed on exit."""

    def __init__(self, n: int, args: argparse.Namespace, base: Path, *, assignments: bool = False,
                 full_sets: bool = False) -> None:
        self.n, self.args, self.assignments, self.full_sets = n, args, assignments, full_sets
        self.d = Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=base))
        self.sock = self.d / "orch.sock"
        self.addr = f"127.0.0.1:{args.port}"
        self.workers: list[subprocess.Popen[str]] = []
        self.daemon: subprocess.Popen[bytes] | None = None
        self.join_s = 0.0
        self.ready = 0

    def __enter__(self) -> BenchFleet:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        d, args = self.d, self.args
        self._log = open(d / "daemon.log", "wb")
        launcher = [__file__, "--full-sets-daemon"] if self.full_sets else ["-m", "cli.main"]
        self.daemon = subprocess.Popen(
            [sys.executable, *launcher, "daemon", "--data-dir", str(d / "data"), "--socket", str(self.sock),
             "--cgroup-parent", f"orch-bench-fleet-{os.getpid()}", "--heartbeat-period", str(args.period),
             "--listen-addr", self.addr, "--log-level", "warning"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        t0 = time.monotonic()
        while not self.sock.exists():
            if self.daemon.poll() is not None or time.monotonic() - t0 > 30:
                raise SystemExit((d / "daemon.log").read_text())
            time.sleep(0.05)
        orch(self.sock, "init", "--advertise-addr", self.addr, "--listen-addr", self.addr)
        token = orch(self.sock, "join-token", "-q", "worker").strip()
        self.ca_pem = (d / "data/cluster/certs/ca.crt").read_text()
        t0 = time.monotonic()
        nodes = asyncio.run(join_nodes(self.addr, token, self.ca_pem, self.n))
        self.join_s = time.monotonic() - t0
        k = max(1, min(args.procs, self.n))
        for i in range(k):
            f = d / f"agents-{i}.json"
            f.write_text(json.dumps({"manager": self.addr, "ca": self.ca_pem, "nodes": nodes[i::k]}))
            self.workers.append(subprocess.Popen(
                [sys.executable, __file__, "--agent-worker", str(f), "--window", str(args.window),
                 *(["--assignments"] if self.assignments else [])],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        self.ready = sum(json.loads(w.stdout.readline())["ready"] for w in self.workers)  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        for w in self.workers:
            w.kill()
            w.wait()
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
            self._log.close()
        from tests.fixtures.cgroups import remove_cgroup_parent

        remove_cgroup_parent(f"orch-bench-fleet-{os.getpid()}")

    @property
    def pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    def tell(self, cmd: str, workers: list[subprocess.Popen[str]] | None = None) -> list[dict[str, Any]]:
        """A command line to agent processes; one JSON answer from each."""
        ws = self.workers if workers is None else workers
        for w in ws:
            assert w.stdin is not None
            w.stdin.write(cmd + "\n")
            w.stdin.flush()
        return [json.loads(w.stdout.readline()) for w in ws]  # type: ignore[union-attr]

    def stats(self) -> dict[str, Any]:
        """The leader dispatcher's counters, asked with the manager's own certificate."""
        import http.client

        from manager.process import NodeTLS, client_ssl

        certs = self.d / "data/cluster/certs"
        ctx = client_ssl(NodeTLS(cert=(certs / "node.crt").read_text(), key=(certs / "node.key").read_text(),
                                 ca=self.ca_pem))
        host, _, port = self.addr.rpartition(":")
        c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=30)
        try:
            c.request("GET", "/v1/dispatcher/stats")
            r = c.getresponse()
            body = r.read()
            if r.status != 200:
                raise SystemExit(f"/v1/dispatcher/stats: HTTP {r.status}: {body[:300]!r}")
            return dict(json.loads(body))
        finally:
            c.close()


def run_level(n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    with BenchFleet(n, args, base) as fl:
        # Let registrations settle (READY writes) and a heartbeat round pass before measuring.
        time.sleep(max(2.0, args.period))
        c0, t0 = cpu_seconds(fl.pid), time.monotonic()
        for w in fl.workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in fl.workers]  # type: ignore[union-attr]
        c1, t1 = cpu_seconds(fl.pid), time.monotonic()
        rss = rss_mb(fl.pid)
        rtts = [r for res in results for r in res["rtts"]]
        ready_nodes = orch(fl.sock, "node", "ls", "--format", "json")
        n_ready = sum(1 for x in json.loads(ready_nodes) if x["status"]["state"] == "ready")
        share = (c1 - c0) / (t1 - t0)
        return {
            "nodes": n, "sessions_up": fl.ready, "nodes_ready": n_ready - 1,  # minus the manager itself
            "join_s": round(fl.join_s, 2), "window_s": round(t1 - t0, 1), "heartbeats": len(rtts),
            "cpu_share": share, "rss_mb": rss,
            "hb_rtt_p50_ms": pct(rtts, 50) * 1000, "hb_rtt_p99_ms": pct(rtts, 99) * 1000,
            "saturation_n": n / share if share > 0 else float("inf"),
        }


# -- assignments: full sets vs change frames -------------------------------------------

IMAGE = "bench.invalid/idle@sha256:" + "0" * 64  # pinned: the manager never asks a registry
REPLICAS = 100


def full_sets_daemon(argv: list[str]) -> None:
    """`orch daemon` whose dispatcher sends full sets (the CLI has no flag for it)."""
    import functools

    import manager.dispatcher as dispatcher

    dispatcher.DispatcherSettings = functools.partial(  # type: ignore[misc]
        dispatcher.DispatcherSettings, full_sets=True)
    from cli.main import main as orch_main

    sys.argv = ["orch", *argv]
    orch_main()


def _wait_tasks(fl: BenchFleet, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        have = sum(r["tasks"] for r in fl.tell("tasks"))
        if have == want:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"agents hold {have} tasks, expected {want} (see {fl.d}/daemon.log)")
        time.sleep(0.2)


def _assign_counters(stats: dict[str, Any]) -> tuple[int, int, float]:
    kinds = ("assign_full", "assign_changes")
    return (sum(stats["frames"].get(k, 0) for k in kinds), sum(stats["bytes"].get(k, 0) for k in kinds),
            stats["assignment_cpu_s"])


def assignment_level(n: int, full_sets: bool, args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    total = n * args.tasks_per_node
    services = max(1, total // REPLICAS)
    with BenchFleet(n, args, base, assignments=True, full_sets=full_sets) as fl:
        if fl.stats()["full_sets"] != full_sets:
            raise SystemExit("the daemon's dispatcher is not in the mode asked for")
        t0 = time.monotonic()
        for i in range(services):
            reps = REPLICAS if i < services - 1 else total - REPLICAS * (services - 1)
            orch(fl.sock, "service", "create", "-d", "--name", f"s{i}", "--replicas", str(reps),
                 "--constraint", "node.role==worker", IMAGE, "sleep", "1d")
        _wait_tasks(fl, total, timeout=600)
        setup_s = time.monotonic() - t0
        time.sleep(3)  # let the last writes and the orchestrator settle
        c0, t0 = cpu_seconds(fl.pid), time.monotonic()
        time.sleep(args.idle)
        idle_rate = (cpu_seconds(fl.pid) - c0) / (time.monotonic() - t0)
        out = []

        def measure(kind: str, act: Any) -> None:
            f0, b0, a0 = _assign_counters(fl.stats())
            c0, t0 = cpu_seconds(fl.pid), time.monotonic()
            act()
            c1, t1 = cpu_seconds(fl.pid), time.monotonic()
            f1, b1, a1 = _assign_counters(fl.stats())
            k = args.changes
            out.append({
                "protocol": "full sets" if full_sets else "change frames", "change": kind, "nodes": n,
                "tasks": total, "changes": k, "setup_s": round(setup_s, 1),
                "frames_per_change": (f1 - f0) / k, "bytes_per_change": (b1 - b0) / k,
                "dispatcher_cpu_ms": (a1 - a0) / k * 1000,
                "leader_cpu_ms": max(0.0, (c1 - c0) - idle_rate * (t1 - t0)) / k * 1000,
                "idle_cpu_share": idle_rate,
            })

        def add_tasks() -> None:
            for i in range(args.changes):
                orch(fl.sock, "service", "scale", "-d", f"s0={REPLICAS + i + 1}")
                _wait_tasks(fl, total + i + 1, timeout=60)
            time.sleep(0.5)

        def report_status() -> None:
            one = fl.workers[:1]
            for _ in range(args.changes):
                if not fl.tell("report", one)[0]["sent"]:
                    raise SystemExit("no task left to report")
                time.sleep(0.3)  # the write, and in full-set mode the set sent back
            time.sleep(1.0)

        measure("task added", add_tasks)
        measure("status report", report_status)
        return out


def run_assignments(args: argparse.Namespace, base: Path) -> list[dict[str, Any]]:
    out = []
    for n in args.nodes or [500]:
        for full_sets in (True, False):
            rows = assignment_level(n, full_sets, args, base)
            out.extend(rows)
            if not args.json:
                for r in rows:
                    print(f"N={r['nodes']} ({r['tasks']:,} tasks) {r['protocol']:>13} | {r['change']:<13} | "
                          f"{r['frames_per_change']:5.2f} frames, {r['bytes_per_change']:9,.0f} bytes, "
                          f"dispatcher CPU {r['dispatcher_cpu_ms']:6.2f} ms, "
                          f"leader CPU {r['leader_cpu_ms']:6.1f} ms per change "
                          f"(idle leader {r['idle_cpu_share'] * 100:.1f}% of a core)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, action="append", help="N (repeatable); default 250, 500, 1000")
    ap.add_argument("--period", type=float, default=5.0, help="heartbeat period (s), default Swarm's 5")
    ap.add_argument("--window", type=float, default=20.0, help="measurement window (s)")
    ap.add_argument("--procs", type=int, default=4, help="agent processes")
    ap.add_argument("--port", type=int, default=47420)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--assignments", action="store_true",
                    help="measure one task change: full sets vs change frames (N default 500)")
    ap.add_argument("--tasks-per-node", type=int, default=10, help="--assignments: tasks on each node")
    ap.add_argument("--changes", type=int, default=20, help="--assignments: changes of each kind measured")
    ap.add_argument("--idle", type=float, default=5.0, help="--assignments: seconds to measure the idle leader")
    ap.add_argument("--agent-worker", help=argparse.SUPPRESS)
    if sys.argv[1:2] == ["--full-sets-daemon"]:
        full_sets_daemon(sys.argv[2:])
        return
    args = ap.parse_args()
    if args.agent_worker:
        asyncio.run(agent_worker(args.agent_worker, args.window, args.assignments))
        return
    base = Path(tempfile.mkdtemp(prefix="orch-bench-fleet-"))
    if args.assignments:
        try:
            out_a = run_assignments(args, base)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        if args.json:
            print(json.dumps(out_a, indent=1))
        return
    out = []
    try:
        for n in args.nodes or [250, 500, 1000]:
            r = run_level(n, args, base)
            out.append(r)
            if not args.json:
                print(f"N={r['nodes']:>5}: sessions {r['sessions_up']}, READY {r['nodes_ready']}, "
                      f"joins {r['join_s']:.1f} s | manager CPU {r['cpu_share'] * 100:.1f}% of one core, "
                      f"RSS {r['rss_mb']:.0f} MB | heartbeat RTT p50 {r['hb_rtt_p50_ms']:.1f} ms, "
                      f"p99 {r['hb_rtt_p99_ms']:.1f} ms ({r['heartbeats']} beats in {r['window_s']} s) | "
                      f"one core saturates at ~{r['saturation_n']:,.0f} nodes", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    last = next((r for r in out if r["nodes"] == 1000), None)
    if last is not None:
        ok_cpu, ok_rss = last["cpu_share"] <= 0.25, last["rss_mb"] <= 300
        print(f"goal at N=1000: CPU <= 25% of one core: {'MET' if ok_cpu else 'NOT MET'} "
              f"({last['cpu_share'] * 100:.1f}%); RSS <= 300 MB: {'MET' if ok_rss else 'NOT MET'} "
              f"({last['rss_mb']:.0f} MB)")
    if len(out) > 1:
        print("median saturation estimate: ~{:,.0f} nodes".format(statistics.median(r["saturation_n"] for r in out)))


if __name__ == "__main__":
    main()
