"""The managers check a service's privileges whatever sent the spec: a bad
capability, device, sysctl or ulimit is a 400 naming the field and writes
nothing; privileged is stored as given and shown by inspect."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from manager.controlapi.common import ManagerContext


def spec(name: str, **container: Any) -> dict[str, Any]:
    return {"name": name, "task": {"container": {"image": "busybox@sha256:" + "0" * 64, **container}}}


@pytest.mark.parametrize("container, where, message", [
    ({"cap_add": ["NET_ADMN"]}, "task.container.cap_add", "did you mean NET_ADMIN?"),
    ({"devices": [{"host": "dev/fuse"}]}, "task.container.devices[0]", "device path on the host must be absolute"),
    ({"sysctls": {"kernel.pid_max": "9"}}, "task.container.sysctls", "kernel.pid_max is not allowed"),
    ({"ulimits": [{"name": "nofile", "soft": 2, "hard": 1}]}, "task.container.ulimits[0]",
     "soft limit (2) exceeds the hard limit (1)"),
])
async def test_bad_privileges_are_refused_naming_the_field(api: tuple[TestClient, ManagerContext],
                                                           container: dict[str, Any], where: str,
                                                           message: str) -> None:
    client, m = api
    version = m.store.index
    r = await client.post("/v1/services", json=spec("bad", **container))
    body = await r.json()
    assert r.status == 400, body
    assert where in body["error"]["message"] and message in body["error"]["message"], body
    assert m.store.index == version


async def test_privileged_is_stored_and_shown(api: tuple[TestClient, ManagerContext]) -> None:
    client, _ = api
    r = await client.post("/v1/services", json=spec(
        "priv", privileged=True, init=True, cap_add=["NET_ADMIN"], devices=[{"host": "/dev/fuse"}],
        sysctls={"net.core.somaxconn": "1024"}, ulimits=[{"name": "nofile", "soft": 10, "hard": 20}]))
    assert r.status == 201, await r.json()
    c = (await (await client.get("/v1/services/priv")).json())["spec"]["task"]["container"]
    assert c["privileged"] is True and c["init"] is True and c["cap_add"] == ["NET_ADMIN"]
    assert c["devices"] == [{"host": "/dev/fuse", "container": "", "permissions": "rwm"}]
    assert c["sysctls"] == {"net.core.somaxconn": "1024"}
    assert c["ulimits"] == [{"name": "nofile", "soft": 10, "hard": 20}]
