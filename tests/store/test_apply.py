"""Transactions through apply: CRUD, versions, names, atomicity, indexes,
determinism, size limits and malformed entries."""

from __future__ import annotations

import msgpack
import pytest

from api.errors import ValidationError
from api.objects import Config, NodeRole, Secret, SecretSpec, TaskState, evolve
from manager.store import (
    AlreadyExists,
    Conflict,
    Create,
    Delete,
    EventAction,
    InvalidTx,
    MemoryStore,
    NotFound,
    TxTooLarge,
    UnknownTable,
    Update,
)
from manager.store.ops import TX_FORMAT, encode_tx

from . import Feeder, cfg, node, replay, task


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


def test_create_sets_meta_from_index_and_tx_time(store: MemoryStore) -> None:
    f = Feeder(store, start=4)
    r = f.tx(Create("configs", cfg("c1", data=b"\x00" * 256)))
    assert r.ok and r.error is None and r.index == 5
    got = store.view().get("configs", "c1")
    assert got.meta.version == 5
    assert got.meta.created_at == got.meta.updated_at == f.now
    assert got.spec.data == b"\x00" * 256
    assert store.index == 5
    assert [(e.action, e.table, e.obj.id, e.version) for e in r.events] == [
        (EventAction.CREATE, "configs", "c1", 5)
    ]


def test_caller_meta_is_overwritten(store: MemoryStore) -> None:
    f = Feeder(store)
    c = cfg("c1").model_copy(update={"meta": cfg("c1").meta.model_copy(update={"version": 99, "created_at": 7.0})})
    f.tx(Create("configs", c))
    m = store.view().get("configs", "c1").meta
    assert (m.version, m.created_at) == (1, f.now)


def test_update_and_delete_check_versions(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("c1")))
    created = f.now
    v1 = store.view().get("configs", "c1")
    r = f.tx(Update("configs", evolve(v1, spec__labels={"a": "b"})))
    assert r.ok
    v2 = store.view().get("configs", "c1")
    assert v2.meta.version == 2 and v2.meta.created_at == created and v2.meta.updated_at == f.now
    assert r.events[0].action is EventAction.UPDATE and r.events[0].old == v1

    stale = f.tx(Update("configs", evolve(v1, spec__labels={"a": "c"})))
    assert not stale.ok and isinstance(stale.error, Conflict)
    msg = str(stale.error)
    assert "configs/c1" in msg and "expected 1" in msg and "actual 2" in msg
    assert store.view().get("configs", "c1") == v2

    r = f.tx(Delete("configs", "c1", expect_version=1))
    assert isinstance(r.error, Conflict) and "expected 1, actual 2" in str(r.error)
    r = f.tx(Delete("configs", "c1", expect_version=2))
    assert r.ok and r.events[0].action is EventAction.DELETE and r.events[0].obj == v2
    assert store.view().get("configs", "c1") is None
    assert store.view().get_by_name("configs", "c1") is None


def test_explicit_expect_version_and_unconditional_delete(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("c1")))
    v1 = store.view().get("configs", "c1")
    assert not f.tx(Update("configs", v1, expect_version=0)).ok
    assert f.tx(Update("configs", v1, expect_version=1)).ok
    assert f.tx(Delete("configs", "c1")).ok


def test_not_found(store: MemoryStore) -> None:
    f = Feeder(store)
    r = f.tx(Update("configs", cfg("ghost")))
    assert isinstance(r.error, NotFound) and "update configs/ghost" in str(r.error)
    r = f.tx(Delete("secrets", "ghost"))
    assert isinstance(r.error, NotFound) and "delete secrets/ghost" in str(r.error)


def test_unique_ids_and_names(store: MemoryStore) -> None:
    f = Feeder(store)
    assert f.tx(Create("configs", cfg("c1", "dup"))).ok
    r = f.tx(Create("configs", cfg("c2", "dup")))
    assert isinstance(r.error, AlreadyExists)
    assert "'dup'" in str(r.error) and "configs/c1" in str(r.error)
    r = f.tx(Create("configs", cfg("c1", "other")))
    assert isinstance(r.error, AlreadyExists) and "id already exists" in str(r.error)
    # same name in another table is fine
    assert f.tx(Create("secrets", Secret(id="s1", spec=SecretSpec(name="dup", data=b"s")))).ok
    # renaming onto a taken name fails; renaming frees the old name
    assert f.tx(Create("configs", cfg("c2", "two"))).ok
    c2 = store.view().get("configs", "c2")
    assert isinstance(f.tx(Update("configs", evolve(c2, spec__name="dup"))).error, AlreadyExists)
    assert f.tx(Update("configs", evolve(c2, spec__name="deux"))).ok
    assert store.view().get_by_name("configs", "two") is None
    assert store.view().get_by_name("configs", "deux").id == "c2"
    assert f.tx(Create("configs", cfg("c3", "two"))).ok


def test_names_within_one_tx(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("a", "n1")), Create("configs", cfg("b", "n2")))
    a, b = store.view().get("configs", "a"), store.view().get("configs", "b")
    # two creates with one name in one tx
    r = f.tx(Create("configs", cfg("c", "n3")), Create("configs", cfg("d", "n3")))
    assert isinstance(r.error, AlreadyExists)
    # swap names in one tx
    r = f.tx(
        Update("configs", evolve(a, spec__name="tmp")),
        Update("configs", evolve(b, spec__name="n1")),
        Update("configs", evolve(a, spec__name="n2"), expect_version=a.meta.version),
    )
    # the third op sees a at its staged version (this tx's index), so it conflicts
    assert isinstance(r.error, Conflict)
    r = f.tx(
        Update("configs", evolve(a, spec__name="n2")),
        Update("configs", evolve(b, spec__name="n1")),
    )
    assert isinstance(r.error, AlreadyExists)  # n2 still held by b when op 0 runs
    r = f.tx(
        Update("configs", evolve(b, spec__name="tmp")),
        Update("configs", evolve(a, spec__name="n2")),
        Delete("configs", "b"),
        Create("configs", cfg("b2", "n1")),
    )
    assert r.ok, r.error
    v = store.view()
    assert v.get_by_name("configs", "n2").id == "a"
    assert v.get_by_name("configs", "n1").id == "b2"
    assert v.get_by_name("configs", "tmp") is None
    # delete then re-create the same id and name in one tx
    r = f.tx(Delete("configs", "a"), Create("configs", cfg("a", "n2", data=b"new")))
    assert r.ok and [e.action for e in r.events] == [EventAction.DELETE, EventAction.CREATE]
    assert store.view().get_by_name("configs", "n2").spec.data == b"new"


def test_failed_tx_changes_nothing_and_emits_nothing(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("c1")), Create("tasks", task("t1")))
    before = store.snapshot()
    w = store.watch()
    c1 = store.view().get("configs", "c1")
    r = f.tx(
        Create("configs", cfg("c2")),
        Update("configs", evolve(c1, spec__labels={"x": "y"})),
        Delete("tasks", "t1"),
        Delete("configs", "missing"),  # fails last
    )
    assert not r.ok and isinstance(r.error, NotFound) and r.events == ()
    assert w.poll() == []
    after = store.snapshot()
    # only the index moved (the entry was applied, as a failed tx)
    assert store.index == 2
    assert msgpack.unpackb(after)["tables"] == msgpack.unpackb(before)["tables"]
    assert store.view().get("configs", "c2") is None
    assert store.view().find("tasks", "service_id", "svc")[0].id == "t1"


def test_secondary_indexes(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(
        Create("tasks", task("t1", service_id="s1", node_id="n1", slot=1)),
        Create("tasks", task("t2", service_id="s1", node_id="n2", slot=2)),
        Create("tasks", task("t3", service_id="s2", node_id="n1", slot=1, desired=TaskState.SHUTDOWN)),
        Create("nodes", node("n1", NodeRole.MANAGER, zone="a")),
        Create("nodes", node("n2", zone="b")),
        Create("nodes", node("n3", zone="a", ssd="yes")),
    )
    v = store.view()
    ids = lambda objs: sorted(o.id for o in objs)  # noqa: E731
    assert ids(v.find("tasks", "service_id", "s1")) == ["t1", "t2"]
    assert ids(v.find("tasks", "node_id", "n1")) == ["t1", "t3"]
    assert ids(v.find("tasks", "desired_state", TaskState.RUNNING)) == ["t1", "t2"]
    assert ids(v.find("tasks", "state", TaskState.NEW)) == ["t1", "t2", "t3"]
    assert ids(v.find("tasks", "slot", ("s1", 2))) == ["t2"]
    assert ids(v.find("nodes", "role", NodeRole.MANAGER)) == ["n1"]
    assert ids(v.find("nodes", "role", "worker")) == ["n2", "n3"]
    assert ids(v.find("nodes", "label", ("zone", "a"))) == ["n1", "n3"]
    assert ids(v.find("nodes", "label_key", "ssd")) == ["n3"]
    assert v.find("tasks", "node_id", "nope") == []
    assert ids(v.find("tasks", "id", "t1")) == ["t1"]
    # indexes follow updates and deletes
    t1 = v.get("tasks", "t1")
    f.tx(
        Update("tasks", evolve(t1, node_id="n2", desired_state=TaskState.SHUTDOWN, status__state=TaskState.RUNNING)),
        Delete("tasks", "t3"),
    )
    v = store.view()
    assert ids(v.find("tasks", "node_id", "n1")) == []
    assert ids(v.find("tasks", "node_id", "n2")) == ["t1", "t2"]
    assert ids(v.find("tasks", "desired_state", TaskState.SHUTDOWN)) == ["t1"]
    assert ids(v.find("tasks", "state", TaskState.RUNNING)) == ["t1"]
    assert ids(v.find("tasks", "service_id", "s2")) == []
    n3 = v.get("nodes", "n3")
    f.tx(Update("nodes", evolve(n3, spec__labels={"zone": "b"})))
    assert ids(store.view().find("nodes", "label", ("zone", "b"))) == ["n2", "n3"]
    assert store.view().find("nodes", "label_key", "ssd") == []
    with pytest.raises(UnknownTable, match="no index 'bogus'"):
        v.find("tasks", "bogus", 1)
    with pytest.raises(UnknownTable, match="no table 'cats'"):
        v.list("cats")
    assert store.view().count("tasks") == 2


def test_reads_are_not_mutable_aliases(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("c1", lab="1")))
    got = store.view().get("configs", "c1")
    with pytest.raises(Exception):
        got.spec.labels["lab"] = "2"
    with pytest.raises(Exception):
        got.spec = got.spec  # type: ignore[misc]
    lst = store.view().list("configs")
    lst.clear()
    assert store.view().count("configs") == 1
    assert store.view().get("configs", "c1").spec.labels == {"lab": "1"}


def test_determinism_identical_snapshots() -> None:
    a, b = MemoryStore(), MemoryStore()
    f = Feeder(a)
    f.tx(Create("configs", cfg("c1", lab="x")), Create("tasks", task("t1")))
    f.noop()
    f.tx(Create("nodes", node("n1")))
    c1 = a.view().get("configs", "c1")
    f.tx(Update("configs", evolve(c1, spec__data=b"changed")))
    f.raw(b"garbage")
    f.tx(Delete("tasks", "t1"))
    f.tx(Create("configs", cfg("c2")), Delete("configs", "nope"))
    replay(f.entries, b)
    assert a.index == b.index == f.index
    assert a.snapshot() == b.snapshot()
    # and a restored replica snapshots to the same bytes
    c = MemoryStore()
    c.restore(a.snapshot())
    assert c.snapshot() == a.snapshot()


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "not msgpack"),
        (b"\xc1", "not msgpack"),
        (msgpack.packb({"a": 1}), "expected [format, timestamp, ops]"),
        (msgpack.packb([99, 1.0, []]), "unknown format 99"),
        (msgpack.packb([TX_FORMAT, "now", []]), "timestamp"),
        (msgpack.packb([TX_FORMAT, float("nan"), []]), "timestamp"),
        (msgpack.packb([TX_FORMAT, 1.0, [[9, "configs", {}, None]]]), "unknown op code 9"),
        (msgpack.packb([TX_FORMAT, 1.0, [[1, "cats", {}, None]]]), "unknown table 'cats'"),
        (msgpack.packb([TX_FORMAT, 1.0, [[1, "configs", "x", None]]]), "payload must be an object"),
        (msgpack.packb([TX_FORMAT, 1.0, [[3, "configs", 5, None]]]), "must be an object id"),
        (msgpack.packb([TX_FORMAT, 1.0, [[2, "configs", {}, None]]]), "without an expected version"),
        (msgpack.packb([TX_FORMAT, 1.0, [[2, "configs", {}, "1"]]]), "not an integer"),
        (msgpack.packb([TX_FORMAT, 1.0, [[1, "configs", {"id": "c", "spec": {"name": "bad name"}}, None]]]), "spec.name: must match"),
        (msgpack.packb([TX_FORMAT, 1.0, [[1, "configs", {"id": "c"}, None]]]), "spec: is required"),
        (msgpack.packb([TX_FORMAT, 1.0, [1, 2]]), "ops[0] is not"),
        (b"\x91" * 100_000 + b"\x90", "not msgpack"),  # deeply nested
    ],
)
def test_malformed_entry_fails_without_raising(store: MemoryStore, data: bytes, needle: str) -> None:
    Feeder(store).tx(Create("configs", cfg("keep")))
    before = store.snapshot()
    r = store.apply(2, data)
    assert not r.ok and isinstance(r.error, InvalidTx), r
    assert needle in str(r.error), str(r.error)
    assert store.index == 2
    assert msgpack.unpackb(store.snapshot())["tables"] == msgpack.unpackb(before)["tables"]
    # the replica goes on
    assert store.apply(3, store.encode_tx([Create("configs", cfg("next"))])).ok


def test_non_bytes_entry_and_stale_index(store: MemoryStore) -> None:
    r = store.apply(1, None)  # type: ignore[arg-type]
    assert not r.ok and isinstance(r.error, InvalidTx)
    r = store.apply(1, store.encode_tx([Create("configs", cfg("c"))]))
    assert not r.ok and "not after the applied index 1" in str(r.error)
    assert store.view().get("configs", "c") is None


def test_apply_noop_advances_index(store: MemoryStore) -> None:
    store.apply_noop(3)
    assert store.index == 3
    store.apply_noop(2)
    assert store.index == 3
    assert store.apply(4, store.encode_tx([Create("configs", cfg("c"))])).ok
    assert store.view().get("configs", "c").meta.version == 4


def test_tx_size_limit() -> None:
    small = MemoryStore(max_tx_bytes=4096)
    with pytest.raises(TxTooLarge) as ei:
        small.encode_tx([Create("configs", cfg(f"c{i}", data=b"x" * 500)) for i in range(10)])
    e = ei.value
    assert e.limit == 4096 and e.size > 4096
    assert f"({e.size} bytes)" in str(e) and "(4096 bytes)" in str(e) and "split" in str(e)
    # default limit 1.5 MiB: four max-size configs fit, four make more than 1.5 MiB
    big = [Create("configs", cfg(f"c{i}", data=b"x" * 512000)) for i in range(4)]
    with pytest.raises(TxTooLarge, match=r"1\.50 MiB \(1572864 bytes\)"):
        MemoryStore().encode_tx(big)
    assert len(MemoryStore().encode_tx(big[:3])) < 1572864


def test_encode_refuses_bad_objects_and_misuse() -> None:
    s = MemoryStore()
    bad = evolve(cfg("c1"), spec__name="bad name")  # evolve does not validate
    with pytest.raises(ValidationError) as ei:
        s.encode_tx([Create("configs", cfg("ok")), Create("configs", bad)])
    assert str(ei.value).startswith("ops[1] (configs c1): spec.name: must match")
    with pytest.raises(TypeError, match="holds Config, not Secret"):
        s.encode_tx([Create("configs", Secret(id="s", spec=SecretSpec(name="s", data=b"1")))])
    with pytest.raises(ValueError, match="unknown table 'cats'"):
        s.encode_tx([Delete("cats", "x")])
    with pytest.raises(ValueError, match="empty transaction"):
        s.encode_tx([])
    with pytest.raises(TypeError, match="not a store operation"):
        s.encode_tx(["create"])  # type: ignore[list-item]


def test_encode_without_now_uses_clock() -> None:
    import time

    data = encode_tx([Create("configs", cfg("c"))])
    ts = msgpack.unpackb(data)[1]
    assert abs(ts - time.time()) < 5
    s = MemoryStore()
    s.apply(1, data)
    assert s.view().get("configs", "c").meta.created_at == ts


def test_update_clamps_updated_at_to_not_go_back(store: MemoryStore) -> None:
    store.apply(1, store.encode_tx([Create("configs", cfg("c"))], now=500.0))
    c = store.view().get("configs", "c")
    store.apply(2, store.encode_tx([Update("configs", evolve(c, spec__data=b"y"))], now=400.0))
    assert store.view().get("configs", "c").meta.updated_at == 500.0


def test_apply_many_configs_stays_consistent(store: MemoryStore) -> None:
    f = Feeder(store)
    for i in range(300):
        f.tx(Create("configs", cfg(f"c{i}", lab=str(i % 3))))
    assert store.view().count("configs") == 300
    assert len(store.view().find("configs", "label", ("lab", "1"))) == 100
    assert isinstance(store.view().get("configs", "c7"), Config)


def test_snapshot_is_canonical_msgpack_and_tracks_writes(store: MemoryStore) -> None:
    f = Feeder(store)
    f.tx(Create("configs", cfg("b")), Create("configs", cfg("a")), Create("tasks", task("t1")))

    def canonical(s: MemoryStore) -> bytes:
        from manager.store.tables import TABLE_NAMES

        v = s.view()
        tables = {n: [o.model_dump() for o in sorted(v.list(n), key=lambda o: o.id)] for n in TABLE_NAMES}
        return msgpack.packb({"format": 1, "index": s.index, "tables": tables}, use_bin_type=True)

    assert store.snapshot() == canonical(store)
    # rows encoded by the first snapshot must not go stale after writes
    a = store.view().get("configs", "a")
    f.tx(Update("configs", evolve(a, spec__data=b"new")), Delete("tasks", "t1"))
    f.tx(Create("configs", cfg("c")))
    snap = store.snapshot()
    assert snap == canonical(store)
    d = msgpack.unpackb(snap)
    assert [c["id"] for c in d["tables"]["configs"]] == ["a", "b", "c"]
    assert d["tables"]["configs"][0]["spec"]["data"] == b"new"
    assert d["tables"]["tasks"] == []
    r = MemoryStore()
    r.restore(snap)
    assert r.snapshot() == snap
    Feeder(r, start=r.index).tx(Delete("configs", "b"))
    assert r.snapshot() == canonical(r)
