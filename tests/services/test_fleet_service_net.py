"""Service discovery and load balancing end to end from the CLI on the
multi-host fleet: names at 127.0.0.11, a service's virtual IP balancing over
its replicas on other hosts, scale-down and rolling updates under a request
loop, published ports through the routing mesh and in host mode, and
recovery after a daemon is killed."""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from overlay_net.netlink import entered
from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import REPO, OrchFleet, services_cluster

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "w1", "w2", "reg"), scope="module")

# Each replica serves its own hostname (the task's container) over HTTP on 8000.
HTTPD = ("busybox mkdir -p /tmp/www && busybox hostname > /tmp/www/index.html && "
         "exec busybox httpd -f -p 8000 -h /tmp/www")
# One HTTP GET from inside a container: the body, or FAIL. (busybox's wget
# is static glibc and crashes resolving names; its nc does not.)
GET = ("r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {host} {port} | busybox tail -n 1); "
       "[ -n \"$r\" ] && echo \"$r\" || echo FAIL")


def get_loop(host: str, port: int, n: int) -> str:
    return f"i=0; while [ $i -lt {n} ]; do {GET.format(host=host, port=port)}; i=$((i+1)); done"


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    with services_cluster(fleet, registry_env.storage, tmp_path_factory.mktemp("fleet-reg")) as cluster:
        yield cluster


def tasks(o: OrchFleet, svc: str) -> list[dict[str, Any]]:
    return [t for t in o.json(o.fleet["m1"], "service", "ps", svc)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def wait_running(o: OrchFleet, svc: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        ts = tasks(o, svc)
        if len(ts) == n:
            return ts
        assert time.monotonic() < deadline, f"{svc}: {len(ts)} of {n} tasks running"
        time.sleep(0.3)


def hosts(o: OrchFleet) -> dict[str, str]:
    return {n["id"]: n["description"]["hostname"] for n in o.json(o.fleet["m1"], "node", "ls")}


def exec_in(o: OrchFleet, t: dict[str, Any], *cmd: str, check: bool = True, timeout: float = 60) -> Any:
    h = o.fleet[hosts(o)[t["node_id"]]]
    return o.orch(h, "container", "exec", "-u", "0", t["status"]["container_id"], *cmd, check=check,
                  timeout=timeout)


def vip_of(o: OrchFleet, svc: str) -> str:
    out = json.loads(o.orch(o.fleet["m1"], "service", "inspect", svc).stdout)
    s = out[0] if isinstance(out, list) else out
    (v,) = s["endpoint"]["virtual_ips"]
    return str(v["addr"].split("/")[0])


def task_netns(o: OrchFleet, t: dict[str, Any]) -> str:
    h = o.fleet[hosts(o)[t["node_id"]]]
    return f"/run/netns/{h.name_prefix}task-{t['id']}"


_QUERY = """
import socket, sys, time
from dnslib import DNSRecord, RCODE
q = DNSRecord.question(sys.argv[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
t0 = time.perf_counter()
tries = int(sys.argv[2])
for attempt in range(tries):  # as a stub resolver does: a lost or late answer is asked again
    s.sendto(q.pack(), ("127.0.0.11", 53))
    try:
        r = DNSRecord.parse(s.recv(4096))
        break
    except socket.timeout:
        if attempt == tries - 1:
            raise
print(RCODE[r.header.rcode], (time.perf_counter() - t0) * 1000, *[str(a.rdata) for a in r.rr])
"""


def dns_query(o: OrchFleet, t: dict[str, Any], name: str, *, answers: bool = False, tries: int = 3) -> Any:
    """(rcode, milliseconds[, addresses]) of one A query to 127.0.0.11 from
    the task's namespace, asked up to `tries` times 2 s apart as a stub
    resolver would; rcode "TIMEOUT" when nothing answers, "ERROR:..." when
    the query could not be sent."""
    r = subprocess.run(["nsenter", f"--net={task_netns(o, t)}", sys.executable, "-c", _QUERY, name, str(tries)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode == 0:
        out = r.stdout.split()
    elif "timed out" in r.stderr:
        out = ["TIMEOUT", "0"]
    else:  # e.g. nsenter: the namespace is gone
        out = ["ERROR:" + (r.stderr.strip().splitlines() or ["?"])[-1].replace(" ", "_"), "0"]
    return (out[0], float(out[1]), out[2:]) if answers else (out[0], float(out[1]))


def connect_from(o: OrchFleet, t: dict[str, Any], host: str, port: int) -> socket.socket:
    """A TCP connection opened inside the task's namespace (so through its
    load-balancing table); it stays usable from here."""
    out: list[Any] = []

    def run() -> None:
        try:
            with entered(task_netns(o, t)):
                out.append(socket.create_connection((host, port), timeout=3))
        except Exception as e:  # noqa: BLE001
            out.append(e)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    if isinstance(out[0], Exception):
        raise out[0]
    return out[0]  # type: ignore[no-any-return]


def echo(conn: socket.socket, line: str) -> str:
    conn.sendall(line.encode() + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(100)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def addr(t: dict[str, Any]) -> str:
    return str(t["networks"][0]["addresses"][0].split("/")[0])


def test_names_vip_balance_scale_and_update(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi:latest"
    o.orch(m1, "network", "create", "--subnet", "10.79.0.0/24", "front")
    o.orch(m1, "service", "create", "--name", "web", "--replicas", "6", "--network", "front",
           "--update-parallelism", "1", img, "sh", "-c", HTTPD)
    o.orch(m1, "service", "create", "--name", "client", "--network", "name=front,alias=cli",
           "--constraint", "node.hostname==m1", img, "sleep", "100000")
    web = wait_running(o, "web", 6)
    (client,) = wait_running(o, "client", 1)
    vip = vip_of(o, "web")
    ips = {addr(t) for t in web}
    assert vip not in ips

    # Names: the service is its VIP, tasks.web its tasks, an alias, a task name.
    out = exec_in(o, client, "busybox", "nslookup", "web", "127.0.0.11").stdout
    assert re.findall(r"Address:\s*(\S+)", out)[-1:] == [vip], out
    out = exec_in(o, client, "busybox", "nslookup", "tasks.web", "127.0.0.11").stdout
    assert ips <= set(out.split()), out
    # An alias of a vip-mode service is a name of the service: its VIP (as Swarm).
    out = exec_in(o, client, "busybox", "nslookup", "cli", "127.0.0.11").stdout
    assert re.findall(r"Address:\s*(\S+)", out)[-1:] == [vip_of(o, "client")], out
    # An unknown name is NXDOMAIN, fast (asked from inside the task's namespace).
    rcode, ms = dns_query(o, client, "nosuch")
    assert rcode == "NXDOMAIN" and ms < 50, (rcode, ms)

    # 600 requests through the VIP from a client on another host reach every
    # replica, each 100 +- 40.
    out = exec_in(o, client, "sh", "-c", get_loop("web", 8000, 600), timeout=180).stdout.split()
    counts = collections.Counter(out)
    assert "FAIL" not in counts, counts
    assert len(counts) == 6, counts  # six replicas, six hostnames
    assert all(60 <= c <= 140 for c in counts.values()), counts

    # Scale 6 -> 2: within 1 s of the change no request reaches a removed task.
    o.orch(m1, "service", "scale", "web=2", "--detach")
    t0 = time.monotonic()
    deadline = t0 + 30
    while True:
        left = [t for t in o.json(m1, "service", "ps", "web") if t["desired_state"] == "running"]
        if len(left) == 2:
            break
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
    out = exec_in(o, client, "sh", "-c", get_loop("web", 8000, 40)).stdout.split()
    assert "FAIL" not in out and len(set(out)) <= 2, collections.Counter(out)

    # Rolling update under a constant request loop: no request fails.
    o.orch(m1, "service", "scale", "web=4")
    wait_running(o, "web", 4)
    time.sleep(1)
    loop = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--socket", str(o.fleet[hosts(o)[client["node_id"]]].socket_path),
         "container", "exec", "-u", "0", client["status"]["container_id"], "sh", "-c",
         "while [ ! -e /tmp/stop ]; do " + GET.format(host="web", port=8000) + "; busybox usleep 50000; done"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        time.sleep(1)
        o.orch(m1, "service", "update", "--env", "V=2", "--update-parallelism", "1", "web", timeout=180)
        wait_running(o, "web", 4)
        time.sleep(1)
    finally:
        exec_in(o, client, "busybox", "touch", "/tmp/stop")
        out, _ = loop.communicate(timeout=30)
    results = collections.Counter(out.split())
    assert sum(results.values()) - results["FAIL"] > 20 and results["FAIL"] == 0, results


def test_recovery_after_kill9_and_after_a_drain(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1, w1 = o.fleet["m1"], o.fleet["w1"]
    img = f"{reg}/library/busybox-multi:latest"
    o.orch(m1, "network", "create", "--subnet", "10.80.0.0/24", "back")
    o.orch(m1, "service", "create", "--name", "echo", "--replicas", "3", "--network", "back",
           "--constraint", "node.hostname!=w1", img, "sh", "-c", "exec busybox nc -ll -p 7000 -e /bin/cat")
    o.orch(m1, "service", "create", "--name", "probe", "--network", "back", "--constraint", "node.hostname==w1",
           img, "sleep", "100000")
    wait_running(o, "echo", 3)
    (probe,) = wait_running(o, "probe", 1)
    vip = vip_of(o, "echo")
    conn = connect_from(o, probe, vip, 7000)
    assert echo(conn, "one") == "one"

    # kill -9 of the probe's daemon: the established connection through the
    # VIP lives on (the kernel holds it), and so does balancing of new ones.
    w1.kill9()
    assert echo(conn, "two") == "two"
    connect_from(o, probe, vip, 7000).close()
    o.start(w1)
    t0 = time.monotonic()
    while True:  # names are answered again within 2 s of the restart
        rcode, _, got = dns_query(o, probe, "echo", answers=True, tries=1)
        if rcode == "NOERROR":
            break
        assert time.monotonic() - t0 < 2.0, f"no DNS {time.monotonic() - t0:.1f} s after the restart"
        time.sleep(0.1)
    assert got == [vip]
    assert echo(conn, "three") == "three"
    conn.close()

    # Drain a host with echo tasks: they move; names and the VIP follow.
    # (Asked from the probe running now: on a loaded machine the restart can
    # outlast the heartbeat grace, w1 is marked DOWN and its probe task
    # replaced, as it should be.)
    old_probe = probe["id"]
    (probe,) = wait_running(o, "probe", 1)
    if probe["id"] != old_probe:
        print(f"w1 was marked down during its restart: probe task {old_probe} replaced by {probe['id']}")
    before = {addr(t) for t in tasks(o, "echo")}
    o.orch(m1, "node", "update", "--availability", "drain", "w2")
    try:
        deadline = time.monotonic() + 60
        while True:
            now = tasks(o, "echo")
            if len(now) == 3 and all(hosts(o)[t["node_id"]] == "m1" for t in now):
                break
            assert time.monotonic() < deadline, "echo tasks did not leave w2"
            time.sleep(0.3)
        time.sleep(1)
        ips = {addr(t) for t in now}
        rcode, _, got = dns_query(o, probe, "tasks.echo", answers=True)
        assert rcode == "NOERROR" and set(got) == ips, (got, ips, before)
        for _ in range(10):
            c = connect_from(o, probe, vip, 7000)
            assert echo(c, "x") == "x"
            c.close()
    finally:
        o.orch(m1, "node", "update", "--availability", "active", "w2")


_GETS = """
import collections, os, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = sys.argv[4] if len(sys.argv) > 4 else None  # with a stop file: until it exists
seen = collections.Counter()
i = 0
while (i < n) if stop is None else not os.path.exists(stop):
    i += 1
    if stop is not None:
        time.sleep(0.02)
    try:
        with socket.create_connection((host, port), timeout=3) as c:
            c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        seen[data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip() or "EMPTY"] += 1
    except OSError as e:
        seen[type(e).__name__] += 1
        print(f"{time.time():.3f} {type(e).__name__}", file=sys.stderr)
print(" ".join(f"{k}={v}" for k, v in seen.items()))
"""


def get_from_underlay(o: OrchFleet, host_addr: str, port: int, n: int) -> dict[str, int]:
    """n HTTP GETs from the fleet's underlay (the registry host, no orch
    daemon there) to a node's address; what answered, counted."""
    out = o.fleet["reg"].run([sys.executable, "-c", _GETS, host_addr, str(port), str(n)], timeout=60,
                             check=True).stdout.split()
    return {k: int(v) for k, v in (item.rsplit("=", 1) for item in out)}


def test_published_ports_routing_mesh_and_host_mode(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi:latest"
    addrs = {h: o.fleet[h].addr for h in ("m1", "w1", "w2")}
    # Ingress mode: two replicas (on w1, w2 at most), yet every node answers,
    # m1 too, which runs no task.
    o.orch(m1, "service", "create", "--name", "pub", "--replicas", "2", "-p", "8080:8000",
           "--constraint", "node.hostname!=m1", img, "sh", "-c", HTTPD)
    pub = wait_running(o, "pub", 2)
    names = {t["status"]["container_id"] for t in pub}
    ls = o.orch(m1, "service", "ls").stdout
    assert "*:8080->8000/tcp" in ls, ls
    for h, a in addrs.items():
        got = get_from_underlay(o, a, 8080, 20)
        assert sum(got.values()) == 20 and len(got) == 2 and all(len(k) >= 6 for k in got), (h, got)
    # A port given as 0 gets one from the dynamic range, shown by inspect.
    o.orch(m1, "service", "create", "--name", "dyn", "-p", "8000", img, "sh", "-c", HTTPD)
    wait_running(o, "dyn", 1)
    out = json.loads(o.orch(m1, "service", "inspect", "dyn").stdout)
    (port,) = (out[0] if isinstance(out, list) else out)["endpoint"]["ports"]
    assert 30000 <= port["published_port"] <= 32767
    assert sum(get_from_underlay(o, addrs["m1"], port["published_port"], 3).values()) == 3
    # A conflict is an error at create, and nothing is made.
    r = o.orch(m1, "service", "create", "--name", "clash", "-p", "8080:80", img, "sleep", "1000", check=False)
    assert r.returncode != 0 and 'published port 8080/tcp is already used by service "pub"' in r.stderr, r.stderr
    assert "clash" not in o.orch(m1, "service", "ls").stdout

    # Host mode: only the node running the task answers.
    o.orch(m1, "service", "create", "--name", "hst", "--publish", "published=9090,target=8000,mode=host",
           "--constraint", "node.hostname==w2", img, "sh", "-c", HTTPD)
    wait_running(o, "hst", 1)
    assert sum(get_from_underlay(o, addrs["w2"], 9090, 5).values()) == 5
    got = get_from_underlay(o, addrs["w1"], 9090, 2)
    assert set(got) <= {"ConnectionRefusedError", "TimeoutError"}, got
    # A second host-mode service on the same port can only go elsewhere; with
    # nowhere else to go it stays pending and says why.
    o.orch(m1, "service", "create", "--name", "hst2", "--detach", "--publish",
           "published=9090,target=8000,mode=host", "--constraint", "node.hostname==w2", img, "sh", "-c", HTTPD)
    deadline = time.monotonic() + 20
    while True:
        ps = o.json(m1, "service", "ps", "hst2")
        msg = " ".join(t["status"]["message"] + " " + t["status"]["err"] for t in ps)
        if "host port 9090/tcp is in use" in msg:
            break
        assert time.monotonic() < deadline, ps
        time.sleep(0.3)
    assert all(t["status"]["state"] == "pending" for t in ps)
    o.orch(m1, "service", "update", "--constraint-rm", "node.hostname==w2", "--detach", "hst2")
    (t2,) = wait_running(o, "hst2", 1)
    assert hosts(o)[t2["node_id"]] != "w2"

    # The mesh follows a rolling update under load: no failed request.
    for svc in ("dyn", "hst", "hst2"):
        o.orch(m1, "service", "rm", svc)
    stop = os.path.join(o.fleet["reg"].dir, "stop-loop")
    loop = subprocess.Popen(_nsenter_argv(o.fleet["reg"].netns_path, [sys.executable, "-c", _GETS, addrs["m1"],
                                                                     "8080", "0", stop]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        o.orch(m1, "service", "update", "--env", "V=3", "--update-parallelism", "1", "pub", timeout=180)
        after = {t["status"]["container_id"] for t in wait_running(o, "pub", 2)}
        assert not after & names
        time.sleep(1)
    finally:
        open(stop, "w").close()
        out, err = loop.communicate(timeout=60)
    got = {k: int(v) for k, v in (item.rsplit("=", 1) for item in out.split())}
    assert sum(got.values()) > 50 and not err.strip(), (got, err)
    assert sum(got.values()) > 50 and not any(k.endswith("Error") or k == "EMPTY" for k in got), got


def _nsenter_argv(netns_path: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={netns_path}", *argv]
