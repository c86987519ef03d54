"""Services through failures, with default settings (5 s heartbeats):
3 managers + 1 worker on loopback, real containers.

- the leader is killed in the middle of a rolling update: the new leader's
  orchestrator carries the update to completion;
- a worker is killed: its replicas run elsewhere within 20 s."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.registry import SeededRegistry
from tests.harness.loopcluster import LoopCluster, LoopNode

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(open_registry: SeededRegistry) -> Iterator[LoopCluster]:
    c = LoopCluster(4, registry=open_registry.addr, heartbeat=5.0, managers=3)
    with c:
        yield c


def leader(c: LoopCluster, via: LoopNode) -> LoopNode:
    for n in via.json("node", "ls"):
        if (n.get("manager_status") or {}).get("leader"):
            return next(x for x in c.nodes if x.name == n["description"]["hostname"])
    raise AssertionError("no leader")


def live(via: LoopNode, svc: str) -> list[dict[str, Any]]:
    return [t for t in via.json("service", "ps", svc) if t["desired_state"] == "running"]


def test_leader_killed_mid_update_update_completes(cluster: LoopCluster, open_registry: SeededRegistry) -> None:
    image = open_registry.ref("library/busybox-multi:latest")
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "roll", "--replicas", "6", "--stop-signal", "KILL",
           "--update-parallelism", "1", "--update-monitor", "1s", image, "sleep", "3600")
    m.orch("service", "update", "-d", "--env", "V=2", "roll")
    # Wait until the update is under way, then kill the leader.
    deadline = time.monotonic() + 30
    while not any("V=2" in t["spec"]["container"]["env"] and t["status"]["state"] == "running"
                  for t in live(m, "roll")):
        assert time.monotonic() < deadline, "the update did not start"
        time.sleep(0.1)
    old = leader(cluster, m)
    old.kill9()
    other = next(n for n in cluster.nodes[:3] if n is not old)
    deadline = time.monotonic() + 90
    while True:
        r = other.orch("service", "inspect", "roll", check=False)
        if r.returncode == 0:
            svc = json.loads(r.stdout)[0]
            ts = live(other, "roll")
            done = [t for t in ts if "V=2" in t["spec"]["container"]["env"] and t["status"]["state"] == "running"]
            if svc["update_status"]["state"] == "completed" and len(done) == 6 and len(ts) == 6:
                break
        assert time.monotonic() < deadline, f"update stuck: {r.stdout[-500:] or r.stderr}"
        time.sleep(0.5)
    old.start()
    other.orch("service", "rm", "roll")
    cluster.wait_ready(timeout=60)


def test_worker_killed_replicas_move_within_20s(cluster: LoopCluster, open_registry: SeededRegistry) -> None:
    image = open_registry.ref("library/busybox-multi:latest")
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "ha", "--replicas", "8", "--stop-signal", "KILL", image, "sleep", "3600")
    worker = cluster.nodes[3]
    wid = next(n["id"] for n in m.json("node", "ls") if n["description"]["hostname"] == worker.name)
    assert any(t["node_id"] == wid and t["status"]["state"] == "running" for t in live(m, "ha"))
    worker.kill9()
    t0 = time.monotonic()
    while True:
        ts = [t for t in live(m, "ha") if t["status"]["state"] == "running" and t["node_id"] != wid]
        if len(ts) == 8:
            break
        assert time.monotonic() - t0 < 20, f"only {len(ts)} of 8 running elsewhere after 20 s"
        time.sleep(0.2)
    took = time.monotonic() - t0
    print(f"replicas of the killed worker ran elsewhere after {took:.1f} s")
    worker.start()
    m.orch("service", "rm", "ha")
    cluster.wait_ready(timeout=60)
