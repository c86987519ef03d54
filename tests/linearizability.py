"""A linearizability checker for key-value register histories.

Wing & Gong's search with Lowe's memoization (the WGL algorithm): try to
order the operations so that each takes effect at one instant between its
invocation and its response, and every read returns the latest write.
Histories are partitioned per key (registers are independent, and
linearizability is compositional), which keeps each search small.

An operation whose outcome is unknown (the client timed out, the node it
talked to crashed) has no response time: it may take effect at any point
after its invocation, or never. Reads with unknown outcome tell nothing and
are dropped.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

INF = math.inf


@dataclass(frozen=True)
class Op:
    client: int
    kind: str  # "put" | "get" | "cas"
    key: str
    value: Any = None  # put: value written; cas: (expected, new)
    output: Any = None  # get: value read; cas: True/False
    call: float = 0.0
    ret: float = INF  # INF: outcome unknown

    @property
    def known(self) -> bool:
        return self.ret != INF


@dataclass
class Result:
    ok: bool
    key: str | None = None
    detail: str = ""


def _step(state: Any, op: Op) -> tuple[bool, Any]:
    if op.kind == "put":
        return True, op.value
    if op.kind == "get":
        return op.output == state, state
    if op.kind == "cas":
        expected, new = op.value
        if op.ret == INF:  # unknown: it either swapped or not
            return True, new if state == expected else state
        if op.output:
            return state == expected, new
        return state != expected, state
    raise ValueError(f"unknown op kind {op.kind!r}")


def check_register(ops: list[Op], init: Any = None, max_states: int = 2_000_000) -> bool:
    """True if `ops` on one register are linearizable from `init`."""
    ops = [o for o in ops if o.known or o.kind != "get"]
    n = len(ops)
    if n == 0:
        return True
    required = 0
    for i, o in enumerate(ops):
        if o.known:
            required |= 1 << i
    order = sorted(range(n), key=lambda i: ops[i].call)
    seen: set[tuple[int, Any]] = set()
    # Iterative DFS over (linearized set, state).
    stack: list[tuple[int, Any]] = [(0, init)]
    explored = 0
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return True
        key = (done, state)
        if key in seen:
            continue
        seen.add(key)
        explored += 1
        if explored > max_states:
            raise RuntimeError("linearizability search too large")
        # The earliest response among operations not yet linearized bounds
        # which operations may go next.
        min_ret = INF
        for i in range(n):
            if not done >> i & 1 and ops[i].ret < min_ret:
                min_ret = ops[i].ret
        for i in order:
            if done >> i & 1:
                continue
            o = ops[i]
            if o.call > min_ret:
                break
            ok, new = _step(state, o)
            if ok:
                stack.append((done | 1 << i, new))
    return False


def check_history(ops: list[Op], init: Any = None) -> Result:
    by_key: dict[str, list[Op]] = defaultdict(list)
    for o in ops:
        by_key[o.key].append(o)
    for key, kops in sorted(by_key.items()):
        if not check_register(kops, init):
            lines = "\n".join(
                f"  c{o.client} {o.kind}({o.value!r}) -> {o.output!r} [{o.call}, {o.ret}]"
                for o in sorted(kops, key=lambda o: o.call)
            )
            return Result(False, key, f"history of key {key!r} is not linearizable:\n{lines}")
    return Result(True)
