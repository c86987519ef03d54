"""The progress model and its renderers (cli/progress.py) and the `ps`
history (cli/taskps.py), over task and service snapshots as the control
API returns them."""

from __future__ import annotations

import io
from typing import Any

import click
import pytest

from cli import progress, taskps
from cli.progress import PlainRenderer, Verdict, observe

NODES = {"n1": "node1", "n2": "node2"}
PULL = "pull registry:5000/nope:latest: manifest unknown"


def task(tid: str, slot: int, state: str, *, desired: str = "running", node: str = "n1", err: str = "",
         message: str = "", created: float = 1.0, version: int = 1, svc: str = "s1") -> dict[str, Any]:
    return {"id": tid, "service_id": svc, "slot": slot, "node_id": node, "desired_state": desired,
            "spec_version": version, "created_at": created,
            "status": {"state": state, "message": message or state, "err": err, "timestamp": created}}


def service(replicas: int = 1, *, update: dict[str, Any] | None = None, mode: str = "replicated",
            version: int = 1) -> dict[str, Any]:
    return {"id": "s1", "spec": {"name": "web", "mode": mode, "replicas": replicas}, "spec_version": version,
            "update_status": update}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, d: float) -> None:
        self.now += d


def run(snapshots: list[tuple[dict[str, Any], list[dict[str, Any]]]], timeout: float = 10.0,
        **kw: Any) -> tuple[int, list[str]]:
    """`progress.wait` over successive snapshots (the last one repeats), with
    a fake clock; the exit status and the plain lines."""
    out = io.StringIO()
    clock = Clock()
    it = iter(snapshots)
    last: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []

    def fetch(sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        nxt = next(it, None)
        if nxt is not None:
            last[:] = [nxt]
        return last[0]

    code = progress.wait(fetch, lambda: NODES, ["s1"], timeout, renderer=PlainRenderer(out), clock=clock,
                         sleep=clock.sleep, interval=1.0, **kw)
    return code, out.getvalue().splitlines()


def test_rejected_pull_shows_the_reason_then_fails_at_the_deadline() -> None:
    t1 = task("t1", 1, "preparing")
    t1r = task("t1", 1, "rejected", err=PULL)
    t1s = task("t1", 1, "rejected", desired="shutdown", err=PULL)
    t2 = task("t2", 1, "new", node="", message="waiting for the restart delay", created=2.0)
    code, lines = run([(service(), [t1]), (service(), [t1r]), (service(), [t1s, t2])], timeout=3.5)
    assert code == 1
    assert lines == [
        "web: 0/1 running",
        "web.1: preparing on node1",
        f"web.1: rejected on node1: error: {PULL}",
        f"web.1: new: waiting for the restart delay; last task rejected: {PULL}",
        "web: 0/1 running: not converged",
        "error: service web did not converge in 3.5 s",
        f"  web.1: new: waiting for the restart delay; last task rejected: {PULL}",
    ]


def test_converges_and_prints_only_changes() -> None:
    a = [task("t1", 1, "starting"), task("t2", 2, "running", node="n2")]
    b = [task("t1", 1, "running"), task("t2", 2, "running", node="n2")]
    code, lines = run([(service(2), a), (service(2), a), (service(2), b)])
    assert code == 0
    assert lines == ["web: 1/2 running", "web.1: starting on node1", "web.2: running on node2",
                     "web: 2/2 running", "web.1: running on node1", "web: 2/2 running: converged"]


def test_paused_update_fails_at_once_with_its_message() -> None:
    upd = {"state": "paused", "message": "update paused: task web.1 failed: exit 1"}
    ts = [task("t1", 1, "failed", err="task: non-zero exit (1)", version=2),
          task("t0", 1, "running", desired="shutdown", version=1, created=0.5)]
    code, lines = run([(service(version=2, update=upd), ts)])
    assert code == 1
    assert "web: update paused: update paused: task web.1 failed: exit 1" in lines
    assert lines[-1] == "error: service web: update paused: task web.1 failed: exit 1"


def test_rollback_is_a_failure_once_rolled_back() -> None:
    rolling = {"state": "rollback_started", "message": "update rolled back: web.1 unhealthy"}
    done = {"state": "rollback_completed", "message": "rollback completed: update rolled back: web.1 unhealthy"}
    ts = [task("t1", 1, "running", version=3)]
    starting = [task("t1", 1, "starting", version=3)]
    code, lines = run([(service(version=3, update=rolling), starting), (service(version=3, update=done), ts)],
                      rollback_is_failure=True)
    assert code == 1 and lines[-1].startswith("error: service web: rollback completed: update rolled back")
    # Without rollback_is_failure (a `service rollback`), the same end is success.
    code, lines = run([(service(version=3, update=done), ts)])
    assert code == 0 and lines[-1] == "web: 1/1 running: converged"


def test_restart_policy_giving_up_is_a_failure() -> None:
    ts = [task("t2", 1, "failed", desired="failed", err="task: non-zero exit (3)", created=2.0),
          task("t1", 1, "failed", desired="shutdown", err="task: non-zero exit (3)")]
    code, lines = run([(service(), ts)])
    assert code == 1
    assert lines[-1] == ("error: service web: web.1: the restart policy gave up (task: non-zero exit (3))")
    # restart-condition=none (or on-failure) and a task that exits 0: it will not run again either.
    done = [task("t1", 1, "complete", desired="complete")]
    code, lines = run([(service(), done)])
    assert code == 1 and lines[-1] == ("error: service web: web.1: completed, and the restart policy does not "
                                       "restart it")


def test_scale_down_waits_for_stopping_tasks() -> None:
    a = [task("t1", 1, "running"), task("t2", 2, "running", desired="shutdown", node="n2")]
    b = [task("t1", 1, "running"), task("t2", 2, "shutdown", desired="shutdown", node="n2")]
    v = observe(service(1), a, NODES)
    assert v.verdict == Verdict.WAITING and v.summary == "1/1 running, 1 stopping"
    assert v.rows[1].line() == "web.2: running on node2 (desired shutdown)"
    code, lines = run([(service(1), a), (service(1), b)])
    assert code == 0 and "web.2: gone" in lines


def test_global_service_rows_are_per_node_and_job_completes() -> None:
    g = {"id": "s1", "spec": {"name": "agent", "mode": "global", "replicas": 0}, "spec_version": 1}
    v = observe(g, [task("a", 0, "running", node="n1"), task("b", 0, "pending", node="n2",
                                                             message="no suitable node: 1 checked")], NODES)
    assert [r.line() for r in v.rows] == ["agent.n1: running on node1",
                                          "agent.n2: pending on node2: no suitable node: 1 checked"]
    assert v.verdict == Verdict.WAITING and v.summary == "1/2 running"
    job = service(2, mode="replicated-job")
    v = observe(job, [task("a", 1, "complete", desired="complete"), task("b", 2, "complete", desired="complete")],
                NODES)
    assert v.verdict == Verdict.CONVERGED and v.summary == "2 completed of 2"


def test_plain_lines_carry_no_control_characters() -> None:
    ts = [task("t1", 1, "rejected", err="bad\x1b[31m red\r\nthing\ttab")]
    code, lines = run([(service(), ts)], timeout=0.5)
    text = "\n".join(lines)
    assert code == 1 and not any(not c.isprintable() for c in text.replace("\n", ""))
    assert "web.1: rejected on node1: error: bad [31m red  thing tab" in lines


def test_live_renderer_draws_rows_and_leaves_the_summary() -> None:
    from rich.console import Console

    buf = io.StringIO()
    r = progress.LiveRenderer(Console(file=buf, force_terminal=True, width=120))
    w = progress.Waiter(["s1"], 0.0, 5.0)
    w.update(observe(service(), [task("t1", 1, "rejected", err=PULL)], NODES))
    r.show(w, [])
    r.close(w, Verdict.DEADLINE)
    out = buf.getvalue()
    assert "web.1" in out and "manifest unknown" in out
    assert "error: service web did not converge in 5 s" in out
    assert "\x1b[" in out  # a terminal gets the live view's control sequences


def test_ps_history_rows_and_filters() -> None:
    ts = [task("t1", 1, "rejected", desired="shutdown", err=PULL, created=1.0),
          task("t3", 2, "running", node="n2", created=1.5),
          task("t2", 1, "rejected", desired="shutdown", err=PULL, created=2.0),
          task("t4", 1, "preparing", created=3.0)]

    def name(t: dict[str, Any]) -> str:
        return f"web.{t['slot']}"

    assert [(n, t["id"]) for n, t in taskps.history_rows(ts, name)] == [
        ("web.1", "t4"), (" \\_ web.1", "t2"), (" \\_ web.1", "t1"), ("web.2", "t3")]
    f = taskps.parse_filters(["desired-state=shutdown"])
    assert [t["id"] for t in ts if taskps.matches(t, f, name(t), NODES)] == ["t1", "t2"]
    f = taskps.parse_filters(["desired-state=running", "node=node2"])
    assert [t["id"] for t in ts if taskps.matches(t, f, name(t), NODES)] == ["t3"]
    f = taskps.parse_filters(["name=web.1", "id=t2", "id=t4"])
    assert [t["id"] for t in ts if taskps.matches(t, f, name(t), NODES)] == ["t2", "t4"]
    with pytest.raises(click.BadParameter, match="unknown key 'colour'"):
        taskps.parse_filters(["colour=red"])
    with pytest.raises(click.BadParameter, match="desired-state is running or shutdown"):
        taskps.parse_filters(["desired-state=sleeping"])


def test_ps_table_shows_history_with_errors(capsys: pytest.CaptureFixture[str]) -> None:
    ts = [task("t1aaaaaaaaaaaaaaaa", 1, "rejected", desired="shutdown", err=PULL + " [sh] [/]", created=1.0),
          task("t2aaaaaaaaaaaaaaaa", 1, "new", node="", message="waiting for the restart delay", created=2.0)]
    for t in ts:
        t["spec"] = {"container": {"image": "nope"}}
    kw: dict[str, Any] = dict(fmt="table", all_=False, no_trunc=False, task_name=lambda t: f"web.{t['slot']}",
                              nodes=lambda: NODES, nets=lambda: {})
    taskps.show(ts, filters=(), quiet=False, **kw)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT", "STATE",
                                "ADDRESSES", "ERROR"]
    assert lines[1].startswith("t2aaaaaaaaaa  web.1 ") and "waiting for the restart delay" in lines[1]
    assert lines[2].startswith("t1aaaaaaaaaa   \\_ web.1") and "Shutdown" in lines[2]
    assert lines[2].rstrip().endswith(PULL + " [sh] [/]")  # error text is shown as it is, not read as markup
    taskps.show(ts, filters=("desired-state=running",), quiet=True, **kw)
    assert capsys.readouterr().out.splitlines() == ["t2aaaaaaaaaa"]
    taskps.show(ts, filters=(), quiet=True, **{**kw, "no_trunc": True})
    assert capsys.readouterr().out.splitlines() == ["t2aaaaaaaaaaaaaaaa", "t1aaaaaaaaaaaaaaaa"]
