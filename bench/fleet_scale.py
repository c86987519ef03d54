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


async def agent_worker(spec_file: str, period_window: float) -> None:
    """Run sessions for the nodes in spec_file; report RTTs as JSON on stdout."""
    from agent.session import AgentSession
    from pki.tls import NodeTLS, client_ssl

    spec = json.loads(Path(spec_file).read_text())
    sessions = []
    for n in spec["nodes"]:
        ctx = client_ssl(NodeTLS(cert=n["cert"], key=n["key"], ca=spec["ca"]))
        s = AgentSession([spec["manager"]], ctx, lambda n=n: {"hostname": n["hostname"], "os": "linux",
                                                                 "arch": "amd64"},
                         addr="127.0.0.1")
        sessions.append(s)
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
    # Wait for the parent's go, then record one window.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for s in sessions:
        s.state.rtts = []
    await asyncio.sleep(period_window)
    rtts = [r for s in sessions for r in (s.state.rtts or [])]
    print(json.dumps({"rtts": rtts, "connected": sum(s.state.connected for s in sessions)}), flush=True)
    await asyncio.gather(*(s.stop() for s in sessions))


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


def run_level(n: int, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=base))
    sock = d / "orch.sock"
    port = args.port
    log = open(d / "daemon.log", "wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(d / "data"), "--socket", str(sock),
         "--cgroup-parent", f"orch-bench-fleet-{os.getpid()}", "--heartbeat-period", str(args.period),
         "--listen-addr", f"127.0.0.1:{port}", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    workers: list[subprocess.Popen[str]] = []
    try:
        t0 = time.monotonic()
        while not sock.exists():
            if daemon.poll() is not None or time.monotonic() - t0 > 30:
                raise SystemExit((d / "daemon.log").read_text())
            time.sleep(0.05)
        orch(sock, "init", "--advertise-addr", f"127.0.0.1:{port}", "--listen-addr", f"127.0.0.1:{port}")
        token = orch(sock, "join-token", "-q", "worker").strip()
        ca_pem = (d / "data/cluster/certs/ca.crt").read_text()
        t0 = time.monotonic()
        nodes = asyncio.run(join_nodes(f"127.0.0.1:{port}", token, ca_pem, n))
        join_s = time.monotonic() - t0
        k = max(1, min(args.procs, n))
        for i in range(k):
            part = nodes[i::k]
            f = d / f"agents-{i}.json"
            f.write_text(json.dumps({"manager": f"127.0.0.1:{port}", "ca": ca_pem, "nodes": part}))
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--agent-worker", str(f), "--window", str(args.window)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
        ready = sum(json.loads(w.stdout.readline())["ready"] for w in workers)  # type: ignore[union-attr]
        # Let registrations settle (READY writes) and a heartbeat round pass before measuring.
        time.sleep(max(2.0, args.period))
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        results = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        rss = rss_mb(daemon.pid)
        rtts = [r for res in results for r in res["rtts"]]
        ready_nodes = orch(sock, "node", "ls", "--format", "json")
        n_ready = sum(1 for x in json.loads(ready_nodes) if x["status"]["state"] == "ready")
        share = (c1 - c0) / (t1 - t0)
        return {
            "nodes": n, "sessions_up": ready, "nodes_ready": n_ready - 1,  # minus the manager itself
            "join_s": round(join_s, 2), "window_s": round(t1 - t0, 1), "heartbeats": len(rtts),
            "cpu_share": share, "rss_mb": rss,
            "hb_rtt_p50_ms": pct(rtts, 50) * 1000, "hb_rtt_p99_ms": pct(rtts, 99) * 1000,
            "saturation_n": n / share if share > 0 else float("inf"),
        }
    finally:
        for w in workers:
            w.kill()
            w.wait()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        from tests.fixtures.cgroups import remove_cgroup_parent

        remove_cgroup_parent(f"orch-bench-fleet-{os.getpid()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, action="append", help="N (repeatable); default 250, 500, 1000")
    ap.add_argument("--period", type=float, default=5.0, help="heartbeat period (s), default Swarm's 5")
    ap.add_argument("--window", type=float, default=20.0, help="measurement window (s)")
    ap.add_argument("--procs", type=int, default=4, help="agent processes")
    ap.add_argument("--port", type=int, default=47420)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--agent-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.agent_worker:
        asyncio.run(agent_worker(args.agent_worker, args.window))
        return
    base = Path(tempfile.mkdtemp(prefix="orch-bench-fleet-"))
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
