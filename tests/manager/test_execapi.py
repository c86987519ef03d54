"""`manager.execapi`: which running task an exec target names (and the
clear refusals), and the client's exec request checked field by field."""

from __future__ import annotations

import pytest

from api.objects import ContainerSpec, Service, ServiceSpec, Task, TaskSpec, TaskState, TaskStatus
from manager import store as store_ops
from manager.execapi import ExecRefused, find_task, parse_start
from manager.store import MemoryStore

SPEC = TaskSpec(container=ContainerSpec(image="busybox"))


def task(tid: str, svc: str, slot: int, state: TaskState, *, node: str = "n1",
         desired: TaskState = TaskState.RUNNING, err: str = "") -> Task:
    return Task(id=tid, service_id=svc, slot=slot, node_id=node, spec=SPEC, desired_state=desired,
                status=TaskStatus(state=state, err=err))


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    ops = [store_ops.Create("services", Service(id="svc1", spec=ServiceSpec(name="web", task=SPEC))),
           store_ops.Create("services", Service(id="svc2", spec=ServiceSpec(name="db", task=SPEC))),
           store_ops.Create("services", Service(id="svc3", spec=ServiceSpec(name="agent", task=SPEC))),
           store_ops.Create("tasks", task("task1aaaa", "svc1", 1, TaskState.FAILED, desired=TaskState.SHUTDOWN,
                                          err="exit code 1")),
           store_ops.Create("tasks", task("task1bbbb", "svc1", 1, TaskState.RUNNING, node="n2")),
           store_ops.Create("tasks", task("task2aaaa", "svc1", 2, TaskState.RUNNING)),
           store_ops.Create("tasks", task("task3aaaa", "svc1", 3, TaskState.PREPARING)),
           store_ops.Create("tasks", task("taskdb111", "svc2", 1, TaskState.RUNNING, desired=TaskState.SHUTDOWN)),
           store_ops.Create("tasks", task("taskag111", "svc3", 0, TaskState.RUNNING, node="node9abc"))]
    s.apply(1, s.encode_tx(ops))
    return s


def test_targets_name_running_tasks(store: MemoryStore) -> None:
    assert find_task(store, "web")[1].id == "task1bbbb"  # the lowest running slot
    assert find_task(store, "svc1")[1].id == "task1bbbb"  # by service id too
    assert find_task(store, "web.2")[1].id == "task2aaaa"
    assert find_task(store, "web.1")[1].id == "task1bbbb"  # the running one of the slot's tasks
    assert find_task(store, "web.1.task1bbbb") == ("web", find_task(store, "task1bbbb")[1])
    assert find_task(store, "task2a") == ("web", find_task(store, "web.2")[1])  # a unique id prefix
    assert find_task(store, "agent.node9")[1].id == "taskag111"  # a global service's task by node


@pytest.mark.parametrize("target,why", [
    ("nosuch", "no service or task 'nosuch'"),
    ("", "the target is empty"),
    ("web.7", "service web has no task web.7"),
    ("web.3", "task web.3 is not running: it is preparing"),
    ("web.1.task1aaaa", "task web.1.task1aaaa is not running: it is failed (exit code 1)"),
    ("db", "service db has no running task"),
    ("taskdb111", "is not running: it is running but being shut down"),
    ("task", "is ambiguous"),
])
def test_bad_targets_are_clear_refusals(store: MemoryStore, target: str, why: str) -> None:
    with pytest.raises(ExecRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        find_task(store, target)


def test_the_exec_request_is_checked_field_by_field() -> None:
    st = parse_start('{"target": "web", "cmd": ["sh", "-c", "ls"], "tty": true, "env": ["A=1"], "width": 100}')
    assert (st.target, st.argv, st.tty, st.stdin, st.env, st.width, st.height) == (
        "web", ("sh", "-c", "ls"), True, False, ("A=1",), 100, 24)
    for text, why in [("[1]", "must be a JSON object"), ("{", "must be a JSON object"),
                      ('{"target": "web"}', "cmd: must be a non-empty list"),
                      ('{"cmd": [""]}', "cmd: must be a non-empty list"),
                      ('{"cmd": ["ls"], "env": ["A"]}', "env: must be a list of NAME=value"),
                      ('{"cmd": ["ls"], "tty": "yes"}', "tty: must be true or false"),
                      ('{"cmd": ["ls"], "height": 0}', "height: must be an integer from 1 to 65535"),
                      ('{"cmd": ["ls"], "user": 0}', "user: must be a string"),
                      ('{"cmd": ["ls"], "colour": 1}', "unknown field 'colour'")]:
        with pytest.raises(ExecRefused, match=why):
            parse_start(text)
