"""Stacks through the control API, on a real single-member Raft node and
store: plan writes nothing, deploy writes everything in one entry or
nothing (a bad last service, a port taken), --check-version, --prune,
secret content changes, images resolved as asked, listing and removal."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.objects import Service, ServiceSpec, TaskSpec, ContainerSpec
from manager.controlapi.common import ManagerContext
from manager.store import Create
from manager.tx import commit
from tests.controlapi.test_manager_provider import serve, start_manager, wait_leader
from tests.manager.stackutil import PIN, request

KEY = b"k" * 32

TEXT = """
services:
  web:
    image: busybox{pin}
    ports: ["8080:80"]
    secrets: [pw]
    environment: {{V: "1"}}
  api:
    image: busybox{pin}
    networks: [back]
    deploy: {{replicas: 2{extra}}}
networks:
  back: {{}}
secrets:
  pw: {{file: ./pw.txt}}
"""


def body(pin: str = PIN, extra: str = "", pw: bytes = b"pw1", **kw: Any) -> dict[str, Any]:
    return request(TEXT.format(pin=pin, extra=extra), files={"pw.txt": pw}, stack="app", **kw).model_dump(mode="json")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[TestClient, ManagerContext]]:
    m = await start_manager(tmp_path / "raft", {1: "127.0.0.1:1"})
    resolved: list[str] = []

    async def registry(ref: str) -> str:
        resolved.append(ref)
        if ref.startswith("nosuch"):
            raise LookupError(f"{ref}: manifest unknown")
        return f"docker.io/library/{ref}:latest@sha256:" + "7" * 64

    ctx = ManagerContext(m.raft, m.store, lambda: KEY, registry)
    client = await serve(lambda: ctx)
    client.resolved = resolved  # type: ignore[attr-defined]
    try:
        await wait_leader(m.raft)
        assert (await client.post("/v1/networks", json={"name": "ingress", "ingress": True})).status == 201
        yield client, ctx
    finally:
        await client.close()
        await m.raft.stop()


async def post(client: TestClient, path: str, data: Any) -> tuple[int, Any]:
    r = await client.post(path, json=data)
    return r.status, await r.json()


def names(m: ManagerContext, table: str) -> list[str]:
    return sorted(o.spec.name for o in m.store.view().list(table))


async def test_plan_writes_nothing_and_deploy_writes_it_all(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    index = m.store.index
    st, plan = await post(client, "/v1/stacks/app/plan", body())
    assert st == 200, plan
    assert plan["changed"] and plan["version"] == 0
    assert [(e["kind"], e["name"], e["action"]) for e in plan["entries"]] == [
        ("network", "app_back", "create"), ("network", "app_default", "create"),
        ("secret", "app_pw", "create"), ("service", "app_web", "create"), ("service", "app_api", "create")]
    assert m.store.index == index and names(m, "services") == []
    st, out = await post(client, "/v1/stacks/app/deploy", body())
    assert st == 200, out
    assert m.store.index == index + 1  # one Raft entry
    assert names(m, "services") == ["app_api", "app_web"] and out["stack"]["version"] == 1
    assert set(out["services"]) == {"app_web", "app_api"}
    r = await client.get("/v1/stacks")
    (listed,) = await r.json()
    assert listed["spec"]["name"] == "app" and listed["summary"]["services"] == 2
    assert "ports:" in listed["spec"]["compose"]
    r = await client.get("/v1/stacks/app")
    one = await r.json()
    assert sorted(s["spec"]["name"] for s in one["services"]) == ["app_api", "app_web"]
    assert (await client.get("/v1/stacks/nope")).status == 404
    r = await client.get("/v1/stacks/app/tasks")
    assert r.status == 200 and await r.json() == []
    # The same again: nothing to change, exit-code material for `stack diff`.
    st, plan = await post(client, "/v1/stacks/app/plan", body())
    assert st == 200 and not plan["changed"] and plan["version"] == 1


async def test_a_bad_last_service_or_a_taken_port_writes_nothing(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    index = m.store.index
    bad = body(extra=", placement: {constraints: [\"node.zone=eu\"]}")
    st, err = await post(client, "/v1/stacks/app/deploy", bad)
    assert st == 400, err
    assert err["error"]["message"].startswith("services.api: task.placement.constraints[0]")
    assert err["error"]["field"] == "services.api.task.placement.constraints[0]"
    assert m.store.index == index and names(m, "networks") == ["ingress"] and names(m, "secrets") == []
    # Another service holds 8080: the whole stack is refused, naming it.
    await commit(m.raft, m.store, [Create("services", Service(id="other1", spec=ServiceSpec(
        name="other", task=TaskSpec(container=ContainerSpec(image="x" + PIN)),
        endpoint_spec={"ports": [{"target_port": 80, "published_port": 8080}]})))])
    index = m.store.index
    st, err = await post(client, "/v1/stacks/app/deploy", body())
    assert st == 409 and err["error"]["code"] == "conflict"
    assert err["error"]["message"].startswith('services.web: ports[0]: published port 8080/tcp is already used by '
                                              'service "other"')
    assert m.store.index == index and names(m, "services") == ["other"]
    # A body that is not a stack: 400 naming the field.
    st, err = await post(client, "/v1/stacks/app/plan", {"services": [{"key": "x"}]})
    assert st == 400 and "services[0].spec" in err["error"]["message"]
    st, err = await post(client, "/v1/stacks/bad name/plan", body())
    assert st == 400 and "not a valid stack name" in err["error"]["message"]


async def test_check_version_and_prune(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    assert (await post(client, "/v1/stacks/app/deploy", body()))[0] == 200
    st, plan = await post(client, "/v1/stacks/app/plan", body(extra=", labels: {a: b}"))
    assert plan["changed"] and plan["version"] == 1
    # Someone deploys in between: the plan seen at version 1 is refused.
    assert (await post(client, "/v1/stacks/app/deploy", body(extra=", labels: {a: c}")))[0] == 200
    index = m.store.index
    st, err = await post(client, "/v1/stacks/app/deploy", body(extra=", labels: {a: b}", check_version=1))
    assert st == 409 and "stack app is at version 2, not 1" in err["error"]["message"]
    assert err["error"]["field"] == "check_version" and m.store.index == index
    st, out = await post(client, "/v1/stacks/app/deploy", body(extra=", labels: {a: b}", check_version=2))
    assert st == 200 and out["stack"]["version"] == 3
    # --prune: web alone stays; api and its network go (no task is on it).
    only_web = request("""
    services:
      web:
        image: busybox{pin}
        ports: ["8080:80"]
        secrets: [pw]
        environment: {{V: "1"}}
    secrets:
      pw: {{file: ./pw.txt}}
    """.format(pin=PIN), files={"pw.txt": b"pw1"}, stack="app")
    st, plan = await post(client, "/v1/stacks/app/plan", only_web.model_dump(mode="json"))
    assert {e["name"]: e["action"] for e in plan["entries"]}["app_api"] == "unchanged"
    st, out = await post(client, "/v1/stacks/app/deploy", {**only_web.model_dump(mode="json"), "prune": True})
    assert st == 200, out
    gone = sorted((e["kind"], e["name"]) for e in out["plan"]["entries"] if e["action"] == "delete")
    assert gone == [("network", "app_back"), ("service", "app_api")]
    assert names(m, "services") == ["app_web"] and names(m, "networks") == ["app_default", "ingress"]


async def test_a_changed_secret_is_a_new_version_and_the_old_one_goes(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    assert (await post(client, "/v1/stacks/app/deploy", body(pw=b"pw1")))[0] == 200
    (v1,) = m.store.view().list("secrets")
    assert v1.spec.name.startswith("app_pw-") and b"pw1" not in v1.spec.data
    st, out = await post(client, "/v1/stacks/app/deploy", body(pw=b"pw2"))
    assert st == 200
    sec = next(e for e in out["plan"]["entries"] if e["kind"] == "secret")
    assert sec["action"] == "update" and sec["object"] != v1.spec.name
    web = m.store.view().get_by_name("services", "app_web")
    assert web.spec.task.container.secrets[0].secret_id == sec["id"] and web.spec_version == 2
    # v1 stays while web could roll back to it; the next content change removes it.
    assert names(m, "secrets") == sorted([v1.spec.name, sec["object"]])
    st, out = await post(client, "/v1/stacks/app/deploy", body(pw=b"pw3"))
    assert st == 200
    assert v1.spec.name not in names(m, "secrets") and len(names(m, "secrets")) == 2
    # The API never shows a payload.
    r = await client.get("/v1/stacks/app")
    assert "pw3" not in await r.text() and base64.b64encode(b"pw3").decode() not in await r.text()


async def test_images_are_resolved_as_asked(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    st, out = await post(client, "/v1/stacks/app/deploy", body(pin=""))
    assert st == 200
    pinned = "docker.io/library/busybox:latest@sha256:" + "7" * 64
    assert m.store.view().get_by_name("services", "app_web").spec.task.container.image == pinned
    assert client.resolved == ["busybox"]  # type: ignore[attr-defined]
    st, plan = await post(client, "/v1/stacks/app/plan", body(pin="", resolve_image="never"))
    assert not plan["changed"] and client.resolved == ["busybox"]  # type: ignore[attr-defined]
    st, plan = await post(client, "/v1/stacks/app/plan", body(pin="", resolve_image="changed"))
    assert not plan["changed"] and client.resolved == ["busybox"]  # type: ignore[attr-defined]
    text = TEXT.replace("busybox{pin}", "nosuch{pin}", 1)
    req = request(text.format(pin="", extra=""), files={"pw.txt": b"pw1"}, stack="app").model_dump(mode="json")
    st, plan = await post(client, "/v1/stacks/app/plan", req)
    assert st == 200 and any("image nosuch could not be resolved" in w for w in plan["warnings"])
    web = next(e for e in plan["entries"] if e["name"] == "app_web")
    assert ("task.container.image", pinned, "nosuch") in [(c["path"], c["old"], c["new"]) for c in web["changes"]]


async def test_remove_a_stack(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    assert (await post(client, "/v1/stacks/app/deploy", body()))[0] == 200
    r = await client.delete("/v1/stacks/app")
    assert r.status == 200
    out = await r.json()
    assert sorted((e["kind"], e["name"]) for e in out["entries"]) == [
        ("network", "app_back"), ("network", "app_default"), ("secret", "app_pw"),
        ("service", "app_api"), ("service", "app_web")]
    assert not out["removing"]  # no task used anything: all gone in one entry
    assert names(m, "services") == [] and names(m, "secrets") == [] and names(m, "networks") == ["ingress"]
    assert names(m, "stacks") == []
    r = await client.delete("/v1/stacks/app")
    assert r.status == 404 and "no stack named app" in (await r.json())["error"]["message"]


async def test_racing_deploys_are_decided_by_the_transaction(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    arrived = 0
    go = asyncio.Event()

    async def slow_registry(ref: str) -> str:
        # Both deploys have read the store (the stack at version 0) before
        # either writes: only the transaction can tell them apart.
        nonlocal arrived
        arrived += 1
        if arrived == 2:
            go.set()
        await go.wait()
        return f"docker.io/library/{ref}:latest@sha256:" + "7" * 64

    racing = await serve(lambda: ManagerContext(m.raft, m.store, lambda: KEY, slow_registry))
    try:
        a, b = await asyncio.gather(post(racing, "/v1/stacks/app/deploy", body(pin="", check_version=0)),
                                    post(racing, "/v1/stacks/app/deploy", body(pin="", check_version=0)))
    finally:
        await racing.close()
    assert sorted([a[0], b[0]]) == [200, 409], (a, b)
    lost = a[1] if a[0] == 409 else b[1]
    assert "stack app is at version 1, not 0" in lost["error"]["message"]
    assert m.store.view().get_by_name("stacks", "app").version == 1
    assert names(m, "services") == ["app_api", "app_web"] and len(names(m, "secrets")) == 1
