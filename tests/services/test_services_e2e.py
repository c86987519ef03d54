"""Services across a real cluster: 3 `orch daemon` processes on loopback
(1 manager, 2 workers), real runc containers, images from a real registry,
everything driven through the CLI."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.registry import SeededRegistry
from tests.harness.loopcluster import LoopCluster, leftovers
from tests.harness.wait import wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(open_registry: SeededRegistry) -> Iterator[LoopCluster]:
    c = LoopCluster(3, registry=open_registry.addr, heartbeat=0.5)
    with c:
        yield c
    assert leftovers(str(c.base)) == []


@pytest.fixture
def image(open_registry: SeededRegistry) -> str:
    return open_registry.ref("library/busybox-multi:latest")


def tasks(c: LoopCluster, svc: str, all_: bool = False) -> list[dict[str, Any]]:
    return c.nodes[0].json("service", "ps", svc, *(["-a"] if all_ else []))


def running(c: LoopCluster, svc: str) -> list[dict[str, Any]]:
    return [t for t in tasks(c, svc) if t["desired_state"] == "running" and t["status"]["state"] == "running"]


def test_create_scale_and_remove(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "web", "--replicas", "6", image, "sleep", "3600")
    ts = running(cluster, "web")
    assert len(ts) == 6
    assert len({t["node_id"] for t in ts}) == 3  # spread over every node
    assert all("@sha256:" in t["spec"]["container"]["image"] for t in ts)  # pinned to a digest
    # Each node really runs its share.
    for n in cluster.nodes:
        cs = [c for c in n.json("container", "ls") if c["name"].startswith("web.")]
        assert len(cs) == 2, (n.name, cs)
    m.orch("service", "scale", "web=9")
    assert len(running(cluster, "web")) == 9
    m.orch("service", "scale", "web=2")
    assert len(running(cluster, "web")) == 2
    assert sum(len([c for c in n.json("container", "ls") if c["name"].startswith("web.")])
               for n in cluster.nodes) == 2  # stopped, not just marked
    m.orch("service", "scale", "web=0")
    assert running(cluster, "web") == []
    ls = m.json("service", "ls")
    assert [(s["spec"]["name"], s["replicas_status"]["running"]) for s in ls] == [("web", 0)]
    m.orch("service", "rm", "web")
    wait_for(lambda: all(not [c for c in n.json("container", "ls", "-a") if c["name"].startswith("web.")]
                         for n in cluster.nodes), 20, "web's containers to be removed")


def test_global_follows_drain(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "agentd", "--mode", "global", image, "sleep", "3600")
    assert sorted(t["node_id"] for t in running(cluster, "agentd")) == sorted(
        n["id"] for n in m.json("node", "ls"))
    m.orch("node", "update", "--availability", "drain", "node3")
    node3 = next(n["id"] for n in m.json("node", "ls") if n["description"]["hostname"] == "node3")
    wait_for(lambda: node3 not in {t["node_id"] for t in running(cluster, "agentd")}, 20, "drain")
    assert len(running(cluster, "agentd")) == 2
    m.orch("node", "update", "--availability", "active", "node3")
    wait_for(lambda: len(running(cluster, "agentd")) == 3, 20, "node3 back in the global service")
    m.orch("service", "rm", "agentd")


def test_constraints_spread_and_pending_reason(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("node", "update", "--label-add", "zone=eu", "node2")
    m.orch("node", "update", "--label-add", "zone=eu", "node3")
    m.orch("node", "update", "--label-add", "zone=us", "node1")
    m.orch("service", "create", "--name", "eu", "--replicas", "4", "--constraint", "node.labels.zone==eu",
           image, "sleep", "3600")
    hosts = {n["id"]: n["description"]["hostname"] for n in m.json("node", "ls")}
    assert sorted(hosts[t["node_id"]] for t in running(cluster, "eu")) == ["node2", "node2", "node3", "node3"]
    m.orch("service", "create", "--name", "spread", "--replicas", "4", "--placement-pref",
           "spread=node.labels.zone", image, "sleep", "3600")
    zones = {"node1": "us", "node2": "eu", "node3": "eu"}
    per_zone = sorted(zones[hosts[t["node_id"]]] for t in running(cluster, "spread"))
    assert per_zone == ["eu", "eu", "us", "us"]  # half per zone, whatever the node counts
    r = m.orch("service", "create", "--name", "huge", "--replicas", "1", "--reserve-memory", "100000g", "-d",
               image, "sleep", "3600")
    t = wait_for(lambda: [x for x in tasks(cluster, "huge") if x["status"]["state"] == "pending"], 10,
                 "a pending task")[0]
    assert "no suitable node: 3 nodes checked" in t["status"]["message"]
    assert "lack 102400000 MiB memory" in t["status"]["message"]
    assert "no suitable node" in m.orch("service", "ps", "huge").stdout
    r = m.orch("service", "create", "--name", "bad", "--constraint", "node.color==red", image, "true", check=False)
    assert r.returncode != 0 and "task.placement.constraints[0]" in r.stderr and "node.color" in r.stderr
    for s in ("eu", "spread", "huge"):
        m.orch("service", "rm", s)


def test_restart_policy_and_job(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "crashy", "--restart-max-attempts", "2", "--restart-delay", "200ms",
           "-d", image, "sh", "-c", "exit 3")
    wait_for(lambda: len([t for t in tasks(cluster, "crashy", True) if t["status"]["state"] == "failed"]) == 3,
             30, "three failed runs")
    time.sleep(1.5)
    hist = tasks(cluster, "crashy", True)
    assert len(hist) == 3 and all(t["status"]["err"] == "task: non-zero exit (3)" for t in hist)
    m.orch("service", "create", "--name", "batch", "--mode", "replicated-job", "--replicas", "2",
           image, "sh", "-c", "echo working; sleep 0.5")
    done = [t for t in tasks(cluster, "batch", True) if t["status"]["state"] == "complete"]
    assert len(done) == 2 and all(t["status"]["exit_code"] == 0 for t in done)
    for s in ("crashy", "batch"):
        m.orch("service", "rm", s)


def test_rolling_update_and_automatic_rollback(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "api", "--replicas", "4", "--update-parallelism", "2",
           "--update-order", "start-first", "--update-monitor", "1s", "--update-failure-action", "rollback",
           "--rollback-parallelism", "0", image, "sleep", "3600")
    before = {t["id"] for t in running(cluster, "api")}
    m.orch("service", "update", "--env", "VERSION=2", "api")
    after = running(cluster, "api")
    assert len(after) == 4 and not ({t["id"] for t in after} & before)
    assert all("VERSION=2" in t["spec"]["container"]["env"] for t in after)
    # An update whose healthcheck fails is rolled back on its own.
    r = m.orch("service", "update", "--health-cmd", "false", "--health-interval", "200ms", "--health-retries", "1",
               "api", check=False)
    assert r.returncode != 0 and "rolled back" in r.stderr, r.stderr
    svc = json.loads(m.orch("service", "inspect", "api").stdout)[0]
    assert svc["update_status"]["state"] == "rollback_completed"
    assert svc["spec"]["task"]["container"]["healthcheck"] is None
    final = running(cluster, "api")
    assert len(final) == 4 and all("VERSION=2" in t["spec"]["container"]["env"] for t in final)
    assert all(t["spec"]["container"]["healthcheck"] is None for t in final)
    m.orch("service", "rm", "api")


def test_secrets_reach_only_containers(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    value = "s3cr3t-" + str(time.time_ns())
    m.orch("secret", "create", "dbpass", "-", input=value)
    m.orch("service", "create", "--name", "usesec", "--secret", "dbpass", image, "sh", "-c",
           "cat /run/secrets/dbpass; echo; sleep 3600")
    out = wait_for(lambda: m.orch("service", "logs", "--no-prefix", "usesec").stdout.split(), 10,
                   "the secret in the logs")
    assert out == [value]
    # Never in API responses...
    for args in (("secret", "inspect", "dbpass"), ("secret", "ls", "--format", "json"),
                 ("service", "inspect", "usesec")):
        assert value not in m.orch(*args).stdout
    assert base64.b64encode(value.encode()).decode() not in m.orch("secret", "inspect", "dbpass").stdout
    # ...nor in any file of the manager's store on disk.
    for f in (cluster.nodes[0].dir / "data").rglob("*"):
        if f.is_file() and "engine" not in f.parts:
            assert value.encode() not in f.read_bytes(), f
    r = m.orch("secret", "rm", "dbpass", check=False)
    assert r.returncode != 0 and "in use by service(s) usesec" in r.stderr
    m.orch("service", "rm", "usesec")
    wait_for(lambda: m.orch("secret", "rm", "dbpass", check=False).returncode == 0, 10, "secret removal")


def test_worker_loss_reschedules(cluster: LoopCluster, image: str) -> None:
    m = cluster.nodes[0]
    m.orch("service", "create", "--name", "ha", "--replicas", "6", image, "sleep", "3600")
    victim = cluster.nodes[2]
    vid = next(n["id"] for n in m.json("node", "ls") if n["description"]["hostname"] == victim.name)
    assert any(t["node_id"] == vid for t in running(cluster, "ha"))
    victim.kill9()
    t0 = time.monotonic()
    wait_for(lambda: len([t for t in running(cluster, "ha") if t["node_id"] != vid]) == 6, 20,
             "replicas to run elsewhere")
    took = time.monotonic() - t0
    assert took < 20
    # The node comes back: the tasks it still ran are stopped and removed.
    victim.start()
    wait_for(lambda: not [c for c in victim.json("container", "ls", "-a") if c["name"].startswith("ha.")], 30,
             "the returning node to clean up its stale tasks")
    assert len(running(cluster, "ha")) == 6
    m.orch("service", "rm", "ha")
    cluster.wait_ready()
