"""Prometheus metrics of the node daemon (daemon.metrics): the exposition
parsed with prometheus_client's own parser, values that move when the
cluster does (a proposal, an fsync, a store write, a pull, a container
start), the opt-in address and its errors, and one scrape by a real
Prometheus server (Debian's `prometheus`)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.probe import NULL_PROBE
from daemon.metrics import Metrics, NodeCollector
from daemon.options import OptionsError, build_kwargs, build_options, defaults
from daemon.settings import SettingsError, check_metrics_addr
from manager.process import ManagerOptions, ManagerProcess
from manager.raft.driver import RaftSettings
from tests.fixtures.registry import SeededRegistry, free_port
from tests.overlay_net.test_dns import namespaces, upstream  # noqa: F401  (fixtures, by name)

FAST = RaftSettings(tick_interval=0.02, proposal_timeout=2.0)
PROMETHEUS = "/usr/bin/prometheus"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """(metric family name -> type, (sample name, labels) -> value)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return types, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


class ManagerOnly:
    """What NodeCollector reads of a daemon, for a daemon that is only a
    manager (no engine: these tests run without root)."""

    containers = images = networks = membership = None

    def __init__(self, manager: ManagerProcess) -> None:
        self.manager = manager

    def _current_manager(self) -> ManagerProcess:
        return self.manager


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[tuple[ManagerProcess, Metrics]]:
    addr = f"127.0.0.1:{free_port()}"
    metrics = Metrics()
    m = ManagerProcess(ManagerOptions(node_id=1, data_dir=str(tmp_path / "manager"), listen_addr=addr,
                                      initial_cluster={1: addr}, settings=FAST, probe=metrics))
    metrics.registry.register(NodeCollector(ManagerOnly(m)))
    await m.start()
    try:
        await asyncio.wait_for(m.leadership.wait_elected(), 10)  # type: ignore[union-attr]
        yield m, metrics
    finally:
        await m.stop()
        await metrics.stop()


EVENT_METRICS = {
    "orch_raft_wal_fsync_duration_seconds": "histogram",
    "orch_raft_proposals": "counter",
    "orch_raft_proposal_duration_seconds": "histogram",
    "orch_raft_leader_changes": "counter",
    "orch_store_transactions": "counter",
    "orch_store_transaction_duration_seconds": "histogram",
    "orch_orchestrator_reconcile_passes": "counter",
    "orch_orchestrator_reconcile_duration_seconds": "histogram",
    "orch_agent_heartbeat_rtt_seconds": "histogram",
    "orch_engine_image_pull_duration_seconds": "histogram",
    "orch_engine_image_pull_bytes": "counter",
    "orch_engine_container_create_duration_seconds": "histogram",
    "orch_engine_container_start_duration_seconds": "histogram",
    "orch_dns_queries": "counter",
    "orch_dns_query_duration_seconds": "histogram",
    "orch_nft_rule_updates": "counter",
}

MANAGER_GAUGES = ("orch_raft_term", "orch_raft_commit_index", "orch_raft_applied_index", "orch_raft_snapshot_index",
                  "orch_raft_leader", "orch_raft_members", "orch_store_objects", "orch_store_watchers",
                  "orch_orchestrator_tasks", "orch_dispatcher_sessions")


def test_the_probe_events_are_counted_with_the_conventions() -> None:
    m = Metrics()
    types, samples = parse(m.exposition().decode())
    for name, kind in EVENT_METRICS.items():
        assert types.get(name) == kind, name
    # Labelled series exist from the start, at zero.
    assert value(samples, "orch_raft_proposals_total", result="failed") == 0
    assert value(samples, "orch_dns_queries_total", answer="forwarded") == 0
    m.dns_query("local", 0.0002)
    m.dns_query("local", 0.0004)
    m.nft_update()
    m.image_bytes(1000)
    m.image_bytes(24)
    m.container_started(0.05)
    m.heartbeat_rtt(0.003)
    _, samples = parse(m.exposition().decode())
    assert value(samples, "orch_dns_queries_total", answer="local") == 2
    assert value(samples, "orch_dns_query_duration_seconds_count", answer="local") == 2
    assert value(samples, "orch_dns_query_duration_seconds_bucket", answer="local", le="0.00025") == 1
    assert value(samples, "orch_nft_rule_updates_total") == 1
    assert value(samples, "orch_engine_image_pull_bytes_total") == 1024
    assert value(samples, "orch_engine_container_start_duration_seconds_count") == 1
    assert value(samples, "orch_engine_container_start_duration_seconds_sum") == pytest.approx(0.05)
    assert value(samples, "orch_agent_heartbeat_rtt_seconds_count") == 1
    # Two daemons in one process keep their own registries.
    assert value(parse(Metrics().exposition().decode())[1], "orch_nft_rule_updates_total") == 0


def test_the_metrics_address_is_opt_in_and_checked() -> None:
    assert defaults()["metrics_addr"] is None
    kw = build_kwargs({**defaults(), "data_dir": "/tmp/x"})
    assert build_options(**kw).metrics_addr is None
    assert build_options(**{**kw, "metrics_addr": "127.0.0.1:9323"}).metrics_addr == "127.0.0.1:9323"
    assert check_metrics_addr(":9323") == ("0.0.0.0", 9323)
    assert check_metrics_addr("[::1]:9323") == ("::1", 9323)
    for bad in ("9323", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:70000", "a b:1", "bad_host!:1"):
        with pytest.raises(OptionsError) as e:
            build_options(**{**kw, "metrics_addr": bad})
        assert e.value.param == "--metrics-addr" and "HOST:PORT" in str(e.value), bad
    with pytest.raises(SettingsError, match="metrics_addr"):
        check_metrics_addr(9323)
    assert NULL_PROBE.wal_fsync(1.0) is None  # the default probe does nothing, whatever it is told


async def test_a_manager_exports_raft_store_and_orchestrator_state(
        manager: tuple[ManagerProcess, Metrics]) -> None:
    m, metrics = manager
    types, before = parse(metrics.exposition().decode())
    for name in MANAGER_GAUGES:
        assert types.get(name) == "gauge", name
    assert value(before, "orch_raft_leader") == 1
    assert value(before, "orch_raft_term") >= 1
    assert value(before, "orch_raft_members", suffrage="voter") == 1
    assert value(before, "orch_raft_leader_changes_total") >= 1
    assert value(before, "orch_orchestrator_tasks", state="running") == 0
    deadline = time.monotonic() + 5
    while value(parse(metrics.exposition().decode())[1], "orch_orchestrator_reconcile_passes_total") < 1:
        assert time.monotonic() < deadline, "the leader's orchestrator made no pass"
        await asyncio.sleep(0.02)
    _, samples = parse(metrics.exposition().decode())
    assert value(samples, "orch_orchestrator_reconcile_duration_seconds_count") >= 1
    assert ("orch_engine_containers", (("state", "running"),)) not in before  # no engine here

    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://{m.opts.listen_addr}/v1/configs",
                          json={"name": "metrics-test", "data": "aGVsbG8="}) as r:
            assert r.status == 201, await r.text()
    _, after = parse(metrics.exposition().decode())
    # One proposal, applied: the counters moved, and so did the indexes.
    assert value(after, "orch_raft_proposals_total", result="ok") == value(
        before, "orch_raft_proposals_total", result="ok") + 1
    assert value(after, "orch_raft_proposal_duration_seconds_count") > value(
        before, "orch_raft_proposal_duration_seconds_count")
    assert value(after, "orch_raft_wal_fsync_duration_seconds_count") > value(
        before, "orch_raft_wal_fsync_duration_seconds_count")
    assert value(after, "orch_store_transactions_total", result="ok") > value(
        before, "orch_store_transactions_total", result="ok")
    assert value(after, "orch_raft_applied_index") > value(before, "orch_raft_applied_index")
    assert value(after, "orch_raft_commit_index") >= value(after, "orch_raft_applied_index")
    assert value(after, "orch_store_objects", table="configs") == 1
    assert value(before, "orch_store_objects", table="configs") == 0

    # A proposal that cannot commit is counted as failed.
    with pytest.raises(Exception):
        await m.raft.propose(b"\xc1not a transaction", timeout=1e-6)
    _, last = parse(metrics.exposition().decode())
    assert value(last, "orch_raft_proposals_total", result="failed") == 1


async def test_metrics_are_served_over_http_and_the_address_must_be_free(
        manager: tuple[ManagerProcess, Metrics]) -> None:
    _, metrics = manager
    await metrics.serve(f"127.0.0.1:{free_port()}")
    host, port = metrics.address  # type: ignore[misc]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{host}:{port}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            types, samples = parse(await r.text())
    assert types["orch_raft_applied_index"] == "gauge" and value(samples, "orch_raft_leader") == 1
    other = Metrics()
    with pytest.raises(OSError, match=f"--metrics-addr 127.0.0.1:{port}: cannot listen"):
        await other.serve(f"127.0.0.1:{port}")


async def _wait_json(s: aiohttp.ClientSession, url: str, ok: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            async with s.get(url) as r:
                last = await r.json(content_type=None) if r.status == 200 else await r.text()
                if r.status == 200 and ok(last):
                    return last
        except aiohttp.ClientError as e:
            last = e
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not in {timeout:.0f} s; last answer {last!r}"[:3000])


@pytest.mark.skipif(not os.path.exists(PROMETHEUS), reason="Debian's prometheus is not installed "
                                                           "(.ci/install-system-deps installs it)")
async def test_a_real_prometheus_scrapes_the_daemon(tmp_path: Path, manager: tuple[ManagerProcess, Metrics]) -> None:
    _, metrics = manager
    await metrics.serve(f"127.0.0.1:{free_port()}")
    host, port = metrics.address  # type: ignore[misc]
    web_port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n"
        "scrape_configs:\n  - job_name: orch\n    static_configs:\n"
        f"      - targets: ['{host}:{port}']\n")
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{web_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as s:
            targets = await _wait_json(
                s, f"{api}/targets",
                lambda j: any(t["health"] == "up" for t in j["data"]["activeTargets"]), 30, "target up")
            (target,) = targets["data"]["activeTargets"]
            assert target["scrapeUrl"] == f"http://{host}:{port}/metrics" and not target["lastError"]
            result = await _wait_json(
                s, f"{api}/query?query=orch_raft_leader",
                lambda j: bool(j["data"]["result"]), 15, "orch_raft_leader in Prometheus")
            (series,) = result["data"]["result"]
            assert series["metric"]["job"] == "orch" and series["value"][1] == "1"
            hist = await _wait_json(
                s, f"{api}/query?query=orch_raft_wal_fsync_duration_seconds_count",
                lambda j: bool(j["data"]["result"]), 15, "the fsync histogram in Prometheus")
            assert float(hist["data"]["result"][0]["value"][1]) >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp_path / "data", ignore_errors=True)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs root")
async def test_a_daemon_counts_its_pulls_and_container_starts(tmp_path: Path, open_registry: SeededRegistry) -> None:
    """A whole node daemon (engine and static manager) with --metrics-addr:
    running a container pulls its image and starts it, and /metrics says so."""
    from daemon.node import NodeDaemon
    from tests.fixtures.cgroups import remove_cgroup_parent

    raft_addr = f"127.0.0.1:{free_port()}"
    cgroup = f"orch-test-{uuid.uuid4().hex[:8]}"
    opts = build_options(**build_kwargs({
        **defaults(), "data_dir": str(tmp_path / "data"), "node_id": 1, "listen_addr": raft_addr,
        "initial_cluster": f"1={raft_addr}", "socket_path": str(tmp_path / "orch.sock"), "tick_ms": 20,
        "insecure": (open_registry.addr,), "cgroup_parent": cgroup, "metrics_addr": f"127.0.0.1:{free_port()}"}))
    d = NodeDaemon(opts)
    await d.start()
    url = f"http://{opts.metrics_addr}/metrics"
    try:
        await asyncio.wait_for(d.manager.leadership.wait_elected(), 20)  # the single member elects itself
        async with aiohttp.ClientSession() as s:
            async with s.get(url) as r:
                types, before = parse(await r.text())
            assert types["orch_engine_containers"] == "gauge" and types["orch_raft_applied_index"] == "gauge"
            assert value(before, "orch_engine_containers", state="running") == 0
            assert value(before, "orch_engine_image_pull_duration_seconds_count") == 0
            local = aiohttp.UnixConnector(path=str(opts.socket_path))
            async with aiohttp.ClientSession(connector=local) as ls:
                async with ls.post("http://local/v1/containers", json={
                        "image": f"{open_registry.addr}/library/busybox-multi:latest",
                        "command": ["sleep", "30"]}) as r:
                    assert r.status == 201, await r.text()
                    cid = (await r.json())["id"]
                async with s.get(url) as r:
                    _, after = parse(await r.text())
                async with ls.delete(f"http://local/v1/containers/{cid}?force=1") as r:
                    assert r.status == 200, await r.text()
        assert value(after, "orch_engine_containers", state="running") == 1
        assert value(after, "orch_engine_images") == 1
        assert value(after, "orch_engine_image_pull_duration_seconds_count") == 1
        assert value(after, "orch_engine_image_pull_bytes_total") > 1000  # busybox's layers
        assert value(after, "orch_engine_container_create_duration_seconds_count") == 1
        assert value(after, "orch_engine_container_start_duration_seconds_count") == 1
        assert 0 < value(after, "orch_engine_container_start_duration_seconds_sum") < 30
        assert value(after, "orch_raft_leader") == 1  # the static manager's gauges, on the same endpoint
    finally:
        await d.stop()
        remove_cgroup_parent(cgroup)
    with pytest.raises(aiohttp.ClientConnectorError):  # stopped with the daemon
        async with aiohttp.ClientSession() as s:
            await s.get(url)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)")
async def test_the_embedded_dns_counts_local_and_forwarded_queries(upstream: Any, namespaces: list[str]) -> None:
    from overlay_net.dns import Resolver
    from tests.overlay_net.test_dns import N1, UPSTREAM, a_records, new_ns, query, table

    metrics = Metrics()
    r = Resolver(table(), upstreams=[UPSTREAM], forward_timeout=0.5, probe=metrics)
    try:
        ns = await new_ns(namespaces)
        await r.serve("c1", ns, [N1])
        assert a_records(await query(ns, "web")) == {"10.0.1.2"}
        assert a_records(await query(ns, "tasks.web")) == {"10.0.1.5", "10.0.1.6"}
        assert a_records(await query(ns, "example.test")) == {"192.0.2.7"}
    finally:
        await r.close()
    _, samples = parse(metrics.exposition().decode())
    assert value(samples, "orch_dns_queries_total", answer="local") == 2
    assert value(samples, "orch_dns_queries_total", answer="forwarded") == 1
    assert value(samples, "orch_dns_query_duration_seconds_count", answer="forwarded") == 1
    assert 0 < value(samples, "orch_dns_query_duration_seconds_sum", answer="forwarded") < 0.5


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")
async def test_nftables_table_writes_are_counted(namespaces: list[str]) -> None:
    """Only tables that change are written, and only those are counted."""
    from overlay_net import lb
    from overlay_net.manager import NetworkDataplane
    from tests.overlay_net.test_dns import new_ns

    metrics = Metrics()
    ns = await new_ns(namespaces)
    dp = NetworkDataplane(f"mt{os.getpid() % 100000}-", "127.0.0.1")
    dp.probe = metrics

    def writes() -> float:
        return value(parse(metrics.exposition().decode())[1], "orch_nft_rule_updates_total")

    try:
        vip = "10.0.1.2"
        assert await dp.balance({ns: lb.Balancer(vips=(lb.VirtualService(vip, ("10.0.1.5",)),))}) == []
        assert writes() == 1
        assert await dp.balance({ns: lb.Balancer(vips=(lb.VirtualService(vip, ("10.0.1.5",)),))}) == []
        assert writes() == 1  # unchanged: not written again
        assert await dp.balance({ns: lb.Balancer(vips=(lb.VirtualService(vip, ("10.0.1.5", "10.0.1.6")),))}) == []
        assert writes() == 2
    finally:
        await dp.close()
