"""`--depends-on` from the CLI: the flag's forms, `--depends-on-add/-rm`,
and, against a real manager process, create/update/inspect and the waiting
reason in `service ps`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import click
import pytest

from cli.service import task_error
from cli.specflags import parse_depends_on, update_depends_on
from tests.cli.test_publish import eventually, ok, orch
from tests.harness.managers import ManagerCluster

IMAGE = "busybox@sha256:" + "a" * 64


def dep(name: str, cond: str = "service_started") -> dict[str, str]:
    return {"service": name, "condition": cond}


@pytest.mark.parametrize("flag,want", [
    ("db", dep("db")),
    ("db:service_healthy", dep("db", "service_healthy")),
    ("db:healthy", dep("db", "service_healthy")),
    ("migrate:completed", dep("migrate", "service_completed_successfully")),
    ("migrate:service-completed-successfully", dep("migrate", "service_completed_successfully")),
    ("db:STARTED", dep("db")),
])
def test_depends_on_forms(flag: str, want: dict[str, str]) -> None:
    assert parse_depends_on(flag) == want


@pytest.mark.parametrize("flag,said", [
    ("db:ready", "condition 'ready' is not one of service_started, service_healthy, service_completed_successfully"),
    (":healthy", "expected SERVICE[:CONDITION]"),
])
def test_bad_depends_on_names_the_flag(flag: str, said: str) -> None:
    with pytest.raises(click.BadParameter) as ei:
        parse_depends_on(flag, "--depends-on-add")
    assert said in ei.value.message and ei.value.param_hint == "--depends-on-add"


def test_add_and_rm() -> None:
    have = [dep("db"), dep("cache")]
    assert update_depends_on(have, [dep("db", "service_healthy"), dep("mq")], ("cache",)) == [
        dep("db", "service_healthy"), dep("mq")]
    with pytest.raises(click.BadParameter) as ei:
        update_depends_on(have, [], ("queue",))
    assert "'queue': the service does not depend on it" in ei.value.message


def test_the_error_column_says_why_a_task_waits() -> None:
    why = 'waiting for service "db" (service_healthy: 0 of 1 task running and healthy)'
    assert task_error({"status": {"state": "pending", "message": why, "err": ""}}) == why
    assert task_error({"status": {"state": "pending", "message": "allocated", "err": ""}}) == ""
    assert task_error({"status": {"state": "running", "message": "started", "err": ""}}) == ""
    assert task_error({"status": {"state": "failed", "message": "failed", "err": "exit 1"}}) == "exit 1"


@pytest.fixture(scope="module")
def manager() -> Iterator[ManagerCluster]:
    with ManagerCluster(1) as cl:
        cl.leader(timeout=15)
        yield cl


def test_depends_on_from_the_cli(manager: ManagerCluster) -> None:
    cl = manager
    r = orch(cl, "service", "create", "--name", "web", "--depends-on", "db:healthy", "--detach", IMAGE)
    assert r.returncode == 1 and 'depends_on[0].service: no service named "db"' in r.stderr
    ok(cl, "service", "create", "--name", "db", "--replicas", "0", "--detach", IMAGE)
    ok(cl, "service", "create", "--name", "cache", "--detach", IMAGE)
    ok(cl, "service", "create", "--name", "web", "--depends-on", "db:healthy", "--depends-on", "cache",
       "--detach", IMAGE)
    web = json.loads(ok(cl, "service", "inspect", "web"))[0]
    assert web["spec"]["depends_on"] == [dep("db", "service_healthy"), dep("cache")]
    pretty = ok(cl, "service", "inspect", "--pretty", "web")
    assert "Depends on:" in pretty and "service_healthy" in pretty
    # db wants no task, so it holds; cache has no node to run on: web waits for it, and says so.
    why = 'waiting for service "cache" (service_started: 0 of 1 task running)'
    ps = eventually(lambda: (lambda out: out if why in out else None)(ok(cl, "service", "ps", "web")),
                    "the waiting reason in service ps")
    assert "Pending" in ps
    full = ok(cl, "service", "ps", "--no-trunc", "web")
    task_id = json.loads(ok(cl, "service", "ps", "--format", "json", "web"))[0]["id"]
    assert why in full and task_id in full
    # db depending on web would close a cycle.
    r = orch(cl, "service", "update", "--depends-on-add", "web", "--detach", "db")
    assert r.returncode == 1 and "depends_on forms a cycle: db -> web -> db" in r.stderr
    r = orch(cl, "service", "update", "--depends-on-rm", "queue", "--detach", "web")
    assert r.returncode == 2 and "--depends-on-rm" in r.stderr
    ok(cl, "service", "update", "--depends-on-rm", "cache", "--depends-on-add", "db:completed", "--detach", "web")
    web = json.loads(ok(cl, "service", "inspect", "web"))[0]
    assert web["spec"]["depends_on"] == [dep("db", "service_completed_successfully")]
