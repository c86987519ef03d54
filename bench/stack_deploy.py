"""Stack deploy and removal (issue 12): orch against Docker Swarm, from the
same compose file (bench/stack_deploy.yml), on the netns fleet
(tests/harness/fleet.py: each host a network namespace on one bridge).

The stack: ten services of one replica each on one overlay network, one of
them (web, busybox httpd) publishing port 8082; the others run `sleep`. Both
sides get the same image (one layer: the host's static busybox) from one
registry on fleet host `reg`, named in the file through ${REGISTRY}.

- orch: three `orch daemon`s, o1 the manager, o2 and o3 workers (the cluster
  bench/service_net.py starts).
- Docker Swarm: a private dockerd (Debian's docker.io; own roots, socket,
  cgroup parent; no docker0; iptables only inside its host's namespace) in
  each of s1 (manager), s2, s3: the swarm bench/service_net.py starts.
  This kernel has no IPVS, which Swarm's virtual IPs and its ingress routing
  mesh are built on: the file says `endpoint_mode: dnsrr` for every service
  and publishes web's port in host mode, and both sides deploy it as it is.

Each round, on each side (sides taking turns going first):

  deploy   `orch stack deploy -d -c FILE bench` / `docker stack deploy -c FILE
           bench` (both return once the stack is accepted) until every one
           of the 10 services has a task in state running (the manager's task
           list, polled every 50 ms over the manager's unix socket).
  remove   `orch stack rm -d bench` / `docker stack rm bench` until no
           container of the stack is left on any node (each node's own
           container list, polled alike).

A phase ends at the later of the CLI returning and the poll seeing the state
("converged and known"); the CLI's own time is shown beside it. Between
phases and rounds (untimed) each side waits until its stack network is gone
from every node. Figures are medians over --rounds rounds (default 3). Goal
(issue 12): orch >= 3x faster than Swarm to converge and to remove.

For orch the run also shows where its deploy time goes: the CLI's parts
run on their own (start-up; `deploy --dry-run`: parse and plan without the
commit), and per task the steps between the states the poll saw (each
with the timestamp its node reported): created, assigned, preparing (image
and network namespace), starting, running; per node, when each task's
preparation ended (one at a time: a step apart). For remove: the CLI, the
last container, and the 1 s drain a networked task gets.

Everything the run makes is removed at the end, also on Ctrl-C or SIGTERM;
a final check lists anything left.

    python3 bench/stack_deploy.py              # ~4 min on 2 cores
    python3 bench/stack_deploy.py --rounds 1 --json
    python3 bench/stack_deploy.py --skip-swarm
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.harness.fleet import Fleet

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from overlay import FleetRun, fmt, log, swarm_unavailable  # noqa: E402  (stdlib only at import)
from service_net import IMAGE_REPO, IMAGE_TAG, OUTSIDE, build_images, cpu_busy_pct  # noqa: E402
from service_net import OrchSide as NetOrchSide  # noqa: E402
from service_net import SwarmSide as NetSwarmSide  # noqa: E402

COMPOSE = BENCH / "stack_deploy.yml"
STACK = "bench"
NET = f"{STACK}_net"
SERVICES = 10
GOAL = 3.0
POLL = 0.05
PHASE_TIMEOUT = 300.0  # seconds a phase may take before it counts as failed
SETTLE_TIMEOUT = 120.0
DOCKER_API = "/v1.41"  # docker.io 20.10's API
PHASES = (("deploy", "deploy until all 10 run"), ("rm", "remove until no container is left"))
NOTE_SWARM = ("Swarm has no IPVS here (kernel without CONFIG_IP_VS): no virtual IPs, no ingress routing mesh; the "
              "compose file uses endpoint_mode dnsrr and a host-mode published port, on both sides")


@dataclass
class Phase:
    side: str
    phase: str
    round: int
    position: int  # 0: this side went first in the round
    busy_before_pct: float = float("nan")
    cli_s: float = float("nan")  # the CLI returned
    seen_s: float = float("nan")  # the poll saw the state
    total_s: float = float("nan")  # the later of both
    polls: int = 0
    error: str = ""


def api(sock: str, path: str, timeout: float = 10) -> Any:
    """GET over a daemon's unix socket (orch's or dockerd's: both speak JSON over HTTP)."""
    from cli.client import Endpoint, request

    return request(Endpoint(socket=sock), "GET", path, timeout=timeout)


def dfilter(**kw: list[str]) -> str:
    return "filters=" + urllib.parse.quote(json.dumps(kw))


class OrchStack(NetOrchSide):
    name = "orch"

    def __init__(self, fleet: Fleet, reg: str, td: Any) -> None:
        super().__init__(fleet, reg, td)
        self.reg = reg
        self.hosts = (self.h1, self.h2, self.h3)
        self.timeline: dict[str, dict[str, Any]] = {}  # task id -> node, created, state -> its timestamp
        self.issued: list[float] = []  # wall time of each deploy command
        self.svc_created: dict[str, float] = {}  # service id -> when the stack's transaction made it

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "REGISTRY": self.reg}

    def deploy_argv(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "--socket", str(self.h1.socket_path), "stack", "deploy", "-d",
                "-c", str(COMPOSE), STACK]

    def rm_argv(self) -> list[str]:
        return [sys.executable, "-m", "cli.main", "--socket", str(self.h1.socket_path), "stack", "rm", "-d", STACK]

    def stack_services(self) -> set[str]:
        svcs = [s for s in api(str(self.h1.socket_path), "/v1/services") if s["spec"]["name"].startswith(f"{STACK}_")]
        for s in svcs:
            self.svc_created.setdefault(s["id"], s["meta"]["created_at"])
        return {s["id"] for s in svcs}

    def running(self) -> int:
        """The stack's services with a task running; notes when each task was first seen in each state."""
        ids = self.stack_services()
        tasks = [t for t in api(str(self.h1.socket_path), "/v1/tasks") if t["service_id"] in ids]
        for t in tasks:
            tl = self.timeline.setdefault(t["id"], {"node": t["node_id"], "created": t["created_at"]})
            tl.setdefault(t["status"]["state"], t["status"]["timestamp"])
        return len({t["service_id"] for t in tasks
                    if t["desired_state"] == "running" and t["status"]["state"] == "running"})

    def containers(self) -> int:
        return sum(len(api(str(h.socket_path), "/v1/containers")) for h in self.hosts)

    def settled(self) -> bool:
        """No stack, no stack network, no container on any node."""
        names = {n["spec"]["name"] for n in api(str(self.h1.socket_path), "/v1/networks")}
        stacks = api(str(self.h1.socket_path), "/v1/stacks")
        return NET not in names and not stacks and not self.containers()

    def remove_all(self) -> None:
        if all(h.alive() for h in self.hosts):
            subprocess.run(self.rm_argv(), env=self.env(), cwd=ROOT, capture_output=True, timeout=120)


class SwarmStack(NetSwarmSide):
    name = "swarm"

    def __init__(self, fleet: Fleet, reg: str, td: Any) -> None:
        super().__init__(fleet, reg, td)
        self.hosts = ("s1", "s2", "s3")

    def sock(self, h: str) -> str:
        return str(self.d[h].sock)

    def env(self) -> dict[str, str]:
        return {**self.d["s1"].env(), "REGISTRY": self.reg}

    def deploy_argv(self) -> list[str]:
        from container_start import DOCKER_CLI

        return [DOCKER_CLI, "-H", f"unix://{self.sock('s1')}", "stack", "deploy", "-c", str(COMPOSE), STACK]

    def rm_argv(self) -> list[str]:
        from container_start import DOCKER_CLI

        return [DOCKER_CLI, "-H", f"unix://{self.sock('s1')}", "stack", "rm", STACK]

    def running(self) -> int:
        """The stack's services with a task running."""
        ids = {s["ID"] for s in api(self.sock("s1"), f"{DOCKER_API}/services?"
                                    + dfilter(label=[f"com.docker.stack.namespace={STACK}"]))}
        tasks = api(self.sock("s1"), f"{DOCKER_API}/tasks?{dfilter(**{'desired-state': ['running']})}")
        return len({t["ServiceID"] for t in tasks if t["ServiceID"] in ids and t["Status"]["State"] == "running"})

    def containers(self) -> int:
        q = dfilter(label=[f"com.docker.stack.namespace={STACK}"])
        return sum(len(api(self.sock(h), f"{DOCKER_API}/containers/json?all=1&{q}")) for h in self.hosts)

    def settled(self) -> bool:
        """No stack service, and the stack network gone from every node."""
        if api(self.sock("s1"), f"{DOCKER_API}/services"):
            return False
        q = dfilter(name=[NET])
        return not any(n["Name"] == NET for h in self.hosts for n in api(self.sock(h), f"{DOCKER_API}/networks?{q}")) \
            and not self.containers()

    def remove_all(self) -> None:
        if self.alive("s1"):
            subprocess.run(self.rm_argv(), env=self.env(), capture_output=True, timeout=120)


def timed(side: Any, argv: list[str], env: dict[str, str], done: Callable[[], bool], ph: Phase) -> Phase:
    """Run the command; poll `done` every POLL s from the moment it is issued."""
    t0 = time.monotonic()
    p = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            if p.poll() is not None and ph.cli_s != ph.cli_s:  # nan: not yet recorded
                ph.cli_s = time.monotonic() - t0
                if p.returncode != 0:
                    ph.error = f"{' '.join(argv[-4:])} exited {p.returncode}: {p.stderr.read().strip()[-500:]}"
                    return ph
            if ph.seen_s != ph.seen_s:
                ph.polls += 1
                try:
                    ok = done()
                except Exception:  # the API may refuse while the stack is half made; poll again
                    ok = False
                if ok:
                    ph.seen_s = time.monotonic() - t0
            if ph.cli_s == ph.cli_s and ph.seen_s == ph.seen_s:
                ph.total_s = max(ph.cli_s, ph.seen_s)
                return ph
            if time.monotonic() - t0 > PHASE_TIMEOUT:
                cli = "returned" if p.poll() is not None else "still running"
                ph.error = f"not done after {PHASE_TIMEOUT:.0f} s (the CLI {cli})"
                return ph
            time.sleep(POLL)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=30)


def settle(side: Any) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        try:
            if side.settled():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{side.name}: the stack was not gone {SETTLE_TIMEOUT:.0f} s after its removal")
        time.sleep(0.2)


def run_round(side: Any, rnd: int, pos: int) -> list[Phase]:
    settle(side)
    d = Phase(side.name, "deploy", rnd, pos, busy_before_pct=cpu_busy_pct(0.3))
    if side.name == "orch":
        side.issued.append(time.time())
    timed(side, side.deploy_argv(), side.env(), lambda: side.running() >= SERVICES, d)
    out = [d]
    log(f"round {rnd + 1}: {side.name} deploy {fmt(d.total_s)} s (CLI {fmt(d.cli_s)} s, all running at "
        f"{fmt(d.seen_s)} s)" + (f" ERROR {d.error}" if d.error else ""))
    r = Phase(side.name, "rm", rnd, pos, busy_before_pct=cpu_busy_pct(0.3))
    timed(side, side.rm_argv(), side.env(), lambda: side.containers() == 0, r)
    out.append(r)
    log(f"round {rnd + 1}: {side.name} rm {fmt(r.total_s)} s (CLI {fmt(r.cli_s)} s, no container at "
        f"{fmt(r.seen_s)} s)" + (f" ERROR {r.error}" if r.error else ""))
    return out


def median(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def orch_cli_steps(orch: OrchStack, runs: int = 5) -> dict[str, str]:
    """Median wall times of the deploy command's parts, run on their own with no stack deployed, taking
    turns (others' load weighs on all alike): the interpreter and the CLI's start (`--help`), and the
    file parsed and planned by the manager without the commit (`deploy --dry-run`), with and without
    resolving the image in the registry."""
    base = [sys.executable, "-m", "cli.main", "--socket", str(orch.h1.socket_path)]
    cmds = {
        "CLI start-up (orch --help)": [*base, "--help"],
        "deploy --dry-run (start-up, parse, resolve the image, plan; no commit)": [
            *base, "stack", "deploy", "--dry-run", "-c", str(COMPOSE), STACK],
        "deploy --dry-run --resolve-image never": [
            *base, "stack", "deploy", "--dry-run", "--resolve-image", "never", "-c", str(COMPOSE), STACK],
    }
    ts: dict[str, list[float]] = {what: [] for what in cmds}
    for _ in range(runs):
        for what, argv in cmds.items():
            t0 = time.monotonic()
            r = subprocess.run(argv, env=orch.env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
            ts[what].append(time.monotonic() - t0)
            if r.returncode not in (0, 1):  # --dry-run: 1 = "would change"
                return {what: f"failed ({r.returncode}): {r.stderr.strip()[-300:]}"}
    return {what: f"{statistics.median(xs):.2f} s (median of {runs})" for what, xs in ts.items()}


STEPS = (("issued", "created", "deploy issued -> task created"),
         ("created", "assigned", "created -> assigned (orchestrator, allocator, scheduler)"),
         ("assigned", "preparing", "assigned -> preparing (dispatcher to the node's agent)"),
         ("preparing", "starting", "preparing -> starting (image check + the task's network namespace)"),
         ("starting", "running", "starting -> running (container create and start)"))


def orch_task_steps(orch: OrchStack) -> dict[str, Any]:
    """From the task states seen while polling (each with the timestamp the node reported): how long
    each step took (medians over all rounds' tasks), and whether a node's network preparations overlap
    (per node: their summed time against the span from the first's start to the last's end)."""
    nodes = orch.node_names()
    rows = []
    for tl in orch.timeline.values():
        issued = max((x for x in orch.issued if x <= tl["created"] + 0.5), default=None)
        row = {"node": nodes.get(tl["node"], tl["node"]), "issued": issued, "created": tl["created"]}
        row.update({k: tl[k] for k in ("assigned", "preparing", "starting", "running") if k in tl})
        rows.append(row)
    out: dict[str, Any] = {}
    committed = sorted(orch.svc_created.values())
    if committed and orch.issued:
        ds = [min(c for c in committed if c >= iss) - iss for iss in orch.issued if any(c >= iss for c in committed)]
        out["deploy issued -> services in the store (CLI start-up, parse, plan, Raft commit)"] = (
            f"median {median(ds):.3f} s ({len(ds)} deploys)")
    for a, b, what in STEPS:
        ds = [r[b] - r[a] for r in rows if r.get(a) is not None and r.get(b) is not None]
        if ds:
            out[what] = f"median {median(ds):.3f} s, max {max(ds):.3f} s ({len(ds)} tasks)"
    # Per node and round: network preparations (preparing -> starting) side by side.
    per: list[str] = []
    rounds = sorted({r["issued"] for r in rows if r["issued"] is not None})
    for k, iss in enumerate(rounds):
        for n in sorted({r["node"] for r in rows}):
            xs = sorted((r["preparing"], r["starting"]) for r in rows if r["issued"] == iss and r["node"] == n
                        and "preparing" in r and "starting" in r)
            if len(xs) < 2:
                continue
            # All of a node's tasks enter preparing within a few ms; if their preparations ran side by
            # side they would end together, one at a time (the agent's network lock) they end a step apart.
            begins = max(b for b, _ in xs) - xs[0][0]
            ends = sorted(e for _, e in xs)
            gaps = [y - x for x, y in zip(ends, ends[1:])]
            per.append(f"round {k + 1} {n}: {len(xs)} tasks entered preparing within {begins:.2f} s of each "
                       f"other, reached starting {' '.join(f'{e - xs[0][0]:.2f}' for e in ends)} s later: "
                       f"a step of {median(gaps):.2f} s (median) each")
    if per:
        out["per node (preparing -> starting of each task, s)"] = per
    missed = sum(1 for r in rows if "preparing" not in r or "starting" not in r)
    if missed:
        out["tasks whose preparing or starting state the 50 ms poll did not see"] = missed
    return out


def report(args: argparse.Namespace, phases: list[Phase], notes: list[str], swarm_note: str,
           bounds: dict[str, Any], elapsed: float, problems: list[str]) -> dict[str, Any]:
    fig: dict[str, dict[str, Any]] = {}
    goals = []
    for key, _ in PHASES:
        row: dict[str, Any] = {}
        for side in ("orch", "swarm"):
            ps = [p for p in phases if p.side == side and p.phase == key and not p.error]
            row[side] = {"total_s": median([p.total_s for p in ps]), "cli_s": median([p.cli_s for p in ps]),
                         "seen_s": median([p.seen_s for p in ps]), "rounds": len(ps)}
        o, s = row["orch"]["total_s"], row["swarm"]["total_s"]
        row["ratio"] = s / o if o == o and s == s and o > 0 else float("nan")
        fig[key] = row
        goals.append({"goal": f"orch >= {GOAL:g}x faster than Swarm: {key}", "ratio": row["ratio"],
                      "met": bool(row["ratio"] == row["ratio"] and row["ratio"] >= GOAL)})
    return {"rounds": args.rounds, "services": SERVICES, "figures": fig, "goals": goals,
            "phases": [asdict(p) for p in phases], "notes": notes, "swarm": swarm_note or "measured",
            "orch_bounds": bounds, "elapsed_s": elapsed, "cleanup_problems": problems}


def print_report(res: dict[str, Any]) -> None:
    print(f"\nStack of {res['services']} services (1 replica each, one overlay network, one published port), "
          f"median of {res['rounds']} round(s); seconds from the command issued")
    for n in res["notes"]:
        print(f"  {n}")
    if res["swarm"] != "measured":
        print(f"  Swarm: {res['swarm']}")
    print(f"\n{'phase':36s} {'orch':>8s} {'(CLI)':>7s} {'swarm':>8s} {'(CLI)':>7s} {'swarm/orch':>11s}")
    for key, label in PHASES:
        r = res["figures"][key]
        print(f"{label:36s} {fmt(r['orch']['total_s']):>8s} {fmt(r['orch']['cli_s']):>7s} "
              f"{fmt(r['swarm']['total_s']):>8s} {fmt(r['swarm']['cli_s']):>7s} {fmt(r['ratio']):>10s}x")
    errs = [p for p in res["phases"] if p["error"]]
    for p in errs:
        print(f"  failed: {p['side']} {p['phase']} round {p['round'] + 1}: {p['error'][:300]}")
    print()
    for g in res["goals"]:
        print(f"goal {g['goal']}: {fmt(g['ratio'])}x  {'MET' if g['met'] else 'NOT MET'}")
    b = res["orch_bounds"]
    if b:
        print("\nwhere orch's deploy time goes:")
        for k, v in b.items():
            if isinstance(v, list):
                for x in v:
                    print(f"  {k}: {x}")
            else:
                print(f"  {k}: {v}")
    print(f"\nrun took {res['elapsed_s']:.0f} s")
    if res["cleanup_problems"]:
        print("LEFT BEHIND: " + "; ".join(res["cleanup_problems"]))
    else:
        print("cleanup check: no namespaces, processes, mounts, cgroups or files of this run left")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="deploy/remove rounds per side (default 3)")
    ap.add_argument("--skip-swarm", action="store_true", help="no Docker Swarm side")
    ap.add_argument("--keep-logs", type=Path, help="copy the daemons' logs into this directory")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if os.geteuid() != 0:
        ap.error("needs root (network namespaces, containers)")
    for tool in ("nsenter", "nft", "runc", "conmon"):
        if shutil.which(tool) is None:
            ap.error(f"needs {tool} (Debian packages: util-linux nftables runc conmon)")

    from tests.fixtures.registry import REGISTRY_BIN

    if not os.path.exists(REGISTRY_BIN):
        ap.error(f"needs {REGISTRY_BIN} (Debian package docker-registry)")
    swarm_note = swarm_unavailable(args.skip_swarm, host_ports=True)

    t_start = time.monotonic()
    hosts = ["reg", "o1", "o2", "o3"] + ([] if swarm_note else ["s1", "s2", "s3"])
    run = FleetRun("sd", hosts, outside=OUTSIDE, keep_logs=args.keep_logs)
    fleet, td, work, run_id, pids = run.fleet, run.td, run.work, run.run_id, run.pids
    phases: list[Phase] = []
    notes: list[str] = []
    bounds: dict[str, Any] = {}
    problems: list[str] = []
    rc = 0
    try:
        fleet.up()
        log(f"fleet {run_id}: hosts {', '.join(f'{h.name}={h.addr}' for h in fleet)}")
        image = build_images(work)
        reg = run.serve_image(IMAGE_REPO, IMAGE_TAG, image)
        log(f"registry on host reg at {reg}")
        log("orch: three daemons (o1 manager)")
        orch = OrchStack(fleet, reg, td)
        orch.up()
        td.push("remove the orch stack", orch.remove_all)
        pids += [h.pid for h in orch.hosts if h.pid]
        sides: list[Any] = [orch]
        notes.append(f"orch: o1 {orch.h1.addr} manager, o2 {orch.h2.addr} and o3 {orch.h3.addr} workers")
        if not swarm_note:
            log("swarm: private dockerds (s1 manager)")
            swarm = SwarmStack(fleet, reg, td)
            try:
                swarm.up()
                td.push("remove the swarm stack", swarm.remove_all)
                sides.append(swarm)
                version = swarm.docker("s1", "version", "--format", "{{.Server.Version}}").stdout.strip()
                notes.append(f"swarm: dockerd {version} in s1 {swarm.h1.addr} (manager), s2 {swarm.h2.addr} and "
                             f"s3 {swarm.h3.addr} workers")
                notes.append(NOTE_SWARM)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                swarm_note = f"Swarm could not be set up here: {e}"
                log(swarm_note)
            pids += [fleet[h].pid for h in ("s1", "s2", "s3") if fleet[h].pid]
        notes.append(f"compose file {COMPOSE.relative_to(ROOT)}, image {reg}/{IMAGE_REPO}:{IMAGE_TAG} (registry on "
                     "fleet host reg)")
        for rnd in range(args.rounds):
            order = sides if rnd % 2 == 0 else list(reversed(sides))
            for pos, side in enumerate(order):
                phases += run_round(side, rnd, pos)
        settle(orch)
        bounds.update(orch_cli_steps(orch))
        bounds.update(orch_task_steps(orch))
        from agent.worker import DRAIN

        rms = [p for p in phases if p.side == "orch" and p.phase == "rm" and not p.error]
        if rms:
            bounds["remove"] = (f"the CLI returned after {median([p.cli_s for p in rms]):.2f} s, the last container "
                                f"went at {median([p.seen_s for p in rms]):.2f} s (medians); {DRAIN:g} s of that is "
                                "the drain a networked task gets before its stop signal (agent/worker.py DRAIN)")
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        rc = 130
    except Exception as e:
        log(f"failed: {type(e).__name__}: {e}")
        rc = 1
    finally:
        problems = run.close()
    if problems or any(p.error for p in phases):
        rc = rc or 1
    res = report(args, phases, notes, swarm_note, bounds, time.monotonic() - t_start, problems)
    if args.json:
        from container_start import _clean_json

        print(json.dumps(_clean_json(res), indent=2))
    else:
        print_report(res)
    return rc


if __name__ == "__main__":
    sys.exit(main())
