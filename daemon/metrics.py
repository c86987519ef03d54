"""Prometheus metrics of one node daemon, served at GET /metrics on the
opt-in `--metrics-addr` (plain HTTP).

Two sources, one registry per daemon (several daemons may share a process
in tests, so never prometheus_client's global default registry):

- `NodeCollector` reads state when Prometheus scrapes: Raft indexes and
  term, objects per store table, tasks per state, agent sessions,
  containers per state, images, overlay endpoints. Nothing is updated on a
  hot path for these.
- `Metrics` is also the `api.probe.Probe` the daemon hands to its parts:
  the events that cannot be read afterwards (WAL fsyncs, proposals, store
  applies, reconcile passes, heartbeat round trips, image pulls, container
  create/start, DNS queries, nftables writes) are counted where they happen.

Names follow Prometheus conventions: `orch_` prefix, base units (seconds,
bytes), `_total` counters, `_seconds` histograms. The list is in README.md
(Metrics). A node that is not a manager exports no `orch_raft_*`,
`orch_store_*` or `orch_orchestrator_*` gauges; the manager's counters stay
(they count what happened while it was one).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.objects import TaskState
from api.probe import Probe

from .settings import check_metrics_addr

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"

# Histogram buckets (seconds) for what is fast when all is well: an fsync on
# an SSD, one store apply, a DNS answer from memory.
_DISK = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_CPU = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)
_RPC = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class NodeCollector(Collector):
    """Gauges read from the daemon's parts at scrape time. `node` is the
    daemon.node.NodeDaemon (duck-typed: tests may give any object with the
    same attributes); parts it has not made yet are skipped."""

    def __init__(self, node: Any) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        # Names only (no samples): keeps the registry from calling collect()
        # when this collector is registered, before the daemon has its parts.
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("orch_raft_term", "Current Raft term this replica knows.")
        yield GaugeMetricFamily("orch_raft_commit_index", "Highest Raft log index known committed.")
        yield GaugeMetricFamily("orch_raft_applied_index", "Highest Raft log index applied to the store.")
        yield GaugeMetricFamily("orch_raft_snapshot_index", "Raft log index of the last snapshot.")
        yield GaugeMetricFamily("orch_raft_leader", "1 if this replica is the Raft leader, else 0.")
        yield GaugeMetricFamily("orch_raft_members", "Raft members by suffrage.", labels=["suffrage"])
        yield GaugeMetricFamily("orch_store_objects", "Objects in the replicated store, per table.", labels=["table"])
        yield GaugeMetricFamily("orch_store_watchers", "Open watches on the store.")
        yield GaugeMetricFamily("orch_orchestrator_tasks", "Tasks in the store by observed state.", labels=["state"])
        yield GaugeMetricFamily("orch_dispatcher_sessions", "Agent sessions open on this manager (the leader).")
        yield GaugeMetricFamily("orch_agent_session_connected", "1 while this node's agent has a manager session.")
        yield GaugeMetricFamily("orch_engine_containers", "Containers of this node's engine by state.",
                                labels=["state"])
        yield GaugeMetricFamily("orch_engine_images", "Images in this node's image store.")
        yield GaugeMetricFamily("orch_network_networks", "Overlay networks this node's dataplane has.")
        yield GaugeMetricFamily("orch_network_endpoints",
                                "Overlay endpoints programmed on this node: local (its tasks) and remote (peers).",
                                labels=["location"])

    def collect(self) -> Iterator[Metric]:
        fam = {f.name: f for f in self._families()}
        node = self.node
        m = node._current_manager() if hasattr(node, "_current_manager") else None
        if m is not None and getattr(m.raft, "node", None) is not None:
            yield from self._manager(m, fam)
        session = getattr(getattr(node, "membership", None), "session", None)
        fam["orch_agent_session_connected"].add_metric([], 1.0 if session is not None and session.state.connected
                                                       else 0.0)
        yield fam["orch_agent_session_connected"]
        if node.containers is not None:
            by_state = Tally(r.status for r in node.containers.records.values())
            for state in ("created", "running", "exited"):
                fam["orch_engine_containers"].add_metric([state], by_state.get(state, 0))
            yield fam["orch_engine_containers"]
        if node.images is not None:
            fam["orch_engine_images"].add_metric([], len(node.images.list()))
            yield fam["orch_engine_images"]
        nets = node.networks
        applied = getattr(nets, "_applied", None) if nets is not None else None
        fam["orch_network_networks"].add_metric([], len(applied.networks) if applied is not None else 0)
        fam["orch_network_endpoints"].add_metric(["local"], len(applied.endpoints) if applied is not None else 0)
        fam["orch_network_endpoints"].add_metric(["remote"], len(applied.peers) if applied is not None else 0)
        yield fam["orch_network_networks"]
        yield fam["orch_network_endpoints"]

    @staticmethod
    def _manager(m: Any, fam: dict[str, GaugeMetricFamily]) -> Iterator[Metric]:
        from manager.store.tables import TABLE_NAMES  # a manager runs: its code is loaded already

        raft = m.raft
        st = raft.status_raw()
        fam["orch_raft_term"].add_metric([], st.term)
        fam["orch_raft_commit_index"].add_metric([], st.commit)
        fam["orch_raft_applied_index"].add_metric([], raft.applied)
        fam["orch_raft_snapshot_index"].add_metric([], raft._snap_index)
        fam["orch_raft_leader"].add_metric([], 1.0 if raft.is_leader else 0.0)
        fam["orch_raft_members"].add_metric(["voter"], len(raft.conf_state.voters))
        fam["orch_raft_members"].add_metric(["learner"], len(raft.conf_state.learners))
        view = m.store.view()
        for table in TABLE_NAMES:
            fam["orch_store_objects"].add_metric([table], view.count(table))
        fam["orch_store_watchers"].add_metric([], m.store.watchers)
        by_state = Tally(t.status.state for t in view.list("tasks"))
        for state in TaskState:
            fam["orch_orchestrator_tasks"].add_metric([state.name.lower()], by_state.get(state, 0))
        fam["orch_dispatcher_sessions"].add_metric([], len(m.dispatcher.sessions))
        for name in ("orch_raft_term", "orch_raft_commit_index", "orch_raft_applied_index",
                     "orch_raft_snapshot_index", "orch_raft_leader", "orch_raft_members", "orch_store_objects",
                     "orch_store_watchers", "orch_orchestrator_tasks", "orch_dispatcher_sessions"):
            yield fam[name]


class Metrics(Probe):
    """One daemon's registry, its event metrics (as the Probe its parts
    report to) and the HTTP endpoint serving them."""

    def __init__(self, node: Any = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.wal_fsync_seconds = Histogram("orch_raft_wal_fsync_duration_seconds",
                                           "Time to flush a batch of the Raft WAL to disk (fdatasync).",
                                           buckets=_DISK, registry=r)
        self.proposals = Counter("orch_raft_proposals_total", "Proposals made on this node, by result.",
                                 ["result"], registry=r)
        self.proposal_seconds = Histogram("orch_raft_proposal_duration_seconds",
                                          "Time from a proposal on this node to its answer (applied or failed).",
                                          buckets=_RPC, registry=r)
        self.leader_changes = Counter("orch_raft_leader_changes_total",
                                      "Times the leader this replica knows of changed.", registry=r)
        self.transactions = Counter("orch_store_transactions_total",
                                    "Committed store transactions applied, by result (ok, refused).",
                                    ["result"], registry=r)
        self.transaction_seconds = Histogram("orch_store_transaction_duration_seconds",
                                             "Time to apply one committed store transaction.", buckets=_CPU,
                                             registry=r)
        self.reconcile_passes = Counter("orch_orchestrator_reconcile_passes_total",
                                        "Reconciliation passes of the orchestrator on this manager.", registry=r)
        self.reconcile_seconds = Histogram("orch_orchestrator_reconcile_duration_seconds",
                                           "Time of one reconciliation pass (plan and its writes).", buckets=_RPC,
                                           registry=r)
        self.heartbeat_seconds = Histogram("orch_agent_heartbeat_rtt_seconds",
                                           "Round trip of the agent's heartbeats to its manager.", buckets=_RPC,
                                           registry=r)
        self.pull_seconds = Histogram("orch_engine_image_pull_duration_seconds",
                                      "Time of successful image pulls (manifest, layers, unpack).", buckets=_SLOW,
                                      registry=r)
        self.pull_bytes = Counter("orch_engine_image_pull_bytes_total", "Bytes of blobs downloaded from registries.",
                                  registry=r)
        self.create_seconds = Histogram("orch_engine_container_create_duration_seconds",
                                        "Time to create a container (bundle, runtime create).", buckets=_RPC,
                                        registry=r)
        self.start_seconds = Histogram("orch_engine_container_start_duration_seconds",
                                       "Time for the runtime to start a created container.", buckets=_RPC,
                                       registry=r)
        self.dns_queries = Counter("orch_dns_queries_total",
                                   "Queries the embedded DNS answered, by answer (local, forwarded).",
                                   ["answer"], registry=r)
        self.dns_seconds = Histogram("orch_dns_query_duration_seconds", "Time to answer a DNS query.",
                                     ["answer"], buckets=_CPU + (0.25, 0.5, 1.0, 2.5), registry=r)
        self.nft_updates = Counter("orch_nft_rule_updates_total",
                                   "nftables table writes (the host table: egress, published ports; "
                                   "load-balancing tables).", registry=r)
        # Every labelled series exists from the start (rate() has a zero to
        # start from), bound once: a label lookup per event costs more than the event.
        self._proposals = {True: self.proposals.labels("ok"), False: self.proposals.labels("failed")}
        self._transactions = {True: self.transactions.labels("ok"), False: self.transactions.labels("refused")}
        self._dns = {a: (self.dns_queries.labels(a), self.dns_seconds.labels(a)) for a in ("local", "forwarded")}
        if node is not None:
            r.register(NodeCollector(node))
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    # -- exposition ------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = self.exposition()
        except Exception:  # a scrape must never take the daemon down
            log.exception("metrics: collecting failed")
            raise web.HTTPInternalServerError(text="collecting metrics failed; see the daemon's log\n") from None
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def serve(self, addr: str) -> None:
        """Serve GET /metrics on `addr` (HOST:PORT) until `stop`."""
        host, port = check_metrics_addr(addr)
        app = web.Application()
        app.router.add_get(METRICS_PATH, self._handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise OSError(e.errno, f"--metrics-addr {addr}: cannot listen: {e.strerror or e}") from None
        self._runner = runner
        self.address = tuple(runner.addresses[0][:2]) if runner.addresses else (host, port)  # type: ignore[assignment]
        log.info("metrics on http://%s:%d%s", self.address[0], self.address[1], METRICS_PATH)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- api.probe.Probe ---------------------------------------------------------

    def wal_fsync(self, seconds: float) -> None:
        self.wal_fsync_seconds.observe(seconds)

    def raft_proposal(self, seconds: float, ok: bool) -> None:
        self._proposals[bool(ok)].inc()
        self.proposal_seconds.observe(seconds)

    def raft_leader_change(self) -> None:
        self.leader_changes.inc()

    def store_transaction(self, seconds: float, ok: bool) -> None:
        self._transactions[bool(ok)].inc()
        self.transaction_seconds.observe(seconds)

    def reconcile_pass(self, seconds: float) -> None:
        self.reconcile_passes.inc()
        self.reconcile_seconds.observe(seconds)

    def heartbeat_rtt(self, seconds: float) -> None:
        self.heartbeat_seconds.observe(seconds)

    def image_pulled(self, seconds: float) -> None:
        self.pull_seconds.observe(seconds)

    def image_bytes(self, size: int) -> None:
        self.pull_bytes.inc(size)

    def container_created(self, seconds: float) -> None:
        self.create_seconds.observe(seconds)

    def container_started(self, seconds: float) -> None:
        self.start_seconds.observe(seconds)

    def dns_query(self, answer: str, seconds: float) -> None:
        queries, latency = self._dns.get(answer) or (self.dns_queries.labels(answer), self.dns_seconds.labels(answer))
        queries.inc()
        latency.observe(seconds)

    def nft_update(self) -> None:
        self.nft_updates.inc()
