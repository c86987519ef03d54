"""The asyncio facade the agent uses: `NetworkDataplane`.

One object per node. `apply(desired)` observes the kernel, plans the
difference (plan.py) and executes it (netlink.py), all as one unit of work,
and returns the actions done. Calls are serialized: the observe-plan-execute
of one apply never interleaves with another's.

Why a thread: the kernel work is synchronous. pyroute2's synchronous
`IPRoute` runs an event loop of its own (it cannot be used from a coroutine),
its asynchronous `AsyncIPRoute` forks a child process and blocks to open a
socket in another namespace, creating a named namespace forks and blocks as
well, and entering a namespace with setns(2) -- what netlink.py does instead,
for speed -- must not happen on the event loop's thread. So each dataplane has
exactly one worker thread, owned and stopped by `close()`; no kernel call ever
runs on the event loop.

If the awaiting task is cancelled, the unit of work in the worker still runs
to its end (a half-done action is worse than a late one); the next apply
starts from whatever the kernel then holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from types import TracebackType
from typing import TypeVar

from api.probe import Probe

from . import lb, nftlib
from .lb import Balancer
from .model import NodeState, ObservedState, Problem, StateError, check_prefix
from .names import Naming
from .netlink import DataplaneError, Kernel, NetnsGone, entered
from .plan import Action, plan

T = TypeVar("T")
LB_WRITERS = 8
"""Load-balancing tables written at once (each write mostly waits for the
kernel's RCU grace period, so more threads cost little CPU)."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    action: Action
    error: str

    def __str__(self) -> str:
        return f"{self.action}: {self.error}"


class ApplyError(DataplaneError):
    """Some actions failed. `done` lists what was done, `failures` what failed
    and why, `skipped` the actions not tried because an earlier action of
    the same network or container failed. A later apply retries them."""

    def __init__(self, done: list[Action], failures: list[Failure], skipped: list[Action]) -> None:
        self.done = done
        self.failures = failures
        self.skipped = skipped
        super().__init__(
            f"{len(failures)} overlay network action(s) failed ({len(done)} done, {len(skipped)} skipped): "
            + "; ".join(map(str, failures))
        )


class NetworkDataplane:
    """The overlay dataplane of one node.

    prefix / underlay_addr: as in `NodeState` (which must carry the same).
    host_netns: the namespace holding the underlay, as a path; None (a real
    node) means the daemon's own. Tests give each simulated host its own."""

    def __init__(self, prefix: str, underlay_addr: str | IPv4Address, *, host_netns: str | None = None) -> None:
        # Validates prefix and address with the same rules as the state.
        probe = NodeState(prefix=prefix, underlay_addr=underlay_addr)  # type: ignore[arg-type]
        self.prefix = probe.prefix
        self.underlay_addr = probe.underlay_addr
        self.host_netns = host_netns
        self._kernel = Kernel(self.prefix, host_netns)
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix=f"overlay-{prefix}")
        self._lock = asyncio.Lock()
        # Load-balancing tables live in container namespaces, apart from the
        # plan's state: their own threads and lock.
        self._lb_pool: ThreadPoolExecutor | None = ThreadPoolExecutor(LB_WRITERS, thread_name_prefix=f"lb-{prefix}")
        self._lb_lock = asyncio.Lock()
        self._lb_cache = lb.TableCache()

    @property
    def probe(self) -> Probe:
        """Where nftables table writes are counted (the daemon's metrics; the
        no-op probe by default): the host table's and every load-balancing table's."""
        return self._kernel.probe

    @probe.setter
    def probe(self, probe: Probe) -> None:
        self._kernel.probe = probe

    async def __aenter__(self) -> NetworkDataplane:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the worker thread. Leaves the kernel state as it is (a
        restarted daemon adopts it); `teardown()` removes it."""
        for attr in ("_pool", "_lb_pool"):
            pool = getattr(self, attr)
            setattr(self, attr, None)
            if pool is not None:
                await asyncio.get_running_loop().run_in_executor(None, functools.partial(pool.shutdown, wait=True))

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._pool is None:
            raise DataplaneError("the overlay dataplane is closed")
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # -- the API ---------------------------------------------------------------------

    async def apply(self, desired: NodeState) -> list[Action]:
        """Make the kernel match desired; the actions done, in order (empty
        when it already matched). Raises StateError for a state that does
        not belong to this node, ApplyError when actions failed."""
        self._check(desired)
        return await self._run(functools.partial(self._apply_sync, desired, None))

    async def apply_container(self, netns: str, desired: NodeState) -> list[Action]:
        """Program one container's namespace (the path the engine gave,
        e.g. /proc/PID/ns/net) as desired says -- its endpoints, egress
        interface, and the sandboxes and peer entries they need -- and touch
        nothing else. For the task start path; `apply` does the rest."""
        self._check(desired)
        if not desired.endpoints_of(netns):
            raise StateError([Problem("endpoints", f"no endpoint has netns {netns}")])
        return await self._run(functools.partial(self._apply_sync, desired, netns))

    async def plan(self, desired: NodeState) -> list[Action]:
        """What `apply(desired)` would do now, without doing it."""
        self._check(desired)

        def work() -> list[Action]:
            try:
                observed = self._kernel.observe(desired.underlay_addr)
                return plan(self._complete(desired, observed), observed)
            finally:
                self._kernel.close_session()

        return await self._run(work)

    async def observe(self) -> ObservedState:
        """The node's overlay state as the kernel holds it."""
        def work() -> ObservedState:
            try:
                return self._kernel.observe(self.underlay_addr)
            finally:
                self._kernel.close_session()

        return await self._run(work)

    async def balance(self, wanted: Mapping[str, Balancer]) -> list[str]:
        """Make the load-balancing table of each namespace in `wanted`
        (netns path -> Balancer) hold its rules; namespaces not named are
        forgotten (their tables go with them). Only changed tables are
        written, several namespaces at once (a write waits on the kernel,
        not the CPU: see lb.py). Returns problems, one per namespace that
        could not be written (retried on the next call)."""
        if self._lb_pool is None:
            raise DataplaneError("the overlay dataplane is closed")
        for ns in [ns for ns in self._lb_cache.written if ns not in wanted]:
            self._lb_cache.forget(ns)
        changed = self._lb_cache.changed(dict(wanted))
        for ns, b in list(changed.items()):
            if ns not in self._lb_cache.declared and not lb.rules(b):
                # Nothing to balance (yet): no table at all, which costs the
                # namespace nothing.
                self._lb_cache.mark(ns, b, declared=False)
                del changed[ns]
        if not changed:
            return []
        table = Naming(self.prefix).lb_table
        loop = asyncio.get_running_loop()

        def write(ns: str, b: Balancer) -> str | None:
            declare = ns not in self._lb_cache.declared
            try:
                with entered(ns):
                    if b.kind == "ingress":
                        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
                            f.write("1")
                    try:
                        nftlib.run(lb.script(table, b, declare=declare))
                    except nftlib.NftError:
                        if declare:
                            raise
                        nftlib.run(lb.script(table, b, declare=True))  # the table was removed meanwhile
                    self.probe.nft_update()
            except (NetnsGone, OSError, nftlib.NftError) as e:
                return f"{ns}: {e}"
            return None

        async with self._lb_lock:
            results = await asyncio.gather(*(loop.run_in_executor(self._lb_pool, write, ns, b)
                                             for ns, b in changed.items()))
            problems = []
            log.debug("load balancing tables written: %s", ", ".join(changed))
            for (ns, b), err in zip(changed.items(), results):
                if err is None:
                    self._lb_cache.mark(ns, b)
                else:
                    self._lb_cache.forget(ns)
                    problems.append(err)
            return problems

    async def teardown(self) -> list[str]:
        """Remove every sandbox, link, entry and nftables table of this
        prefix; what was removed."""
        def work() -> list[str]:
            try:
                return self._kernel.teardown()
            finally:
                self._kernel.close_session()

        return await self._run(work)

    # -- in the worker thread -------------------------------------------------------------

    def _check(self, desired: NodeState) -> None:
        if not isinstance(desired, NodeState):
            raise TypeError(f"desired must be a NodeState, not {type(desired).__name__}")
        problems = []
        if desired.prefix != self.prefix:
            problems.append(Problem("prefix", f"{desired.prefix!r} is not this dataplane's {self.prefix!r}"))
        if desired.underlay_addr != self.underlay_addr:
            problems.append(Problem("underlay_addr", f"{desired.underlay_addr} is not this node's "
                                                      f"{self.underlay_addr}"))
        if problems:
            raise StateError(problems)

    def _complete(self, desired: NodeState, observed: ObservedState) -> NodeState:
        if observed.underlay_mtu is None:
            raise DataplaneError(
                f"underlay address {desired.underlay_addr} is not assigned to any interface of the host "
                "namespace; VXLAN traffic could not leave this node")
        if desired.underlay_mtu is None:
            return dataclasses.replace(desired, underlay_mtu=observed.underlay_mtu)
        return desired

    def _apply_sync(self, desired: NodeState, only_netns: str | None) -> list[Action]:
        kernel = self._kernel
        try:
            if only_netns is None:
                observed = kernel.observe(desired.underlay_addr)
            else:
                nets = {e.network_id for e in desired.endpoints_of(only_netns)}
                observed = kernel.observe(desired.underlay_addr, only_netns=only_netns, networks=nets)
            desired = self._complete(desired, observed)
            actions = plan(desired, observed, only_netns=only_netns)
            done: list[Action] = []
            failures: list[Failure] = []
            skipped: list[Action] = []
            broken: set[tuple[str, str]] = set()
            for action in actions:
                if broken.intersection(action.scopes):
                    skipped.append(action)
                    continue
                try:
                    kernel.execute(action, desired)
                except (DataplaneError, OSError) as e:
                    failures.append(Failure(action, str(e)))
                    broken.update(action.scopes)
                    continue
                done.append(action)
            slow = kernel.settle()
            if slow:
                log.warning("overlay interfaces not up yet after apply: %s", ", ".join(slow))
            if failures:
                raise ApplyError(done, failures, skipped)
            return done
        finally:
            kernel.close_session()


async def teardown(prefix: str, *, host_netns: str | None = None) -> list[str]:
    """Remove every sandbox, link, entry and nftables table `prefix` owns on
    this node without a NetworkDataplane (a node leaving the cluster, or a
    clean-up after a crash); what was removed. Runs in a thread of its own
    for the reasons given at the top of this module."""
    kernel = Kernel(check_prefix(prefix), host_netns)

    def work() -> list[str]:
        try:
            return kernel.teardown()
        finally:
            kernel.close_session()

    return await asyncio.to_thread(work)
