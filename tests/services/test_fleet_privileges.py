"""Service privileges on a real cluster (a manager and a worker, each a
network namespace with its own daemon): a global service (run as root:
the image's user would have no effective capabilities and no access to the
root-only device, as in Docker) with --cap-add
NET_ADMIN, --device /dev/fuse, a sysctl, a ulimit and --init gets them in
its task on every node; a service without them does not. The manager's
checks and the engine's spec are covered in tests/api, tests/controlapi and
tests/runtime; this is the path from the CLI to the worker's engine."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import OrchFleet, start_registry

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "w1", "reg"), scope="module")

NET_ADMIN_BIT = 12
PROBE = ("grep CapEff /proc/self/status; test -c /dev/fuse && echo fuse-node; "
         "(: < /dev/fuse) 2>/dev/null && echo fuse-open; echo somaxconn $(cat /proc/sys/net/core/somaxconn); "
         "echo nofile $(ulimit -n) $(ulimit -Hn); echo pid1 $(cat /proc/1/comm); echo done; sleep 3600")


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no /dev/fuse on this host")
    if not (shutil.which("tini-static") or shutil.which("tini")):
        pytest.skip("no tini on this host (Debian package tini)")
    reg = start_registry(fleet["reg"], registry_env.storage, Path(tmp_path_factory.mktemp("fleet-reg")))
    o = OrchFleet(fleet, heartbeat=1.0, extra=["--insecure-registry", reg])
    try:
        for h in ("m1", "w1"):
            o.start(fleet[h])
        o.init_and_join([fleet["m1"]], [fleet["w1"]])
        o.wait_nodes(fleet["m1"], {"m1": "ready", "w1": "ready"})
        yield o, reg
    finally:
        o.stop_all()


def task_lines(o: OrchFleet, service: str, nodes: int, timeout: float = 30) -> dict[str, list[str]]:
    """Each task's probe output (by node), once every node's task printed it all."""
    m1 = o.fleet["m1"]
    deadline = time.monotonic() + timeout
    while True:
        out = o.orch(m1, "service", "logs", service).stdout
        by_node: dict[str, list[str]] = {}
        for line in out.splitlines():
            who, _, text = line.partition("|")
            by_node.setdefault(who.strip().split("@")[-1], []).append(text.strip())
        if len(by_node) == nodes and all("done" in v for v in by_node.values()):
            return by_node
        assert time.monotonic() < deadline, f"{service}: probe output incomplete: {out}"
        time.sleep(0.5)


def field(lines: list[str], prefix: str) -> list[str]:
    return next(line.split()[1:] for line in lines if line.split()[:1] == [prefix])


def test_privileges_reach_the_task_on_every_node(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi:latest"
    o.orch(m1, "service", "create", "--name", "priv", "--mode", "global", "--cap-add", "NET_ADMIN",
           "--device", "/dev/fuse", "--sysctl", "net.core.somaxconn=777", "--ulimit", "nofile=321:654",
           "--init", "-u", "0", img, "sh", "-c", PROBE, timeout=120)
    o.orch(m1, "service", "create", "--name", "plain", "--mode", "global", "-u", "0", img, "sh", "-c", PROBE,
           timeout=120)
    for node, lines in task_lines(o, "priv", 2).items():
        assert int(field(lines, "CapEff:")[0], 16) >> NET_ADMIN_BIT & 1, (node, lines)
        assert "fuse-node" in lines and "fuse-open" in lines, (node, lines)
        assert field(lines, "somaxconn") == ["777"] and field(lines, "nofile") == ["321", "654"], (node, lines)
        assert field(lines, "pid1") == ["orch-init"], (node, lines)
    for node, lines in task_lines(o, "plain", 2).items():
        assert not int(field(lines, "CapEff:")[0], 16) >> NET_ADMIN_BIT & 1, (node, lines)
        assert "fuse-node" not in lines and "fuse-open" not in lines, (node, lines)
        assert field(lines, "pid1") == ["sh"], (node, lines)
    # inspect shows what was asked; privileged is plainly off.
    pretty = o.orch(m1, "service", "inspect", "--pretty", "priv").stdout
    assert "Privileged:     no" in pretty and "Cap add:        NET_ADMIN" in pretty
    # update: the capability moves to the drop list, the device goes; the service converges.
    o.orch(m1, "service", "update", "--cap-drop", "NET_ADMIN", "--device-rm", "/dev/fuse", "priv", timeout=120)
    c = json.loads(o.orch(m1, "service", "inspect", "priv").stdout)[0]["spec"]["task"]["container"]
    assert (c["cap_add"], c["cap_drop"], c["devices"]) == ([], ["NET_ADMIN"], [])
    o.orch(m1, "service", "rm", "priv", "plain")
