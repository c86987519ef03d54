"""Watches: ordering, batching, replay from a version, compaction, slow
watchers, filters, and restore diffs without misses or repeats."""

from __future__ import annotations

import asyncio

import pytest

from api.objects import evolve
from manager.store import (
    Create,
    Delete,
    MemoryStore,
    UnknownTable,
    Update,
    WatchClosed,
    WatchCompacted,
    WatchError,
    WatchOverflow,
)

from . import Feeder, cfg, node, task


def summary(events) -> list[tuple[int, str, str, str]]:
    return [(e.version, str(e.action), e.table, e.obj.id) for e in events]


async def test_events_in_order_with_tx_batches() -> None:
    s = MemoryStore()
    f = Feeder(s)
    w = s.watch()
    f.tx(Create("configs", cfg("a")), Create("tasks", task("t1")))
    f.noop()
    a = s.view().get("configs", "a")
    f.tx(Update("configs", evolve(a, spec__data=b"2")))
    f.tx(Delete("configs", "a"))
    got = await w.next_batch()
    assert summary(got) == [
        (1, "create", "configs", "a"),
        (1, "create", "tasks", "t1"),
        (3, "update", "configs", "a"),
        (4, "delete", "configs", "a"),
    ]
    assert got[2].old == a and got[2].obj.spec.data == b"2"
    assert got[3].obj == got[3].old and got[3].obj.meta.version == 3


async def test_next_batch_cuts_at_tx_boundaries() -> None:
    s = MemoryStore()
    f = Feeder(s)
    w = s.watch()
    f.tx(*[Create("configs", cfg(f"c{i}")) for i in range(3)])
    f.tx(Create("configs", cfg("d")))
    f.tx(Create("configs", cfg("e")))
    first = await w.next_batch(max_events=1)
    assert [e.version for e in first] == [1, 1, 1]  # a whole tx even if over the max
    second = await w.next_batch(max_events=1)
    assert [e.obj.id for e in second] == ["d"]
    assert [e.obj.id for e in await w.next_batch(max_events=10)] == ["e"]
    assert w.poll() == []


async def test_async_iteration_wakes_on_apply() -> None:
    s = MemoryStore()
    f = Feeder(s)
    got: list[str] = []

    async def consume() -> None:
        async for ev in s.watch(tables={"configs"}):
            got.append(ev.obj.id)
            if len(got) == 3:
                return

    t = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for i in range(3):
        f.tx(Create("configs", cfg(f"c{i}")), Create("nodes", node(f"n{i}")))
        await asyncio.sleep(0)
    await asyncio.wait_for(t, 2)
    assert got == ["c0", "c1", "c2"]


async def test_close_ends_iteration_and_next_batch() -> None:
    s = MemoryStore()
    w = s.watch()
    assert s.watchers == 1

    async def it() -> list:
        return [e async for e in w]

    t = asyncio.create_task(it())
    await asyncio.sleep(0)
    w.close()
    assert await asyncio.wait_for(t, 1) == []
    assert s.watchers == 0
    with pytest.raises(WatchClosed):
        await w.next_batch()
    with s.watch() as w2:
        assert s.watchers == 1
    assert w2.closed and s.watchers == 0


async def test_table_and_filter_selection() -> None:
    s = MemoryStore()
    f = Feeder(s)
    w_tasks = s.watch(tables={"tasks"})
    w_n1 = s.watch(tables={"tasks"}, filter=lambda e: e.obj.node_id == "n1")
    f.tx(Create("tasks", task("t1", node_id="n1")), Create("tasks", task("t2", node_id="n2")))
    f.tx(Create("configs", cfg("c")))
    assert [e.obj.id for e in w_tasks.poll()] == ["t1", "t2"]
    assert [e.obj.id for e in w_n1.poll()] == ["t1"]
    with pytest.raises(UnknownTable):
        s.watch(tables={"task"})


async def test_raising_filter_closes_only_that_watch() -> None:
    s = MemoryStore()
    f = Feeder(s)
    bad = s.watch(filter=lambda e: 1 / 0)
    good = s.watch()
    assert f.tx(Create("configs", cfg("c"))).ok
    with pytest.raises(WatchError, match="ZeroDivisionError"):
        await bad.next_batch()
    assert len(good.poll()) == 1


async def test_from_version_replays_then_follows() -> None:
    s = MemoryStore()
    f = Feeder(s)
    for i in range(5):
        f.tx(Create("configs", cfg(f"c{i}")))
    view = s.view()
    assert view.index == 5
    w = s.watch(from_version=2)
    f.tx(Create("configs", cfg("c5")))
    assert [e.version for e in w.poll()] == [3, 4, 5, 6]
    w0 = s.watch(from_version=0)
    assert len(w0.poll()) == 6
    w_now = s.watch(from_version=s.index)
    assert w_now.poll() == []
    # a version ahead of this replica: nothing at or below it repeats
    w_ahead = s.watch(from_version=8)
    f.tx(Create("configs", cfg("c6")))
    f.tx(Create("configs", cfg("c7")))
    f.tx(Create("configs", cfg("c8")))
    assert [e.version for e in w_ahead.poll()] == [9]


async def test_list_then_watch_from_view_index_misses_nothing() -> None:
    s = MemoryStore()
    f = Feeder(s)
    f.tx(Create("configs", cfg("a")))
    v = s.view()
    listed = {o.id for o in v.list("configs")}
    f.tx(Create("configs", cfg("b")))  # happens "during an await" after the list
    w = s.watch(from_version=v.index)
    seen = listed | {e.obj.id for e in w.poll()}
    assert seen == {"a", "b"}


async def test_compacted_history_raises() -> None:
    s = MemoryStore(history_events=3)
    f = Feeder(s)
    for i in range(5):
        f.tx(Create("configs", cfg(f"c{i}")))
    assert s.history_floor == 2
    with pytest.raises(WatchCompacted, match="version 1"):
        s.watch(from_version=1)
    assert [e.version for e in s.watch(from_version=2).poll()] == [3, 4, 5]
    # a tx bigger than the whole ring moves the floor past itself
    f.tx(*[Create("configs", cfg(f"d{i}")) for i in range(5)])
    assert s.history_floor == 6
    with pytest.raises(WatchCompacted):
        s.watch(from_version=5)
    assert s.watch(from_version=6).poll() == []


async def test_slow_watcher_is_closed_and_apply_never_blocks() -> None:
    s = MemoryStore(watch_queue_limit=5)
    f = Feeder(s)
    slow = s.watch()
    fast = s.watch()
    for i in range(10):
        assert f.tx(Create("configs", cfg(f"c{i}"))).ok
        fast.poll()
    assert slow.closed and isinstance(slow.error, WatchOverflow)
    with pytest.raises(WatchOverflow, match="fell behind"):
        await slow.next_batch()
    with pytest.raises(WatchOverflow):
        async for _ in slow:
            pass
    assert not fast.closed and s.watchers == 1
    # a replay larger than the queue limit overflows at once
    with pytest.raises(WatchOverflow):
        s.watch(from_version=0)
    assert len(s.watch(from_version=0, queue_limit=100).poll()) == 10


async def test_failed_tx_emits_nothing() -> None:
    s = MemoryStore()
    f = Feeder(s)
    w = s.watch()
    f.tx(Create("configs", cfg("a")))
    f.tx(Create("configs", cfg("b")), Create("configs", cfg("a")))
    f.raw(b"junk")
    f.tx(Create("configs", cfg("c")))
    assert summary(w.poll()) == [(1, "create", "configs", "a"), (4, "create", "configs", "c")]


async def test_restore_emits_diff_once() -> None:
    leader, follower = MemoryStore(), MemoryStore()
    lf = Feeder(leader)
    lf.tx(Create("configs", cfg("keep")), Create("configs", cfg("gone")), Create("configs", cfg("chg")))
    # the follower has the first entry only
    follower.apply(*lf.entries[0])
    w = follower.watch()
    old_chg = follower.view().get("configs", "chg")
    chg = leader.view().get("configs", "chg")
    lf.tx(Update("configs", evolve(chg, spec__data=b"v2")), Delete("configs", "gone"))
    lf.tx(Create("configs", cfg("new")), Create("configs", cfg("tmp")))
    lf.tx(Delete("configs", "tmp"))
    follower.restore(leader.snapshot())
    assert follower.index == leader.index == 4
    got = w.poll()
    by_id = {e.obj.id: e for e in got}
    assert sorted((e.obj.id, str(e.action)) for e in got) == [
        ("chg", "update"),
        ("gone", "delete"),
        ("new", "create"),
    ]
    assert all(e.version == 4 for e in got)
    assert by_id["chg"].old == old_chg and by_id["chg"].obj.spec.data == b"v2"
    # restoring the same state again emits nothing
    follower.restore(leader.snapshot())
    assert w.poll() == []
    # history restarts at the snapshot
    with pytest.raises(WatchCompacted):
        follower.watch(from_version=3)
    assert follower.watch(from_version=4).poll() == []
    # and events continue after it
    lf.stores = (leader, follower)
    lf.tx(Create("configs", cfg("after")))
    assert summary(w.poll()) == [(5, "create", "configs", "after")]


async def test_restore_does_not_repeat_what_a_watcher_saw() -> None:
    a = MemoryStore()
    f = Feeder(a)
    f.tx(Create("configs", cfg("x")))
    f.tx(Create("configs", cfg("y")))
    snap = a.snapshot()
    b = MemoryStore()
    b.apply(*f.entries[0])
    # a watcher that already knows state up to version 2 (e.g. from another
    # replica) must not get "y" (version 2) again from the restore diff
    w = b.watch(from_version=2)
    w_fresh = b.watch()
    b.restore(snap)
    assert w.poll() == []
    assert summary(w_fresh.poll()) == [(2, "create", "configs", "y")]


async def test_restore_rejects_garbage_and_keeps_state() -> None:
    from manager.store import SnapshotError

    s = MemoryStore()
    Feeder(s).tx(Create("configs", cfg("c")))
    before = s.snapshot()
    for bad in (b"", b"\xc1", b"\x80", MemoryStore().snapshot()[:-3]):
        with pytest.raises(SnapshotError):
            s.restore(bad)
    import msgpack

    d = msgpack.unpackb(before)
    d["tables"]["configs"].append(d["tables"]["configs"][0])
    with pytest.raises(SnapshotError, match="duplicate id"):
        s.restore(msgpack.packb(d))
    d = msgpack.unpackb(before)
    d["tables"]["configs"][0]["spec"]["name"] = "bad name"
    with pytest.raises(SnapshotError, match="spec.name"):
        s.restore(msgpack.packb(d))
    assert s.snapshot() == before
