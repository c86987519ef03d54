"""Overlay networks end to end from the CLI on the multi-host fleet: a
network, a service on it across three hosts, every task reaching every other
by ICMP and TCP over VXLAN, isolation between networks, egress, and nothing
left behind when it is all removed."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import OrchFleet, services_cluster

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "w1", "w2", "reg"), scope="module")

# Each task answers TCP on 7000 with its hostname.
SERVE = ("echo '#!/bin/sh' > /tmp/who; echo 'echo hi-$(busybox hostname)' >> /tmp/who; "
         "busybox chmod 755 /tmp/who; exec busybox nc -ll -p 7000 -e /tmp/who")


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    # open_registry seeded the shared storage; a read-only registry in the fleet serves it.
    with services_cluster(fleet, registry_env.storage, tmp_path_factory.mktemp("fleet-reg")) as cluster:
        yield cluster


def running(o: OrchFleet, svc: str) -> list[dict[str, Any]]:
    m1 = o.fleet["m1"]
    return [t for t in o.json(m1, "service", "ps", svc)
            if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def where(o: OrchFleet, t: dict[str, Any]) -> Any:
    nodes = {n["id"]: n["description"]["hostname"] for n in o.json(o.fleet["m1"], "node", "ls")}
    return o.fleet[nodes[t["node_id"]]]


def exec_in(o: OrchFleet, t: dict[str, Any], *cmd: str, check: bool = True) -> Any:
    # As root: the image's user cannot open the raw socket busybox's ping needs.
    return o.orch(where(o, t), "container", "exec", "-u", "0", t["status"]["container_id"], *cmd, check=check,
                  timeout=30)


def nets_id(o: OrchFleet, name: str) -> str:
    return next(n["id"] for n in o.json(o.fleet["m1"], "network", "ls") if n["spec"]["name"] == name)


def addr(t: dict[str, Any], i: int = 0) -> str:
    return t["networks"][i]["addresses"][0].split("/")[0]


def prefixed(o: OrchFleet) -> set[str]:
    """Network namespaces and links the fleet's daemons made."""
    names = {n for n in os.listdir("/run/netns") if any(n.startswith(h.name_prefix) for h in o.fleet)}
    return names


def test_tasks_talk_across_hosts_and_networks_are_isolated(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi:latest"
    o.orch(m1, "network", "create", "--subnet", "10.77.0.0/24", "app")
    o.orch(m1, "network", "create", "--subnet", "10.77.0.0/24", "--internal", "other")  # same subnet: isolated
    # A subnet over the fleet's underlay is refused, naming the route.
    r = o.orch(m1, "network", "create", "--subnet", "10.213.0.0/16", "bad", check=False)
    assert r.returncode != 0 and "overlaps the host's route 10.213.0.0/24" in r.stderr
    nets = {n["spec"]["name"]: n for n in o.json(m1, "network", "ls")}
    assert set(nets) == {"app", "other", "ingress"} and nets["ingress"]["spec"]["ingress"]  # ingress: made by init

    o.orch(m1, "service", "create", "--name", "web", "--replicas", "6", "--network", "app",
           "--stop-signal", "KILL", img, "sh", "-c", SERVE)
    o.orch(m1, "service", "create", "--name", "lone", "--replicas", "1", "--network", "other",
           "--stop-signal", "KILL", img, "sh", "-c", SERVE)
    web = running(o, "web")
    assert len(web) == 6 and len({t["node_id"] for t in web}) == 3
    ips = [addr(t) for t in web]
    assert len(set(ips)) == 6 and all(ipaddress.IPv4Address(i) in ipaddress.IPv4Network("10.77.0.0/24") for i in ips)
    import json

    svc = json.loads(o.orch(m1, "service", "inspect", "web").stdout)
    vips = svc[0]["endpoint"]["virtual_ips"] if isinstance(svc, list) else svc["endpoint"]["virtual_ips"]
    assert len(vips) == 1 and vips[0]["addr"].split("/")[0] not in ips

    # Every task reaches every other one, across hosts: ICMP, a 1,400-byte
    # unfragmented ping (MTU 1450), and a TCP exchange answered by the peer.
    # One exec per task, looping over the others' addresses.
    for src in web:
        others = [addr(t) for t in web if t is not src]
        script = ("for ip in " + " ".join(others) + "; do busybox ping -c 1 -W 3 $ip >/dev/null || "
                  "{ echo NOPING $ip; continue; }; echo \"$ip $(busybox nc -w 3 $ip 7000)\"; done")
        out = exec_in(o, src, "sh", "-c", script).stdout
        got = dict(line.split(" ", 1) for line in out.strip().splitlines())
        assert set(got) == set(others) and all(v.startswith("hi-") for v in got.values()), out
    # Names at 127.0.0.11: the service's tasks, tasks.NAME, and a TCP exchange
    # by name; an unknown cluster name is NXDOMAIN.
    out = exec_in(o, web[0], "busybox", "nslookup", "tasks.web", "127.0.0.11").stdout
    assert set(ips) <= set(out.split()), out
    out = exec_in(o, web[0], "sh", "-c", "busybox nc -w 3 web 7000").stdout
    assert out.startswith("hi-"), out
    r = exec_in(o, web[0], "busybox", "nslookup", "tasks.nosuch", "127.0.0.11", check=False)
    assert r.returncode != 0 and "NXDOMAIN" in (r.stdout + r.stderr).upper(), r.stdout + r.stderr
    # Loopback works in a task's namespace (it is not runc's to bring up there).
    exec_in(o, web[0], "busybox", "ping", "-c", "1", "-W", "2", "127.0.0.1")
    # Large packets cross unfragmented (1400-byte IP packets at MTU 1450).
    a, b = web[0], next(t for t in web if t["node_id"] != web[0]["node_id"])
    exec_in(o, a, "busybox", "ping", "-c", "1", "-W", "3", "-s", "1372", addr(b))

    # The task on the other network (same subnet, maybe the same address) is
    # not reachable from "app", and has no route out.
    (lone,) = running(o, "lone")
    lone_ip = addr(lone)
    if lone_ip not in ips:
        r = exec_in(o, a, "busybox", "nc", "-w", "2", lone_ip, "7000", check=False)
        assert "hi-" not in r.stdout
    r = exec_in(o, lone, "busybox", "ip", "route", check=False)
    assert "default" not in r.stdout
    # A non-internal network has egress: a task reaches the fleet's underlay (the registry host).
    reg_host = reg.split(":")[0]
    exec_in(o, a, "busybox", "ping", "-c", "1", "-W", "3", reg_host)

    # kill -9 of the daemon on b's host and a restart: traffic between running
    # containers never stops, and the restarted daemon adopts what it made
    # (no namespace added or lost).
    import sys

    from tests.harness.fleet_cluster import REPO

    host_b = where(o, b)
    before = prefixed(o)
    pinger = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--socket", str(where(o, a).socket_path), "container", "exec", "-u", "0",
         a["status"]["container_id"], "busybox", "ping", "-c", "30", "-i", "0.2", "-W", "1", addr(b)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    time.sleep(1)
    host_b.kill9()
    o.start(host_b)
    out, _ = pinger.communicate(timeout=60)
    assert " 0% packet loss" in out, out
    o.wait_nodes(m1, {"m1": "ready", "w1": "ready", "w2": "ready"})
    time.sleep(2)  # the restarted worker's session and its first sync
    assert prefixed(o) == before
    out = exec_in(o, a, "busybox", "nc", "-w", "3", addr(b), "7000").stdout
    assert out.startswith("hi-"), out

    # A plain container on an attachable network (orch container run --network):
    # it gets an address from the managers and talks to tasks on other hosts.
    r = o.orch(where(o, a), "container", "run", "-d", "--network", "app", img, "sleep", "600", check=False)
    assert r.returncode != 0 and "not attachable" in r.stderr
    o.orch(m1, "network", "create", "--attachable", "--subnet", "10.78.0.0/24", "shared")
    o.orch(m1, "service", "update", "--network-add", "shared", "--update-parallelism", "0", "web")
    web = running(o, "web")
    on_shared = [t for t in web if len(t["networks"]) == 2]
    assert len(on_shared) == 6
    w1 = o.fleet["w1"]
    cid = o.orch(w1, "container", "run", "-d", "--name", "probe", "--network", "shared", img,
                 "sleep", "600").stdout.strip()
    far = next(t for t in on_shared if where(o, t).name != "w1")
    shared_ip = next(n["addresses"][0] for n in far["networks"] if n["network_id"] == nets_id(o, "shared"))
    out = o.orch(w1, "container", "exec", "-u", "0", cid, "busybox", "nc", "-w", "3",
                 shared_ip.split("/")[0], "7000").stdout
    assert out.startswith("hi-"), out
    o.orch(m1, "service", "update", "--network-rm", "shared", "--update-parallelism", "0", "web")
    r = o.orch(m1, "network", "rm", "shared", check=False)
    assert r.returncode != 0 and "container(s) probe on w1" in r.stderr, r.stderr
    o.orch(w1, "container", "rm", "-f", cid)
    deadline = time.monotonic() + 30
    while o.orch(m1, "network", "rm", "shared", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the attachment was not released"
        time.sleep(0.5)
    web = running(o, "web")

    # Drain a worker: its tasks move; the new ones answer from the other hosts
    # within 1 s of RUNNING, and no node keeps a neighbour entry for the old ones.
    old = {addr(t) for t in web if where(o, t).name == "w2"}
    o.orch(m1, "node", "update", "--availability", "drain", "w2")
    deadline = time.monotonic() + 60
    while True:
        web = running(o, "web")
        if len(web) == 6 and all(where(o, t).name != "w2" for t in web):
            break
        assert time.monotonic() < deadline, "tasks did not leave the drained node"
        time.sleep(0.3)
    probe = next(t for t in web if where(o, t).name == "m1")
    for t in web:
        if t is probe:
            continue
        # nc's -w 1 bounds the connect: a stale neighbour entry (a stall of
        # a second or more) means no answer. (Not the wall time around the
        # CLI: its start-up alone can take seconds on a loaded machine.)
        r = exec_in(o, probe, "busybox", "nc", "-w", "1", addr(t), "7000", check=False)
        assert r.stdout.startswith("hi-"), (addr(t), r.stdout)
    gone_from_w2 = old - {addr(t) for t in web}
    for h in (o.fleet["m1"], o.fleet["w1"]):
        for n in os.listdir("/run/netns"):
            if n.startswith(f"{h.name_prefix}ov-"):
                neigh = subprocess.run(["nsenter", f"--net=/run/netns/{n}", "ip", "neigh", "show"],
                                       capture_output=True, text=True).stdout
                assert not any(ip + " " in neigh for ip in gone_from_w2), (h.name, neigh)
    o.orch(m1, "node", "update", "--availability", "active", "w2")

    # Scale down: the removed tasks' endpoints leave every node.
    o.orch(m1, "service", "scale", "web=2")
    gone = {addr(t) for t in web} - {addr(t) for t in running(o, "web")}
    assert len(gone) == 4
    left = running(o, "web")
    deadline = time.monotonic() + 10
    while True:
        r = exec_in(o, left[0], "busybox", "ping", "-c", "1", "-W", "1", sorted(gone)[0], check=False)
        if r.returncode != 0 or time.monotonic() > deadline:
            break
    assert r.returncode != 0

    # Removing a network in use is refused, naming the service.
    r = o.orch(m1, "network", "rm", "app", check=False)
    assert r.returncode != 0 and "in use by service(s) web" in r.stderr
    o.orch(m1, "service", "rm", "web")
    o.orch(m1, "service", "rm", "lone")
    deadline = time.monotonic() + 30
    while True:
        r1 = o.orch(m1, "network", "rm", "app", check=False)
        if r1.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert r1.returncode == 0, r1.stderr
    deadline = time.monotonic() + 30
    while o.orch(m1, "network", "rm", "other", check=False).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    # Nothing networked is left on any host but each node's ingress sandbox
    # (a task namespace and the ingress network's sandbox): task namespaces
    # and the other networks' sandboxes go.
    ingress = nets_id(o, "ingress")

    def left_over() -> set[str]:
        out = set()
        for h in o.fleet:
            mine = sorted(n for n in prefixed(o) if n.startswith(h.name_prefix))
            tasks = [n for n in mine if n.startswith(f"{h.name_prefix}task-")]
            out |= set(mine) - {f"{h.name_prefix}ov-{ingress}"} - set(tasks[:1])
        return out

    deadline = time.monotonic() + 30
    while left_over() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left_over() == set()
