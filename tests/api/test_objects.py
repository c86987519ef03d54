"""Models and validation: field paths in errors, limits, immutability, task states."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.errors import ValidationError
from api.objects import (
    Config,
    ConfigSpec,
    ContainerSpec,
    IPAMConfig,
    Meta,
    NetworkSpec,
    Node,
    Secret,
    SecretSpec,
    Task,
    TaskSpec,
    TaskState,
    evolve,
)
from api.validation import MAX_DATA_SIZE


def errors_of(cls: type, data: dict, *, json: bool = False) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as ei:
        (codec.from_json if json else codec.from_dict)(cls, data)
    return ei.value.errors


def test_bad_name_error_names_field_rule_and_input() -> None:
    errs = errors_of(Config, {"id": "c1", "spec": {"name": "bad name"}})
    assert len(errs) == 1
    path, msg = errs[0]
    assert path == "spec.name"
    assert "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*" in msg
    assert msg.endswith('(got "bad name")')


@pytest.mark.parametrize(
    "name,ok",
    [
        ("a", True),
        ("A0_.-z", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("-lead", False),
        (".lead", False),
        ("has space", False),
        ("slash/no", False),
        ("ünï", False),
    ],
)
def test_name_rule(name: str, ok: bool) -> None:
    if ok:
        assert ConfigSpec(name=name).name == name
    else:
        with pytest.raises(PydanticValidationError):
            ConfigSpec(name=name)


def test_long_name_message_gives_length() -> None:
    [(path, msg)] = errors_of(ConfigSpec, {"name": "x" * 70})
    assert path == "name" and msg == "must be at most 64 characters, got 70"


def test_several_errors_all_reported_with_paths() -> None:
    errs = errors_of(
        Config,
        {"id": "", "spec": {"name": "", "labels": {"": "v"}, "data": 5}, "bogus": 1},
    )
    paths = [p for p, _ in errs]
    assert set(paths) == {"id", "spec.name", "spec.labels", "spec.data", "bogus"}
    msgs = dict(errs)
    assert "label keys must not be empty" in msgs["spec.labels"]
    assert msgs["bogus"].startswith("unknown field")
    s = str(ValidationError(errs))
    assert "spec.name: must not be empty" in s and "; " in s


def test_nested_list_paths() -> None:
    errs = errors_of(
        NetworkSpec, {"name": "n", "ipam": [{"subnet": "10.0.0.0/24"}, {"subnet": "nope"}]}
    )
    assert errs[0][0] == "ipam[1].subnet"
    assert "CIDR" in errs[0][1]


def test_prefix_and_what() -> None:
    with pytest.raises(PydanticValidationError) as ei:
        ConfigSpec(name="bad name")
    ve = ValidationError.from_pydantic(ei.value, prefix="spec", what="config create")
    assert ve.fields() == ["spec.name"]
    assert str(ve).startswith("config create: spec.name: must match")


def test_data_limit_is_500_kib() -> None:
    assert ConfigSpec(name="a", data=b"x" * MAX_DATA_SIZE).data == b"x" * 512000
    [(path, msg)] = errors_of(ConfigSpec, {"name": "a", "data": b"x" * (MAX_DATA_SIZE + 1)})
    assert path == "data"
    assert msg == "must be at most 512000 bytes (500 KiB), got 512001 bytes"


def test_secret_data_never_echoed_in_errors() -> None:
    big = b"topsecret" * 60000
    for cls_data, as_json in (
        (big, False),
        (base64.b64encode(big).decode(), True),
        (12345, False),
    ):
        with pytest.raises(ValidationError) as ei:
            (codec.from_json if as_json else codec.from_dict)(
                Secret, {"id": "s", "spec": {"name": "s", "data": cls_data}}
            )
        text = str(ei.value)
        assert "spec.data" in text
        assert "topsecret" not in text and "dG9wc2VjcmV0" not in text
        assert "12345" not in text


def test_secret_data_required_nonempty() -> None:
    [(path, msg)] = errors_of(SecretSpec, {"name": "s", "data": b""})
    assert path == "data" and "must not be empty" in msg
    [(path, msg)] = errors_of(SecretSpec, {"name": "s"})
    assert (path, msg) == ("data", "is required")


def test_str_is_not_silently_bytes_outside_json() -> None:
    [(path, msg)] = errors_of(ConfigSpec, {"name": "a", "data": "text"})
    assert path == "data" and "must be bytes" in msg
    assert codec.from_json(ConfigSpec, {"name": "a", "data": "dGV4dA=="}).data == b"text"
    [(path, msg)] = errors_of(ConfigSpec, {"name": "a", "data": "%%%"}, json=True)
    assert path == "data" and "base64" in msg


def test_objects_are_immutable_including_dicts_and_lists() -> None:
    c = Config(id="c", spec=ConfigSpec(name="a", labels={"k": "v"}))
    with pytest.raises(PydanticValidationError):
        c.id = "d"  # type: ignore[misc]
    with pytest.raises(PydanticValidationError):
        c.spec.name = "b"  # type: ignore[misc]
    with pytest.raises(TypeError):
        c.spec.labels["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        c.spec.labels.update(x="y")
    cs = ContainerSpec(image="busybox", command=["sh", "-c", "true"])
    assert cs.command == ("sh", "-c", "true")
    with pytest.raises(AttributeError):
        cs.command.append("x")  # type: ignore[attr-defined]
    assert hash(c) == hash(Config(id="c", spec=ConfigSpec(name="a", labels={"k": "v"})))


def test_evolve_nested() -> None:
    t = Task(id="t", spec=TaskSpec(container=ContainerSpec(image="i")))
    t2 = evolve(t, node_id="n1", status__state=TaskState.RUNNING, status__message="up")
    assert (t2.node_id, t2.status.state, t2.status.message) == ("n1", TaskState.RUNNING, "up")
    assert t.node_id == "" and t.status.state is TaskState.NEW
    with pytest.raises(AttributeError, match="no field 'nope'"):
        evolve(t, nope=1)


def test_task_states_ordered_as_swarm() -> None:
    order = [
        "NEW", "PENDING", "ASSIGNED", "ACCEPTED", "PREPARING", "READY", "STARTING",
        "RUNNING", "COMPLETE", "SHUTDOWN", "FAILED", "REJECTED", "REMOVE", "ORPHANED",
    ]
    assert [s.name for s in TaskState] == order
    assert list(TaskState) == sorted(TaskState)
    assert TaskState.RUNNING.value == 512 and TaskState.ORPHANED.value == 832
    assert not TaskState.RUNNING.terminal and TaskState.FAILED.terminal


def test_task_state_accepts_names_and_numbers() -> None:
    base = {"id": "t", "spec": {"container": {"image": "i"}}}
    assert codec.from_json(Task, {**base, "desired_state": "shutdown"}).desired_state is TaskState.SHUTDOWN
    assert codec.from_dict(Task, {**base, "desired_state": 640}).desired_state is TaskState.SHUTDOWN
    [(path, msg)] = errors_of(Task, {**base, "desired_state": "sleeping"})
    assert path == "desired_state" and "new, pending" in msg and '(got "sleeping")' in msg
    errors_of(Task, {**base, "desired_state": 513})


def test_meta_defaults_and_node_defaults() -> None:
    assert Meta() == Meta(version=0, created_at=0.0, updated_at=0.0)
    n = Node(id="n")
    assert n.spec.name == "" and n.role == "worker" and n.status.state == "unknown"
    with pytest.raises(PydanticValidationError):
        IPAMConfig(subnet="10.0.0.0/24", gateway="x")
