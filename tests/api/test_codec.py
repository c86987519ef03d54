"""Codecs: msgpack dicts keep bytes, JSON dicts carry base64, secrets are redacted."""

from __future__ import annotations

import base64
import json
import re

import msgpack
import pytest

from api import codec
from api.errors import ValidationError
from api.objects import (
    TABLE_MODELS,
    Cluster,
    Config,
    ConfigReference,
    ConfigSpec,
    ContainerSpec,
    IPAMConfig,
    Meta,
    Network,
    NetworkSpec,
    Node,
    NodeSpec,
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
)

BLOB = bytes(range(256))


def samples() -> list:
    ts = TaskSpec(
        container=ContainerSpec(
            image="busybox:1",
            command=("sh",),
            env=("A=1",),
            secrets=(SecretReference(secret_id="s1", secret_name="pw", target="pw"),),
            configs=(ConfigReference(config_id="c1", config_name="cf", target="/etc/cf"),),
        ),
        networks=("net1",),
    )
    meta = Meta(version=7, created_at=1.5, updated_at=2.25)
    return [
        Config(id="c1", meta=meta, spec=ConfigSpec(name="cf", labels={"a": "b"}, data=BLOB)),
        Secret(id="s1", meta=meta, spec=SecretSpec(name="pw", data=b"hunter2\x00")),
        Node(id="n1", spec=NodeSpec(name="n1", labels={"zone": "a"}, role="manager")),
        Service(id="v1", meta=meta, spec=ServiceSpec(name="web", task=ts, replicas=3)),
        Task(
            id="t1",
            service_id="v1",
            slot=2,
            spec=ts,
            status=TaskStatus(state=TaskState.FAILED, exit_code=3),
        ),
        Network(id="w1", spec=NetworkSpec(name="net", ipam=(IPAMConfig(subnet="10.0.9.0/24"),))),
        Cluster(id="k1"),
    ]


@pytest.mark.parametrize("obj", samples(), ids=lambda o: type(o).__name__)
def test_msgpack_round_trip(obj) -> None:
    data = codec.packb(obj)
    assert codec.unpackb(type(obj), data) == obj
    d = msgpack.unpackb(data, raw=False)
    assert codec.from_dict(type(obj), d) == obj


@pytest.mark.parametrize(
    "obj", [o for o in samples() if not isinstance(o, Secret)], ids=lambda o: type(o).__name__
)
def test_json_round_trip(obj) -> None:
    j = codec.to_json(obj)
    text = json.dumps(j)  # really JSON-ready
    assert codec.from_json(type(obj), json.loads(text)) == obj


def test_bytes_stay_bytes_in_msgpack_and_base64_in_json() -> None:
    c = samples()[0]
    assert codec.to_dict(c)["spec"]["data"] == BLOB
    j = codec.to_json(c)
    assert j["spec"]["data"] == base64.b64encode(BLOB).decode()
    # standard alphabet (the CLI decodes with b64decode)
    assert base64.b64decode(j["spec"]["data"], validate=True) == BLOB


def test_task_state_json_name_msgpack_number() -> None:
    t = next(o for o in samples() if isinstance(o, Task))
    assert codec.to_json(t)["status"]["state"] == "failed"
    assert codec.to_json(t)["desired_state"] == "running"
    assert msgpack.unpackb(codec.packb(t))["status"]["state"] == 704


def test_secret_redaction() -> None:
    s = next(o for o in samples() if isinstance(o, Secret))
    for out in (s.public(), codec.to_json(s)):
        assert "data" not in out["spec"]
        assert out["spec"]["name"] == "pw" and out["id"] == "s1"
        assert "hunter2" not in json.dumps(out)
        assert base64.b64encode(b"hunter2\x00").decode() not in json.dumps(out)
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    # inside the cluster the data is kept
    assert codec.to_dict(s)["spec"]["data"] == b"hunter2\x00"


def test_new_id_shape_and_uniqueness() -> None:
    ids = {codec.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for i in ids:
        assert re.fullmatch(r"[0-9a-z]{25}", i)


def test_unpack_garbage_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="not valid msgpack"):
        codec.unpackb(Config, b"\xc1\xc1")
    with pytest.raises(ValidationError, match="must be an object"):
        codec.unpackb(Config, msgpack.packb([1, 2]))


def test_every_table_has_a_model() -> None:
    assert set(TABLE_MODELS) == {
        "nodes", "services", "tasks", "networks", "secrets", "configs", "clusters", "stacks",
    }


def test_one_json_schema_per_model_for_requests_and_responses() -> None:
    # The control API's OpenAPI document refers to "#/components/schemas/X"
    # for request bodies and responses alike; pydantic splits a model into
    # X-Input/X-Output when the two modes differ.
    from pydantic.json_schema import models_json_schema

    _, schema = models_json_schema(
        [(m, mode) for m in TABLE_MODELS.values() for mode in ("validation", "serialization")]
    )
    names = set(schema["$defs"])
    assert not {n for n in names if n.endswith(("-Input", "-Output"))}, names
    assert set(TABLE_MODELS_NAMES) <= names
    spec = schema["$defs"]["ConfigSpec"]["properties"]
    assert spec["data"]["contentEncoding"] == "base64"
    assert spec["name"]["maxLength"] == 64
    assert schema["$defs"]["TaskStatus"]["properties"]["state"]["default"] == "new"


TABLE_MODELS_NAMES = [m.__name__ for m in TABLE_MODELS.values()]
