"""Probe: the events the daemon's metrics count at the moment they happen.

Most metrics are read from state when they are scraped (daemon.metrics);
what cannot be read afterwards (how long an fsync took, a DNS query, a
container start) is reported here, by one call at the place it happens.
Components hold a Probe given to them by the composition root (daemon/);
the default, `NULL_PROBE`, does nothing, so cores stay free of any metrics
library and code that runs without metrics (tests, tools) is unaffected.
Calls may come from worker threads (the WAL's fsync thread, the
dataplane's writers): implementations must be thread-safe.
"""

from __future__ import annotations


class Probe:
    """Every method is a no-op here; daemon.metrics.Metrics records them."""

    # -- Raft and the store (managers)
    def wal_fsync(self, seconds: float) -> None:
        """The WAL flushed a batch to disk (fdatasync)."""

    def raft_proposal(self, seconds: float, ok: bool) -> None:
        """A proposal made on this node ended: applied (ok) or failed (no
        leader, dropped, timed out); `seconds` from propose to the answer."""

    def raft_leader_change(self) -> None:
        """The leader this replica knows of changed (including to none)."""

    def store_transaction(self, seconds: float, ok: bool) -> None:
        """A committed store transaction was applied (ok) or refused."""

    def reconcile_pass(self, seconds: float) -> None:
        """The orchestrator ran one reconciliation pass (plan + its writes)."""

    # -- The agent and its engine (every node)
    def heartbeat_rtt(self, seconds: float) -> None:
        """A heartbeat's acknowledgement came back from the manager."""

    def image_pulled(self, seconds: float) -> None:
        """An image pull (manifest, config, layers, unpack) ended successfully."""

    def image_bytes(self, size: int) -> None:
        """A blob of `size` bytes was downloaded from a registry."""

    def container_created(self, seconds: float) -> None:
        """A container was created (bundle written, runtime create done)."""

    def container_started(self, seconds: float) -> None:
        """A created container was started by the runtime."""

    # -- Networking
    def dns_query(self, answer: str, seconds: float) -> None:
        """The embedded resolver answered a query: `answer` is "local" (from
        the cluster's names) or "forwarded" (asked the host's nameservers)."""

    def nft_update(self) -> None:
        """An nftables table was written (the host table: egress and published
        ports; a load-balancing table in a task's namespace)."""


NULL_PROBE = Probe()
