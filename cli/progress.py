"""Progress while services converge (create, update, scale, rollback, stack
deploy): what each task slot is doing and why it is stuck, and when to stop
waiting.

The core is pure: `observe` turns one snapshot of a service and its tasks
(as the control API returns them) into a `ServiceView` (one `SlotRow` per
task slot: the current task's state, node and latest error, plus a verdict:
waiting, converged or failed); `change_lines` says what changed between two
views, one plain line per change. `Waiter` keeps the views of several
services and adds the deadline. Two renderers show them: a rich Live table
on a terminal, and plain lines on stderr otherwise (no control characters,
so logs and CI read them as they are). `wait` is the I/O loop the commands
call; it returns the exit status.
"""

from __future__ import annotations

import enum
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

# Observed or desired states of a task that is (or is wanted) alive.
LIVE = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"})
# Task messages that say nothing beyond the state itself.
_PLAIN_MESSAGES = frozenset({"", "created", "allocated", "assigned", "scheduled", "accepted", "preparing",
                             "ready", "starting", "started", "running", "rejected", "failed", "shutdown",
                             "complete"})
JOB_MODES = frozenset({"replicated-job", "global-job"})
POLL_INTERVAL = 0.2


class Verdict(enum.StrEnum):
    WAITING = "waiting"
    CONVERGED = "converged"
    FAILED = "failed"
    DEADLINE = "deadline"


EXIT_CODES = {Verdict.CONVERGED: 0, Verdict.FAILED: 1, Verdict.DEADLINE: 1}


def slot_key(t: dict[str, Any]) -> tuple[str, int, str]:
    """Tasks of one slot share this key: (service, slot) for replicated
    services, (service, node) for global ones (slot 0)."""
    return (t["service_id"], t["slot"], "" if t["slot"] else t["node_id"])


def group_slots(tasks: Iterable[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Tasks grouped by slot, slots in order, each newest first (the first
    one is the slot's current task, the others its history)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        groups[slot_key(t)].append(t)
    for ts in groups.values():
        ts.sort(key=lambda t: (-t.get("created_at", 0.0), t["id"]))
    return [groups[k] for k in sorted(groups)]


def task_note(t: dict[str, Any]) -> str:
    """Why a task that is not running yet waits (allocation, the scheduler's
    reason, a dependency, the restart delay), or ""."""
    st = t["status"]
    if st["state"] in ("new", "pending") and st.get("message", "") not in _PLAIN_MESSAGES:
        return str(st["message"])
    return ""


def task_error(t: dict[str, Any]) -> str:
    """Why a task failed, or why one that is not placed yet waits."""
    err = t["status"].get("err") or ""
    return str(err) if err else task_note(t)


@dataclass(frozen=True)
class SlotRow:
    name: str  # web.1, or web.<node id> for a global service
    node: str  # hostname, "" until placed
    state: str  # the current task's observed state
    desired: str
    error: str  # the current task's error, else the newest previous task's
    note: str = ""  # why the current task waits
    error_state: str = ""  # the state of the previous task the error is from; "" for the current one's

    def detail(self) -> str:
        err = self.error and (f"last task {self.error_state}: {self.error}" if self.error_state
                              else f"error: {self.error}")
        return "; ".join(x for x in (self.note, err) if x)

    def line(self) -> str:
        where = f" on {self.node}" if self.node else ""
        wanted = "" if self.desired in LIVE or self.desired == self.state else f" (desired {self.desired})"
        detail = self.detail()
        return f"{self.name}: {self.state}{where}{wanted}" + (f": {detail}" if detail else "")


@dataclass(frozen=True)
class ServiceView:
    id: str
    name: str
    summary: str  # "1/3 running"
    update: str  # the update's state and message, "" when there is none
    rows: tuple[SlotRow, ...]
    verdict: Verdict
    reason: str = ""  # why it failed


def _ended_for_good(t: dict[str, Any], mode: str) -> bool:
    """The slot's current task ended and will not be replaced: the restart
    policy gave up (desired follows observed: failed), or, outside jobs,
    it completed and the policy does not restart completed tasks."""
    return bool(t["desired_state"] == "failed" or (t["desired_state"] == "complete" and mode not in JOB_MODES))


def _shown(t: dict[str, Any], mode: str) -> bool:
    """Whether the slot of current task `t` is shown: alive, stopping, or ended for good."""
    return t["desired_state"] in LIVE or t["status"]["state"] in LIVE or _ended_for_good(t, mode)


def _slot_rows(name: str, mode: str, tasks: list[dict[str, Any]], nodes: dict[str, str]) -> list[SlotRow]:
    rows = []
    for ts in group_slots(tasks):
        cur = ts[0]
        st, desired = cur["status"]["state"], cur["desired_state"]
        if not _shown(cur, mode):
            continue  # a slot that is gone (scaled down, or a job's finished one)
        err, err_state = cur["status"].get("err") or "", ""
        if not err and st != "running":
            prev = next((p for p in ts[1:] if p["status"].get("err")), None)
            if prev is not None:
                err, err_state = prev["status"]["err"], prev["status"]["state"]
        where = cur["node_id"]
        label = f"{name}.{cur['slot']}" if cur["slot"] else f"{name}.{where[:12]}"
        rows.append(SlotRow(label, nodes.get(where, where[:12]), st, desired, err, task_note(cur), err_state))
    return rows


def observe(svc: dict[str, Any], tasks: list[dict[str, Any]], nodes: dict[str, str], *,
            rollback_is_failure: bool = False) -> ServiceView:
    """The view of one service from one snapshot: its slots, and whether it
    converged (every wanted task running on the current spec and nothing
    left stopping, or for jobs: no task left running) or failed (its update
    paused; with `rollback_is_failure`, rolled back once the rollback is
    done; a slot whose restart policy gave up)."""
    spec = svc["spec"]
    name = spec["name"]
    mode = spec["mode"]
    version = svc["spec_version"]
    rows = tuple(_slot_rows(name, mode, tasks, nodes))
    live = [t for t in tasks if t["desired_state"] in LIVE]
    running = [t for t in live if t["spec_version"] == version and t["status"]["state"] == "running"]
    stopping = [t for t in tasks if t["desired_state"] not in LIVE and t["status"]["state"] in LIVE
                and t["node_id"] and t["status"]["state"] not in ("new", "pending")]
    us = svc.get("update_status") or {}
    ustate = us.get("state") or ""
    update = f"{ustate}: {us.get('message')}" if ustate and us.get("message") else ustate
    if ustate == "completed":
        update = ""
    if mode in JOB_MODES:
        done = sum(1 for t in tasks if t["status"]["state"] == "complete")
        want = (spec.get("total_completions") or spec["replicas"]) if mode == "replicated-job" else None
        summary = f"{done} completed" + (f" of {want}" if want else "") + (f", {len(live)} running" if live else "")
        ok = not live
    else:
        if mode == "replicated":
            want = spec["replicas"]
            ok = len(running) == want and len(live) == want
        else:
            want = len({t["node_id"] for t in live})
            ok = len(running) == len(live) and all(t["spec_version"] == version for t in live)
        ok = ok and not stopping
        summary = f"{len(running)}/{want} running" + (f", {len(stopping)} stopping" if stopping else "")
    current = [ts[0] for ts in group_slots(tasks) if _shown(ts[0], mode)]
    gave_up = [(r, t) for r, t in zip(rows, current) if _ended_for_good(t, mode) and t["spec_version"] == version]
    if ustate in ("paused", "rollback_paused"):
        return ServiceView(svc["id"], name, summary, update, rows, Verdict.FAILED, us.get("message") or ustate)
    if gave_up:
        r, t = gave_up[0]
        why = ("the restart policy gave up" if t["desired_state"] == "failed"
               else "completed, and the restart policy does not restart it")
        return ServiceView(svc["id"], name, summary, update, rows, Verdict.FAILED,
                           f"{r.name}: {why}" + (f" ({r.error})" if r.error else ""))
    if ok and rollback_is_failure and ustate in ("rollback_started", "rollback_completed"):
        return ServiceView(svc["id"], name, summary, update, rows, Verdict.FAILED, us.get("message") or ustate)
    return ServiceView(svc["id"], name, summary, update, rows, Verdict.CONVERGED if ok else Verdict.WAITING)


def change_lines(old: ServiceView | None, new: ServiceView) -> list[str]:
    """One line per change from `old` to `new`: the service's count, its
    update's state, each slot whose state, node or error changed, each slot
    that went away."""
    out = []
    if old is None or old.summary != new.summary:
        out.append(f"{new.name}: {new.summary}")
    if new.update and (old is None or old.update != new.update):
        out.append(f"{new.name}: update {new.update}")
    before = {r.name: r for r in old.rows} if old else {}
    for r in new.rows:
        if before.get(r.name) != r:
            out.append(r.line())
    now = {r.name for r in new.rows}
    out += [f"{name}: gone" for name in before if name not in now]
    return out


def final_line(v: ServiceView) -> str:
    if v.verdict == Verdict.CONVERGED:
        return f"{v.name}: {v.summary}: converged"
    if v.verdict == Verdict.FAILED:
        return f"{v.name}: {v.summary}: failed"
    return f"{v.name}: {v.summary}: not converged"


@dataclass
class Waiter:
    """The views of the services waited for, the deadline, and the verdict
    over all of them: failed as soon as one failed, converged once all did,
    deadline when time ran out first."""

    ids: Sequence[str]
    deadline: float  # time.monotonic()
    timeout: float
    views: dict[str, ServiceView] = field(default_factory=dict)

    def update(self, view: ServiceView) -> list[str]:
        lines = change_lines(self.views.get(view.id), view)
        self.views[view.id] = view
        return lines

    def pending(self) -> list[str]:
        """The services still to look at (not converged, not failed)."""
        return [i for i in self.ids if i not in self.views or self.views[i].verdict == Verdict.WAITING]

    def verdict(self, now: float) -> Verdict:
        vs = [self.views[i] for i in self.ids if i in self.views]
        if any(v.verdict == Verdict.FAILED for v in vs):
            return Verdict.FAILED
        if len(vs) == len(self.ids) and all(v.verdict == Verdict.CONVERGED for v in vs):
            return Verdict.CONVERGED
        if now > self.deadline:
            return Verdict.DEADLINE
        return Verdict.WAITING

    def summary(self, verdict: Verdict) -> list[str]:
        """The closing lines: each service's end state, then what went wrong."""
        vs = [self.views[i] for i in self.ids if i in self.views]
        lines = [final_line(v) for v in vs]
        if verdict == Verdict.DEADLINE:
            late = [v for v in vs if v.verdict == Verdict.WAITING]
            lines.append(f"error: service{'s' if len(late) > 1 else ''} "
                         f"{', '.join(v.name for v in late)} did not converge in {self.timeout:g} s")
            for v in late:
                lines += [f"  {r.line()}" for r in v.rows if r.state != "running" or r.error]
        elif verdict == Verdict.FAILED:
            failed = [v for v in vs if v.verdict == Verdict.FAILED]
            lines.append("error: " + "; ".join(f"service {v.name}: {v.reason}" for v in failed))
        return lines


class Renderer(Protocol):
    def show(self, waiter: Waiter, lines: list[str]) -> None: ...

    def close(self, waiter: Waiter, verdict: Verdict) -> None: ...


def _clean(s: str) -> str:
    """No control characters on a plain stream (an error text may carry them)."""
    return "".join(c if c.isprintable() else " " for c in s)


class PlainRenderer:
    """One line per change, on a stream that is not a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def show(self, waiter: Waiter, lines: list[str]) -> None:
        for line in lines:
            self.out.write(_clean(line) + "\n")
        self.out.flush()

    def close(self, waiter: Waiter, verdict: Verdict) -> None:
        self.show(waiter, waiter.summary(verdict))


class LiveRenderer:
    """A rich Live table on a terminal: one row per slot under each
    service's line, redrawn every round; the summary stays when it ends."""

    def __init__(self, console: Any) -> None:
        from rich.live import Live

        self.console = console
        self.live = Live(console=console, transient=True, auto_refresh=False, redirect_stdout=False)
        self.live.start()

    def render(self, waiter: Waiter) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        parts: list[Any] = []
        for i in waiter.ids:
            v = waiter.views.get(i)
            if v is None:
                continue
            parts.append(Text.assemble((v.name, "bold"), f": {v.summary}" + (f"; update {v.update}" if v.update else "")))
            if not v.rows:
                continue
            table = Table(box=None, pad_edge=False, header_style="dim")
            for col in ("  SLOT", "STATE", "NODE", "ERROR"):
                table.add_column(col, overflow="fold" if col == "ERROR" else "ellipsis", no_wrap=col != "ERROR")
            for r in v.rows:
                colour = "green" if r.state == "running" else "red" if r.state in ("failed", "rejected") else "yellow"
                table.add_row(f"  {r.name}", Text(r.state, colour), r.node, Text(r.detail(), "red" if r.error else ""))
            parts.append(table)
        return Group(*parts)

    def show(self, waiter: Waiter, lines: list[str]) -> None:
        self.live.update(self.render(waiter), refresh=True)

    def close(self, waiter: Waiter, verdict: Verdict) -> None:
        self.live.stop()
        for line in waiter.summary(verdict):
            style = "bold red" if line.startswith("error:") else None
            self.console.print(_esc(line), style=style, highlight=False, soft_wrap=True)


def _esc(s: str) -> str:
    from rich.markup import escape

    return escape(s)


def renderer_for(stream: TextIO | None = None) -> Renderer:
    """The Live table on a terminal, plain lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        from rich.console import Console

        return LiveRenderer(Console(file=stream))
    return PlainRenderer(stream)


Fetch = Callable[[str], tuple[dict[str, Any], list[dict[str, Any]]]]


def wait(fetch: Fetch, node_names: Callable[[], dict[str, str]], ids: Sequence[str], timeout: float, *,
         rollback_is_failure: bool = False, renderer: Renderer | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         interval: float = POLL_INTERVAL) -> int:
    """Watch services `ids` until all converged, one failed, or `timeout`
    seconds passed; `fetch(id)` gives a service and its tasks, `node_names()`
    node ids -> hostnames. Returns the exit status (0 converged, 1 otherwise)."""
    renderer = renderer or renderer_for()
    waiter = Waiter(list(ids), clock() + timeout, timeout)
    nodes = node_names()
    verdict = Verdict.WAITING
    try:
        while True:
            lines: list[str] = []
            for sid in waiter.pending():
                svc, tasks = fetch(sid)
                if any(t["node_id"] and t["node_id"] not in nodes for t in tasks):
                    nodes = node_names()
                lines += waiter.update(observe(svc, tasks, nodes, rollback_is_failure=rollback_is_failure))
            renderer.show(waiter, lines)
            verdict = waiter.verdict(clock())
            if verdict != Verdict.WAITING:
                return EXIT_CODES[verdict]
            sleep(interval)
    finally:
        renderer.close(waiter, verdict)  # also when interrupted: the terminal is left tidy
