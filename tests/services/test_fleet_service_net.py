"""Service discovery and load balancing end to end from the CLI on the
multi-host fleet: names at 127.0.0.11, a service's virtual IP balancing over
its replicas on other hosts, scale-down and rolling updates under a request
loop, published ports through the routing mesh and in host mode, and
recovery after a daemon is killed."""

from __future__ import annotations

import collections
import json
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
s.sendto(q.pack(), ("127.0.0.11", 53))
r = DNSRecord.parse(s.recv(4096))
print(RCODE[r.header.rcode], (time.perf_counter() - t0) * 1000, *[str(a.rdata) for a in r.rr])
"""


def dns_query(o: OrchFleet, t: dict[str, Any], name: str, *, answers: bool = False) -> Any:
    """(rcode, milliseconds[, addresses]) of one A query to 127.0.0.11 from
    the task's namespace; rcode "TIMEOUT" when nothing answers."""
    r = subprocess.run(["nsenter", f"--net={task_netns(o, t)}", sys.executable, "-c", _QUERY, name],
                       capture_output=True, text=True, timeout=30)
    out = r.stdout.split() if r.returncode == 0 else ["TIMEOUT", "0"]
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
    out = exec_in(o, client, "busybox", "nslookup", "cli", "127.0.0.11").stdout
    assert addr(client) in out, out
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
        rcode, _, got = dns_query(o, probe, "echo", answers=True)
        if rcode == "NOERROR":
            break
        assert time.monotonic() - t0 < 2.0, f"no DNS {time.monotonic() - t0:.1f} s after the restart"
        time.sleep(0.1)
    assert got == [vip]
    assert echo(conn, "three") == "three"
    conn.close()

    # Drain a host with echo tasks: they move; names and the VIP follow.
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
