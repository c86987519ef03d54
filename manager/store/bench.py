"""Quick measurements of the store's hot paths (not a test).

    python3 -m manager.store.bench [--n 20000]

Reports encode/s and apply/s of 1-op transactions (create a Config with 256
bytes of data), apply with watchers attached, update txs, read costs (the
immutable objects we hand out vs. a deep copy per read, the alternative),
and snapshot/restore of a store with many tasks.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

from api.objects import (
    Config,
    ConfigSpec,
    ContainerSpec,
    Task,
    TaskSpec,
    evolve,
)
from manager.store import Create, MemoryStore, Update


def _rate(label: str, n: int, fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"{label:<44} {n / dt:>12,.0f}/s  {dt / n * 1e6:8.1f} us each")
    return dt / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--tasks", type=int, default=100_000)
    args = ap.parse_args()
    n = args.n

    configs = [
        Config(id=f"c{i:024d}", spec=ConfigSpec(name=f"cfg-{i}", labels={"app": "web"}, data=bytes(256)))
        for i in range(n)
    ]
    store = MemoryStore()
    txs: list[bytes] = []
    _rate("encode_tx (1 create, 256 B config)", n, lambda: txs.extend(store.encode_tx([Create("configs", c)], now=1.0) for c in configs))

    def apply_all(s: MemoryStore, entries: list[bytes], start: int) -> None:
        for i, data in enumerate(entries, start):
            s.apply(i, data)

    _rate("apply (1 create), no watchers", n, lambda: apply_all(store, txs, 1))

    s2 = MemoryStore()
    watches = [s2.watch(), s2.watch(tables={"configs"}), s2.watch(tables={"tasks"})]
    _rate("apply (1 create), 3 watchers", n, lambda: apply_all(s2, txs, 1))
    for w in watches:
        w.close()

    view = store.view()
    updates = [store.encode_tx([Update("configs", evolve(view.get("configs", c.id), spec__labels={"app": "db"}))], now=2.0) for c in configs]
    _rate("apply (1 update, label index change)", n, lambda: apply_all(store, updates, n + 1))

    batch = [store.encode_tx([Create("configs", c.model_copy(update={"id": "b" + c.id[1:], "spec": c.spec.model_copy(update={"name": "b" + c.spec.name})})) for c in configs[i : i + 100]], now=3.0) for i in range(0, n, 100)]
    per = _rate("apply (100-op create tx), per tx", len(batch), lambda: apply_all(store, batch, 2 * n + 1))
    print(f"{'  = per op':<44} {100 / per:>12,.0f}/s  {per / 100 * 1e6:8.1f} us each")

    ids = [c.id for c in configs]
    v = store.view()
    _rate("read get() (immutable, no copy)", n, lambda: [v.get("configs", i) for i in ids])
    _rate("read get() + model_copy(deep=True)", n, lambda: [v.get("configs", i).model_copy(deep=True) for i in ids])

    big = MemoryStore()
    spec = TaskSpec(container=ContainerSpec(image="registry.local/app:1.2.3", env=("A=1", "B=2")))
    tasks = [Task(id=f"t{i:024d}", service_id=f"s{i % 100}", slot=i // 100 + 1, node_id=f"n{i % 50}", spec=spec) for i in range(args.tasks)]
    step = 1000
    entries = [big.encode_tx([Create("tasks", t) for t in tasks[i : i + step]], now=4.0) for i in range(0, len(tasks), step)]
    t0 = time.perf_counter()
    apply_all(big, entries, 1)
    print(f"{'load ' + str(args.tasks) + ' tasks (1000-op txs)':<44} {time.perf_counter() - t0:8.2f} s")
    t0 = time.perf_counter()
    snap = big.snapshot()
    print(f"{'snapshot() of ' + str(args.tasks) + ' tasks':<44} {time.perf_counter() - t0:8.2f} s  ({len(snap) / 1e6:.1f} MB)")
    some = big.view().list("tasks")[:1000]
    apply_all(big, [big.encode_tx([Update("tasks", evolve(t, node_id="moved"))], now=5.0) for t in some], big.index + 1)
    t0 = time.perf_counter()
    big.snapshot()
    print(f"{'snapshot() again after 1000 task updates':<44} {time.perf_counter() - t0:8.2f} s")
    fresh = MemoryStore()
    t0 = time.perf_counter()
    fresh.restore(snap)
    print(f"{'restore() into an empty store':<44} {time.perf_counter() - t0:8.2f} s")
    t0 = time.perf_counter()
    gc.collect()
    print(f"{'  then one full gc.collect() (see report)':<44} {time.perf_counter() - t0:8.2f} s")
    t0 = time.perf_counter()
    big.view().list("tasks")
    lt = time.perf_counter() - t0
    t0 = time.perf_counter()
    big.view().find("tasks", "node_id", "n7")
    print(f"{'list(tasks) / find(node_id) on that store':<44} {lt * 1e3:8.2f} ms / {(time.perf_counter() - t0) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
