"""The exec frames of the session protocol: they cross the wire intact,
only in their direction, and bad ones are refused naming the field."""

from __future__ import annotations

import pytest

from api.session import (
    AGENT_FRAMES,
    EXEC_CHUNK,
    MANAGER_FRAMES,
    ExecCancel,
    ExecExit,
    ExecInput,
    ExecInputAck,
    ExecOutput,
    ExecOutputAck,
    ExecResize,
    ExecStart,
    FrameError,
    decode,
    encode,
)

TO_AGENT = [ExecStart(id="x", task="t", argv=("sh", "-c", "exit 3"), tty=True, stdin=True, user="1000:1000",
                      env=("A=1",), workdir="/tmp", width=120, height=40),
            ExecInput(id="x", data=b"\x00\xff\x03", eof=True), ExecResize(id="x", width=1, height=65535),
            ExecOutputAck(id="x", n=65536), ExecCancel(id="x")]
TO_MANAGER = [ExecOutput(id="x", stream=2, data=b"\x1b[0m\x00"), ExecInputAck(id="x", n=3),
              ExecExit(id="x", code=137), ExecExit(id="x", error="task t has no container on this node")]


@pytest.mark.parametrize("frame", TO_AGENT + TO_MANAGER, ids=lambda f: f.KIND)
def test_exec_frames_round_trip(frame: object) -> None:
    assert decode(encode(frame)) == frame  # type: ignore[arg-type]


def test_exec_frames_only_in_their_direction() -> None:
    for f in TO_AGENT:
        assert decode(encode(f), MANAGER_FRAMES) == f
        with pytest.raises(FrameError, match="not accepted in this direction"):
            decode(encode(f), AGENT_FRAMES)
    for f in TO_MANAGER:
        assert decode(encode(f), AGENT_FRAMES) == f
        with pytest.raises(FrameError, match="not accepted in this direction"):
            decode(encode(f), MANAGER_FRAMES)


@pytest.mark.parametrize("fields,where", [
    ({"t": "exec_start", "id": "x", "task": "t", "argv": []}, "argv"),
    ({"t": "exec_start", "id": "x", "task": "t", "argv": [""]}, "argv"),
    ({"t": "exec_start", "id": "", "task": "t", "argv": ["ls"]}, "id"),
    ({"t": "exec_start", "id": "x", "task": "t", "argv": ["ls"], "width": 0}, "width"),
    ({"t": "exec_out", "id": "x", "stream": 3, "data": b""}, "stream"),
    ({"t": "exec_out", "id": "x", "data": b"x" * (EXEC_CHUNK + 1)}, "data"),
    ({"t": "exec_in", "id": "x", "data": 7}, "data"),
    ({"t": "exec_out_ack", "id": "x", "n": -1}, "n"),
])
def test_bad_exec_frames_name_the_field(fields: dict[str, object], where: str) -> None:
    import msgpack

    with pytest.raises(FrameError) as e:
        decode(msgpack.packb(fields, use_bin_type=True))
    assert e.value.kind == fields["t"] and any(p.startswith(where) for p, _ in e.value.errors), e.value.errors
