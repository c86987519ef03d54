"""Tasks' specs are validated once per content and shared (manager/store/intern.py):
the same objects as validating each one, one copy in memory, the same errors."""

from __future__ import annotations

import msgpack

from api.objects import ContainerSpec, TaskSpec, TaskState, TaskStatus, evolve
from manager.store import Create, MemoryStore, Update
from manager.store.errors import InvalidTx
from manager.store.ops import TX_FORMAT

from . import Feeder, task


def test_tasks_with_one_spec_share_it_after_apply_update_and_restore() -> None:
    leader, follower = MemoryStore(), MemoryStore()
    f = Feeder(leader, follower)
    assert f.tx(*(Create("tasks", task(f"t{i}", slot=i + 1)) for i in range(5))).ok
    other = evolve(task("x"), spec=TaskSpec(container=ContainerSpec(image="alpine")))
    assert f.tx(Create("tasks", other)).ok
    for store in (leader, follower):
        ts = [store.view().get("tasks", f"t{i}") for i in range(5)]
        assert all(t.spec is ts[0].spec for t in ts)
        assert store.view().get("tasks", "x").spec is not ts[0].spec
        assert store.view().get("tasks", "x").spec.container.image == "alpine"
    t0 = leader.view().get("tasks", "t0")
    assert f.tx(Update("tasks", evolve(t0, status=TaskStatus(state=TaskState.RUNNING)))).ok
    assert follower.view().get("tasks", "t0").spec is follower.view().get("tasks", "t1").spec
    # The same state as without sharing: equal objects, identical snapshots.
    assert leader.snapshot() == follower.snapshot()
    restored = MemoryStore()
    restored.restore(leader.snapshot())
    assert restored.snapshot() == leader.snapshot()
    rts = [restored.view().get("tasks", f"t{i}") for i in range(5)]
    assert all(t.spec is rts[0].spec for t in rts)


def test_a_bad_spec_is_refused_with_its_full_path() -> None:
    store = MemoryStore()
    row = task("t").model_dump()
    row["spec"]["container"]["image"] = ""
    data = msgpack.packb([TX_FORMAT, 1.0, [[1, "tasks", row, None]]], use_bin_type=True)
    r = store.apply(1, data)
    assert not r.ok and isinstance(r.error, InvalidTx)
    assert "spec.container.image" in str(r.error), str(r.error)
    # A good task with the same (valid) spec as an earlier one is still taken.
    assert store.apply(2, store.encode_tx([Create("tasks", task("u"))])).ok
