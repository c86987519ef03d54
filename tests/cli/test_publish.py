"""Published ports from the CLI: `--publish` in its long and short forms,
`--publish-add/--publish-rm`, the PORTS column, and, against a real manager
process, create/ls/inspect/ps/update with the errors users see."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
import pytest

from cli.service import format_port, service_ports, update_ports
from cli.specflags import parse_publish, parse_publish_rm
from tests.harness.managers import ManagerCluster


def port(target: int, published: int = 0, protocol: str = "tcp", mode: str = "ingress") -> dict[str, Any]:
    return {"target_port": target, "published_port": published, "protocol": protocol, "publish_mode": mode}


@pytest.mark.parametrize("flag,want", [
    ("8080:80", port(80, 8080)),
    ("8080:80/udp", port(80, 8080, "udp")),
    ("80", port(80)),
    ("53/UDP", port(53, 0, "udp")),
    ("0:80", port(80)),
    ("published=8080,target=80", port(80, 8080)),
    ("published=8080,target=80,protocol=udp,mode=host", port(80, 8080, "udp", "host")),
    ("target=80,mode=host", port(80, 0, "tcp", "host")),
])
def test_publish_forms(flag: str, want: dict[str, Any]) -> None:
    assert parse_publish(flag) == want


@pytest.mark.parametrize("flag,said", [
    ("8080:80/sctp", "protocol 'sctp' is not one of tcp, udp"),
    ("web:80", "published port 'web' is not a port number"),
    ("8080:0", "target port '0' is not a port number (1-65535)"),
    ("8080:70000", "target port '70000' is not a port number"),
    ("127.0.0.1:8080:80", "publishing on one host address is not supported"),
    ("8000-8001:80-81", "port ranges are not supported"),
    ("published=8080", "target= is required"),
    ("published=8080,target=80,ip=1", "unknown key 'ip'"),
    ("target=80,mode=mesh", "mode 'mesh' is not one of ingress, host"),
    ("target=80,published", "'published' is not KEY=VALUE"),
])
def test_bad_publish_flags_name_the_flag_and_value(flag: str, said: str) -> None:
    with pytest.raises(click.BadParameter) as ei:
        parse_publish(flag)
    assert said in ei.value.message and repr(flag) in ei.value.message
    assert ei.value.param_hint == "--publish"
    with pytest.raises(click.BadParameter) as ei:
        parse_publish(flag, "--publish-add")
    assert ei.value.param_hint == "--publish-add"


def test_publish_rm_forms() -> None:
    assert parse_publish_rm("8080") == (8080, None)
    assert parse_publish_rm("8080/udp") == (8080, "udp")
    with pytest.raises(click.BadParameter) as ei:
        parse_publish_rm("8080/icmp")
    assert "protocol 'icmp'" in ei.value.message and ei.value.param_hint == "--publish-rm"


def test_publish_add_and_rm_on_a_spec() -> None:
    spec = {"endpoint_spec": {"ports": [port(80, 8080), port(80, 8080, "udp"), port(81), port(82, 9000, mode="host")]}}
    endpoint = {"ports": [port(80, 8080), port(80, 8080, "udp"), port(81, 30004), port(82, 9000, mode="host")]}
    # No protocol: every protocol; a dynamic port by the number it was given.
    assert update_ports(spec, endpoint, [], [(8080, None), (30004, "tcp")]) == [port(82, 9000, mode="host")]
    assert update_ports(spec, endpoint, [], [(8080, "udp")]) == [port(80, 8080), port(81), port(82, 9000, mode="host")]
    # Add replaces the port with the same published port and protocol; rm runs first.
    assert update_ports(spec, endpoint, [port(90, 9000), port(91)], [(8080, None), (30004, None)]) == [
        port(90, 9000), port(91)]
    with pytest.raises(click.BadParameter) as ei:
        update_ports(spec, endpoint, [], [(7000, None)])
    assert "7000: the service publishes no such port" in ei.value.message


def test_ports_as_swarm_lists_them() -> None:
    assert format_port(port(80, 8080)) == "*:8080->80/tcp"
    assert format_port(port(53, 5353, "udp", "host")) == "5353->53/udp (host)"
    assert format_port(port(80)) == "*:?->80/tcp"
    s = {"spec": {"endpoint_spec": {"ports": [port(80)]}}, "endpoint": {"ports": []}}
    assert service_ports(s) == [port(80)]  # not allocated yet: as asked
    s["endpoint"]["ports"] = [port(80, 30000)]
    assert service_ports(s) == [port(80, 30000)]


# -- against a manager ----------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerCluster]:
    with ManagerCluster(1) as cl:
        cl.leader(timeout=15)
        yield cl


def orch(cl: ManagerCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--host", cl.nodes[0].addr, *args],
                          capture_output=True, text=True, timeout=60)


def ok(cl: ManagerCluster, *args: str) -> str:
    r = orch(cl, *args)
    assert r.returncode == 0, f"orch {' '.join(args)}: {r.stderr}"
    return r.stdout


def eventually(f: Any, what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_publish_from_the_cli(manager: ManagerCluster) -> None:
    cl = manager
    ok(cl, "network", "create", "--ingress", "ingress")
    r = orch(cl, "network", "create", "--ingress", "mesh")
    assert r.returncode != 0 and "has an ingress network already" in r.stderr
    assert "ingress" in ok(cl, "network", "ls")

    ok(cl, "service", "create", "--name", "web", "-p", "8080:80", "-p", "80/udp", "--detach", "busybox@sha256:"
       + "a" * 64)

    def allocated() -> Any:
        s = json.loads(ok(cl, "service", "inspect", "web"))[0]
        return s if len(s["endpoint"]["ports"]) == 2 and s["virtual_ips"] else None

    web = eventually(allocated, "web's ports and VIP")
    assert [p["published_port"] for p in web["endpoint"]["ports"]] == [8080, 30000]
    assert [v["network"] for v in web["virtual_ips"]] == ["ingress"]
    line = next(x for x in ok(cl, "service", "ls").splitlines() if " web " in f" {x} ")
    assert "*:8080->80/tcp, *:30000->80/udp" in line
    pretty = ok(cl, "service", "inspect", "--pretty", "web")
    assert "ingress" in pretty and web["virtual_ips"][0]["addr"] in pretty and "*:8080->80/tcp" in pretty

    # Tasks have an address on ingress (no node to run on: they wait PENDING).
    ps = eventually(lambda: (lambda out: out if "(ingress)" in out else None)(ok(cl, "service", "ps", "web")),
                    "task addresses in service ps")
    assert "ADDRESSES" in ps
    net = eventually(lambda: (lambda n: n if n["nodes"] else None)(json.loads(ok(cl, "network", "inspect", "ingress"))[0]),
                     "endpoints in network inspect")
    assert [g["node_id"] for g in net["nodes"]] == [""]  # not placed yet
    assert {e["name"] for e in net["nodes"][0]["endpoints"]} == {"web.1"}
    assert "web.1" in ok(cl, "network", "inspect", "--pretty", "ingress")

    # A taken port: refused, with the holder named; bad syntax names the flag.
    r = orch(cl, "service", "create", "--name", "api", "-p", "8080:81", "--detach", "busybox@sha256:" + "a" * 64)
    assert r.returncode == 1 and 'published port 8080/tcp is already used by service "web"' in r.stderr
    r = orch(cl, "service", "create", "--name", "api", "-p", "8080:81/sctp", "busybox")
    assert r.returncode == 2 and "--publish" in r.stderr and "8080:81/sctp" in r.stderr
    assert "api" not in ok(cl, "service", "ls")

    # Update: the dynamic udp port goes, 9090 comes; 8080 stays.
    ok(cl, "service", "update", "--publish-rm", "30000/udp", "--publish-add", "9090:80", "--detach", "web")
    web = eventually(lambda: (lambda s: s if len(s["endpoint"]["ports"]) == 2
                              and s["endpoint"]["ports"][1]["published_port"] == 9090 else None)(
        json.loads(ok(cl, "service", "inspect", "web"))[0]), "web's new ports")
    assert [p["published_port"] for p in web["endpoint"]["ports"]] == [8080, 9090]
    r = orch(cl, "service", "update", "--publish-rm", "7000", "--detach", "web")
    assert r.returncode == 2 and "7000: the service publishes no such port" in r.stderr

    r = orch(cl, "network", "rm", "ingress")
    assert r.returncode == 1 and "routing mesh of service(s) web" in r.stderr
