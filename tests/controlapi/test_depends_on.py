"""`depends_on` through the control API: a dependency on itself, on a name
no service has, or one closing a cycle is a 400 naming the field, and
nothing is written; `check_depends_on` is the same check for a stack's
services written in one transaction."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from api.objects import ServiceSpec
from manager.controlapi.common import ManagerContext
from manager.controlapi.errors import HTTPError
from manager.controlapi.services import check_depends_on, stored_specs


def spec(name: str, *deps: Any) -> dict[str, Any]:
    return {"name": name, "task": {"container": {"image": "busybox@sha256:" + "0" * 64}}, "depends_on": list(deps)}


async def post(client: TestClient, path: str, body: Any) -> tuple[int, Any]:
    r = await client.post(path, json=body)
    return r.status, await r.json()


async def test_create_and_update_check_the_names_and_cycles(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    st, body = await post(client, "/v1/services", spec("web", "db"))
    assert st == 400, body
    assert body["error"] == {"code": "invalid_argument", "field": "depends_on[0].service", "service": "web",
                             "message": 'depends_on[0].service: no service named "db"'}
    st, body = await post(client, "/v1/services", spec("web", {"service": "web"}))
    assert st == 400 and body["error"]["message"] == "depends_on[0].service: a service cannot depend on itself"
    assert m.store.view().list("services") == []

    assert (await post(client, "/v1/services", spec("db")))[0] == 201
    st, web = await post(client, "/v1/services", spec("web", {"service": "db", "condition": "service_healthy"}))
    assert st == 201 and web["spec"]["depends_on"] == [{"service": "db", "condition": "service_healthy"}]
    st, body = await post(client, "/v1/services", spec("web2", "dbb"))
    assert st == 400 and body["error"]["message"].endswith('no service named "dbb" (did you mean "db"?)')

    # db depending on web closes a cycle: refused, db unchanged.
    db = m.store.view().get_by_name("services", "db")
    st, body = await post(client, f"/v1/services/{db.id}/update", {"spec": spec("db", "cache", "web")})
    assert st == 400 and "cache" in body["error"]["message"]
    st, body = await post(client, f"/v1/services/{db.id}/update", {"spec": spec("db", "web")})
    assert st == 400, body
    assert body["error"]["message"] == "depends_on[0].service: depends_on forms a cycle: db -> web -> db"
    assert m.store.view().get_by_name("services", "db").meta.version == db.meta.version
    # A dependency only on a service that exists, without a cycle, is fine.
    assert (await post(client, "/v1/services", spec("cache")))[0] == 201
    st, body = await post(client, f"/v1/services/{db.id}/update", {"spec": spec("db", "cache")})
    assert st == 200 and body["spec"]["depends_on"] == [{"service": "cache", "condition": "service_started"}]
    # Bad conditions are refused by the model, naming the field.
    st, body = await post(client, "/v1/services", spec("x", {"service": "db", "condition": "ready"}))
    assert st == 400 and body["error"]["message"].startswith("service: depends_on[0].condition: must be one of")


async def test_check_depends_on_takes_a_whole_stack(api: tuple[TestClient, ManagerContext]) -> None:
    client, m = api
    assert (await post(client, "/v1/services", spec("db")))[0] == 201

    def specs(*ss: dict[str, Any]) -> dict[str, ServiceSpec]:
        return {s["name"]: ServiceSpec.model_validate(s) for s in ss}

    # Names created in the same transaction are known, stored ones too.
    check_depends_on(specs(spec("s_front", "s_back"), spec("s_back", "db")), stored_specs(m.store))
    with pytest.raises(HTTPError) as e:
        check_depends_on(specs(spec("s_a", "s_b"), spec("s_b", "s_a")), stored_specs(m.store))
    assert e.value.status == 400
    assert e.value.message == 'service "s_a": depends_on[0].service: depends_on forms a cycle: s_a -> s_b -> s_a'
    assert e.value.extra == {"field": "depends_on[0].service", "service": "s_a"}
