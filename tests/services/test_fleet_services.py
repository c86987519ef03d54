"""The services workflow from the CLI on the multi-host fleet (each host a
network namespace with its own daemon; the registry runs on a fleet host):
create, scale, update --image, rollback, logs -f."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator


import pytest

from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import REPO, OrchFleet, services_cluster

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "w1", "w2", "reg"), scope="module")


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    # open_registry seeded the shared storage; a read-only registry in the fleet serves it.
    with services_cluster(fleet, registry_env.storage, tmp_path_factory.mktemp("fleet-reg")) as cluster:
        yield cluster


def test_service_workflow_on_the_fleet(of: tuple[OrchFleet, str]) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi"
    o.orch(m1, "service", "create", "--name", "web", "--replicas", "6", "--stop-signal", "KILL",
           "--update-monitor", "1s", "--rollback-parallelism", "0",
           f"{img}:latest", "sh", "-c", "echo up on $(hostname); sleep 3600")

    def tasks(all_: bool = False) -> list[dict]:
        return o.json(m1, "service", "ps", "web", *(["-a"] if all_ else []))

    def running() -> list[dict]:
        return [t for t in tasks() if t["desired_state"] == "running" and t["status"]["state"] == "running"]

    ts = running()
    assert len(ts) == 6 and len({t["node_id"] for t in ts}) == 3
    o.orch(m1, "service", "scale", "web=12")
    assert len(running()) == 12
    o.orch(m1, "service", "update", "--image", f"{img}:docker", "--update-parallelism", "4", "web")
    ts = running()
    assert len(ts) == 12 and all(":docker@sha256:" in t["spec"]["container"]["image"] for t in ts)
    o.orch(m1, "service", "rollback", "web")
    ts = running()
    assert len(ts) == 12 and all(":latest@sha256:" in t["spec"]["container"]["image"] for t in ts)
    # logs -f: every task's line arrives, prefixed with its task and node.
    p = subprocess.Popen([sys.executable, "-m", "cli.main", "--socket", str(m1.socket_path), "service", "logs",
                          "-f", "web"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        seen: set[str] = set()
        deadline = time.monotonic() + 20
        assert p.stdout is not None
        while len(seen) < 12 and time.monotonic() < deadline:
            line = p.stdout.readline()
            if "| up on " in line:
                seen.add(line.split("|")[0].strip())
        assert len(seen) == 12, seen
        hosts = {s.split("@")[1] for s in seen}
        assert hosts == {"m1", "w1", "w2"}
    finally:
        p.kill()
        p.wait()
    o.orch(m1, "service", "rm", "web")

