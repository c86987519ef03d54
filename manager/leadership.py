"""Leader-only work: started on election, stopped on step-down.

Some components of a manager only make sense on the leader: the
orchestrator, the role reconciler, the dispatcher's liveness checks,
assignment pushes and status writes. Each implements `Leader`: one
coroutine, `lead()`, that does the work for as long as it runs and is
cancelled when leadership ends.

`Supervisor` owns their lifetimes. It is driven by the Raft driver's
leader-change notification (`RaftNode.add_leader_listener`), never by
polling: the listener only records what changed and wakes the supervisor,
because it runs inside the driver's ready loop and must not block it.

- On election the supervisor opens a term: one `asyncio.TaskGroup` with
  every component's `lead()` in it, each started exactly once.
- On step-down (or `stop()`) it cancels the term and waits until every
  `lead()` has finished its cleanup. One that is still running after
  `stop_warning` seconds swallowed its cancellation: it is named in a
  warning and cancelled again.
- A `lead()` that raises is logged with its traceback and restarted alone
  after a backoff that doubles up to a cap; the other components keep
  running. A `lead()` that returns while leading is a bug of the same kind
  and is treated the same way.
- Losing and regaining leadership between two wake-ups still ends the old
  term and opens a new one: another leader may have written in between,
  and components start from the store on the assumption that they are new.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class Leader(Protocol):
    """A leader-only component."""

    async def lead(self) -> None:
        """Do the leader's work until cancelled; never return."""
        ...


@dataclass(frozen=True)
class RestartPolicy:
    """How a failed `lead()` is restarted (within one term)."""

    backoff: float = 0.5  # seconds before the first restart; > 0, so a crash loop cannot spin
    max_backoff: float = 10.0  # the delay doubles after each failure, up to this
    healthy_after: float = 30.0  # a run at least this long resets the delay to `backoff`

    def __post_init__(self) -> None:
        if not 0 < self.backoff <= self.max_backoff:
            raise ValueError(f"RestartPolicy: need 0 < backoff ({self.backoff}) <= max_backoff ({self.max_backoff})")
        if self.healthy_after < 0:
            raise ValueError(f"RestartPolicy: healthy_after must be >= 0, not {self.healthy_after}")


class Supervisor:
    """Runs the registered `Leader`s while this node (`node_id`) leads."""

    def __init__(
        self,
        node_id: int,
        components: Iterable[tuple[str, Leader]] = (),
        *,
        policy: RestartPolicy | None = None,
        stop_warning: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.policy = policy or RestartPolicy()
        # A term still running this long after its cancellation has a
        # lead() that swallowed it: say which, and cancel it again.
        self.stop_warning = stop_warning
        self.clock = clock
        self._components: dict[str, Leader] = {}
        # What the driver told us last; `_elections` counts elections of
        # this node, so that a term can tell that it is stale.
        self._leads = False
        self._elections = 0
        self._changed = asyncio.Event()
        self._elected_event = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._term: asyncio.Task[None] | None = None
        self._keepers: dict[str, asyncio.Task[None]] = {}  # the current term's, by component
        self._term_of = 0
        self.starts: dict[str, int] = {}  # lead() calls per component, over all terms
        self.failures: dict[str, int] = {}  # raised or returned, over all terms
        self.terms = 0  # terms opened
        for name, c in components:
            self.add(name, c)

    def add(self, name: str, component: Leader) -> None:
        """Register a component; only before `start()`."""
        if self._runner is not None:
            raise RuntimeError(f"leadership: cannot add {name!r} to a running supervisor")
        if name in self._components:
            raise ValueError(f"leadership: a component named {name!r} is already registered")
        self._components[name] = component

    # -- the driver's notification ---------------------------------------------

    def leader_changed(self, old: int, new: int) -> None:
        """A `RaftNode` leader listener: record the change and wake the
        supervisor. Never blocks."""
        leading = new == self.node_id
        if leading and not self._leads:
            self._elections += 1
        self._leads = leading
        if leading:
            self._elected_event.set()
        else:
            self._elected_event.clear()
        self._changed.set()

    @property
    def leading(self) -> bool:
        """Whether a term is open (the components run or are being restarted)."""
        return self._term is not None and not self._term.done()

    async def wait_elected(self) -> None:
        """Return once this node leads (at once if it does)."""
        await self._elected_event.wait()

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"leadership-{self.node_id}")

    async def stop(self) -> None:
        """End the current term, if any (waiting for every `lead()` to
        finish), and stop following leadership changes."""
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait({runner})
        if self._term is not None:
            # The runner was cancelled while it was ending the term.
            await self._end_term()

    async def _run(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            if self._term is not None and (not self._leads or self._term_of != self._elections):
                await self._end_term()
            if self._leads and self._term is None:
                self._term_of = self._elections
                self.terms += 1
                log.info("leadership: node %d leads; starting %s", self.node_id, ", ".join(self._components) or "nothing")
                self._term = asyncio.create_task(self._lead_all(), name=f"leadership-term-{self.terms}")

    async def _end_term(self) -> None:
        term = self._term
        assert term is not None
        term.cancel()
        while not (await asyncio.wait({term}, timeout=self.stop_warning))[0]:
            stuck = [n for n, t in self._keepers.items() if not t.done()]
            log.warning("leadership: %s still running %g s after step-down; cancelling again "
                        "(does its lead() swallow CancelledError, e.g. through asyncio.wait_for on 3.11?)",
                        ", ".join(stuck) or "a component", self.stop_warning)
            for n in stuck:
                self._keepers[n].cancel()
        self._term = None
        self._keepers = {}
        if not term.cancelled() and term.exception() is not None:
            # Only a BaseException that is not an Exception gets here (the
            # per-component loops catch the rest); keep it visible.
            log.error("leadership: term ended with %r", term.exception())
        log.info("leadership: node %d stopped its leader-only components", self.node_id)

    # -- one term ----------------------------------------------------------------

    async def _lead_all(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._keepers = {name: tg.create_task(self._keep(name, c), name=f"lead-{name}")
                             for name, c in self._components.items()}

    async def _keep(self, name: str, component: Leader) -> None:
        """Run one component's lead() until the term is cancelled,
        restarting it after failures."""
        me = asyncio.current_task()
        assert me is not None
        p = self.policy
        delay = p.backoff
        while True:
            err: BaseException | None
            self.starts[name] = self.starts.get(name, 0) + 1
            began = self.clock()
            try:
                await component.lead()
            except asyncio.CancelledError as e:
                if me.cancelling():
                    raise  # the term ends
                # A CancelledError nobody asked for (a component cancelled
                # something of its own and let it escape): a failure.
                why, err = "was cancelled from inside", e
            except Exception as e:
                if me.cancelling():
                    # Its cleanup failed after the term's cancellation
                    # reached it; the term still ends.
                    log.exception("leadership: %s failed while stopping", name)
                    raise asyncio.CancelledError from None
                why, err = "failed", e
            else:
                if me.cancelling():
                    raise asyncio.CancelledError  # it swallowed the term's cancellation
                why, err = "returned while leading", None
            self.failures[name] = self.failures.get(name, 0) + 1
            if self.clock() - began >= p.healthy_after:
                delay = p.backoff
            log.error("leadership: %s %s; restarting it in %.2f s", name, why, delay, exc_info=err)
            del err  # no reference cycle through the traceback while we wait
            await asyncio.sleep(delay)
            delay = min(delay * 2, p.max_backoff)
