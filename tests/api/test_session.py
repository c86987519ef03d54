"""The session frames (api/session.py): every frame survives the wire, and
bad bytes are refused with the frame kind and the field that is wrong."""

from __future__ import annotations

import msgpack
import pytest

from api.objects import (
    Config,
    ConfigSpec,
    ContainerSpec,
    NodeDescription,
    NodeRole,
    Secret,
    SecretSpec,
    Task,
    TaskSpec,
    TaskState,
)
from api.session import (
    AttachRequest,
    AttachResult,
    AGENT_FRAMES,
    FRAMES,
    MANAGER_FRAMES,
    AssignmentChanges,
    AssignmentsFull,
    Close,
    ConfigRemove,
    ConfigUpdate,
    Frame,
    FrameError,
    Heartbeat,
    HeartbeatAck,
    LogCancel,
    LogEnd,
    LogLines,
    LogRequest,
    Redirect,
    Register,
    SecretRemove,
    SecretUpdate,
    SessionStarted,
    StatusBatch,
    StatusUpdate,
    TaskRemove,
    TaskUpdate,
    decode,
    encode,
)
from tests.api.test_session_exec import TO_AGENT, TO_MANAGER

TASK = Task(id="t1", service_id="s1", node_id="n1", slot=2, spec=TaskSpec(container=ContainerSpec(
    image="busybox@sha256:" + "a" * 64, env=("A=1",), labels={"k": "v"})))
SECRET = Secret(id="sec", spec=SecretSpec(name="pw", data=b"\x00\xffplain"))
CONFIG = Config(id="cfg", spec=ConfigSpec(name="conf", data=b"a=1"))

EXAMPLES: list[Frame] = [
    Register(description=NodeDescription(hostname="h", nano_cpus=2_000_000_000), addr="10.0.0.2"),
    Register(),
    Heartbeat(),
    StatusBatch(updates=(StatusUpdate(id="t1", state=TaskState.FAILED, err="boom", exit_code=3),
                         StatusUpdate(id="t2", state=TaskState.RUNNING, container_id="c"))),
    LogLines(id="r", task="t1", lines=(("2024-01-01T00:00:00Z", "stdout", "hi"),)),
    LogEnd(id="r", task="t1", error="gone"),
    SessionStarted(session_id="s", node_id="n1", period=5.0, managers=("10.0.0.1:4242",)),
    Redirect(leader="10.0.0.3:4242"),
    Close(message="no"),
    HeartbeatAck(period=5.0, role=NodeRole.MANAGER),
    HeartbeatAck(period=0.5),
    AssignmentsFull(changes=(SecretUpdate(secret=SECRET), ConfigUpdate(config=CONFIG),
                             TaskUpdate(task=TASK, service_name="web"))),
    AssignmentsFull(),
    AssignmentChanges(changes=(TaskUpdate(task=TASK), TaskRemove(id="t0"), SecretRemove(id="sec"),
                               ConfigRemove(id="cfg"))),
    LogRequest(id="r", tasks=("t1",), follow=True, tail=10),
    LogCancel(id="r"),
    AttachRequest(id="a1", container="probe", networks=("shared",)),
    AttachResult(id="a1", task_id="t1"),
    *TO_AGENT,
    *TO_MANAGER,
]


def test_every_frame_kind_has_an_example_and_one_direction() -> None:
    assert {type(f) for f in EXAMPLES} == set(FRAMES.values())
    assert not set(AGENT_FRAMES) & set(MANAGER_FRAMES)
    assert all("t" not in cls.model_fields for cls in FRAMES.values())  # "t" is the kind on the wire


@pytest.mark.parametrize("frame", EXAMPLES, ids=lambda f: f.KIND)
def test_frames_survive_the_wire(frame: Frame) -> None:
    data = encode(frame)
    assert msgpack.unpackb(data, raw=False)["t"] == frame.KIND
    back = decode(data, AGENT_FRAMES if type(frame) in AGENT_FRAMES else MANAGER_FRAMES)
    assert back == frame and type(back) is type(frame)


def test_typed_values_come_back_typed() -> None:
    full = decode(encode(EXAMPLES[11]))
    assert isinstance(full, AssignmentsFull)
    task = full.changes[2].task  # type: ignore[union-attr]
    assert task.desired_state is TaskState.RUNNING and task.spec.container.labels == {"k": "v"}
    assert full.changes[0].secret.spec.data == b"\x00\xffplain"  # type: ignore[union-attr]
    ack = decode(encode(HeartbeatAck(period=1, role=NodeRole.WORKER)))
    assert isinstance(ack, HeartbeatAck) and ack.role is NodeRole.WORKER


def frame_error(data: bytes, **kw: object) -> FrameError:
    with pytest.raises(FrameError) as e:
        decode(data, **kw)  # type: ignore[arg-type]
    return e.value


def test_bad_frames_name_kind_and_field() -> None:
    e = frame_error(msgpack.packb({"t": "hb_ack", "period": -1}))
    assert e.kind == "hb_ack" and e.fields() == ["period"] and "must be > 0" in str(e)
    assert str(e).startswith("session frame 'hb_ack': period:")
    e = frame_error(msgpack.packb({"t": "status", "updates": [{"id": "t1", "state": 5}]}))
    assert e.kind == "status" and e.fields() == ["updates[0].state"] and "must be a task state" in str(e)
    e = frame_error(msgpack.packb({"t": "assign_changes", "changes": [{"op": "task_update", "task": {"id": "x"}}]}))
    assert e.fields() == ["changes[0].task_update.task.spec"]
    e = frame_error(msgpack.packb({"t": "assign_changes", "changes": [{"op": "bogus_update"}]}))
    assert e.fields() == ["changes[0]"] and "bogus_update" in str(e)
    e = frame_error(msgpack.packb({"t": "assign_changes", "changes": []}))
    assert "no change, no frame" in str(e)
    e = frame_error(msgpack.packb({"t": "hb", "extra": 1}))
    assert e.fields() == ["extra"] and "unknown field" in str(e)


def test_secret_payloads_stay_out_of_errors() -> None:
    bad = {"t": "assign_full", "changes": [{"op": "secret_update",
                                            "secret": {"id": "s", "spec": {"name": "bad name!", "data": b"TOPSECRET"}}}]}
    e = frame_error(msgpack.packb(bad, use_bin_type=True))
    assert "TOPSECRET" not in str(e) and "changes[0].secret_update.secret.spec.name" in e.fields()


def test_bytes_that_are_not_a_frame() -> None:
    assert "not valid msgpack" in str(frame_error(b"\xc1"))
    assert "must be a map" in str(frame_error(msgpack.packb([1, 2])))
    e = frame_error(msgpack.packb({"period": 1}))
    assert e.kind == "" and e.fields() == ["t"] and "is required" in str(e)
    e = frame_error(msgpack.packb({"t": "nope"}))
    assert e.kind == "nope" and "unknown frame kind" in str(e) and "hb_ack" in str(e)
    e = frame_error(msgpack.packb({"t": "x" * 1000}))
    assert len(str(e)) < 400


def test_direction_is_enforced() -> None:
    e = frame_error(encode(HeartbeatAck(period=1)), expect=AGENT_FRAMES)
    assert e.kind == "hb_ack" and "not accepted in this direction" in str(e)
    e = frame_error(encode(Heartbeat()), expect=MANAGER_FRAMES)
    assert e.kind == "hb"
