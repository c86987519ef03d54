"""An orch cluster on a netns fleet: one `orch daemon` per host, each in its
own network namespace on the fleet's underlay, with its own data dir,
socket, cgroup parent and runtime state (tests/harness/fleet.py).

Used by the multi-host tests and by `make cluster-up` / `make cluster-down`:

    python -m tests.harness.fleet_cluster up [--managers 3] [--workers 2]
    python -m tests.harness.fleet_cluster down

`up` leaves a small owner process holding the fleet (it tears everything
down on SIGTERM) and prints how to use the CLI against it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.harness.fleet import Fleet, Host

REPO = Path(__file__).resolve().parent.parent.parent
PORT = 4242
METRICS_PORT = 9323  # `make cluster-up`: each daemon's /metrics, on its host's address
STATE = REPO / ".fleet"


REGISTRY_PORT = 5000


def start_registry(host: Host, storage: Path, workdir: Path) -> str:
    """A read-only docker-registry serving `storage` on the host's underlay
    address (fleet hosts cannot reach the root namespace's loopback)."""
    import yaml

    from tests.fixtures.registry import REGISTRY_BIN, RegistryProcess

    class _InFleet(RegistryProcess):
        @property
        def addr(self) -> str:
            return f"{host.addr}:{REGISTRY_PORT}"

    reg = _InFleet(workdir, storage, readonly=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "config.yml"
    cfg.write_text(yaml.safe_dump(reg.config()))
    host.start([REGISTRY_BIN, "serve", str(cfg)])
    probe = ("import urllib.request,time\n"
             "for _ in range(200):\n"
             "    try:\n"
             f"        urllib.request.urlopen('http://{reg.addr}/v2/', timeout=1); break\n"
             "    except Exception: time.sleep(0.05)\n"
             "else: raise SystemExit('registry not up')\n")
    r = host.run([sys.executable, "-c", probe], timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"registry on {host.name} did not come up:\n{host.log_tail(20)}")
    return reg.addr


def seed_storage(storage: Path, workdir: Path) -> None:
    """Build the test images (busybox-static based) into a registry storage dir."""
    from tests.fixtures.oci_build import seed
    from tests.fixtures.registry import RegistryProcess

    reg = RegistryProcess(workdir, storage).start()
    try:
        seed(reg.pusher())
    finally:
        reg.stop()


class OrchFleet:
    def __init__(self, fleet: Fleet, *, heartbeat: float = 0.5, extra: list[str] | None = None,
                 metrics_port: int | None = None) -> None:
        self.fleet = fleet
        self.heartbeat = heartbeat
        self.extra = list(extra or [])
        self.metrics_port = metrics_port  # serve --metrics-addr HOST_ADDR:PORT on every host; None: none

    def addr(self, h: Host) -> str:
        return f"{h.addr}:{PORT}"

    def argv(self, h: Host) -> list[str]:
        return [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(h.data_dir),
                "--socket", str(h.socket_path), "--cgroup-parent", h.cgroup_parent, "--hostname", h.name,
                "--network-prefix", h.name_prefix,
                "--listen-addr", self.addr(h), "--heartbeat-period", str(self.heartbeat),
                *(["--metrics-addr", f"{h.addr}:{self.metrics_port}"] if self.metrics_port else []), *self.extra]

    def start(self, h: Host) -> None:
        Path(h.socket_path).unlink(missing_ok=True)
        h.start(self.argv(h), env={"PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 20
        while not Path(h.socket_path).exists():
            if not h.alive():
                raise RuntimeError(f"{h.name}: daemon exited:\n{h.log_tail(30)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{h.name}: no socket after 20 s:\n{h.log_tail(30)}")
            time.sleep(0.05)

    def orch(self, h: Host, *args: str, timeout: float = 60, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI against a host's local unix socket (reachable from here:
        hosts share the filesystem, not the network)."""
        r = subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(h.socket_path), *args],
                           capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"orch {' '.join(args)} on {h.name} failed ({r.returncode}): {r.stderr.strip()}"
                                 f"\n--- {h.name} log ---\n{h.log_tail(30)}")
        return r

    def json(self, h: Host, *args: str) -> Any:
        return json.loads(self.orch(h, *args, "--format", "json").stdout)

    def init_and_join(self, managers: list[Host], workers: list[Host]) -> dict[str, str]:
        first = managers[0]
        self.orch(first, "init", "--advertise-addr", self.addr(first), "--listen-addr", self.addr(first))
        tokens = {r: self.orch(first, "join-token", "-q", r).stdout.strip() for r in ("worker", "manager")}
        for h in managers[1:]:
            self.orch(h, "join", "--token", tokens["manager"], "--listen-addr", self.addr(h),
                      "--advertise-addr", self.addr(h), self.addr(first))
        for h in workers:
            self.orch(h, "join", "--token", tokens["worker"], "--listen-addr", self.addr(h),
                      "--advertise-addr", self.addr(h), self.addr(first))
        return tokens

    def wait_nodes(self, h: Host, want: dict[str, str], timeout: float = 30) -> list[dict[str, Any]]:
        """Until `node ls` on h shows these hostnames in these states."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.orch(h, "node", "ls", "--format", "json", check=False)
            if r.returncode == 0:
                nodes = json.loads(r.stdout)
                got = {n["description"]["hostname"]: n["status"]["state"] for n in nodes}
                if all(got.get(k) == v for k, v in want.items()):
                    return nodes
            if time.monotonic() > deadline:
                raise AssertionError(f"nodes on {h.name}: {r.stdout or r.stderr} (wanted {want})")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for h in self.fleet:
            h.stop(timeout=10)


@contextmanager
def services_cluster(fleet: Fleet, storage: Path, workdir: Path) -> Iterator[tuple[OrchFleet, str]]:
    """The fleet of the services tests: a read-only registry serving `storage`
    on host "reg", m1 as manager, w1 and w2 as workers, all READY; yields the
    cluster and the registry's address, stops every daemon after."""
    reg = start_registry(fleet["reg"], storage, workdir)
    o = OrchFleet(fleet, heartbeat=1.0, extra=["--insecure-registry", reg])
    try:
        for h in ("m1", "w1", "w2"):
            o.start(fleet[h])
        o.init_and_join([fleet["m1"]], [fleet["w1"], fleet["w2"]])
        o.wait_nodes(fleet["m1"], {"m1": "ready", "w1": "ready", "w2": "ready"})
        yield o, reg
    finally:
        o.stop_all()


def _up(managers: int, workers: int) -> None:
    names = [f"m{i + 1}" for i in range(managers)] + [f"w{i + 1}" for i in range(workers)] + ["reg"]
    STATE.mkdir(exist_ok=True)
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r) as f:
            msg = f.read()
        if not msg.startswith("ok"):
            raise SystemExit(f"cluster-up failed: {msg}")
        info = json.loads((STATE / "info.json").read_text())
        print(f"A fleet of {len(names)} hosts is up (owner pid {info['owner']}); each host is a network namespace:")
        for h in info["hosts"]:
            print(f"  {h['name']:4} {h['addr']:15} socket {h['socket']}")
        m1 = info["hosts"][0]["socket"]
        img = f"{info['registry']}/library/busybox-multi"
        print(f"A registry with test images (busybox based) serves the fleet at {info['registry']}.")
        print("\nUse the CLI against a host's daemon through its socket, for example:")
        print(f"  export ORCH_SOCKET={m1}")
        print("  orch node ls")
        print(f"  orch service create --name web --replicas 6 {img}:latest sleep 3600")
        print("  orch service scale web=12")
        print(f"  orch service update --image {img}:docker web")
        print("  orch service rollback web")
        print("  orch service logs -f web")
        print(f"\nPrometheus metrics: http://ADDR:{METRICS_PORT}/metrics of each host, from the fleet's underlay:")
        print(f"  nsenter --net={info['client_netns']} curl -s http://{info['hosts'][0]['addr']}:{METRICS_PORT}/metrics")
        print("\nTear it down with: make cluster-down")
        return
    os.close(r)
    os.setsid()
    # A fleet that was torn down (or lost with its machine) left its hosts'
    # data: a new fleet starts from nothing, not from an old cluster's state.
    shutil.rmtree(STATE / "hosts", ignore_errors=True)
    fleet = Fleet("dev", names, base_dir=STATE / "hosts")
    status = os.fdopen(w, "w")
    try:
        fleet.up()
        seed_storage(STATE / "registry" / "storage", STATE / "registry" / "seed")
        reg_addr = start_registry(fleet["reg"], STATE / "registry" / "storage", STATE / "registry" / "serve")
        of = OrchFleet(fleet, heartbeat=5.0, extra=["--insecure-registry", reg_addr], metrics_port=METRICS_PORT)
        hosts = [h for h in fleet if h.name != "reg"]
        for h in hosts:
            of.start(h)
        of.init_and_join(hosts[:managers], hosts[managers:])
        of.wait_nodes(hosts[0], {h.name: "ready" for h in hosts})
        (STATE / "info.json").write_text(json.dumps({
            "owner": os.getpid(), "registry": reg_addr, "client_netns": fleet["reg"].netns_path,
            "hosts": [{"name": h.name, "addr": h.addr, "socket": str(h.socket_path)} for h in hosts],
        }, indent=1))
        status.write("ok")
        status.close()
    except BaseException as e:
        try:
            status.write(f"{type(e).__name__}: {e}")
            status.close()
        finally:
            fleet.close()
        os._exit(1)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while not stop:
        time.sleep(0.5)
    try:
        of.stop_all()
    finally:
        fleet.close()
        (STATE / "info.json").unlink(missing_ok=True)
    os._exit(0)


def _down() -> None:
    try:
        info = json.loads((STATE / "info.json").read_text())
    except FileNotFoundError:
        from tests.harness.fleet import cleanup_stale

        gone = cleanup_stale()
        print("no fleet is up" + (f" (removed leftovers of {', '.join(gone)})" if gone else ""))
        return
    pid = info["owner"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 60
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    if os.path.exists(f"/proc/{pid}"):
        raise SystemExit(f"the fleet owner {pid} did not stop in 60 s")
    print("fleet removed")


def _demo(stack: str = "demo") -> None:
    """`make demo`: the fleet (brought up if it is not), stack.example.yml
    deployed on it, every node asked for the front end's page."""
    if not (STATE / "info.json").exists():
        _up(3, 2)
    info = json.loads((STATE / "info.json").read_text())
    m1 = info["hosts"][0]["socket"]
    env = {**os.environ, "REGISTRY": info["registry"], "ORCH_SOCKET": m1, "PYTHONPATH": str(REPO)}
    orch = [sys.executable, "-m", "cli.main"]
    print(f"\nDeploying {REPO / 'stack.example.yml'} as stack {stack!r} (images from {info['registry']}):")
    t0 = time.monotonic()
    r = subprocess.run([*orch, "stack", "deploy", "-c", str(REPO / "stack.example.yml"), stack], env=env, cwd=REPO)
    if r.returncode != 0:
        raise SystemExit(f"stack deploy failed ({r.returncode})")
    print(f"deployed in {time.monotonic() - t0:.1f} s\n")
    subprocess.run([*orch, "stack", "services", stack], env=env, cwd=REPO)
    client = info.get("client_netns", "")
    print("\nThe front end answers on port 8080 of every node (the routing mesh), asked from the fleet's underlay:")
    for h in info["hosts"]:
        url = f"http://{h['addr']}:8080/"
        got = ""
        for _ in range(20):
            c = subprocess.run(["nsenter", f"--net={client}", sys.executable, "-c",
                                "import sys, urllib.request; "
                                "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())",
                                url], capture_output=True, text=True)
            got = c.stdout.strip()
            if c.returncode == 0 and got:
                break
            time.sleep(0.5)
        print(f"  {h['name']:3} {url:28} {got or '(no answer)'}")
    print(f"""
Try it yourself (the fleet's addresses live in their own network namespaces):
  export ORCH_SOCKET={m1}
  nsenter --net={client} curl -s http://{info['hosts'][-1]['addr']}:8080/
  orch stack ps {stack}
  orch service logs {stack}_worker
  orch service scale {stack}_api=4
  orch stack deploy -c stack.example.yml --dry-run {stack}      # after editing the file: what would change
  REGISTRY={info['registry']} orch stack rm {stack}
  make cluster-down                                              # removes the whole fleet""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up")
    up.add_argument("--managers", type=int, default=3)
    up.add_argument("--workers", type=int, default=2)
    sub.add_parser("down")
    sub.add_parser("demo")
    a = ap.parse_args()
    if a.cmd == "up":
        _up(a.managers, a.workers)
    elif a.cmd == "demo":
        _demo()
    else:
        _down()


if __name__ == "__main__":
    main()
