"""The cluster event log: derivation of events from store changes (on a real
store fed as the Raft driver feeds it), ids equal across replicas, filters,
--since/--until parsing, the ring and its 410, and GET /v1/events on a real
single-member Raft node."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from api.events import MAX_SEQ, Bound, EventRecord, EventType, matches, parse_bound, parse_filters
from api.objects import (
    ContainerSpec,
    NodeState,
    NodeStatus,
    Service,
    ServiceSpec,
    TaskSpec,
    TaskState,
    evolve,
)
from manager.controlapi.common import ManagerContext
from manager.events import EventLog, EventsGone
from manager.store import Create, Delete, MemoryStore, Update
from tests.controlapi.test_manager_provider import serve, start_manager, wait_leader
from tests.store import Feeder, cfg, node, task


def svc(id: str, name: str, replicas: int = 1) -> Service:
    return Service(id=id, spec=ServiceSpec(name=name, replicas=replicas,
                                           task=TaskSpec(container=ContainerSpec(image="busybox"))))


def kinds(recs: list[EventRecord]) -> list[tuple[str, str, str]]:
    return [(r.type.value, r.action, r.actor_name) for r in recs]


def scenario(f: Feeder) -> None:
    """Service web with one task that fails, a node that goes down and up."""
    st = f.stores[0]
    f.tx(Create("nodes", evolve(node("n1"), description__hostname="host1", status__state=NodeState.READY)))
    f.tx(Create("services", svc("s1", "web")))
    f.tx(Create("tasks", task("t1", "s1")))
    t = st.view().get("tasks", "t1")
    f.tx(Update("tasks", evolve(t, node_id="n1", status__state=TaskState.ASSIGNED)))
    t = st.view().get("tasks", "t1")
    f.tx(Update("tasks", evolve(t, status__state=TaskState.FAILED, status__err="exit status 3",
                                status__exit_code=3)))
    t = st.view().get("tasks", "t1")
    f.tx(Update("tasks", evolve(t, networks=())))  # nothing a user follows
    f.noop()  # a conf change or other entry: no event
    n = st.view().get("nodes", "n1")
    f.tx(Update("nodes", evolve(n, status=NodeStatus(state=NodeState.DOWN, message="heartbeat failure"))))
    n = st.view().get("nodes", "n1")
    f.tx(Update("nodes", evolve(n, status=NodeStatus(state=NodeState.READY))))
    f.tx(Create("configs", cfg("c1", "app.conf")), Create("configs", cfg("c2", "other.conf")))
    f.tx(Delete("tasks", "t1"), Delete("services", "s1"))


def test_derivation_of_a_scenario() -> None:
    st = MemoryStore()
    log = EventLog(st)
    f = Feeder(st)
    scenario(f)
    recs = log.after((0, MAX_SEQ))
    assert kinds(recs) == [
        ("node", "create", "host1"),
        ("service", "create", "web"),
        ("task", "create", "web.1.t1"),
        ("task", "state", "web.1.t1"),
        ("task", "state", "web.1.t1"),
        ("node", "down", "host1"),
        ("node", "up", "host1"),
        ("config", "create", "app.conf"),
        ("config", "create", "other.conf"),
        ("task", "remove", "web.1.t1"),
        ("service", "remove", "web"),
    ]
    failed = recs[4]
    assert failed.attributes["from"] == "assigned" and failed.attributes["state"] == "failed"
    assert failed.attributes["error"] == "exit status 3" and failed.attributes["exit_code"] == "3"
    assert failed.attributes["service"] == "web" and failed.attributes["node"] == "host1"
    assert recs[5].attributes["message"] == "heartbeat failure"
    # Ids: the Raft index and the rank within it; times from the transaction.
    assert [r.id for r in recs[7:9]] == [f"{recs[7].index}.0", f"{recs[7].index}.1"]
    assert recs[0].index == 1 and recs[0].time == 1001.0
    assert [r.cursor for r in recs] == sorted(r.cursor for r in recs)


def test_replicas_derive_the_same_ids_and_resume_without_gaps() -> None:
    a, b = MemoryStore(), MemoryStore()
    la, lb = EventLog(a), EventLog(b)
    f = Feeder(a, b)
    scenario(f)
    la.term_started(f.index + 1, 2, 0)
    lb.term_started(f.index + 1, 2, 0)
    ra, rb = la.after((0, MAX_SEQ)), lb.after((0, MAX_SEQ))
    def strip(r: EventRecord) -> dict:
        d = r.to_dict()
        del d["time"]  # a leader change's time is each replica's clock
        return d

    assert [strip(r) for r in ra] == [strip(r) for r in rb]
    assert [EventRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in ra] == ra
    assert ra[-1].type.value == "cluster" and ra[-1].action == "leader" and ra[-1].attributes["term"] == "2"
    # A reader that saw a prefix on one replica resumes on the other.
    for cut in range(len(ra)):
        seen = ra[: cut + 1] + lb.after(ra[cut].cursor)
        assert [r.id for r in seen] == [r.id for r in ra]
    # An index alone means "after every event of that index" (a tx of 2 configs).
    two = [r for r in ra if r.type.value == "config"]
    assert [r.id for r in lb.after((two[0].index, MAX_SEQ))][0] != two[1].id
    assert lb.after((two[0].index, 0))[0].id == two[1].id


def test_ring_keeps_the_newest_and_answers_gone() -> None:
    st = MemoryStore()
    log = EventLog(st, capacity=5)
    f = Feeder(st)
    for i in range(8):
        f.tx(Create("configs", cfg(f"c{i}")))
    assert log.size == 5
    kept = log.after(log.floor)
    assert [r.actor_name for r in kept] == ["c3", "c4", "c5", "c6", "c7"]
    with pytest.raises(EventsGone, match="no longer all kept"):
        log.after((1, MAX_SEQ))
    assert [r.actor_name for r in log.after((3, MAX_SEQ))] == ["c3", "c4", "c5", "c6", "c7"]


def test_restore_starts_over_at_the_snapshot() -> None:
    src = MemoryStore()
    f = Feeder(src)
    scenario(f)
    snap = src.snapshot()
    st = MemoryStore()
    log = EventLog(st)
    st.restore(snap)
    f2 = Feeder(st, start=src.index)
    f2.tx(Create("configs", cfg("late")))
    assert kinds(log.after(log.floor)) == [("config", "create", "late")]
    assert log.floor == (src.index, MAX_SEQ)
    with pytest.raises(EventsGone):
        log.after((1, MAX_SEQ))
    # Names known from the snapshot: a task event names its service.
    f2.tx(Create("services", svc("s9", "api")), Create("tasks", task("t9", "s9")))
    assert log.after((src.index + 1, MAX_SEQ))[1].attributes["service"] == "api"


def test_exec_is_a_local_event_after_the_replicated_ones() -> None:
    st = MemoryStore()
    log = EventLog(st, clock=lambda: 5000.0)
    f = Feeder(st)
    f.tx(Create("services", svc("s1", "web")))
    f.tx(Create("tasks", task("t1", "s1")))
    rec = log.record_exec("s1", "t1", "n1", ("sh", "-c", "id"), "root")
    assert rec.scope.value == "local" and rec.action == "exec" and rec.type.value == "task"
    assert rec.attributes["service"] == "web" and rec.attributes["argv"] == "sh -c id"
    assert rec.index == 2 and rec.time == 5000.0 and rec.actor_name == "web.1.t1"
    f.tx(Create("configs", cfg("c")))
    after = log.after((1, MAX_SEQ))
    assert [r.action for r in after] == ["create", "exec", "create"]
    assert after[2].id == "3.0"  # the local event took no replicated rank
    assert log.after(rec.cursor)[0].id == "3.0"


def test_filters() -> None:
    st = MemoryStore()
    log = EventLog(st)
    scenario(Feeder(st))
    recs = log.after((0, MAX_SEQ))

    def pick(*items: str) -> list[tuple[str, str, str]]:
        return kinds([r for r in recs if matches(r, parse_filters(list(items)))])

    assert pick("type=node") == [("node", "create", "host1"), ("node", "down", "host1"), ("node", "up", "host1")]
    assert pick("type=node,event=down", "event=up") == [("node", "down", "host1"), ("node", "up", "host1")]
    assert pick("service=web", "type=task") == [("task", "create", "web.1.t1"), ("task", "state", "web.1.t1"),
                                                 ("task", "state", "web.1.t1"), ("task", "remove", "web.1.t1")]
    assert len(pick("service=web")) == 6  # its tasks and itself
    assert pick("node=host1", "event=state") == [("task", "state", "web.1.t1")] * 2
    assert pick("id=c2") == [("config", "create", "other.conf")]
    for bad, msg in [("type=bogus", "unknown type"), ("colour=red", "unknown key"), ("type", "not KEY=VALUE"),
                     ("event=explode", "unknown event")]:
        with pytest.raises(ValueError, match=msg):
            parse_filters([bad])


def test_record_from_dict_names_the_bad_field() -> None:
    good = EventRecord(3, 1, 1.5, EventType.TASK, "state", "t1", "web.1.t1", {"state": "failed"}).to_dict()
    assert EventRecord.from_dict(good).to_dict() == good
    for change, msg in [({"index": "3"}, "event.index"), ({"id": "3.2"}, "event.id"),
                        ({"type": "pod"}, "event:"), ({"attributes": {"a": 1}}, "event.attributes"),
                        ({"actor": []}, "event.actor"), ({"seq": -1}, "out of range")]:
        with pytest.raises(ValueError, match=msg):
            EventRecord.from_dict({**good, **change})


def test_parse_bound() -> None:
    assert parse_bound("1234") == Bound(cursor=(1234, MAX_SEQ))
    assert parse_bound("1234.2") == Bound(cursor=(1234, 2))
    assert parse_bound("10m", now=10_000.0) == Bound(time=9400.0)
    assert parse_bound("1h30m", now=10_000.0) == Bound(time=10_000.0 - 5400)
    assert parse_bound("1764646200") == Bound(time=1764646200.0)
    assert parse_bound("2026-12-02T03:30:00Z").time == parse_bound("2026-12-02T03:30:00").time
    for bad in ("", "yesterday", "10x", "1.2.3"):
        with pytest.raises(ValueError, match="--since"):
            parse_bound(bad)


async def test_http_stream_since_until_filter_and_gone(tmp_path: Path) -> None:
    m = await start_manager(tmp_path / "raft", {1: "127.0.0.1:1"})
    log = EventLog(m.store, capacity=50)
    m.raft.add_term_listener(log.term_started)
    log.start()
    ctx = ManagerContext(m.raft, m.store, events=log)
    client = await serve(lambda: ctx)
    try:
        await wait_leader(m.raft)
        for i in range(3):
            await m.raft.propose(m.store.encode_tx([Create("configs", cfg(f"c{i}"))]))
        newest = log.newest
        r = await client.get("/v1/events", params={"since": "0", "until": f"{newest[0]}"})
        assert r.status == 200
        lines = [json.loads(x) for x in (await r.text()).splitlines()]
        assert [(e["type"], e["action"]) for e in lines][0] == ("cluster", "leader")
        assert [e["actor"]["name"] for e in lines if e["type"] == "config"] == ["c0", "c1", "c2"]
        assert lines[0]["attributes"]["raft_id"] == "1"
        # Filtered, resumed after the first config.
        first = next(e for e in lines if e["type"] == "config")
        r = await client.get("/v1/events", params=[("since", first["id"]), ("until", f"{newest[0]}"),
                                                   ("filter", "type=config")])
        assert [json.loads(x)["actor"]["name"] for x in (await r.text()).splitlines()] == ["c1", "c2"]
        # Follow: a live event arrives; until a time ends the stream.
        async def later() -> None:
            await asyncio.sleep(0.2)
            await m.raft.propose(m.store.encode_tx([Create("configs", cfg("live"))]))

        t = asyncio.create_task(later())
        r = await client.get("/v1/events", params={"until": str(time.time() + 1.0)})
        await t
        assert [json.loads(x)["actor"]["name"] for x in (await r.text()).splitlines()] == ["live"]
        # Bad input and lost history.
        r = await client.get("/v1/events", params={"since": "soon"})
        assert r.status == 400 and "--since" in (await r.json())["error"]["message"]
        for i in range(60):
            await m.raft.propose(m.store.encode_tx([Create("configs", cfg(f"x{i}"))]))
        r = await client.get("/v1/events", params={"since": "1"})
        assert r.status == 410
        body = await r.json()
        assert body["error"]["code"] == "gone" and "no longer all kept" in body["error"]["message"]
    finally:
        await client.close()
        await log.stop()
        await m.raft.stop()
