"""The checker itself: it must reject what is not linearizable."""

from __future__ import annotations

from tests.linearizability import INF, Op, check_history, check_register


def put(c: int, v: object, call: float, ret: float = INF, key: str = "k") -> Op:
    return Op(c, "put", key, value=v, call=call, ret=ret)


def get(c: int, out: object, call: float, ret: float = INF, key: str = "k") -> Op:
    return Op(c, "get", key, output=out, call=call, ret=ret)


def test_sequential_history_is_linearizable() -> None:
    assert check_register([put(1, 1, 0, 1), get(2, 1, 2, 3), put(1, 2, 4, 5), get(2, 2, 6, 7)])


def test_stale_read_is_rejected() -> None:
    assert not check_register([put(1, 1, 0, 1), put(1, 2, 2, 3), get(2, 1, 4, 5)])


def test_read_of_never_written_value_is_rejected() -> None:
    assert not check_register([put(1, 1, 0, 1), get(2, 7, 2, 3)])


def test_lost_write_is_rejected() -> None:
    # The write finished before the read began, yet the read sees the initial value.
    assert not check_register([put(1, 1, 0, 1), get(2, None, 2, 3)])


def test_concurrent_ops_may_order_either_way() -> None:
    assert check_register([put(1, 1, 0, 10), get(2, 1, 1, 2), get(3, None, 1, 2)])
    assert check_register([put(1, 1, 0, 10), get(2, None, 1, 2), get(3, 1, 3, 4)])


def test_reads_cannot_go_back_in_time() -> None:
    # Once a read saw 1 (and returned), a later read must not see the older None.
    assert not check_register([put(1, 1, 0, 10), get(2, 1, 1, 2), get(3, None, 3, 4)])


def test_unknown_write_may_apply_late_or_never() -> None:
    assert check_register([put(1, 1, 0), get(2, None, 1, 2), get(2, 1, 5, 6)])
    assert check_register([put(1, 1, 0), get(2, None, 1, 2), get(2, None, 5, 6)])
    # ...but not before it was invoked:
    assert not check_register([get(2, 1, 0, 1), put(1, 1, 2)])
    # ...and once seen it stays:
    assert not check_register([put(1, 1, 0), get(2, 1, 1, 2), get(2, None, 5, 6)])


def test_cas() -> None:
    ops = [put(1, 0, 0, 1), Op(2, "cas", "k", (0, 5), True, 2, 3), Op(3, "cas", "k", (0, 6), True, 2, 3)]
    assert not check_register(ops)  # both cannot succeed
    ops[2] = Op(3, "cas", "k", (0, 6), False, 2, 3)
    assert check_register(ops)


def test_history_is_partitioned_per_key_and_names_the_bad_key() -> None:
    h = [put(1, 1, 0, 1, key="a"), get(2, 1, 2, 3, key="a"), put(1, 1, 0, 1, key="b"), get(2, 9, 2, 3, key="b")]
    r = check_history(h)
    assert not r.ok and r.key == "b" and "not linearizable" in r.detail
    assert check_history(h[:2]).ok
