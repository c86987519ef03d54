"""The agent <-> manager session protocol: one validated model per frame.

An agent keeps one websocket to the leader's dispatcher (`SESSION_PATH`,
mutual TLS). Every websocket message is one frame: a msgpack map whose
`"t"` key names the frame kind and whose other keys are the frame's fields.
`encode(frame)` turns a frame into those bytes and `decode(data)` back,
validating every field; a bad frame raises `FrameError`, which names the
frame kind and the field path.

Frames, agent -> manager:

- `Register`: first frame of a session (node description, address);
- `Heartbeat`: liveness, every period;
- `StatusBatch`: task status reports;
- `LogLines`, `LogEnd`: a log stream the manager asked for;
- `ExecOutput`, `ExecInputAck`, `ExecExit`: a process run for `orch service exec`.

Frames, manager -> agent:

- `SessionStarted`: answer to `Register` (session id, period, managers);
- `Redirect`: this manager is not the leader, go there; `Close`: refused or
  ended, with the reason (the websocket closes after either);
- `HeartbeatAck`: answer to `Heartbeat`, with the period and the role the
  cluster wants the node to have (promotion/demotion reach it this way);
- `AssignmentsFull`: the node's whole assignment set, once per session;
  `AssignmentChanges`: what changed in it since the previous frame;
- `LogRequest`, `LogCancel`: start and stop a log stream;
- `ExecStart`, `ExecInput`, `ExecResize`, `ExecOutputAck`, `ExecCancel`:
  run a process in a task's container and drive it (output is flow
  controlled: at most `EXEC_WINDOW` bytes unacknowledged).

Assignments are lists of changes, one model per kind (`TaskUpdate`,
`TaskRemove`, `SecretUpdate`, ...), told apart by their `op` field: a new
kind of assignment (networks, endpoint tables) is a new pair of change
models added to the unions, not a new frame. The full set is made of the
update kinds only; the agent replaces what it holds with it.

Objects travel as the api/ models (`Task`, `Secret`, `Config`); a secret's
`spec.data` is its plaintext here (opened by the dispatcher for the one
node whose tasks use it), never the sealed form kept in the store.

Cost: pydantic validation of the hot frames is cheap enough to keep one
kind of model for all frames (measured on the development machine: a
heartbeat decodes in ~3 us and an ack encodes in ~6 us, so 1,000 nodes at a
5 s period cost the manager ~0.2% of a core in frame handling).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgpack
from pydantic import Field, field_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from .errors import ValidationError, show_value
from .objects import Config, Model, Network, NodeDescription, NodeRole, Secret, Task
from .objects import TaskStateField as _TaskStateField

__all__ = [
    "SESSION_PATH",
    "MAX_FRAME",
    "Frame",
    "FrameError",
    "encode",
    "decode",
    "Register",
    "Heartbeat",
    "StatusUpdate",
    "StatusBatch",
    "LogLines",
    "LogEnd",
    "SessionStarted",
    "Redirect",
    "Close",
    "HeartbeatAck",
    "TaskUpdate",
    "TaskRemove",
    "SecretUpdate",
    "SecretRemove",
    "ConfigUpdate",
    "ConfigRemove",
    "Update",
    "Change",
    "AssignmentsFull",
    "AssignmentChanges",
    "LogRequest",
    "LogCancel",
    "AttachRequest",
    "AttachResult",
    "NetworkUpdate",
    "NetworkRemove",
    "Endpoint",
    "EndpointUpdate",
    "EndpointRemove",
    "ExecStart",
    "ExecInput",
    "ExecResize",
    "ExecOutputAck",
    "ExecCancel",
    "ExecOutput",
    "ExecInputAck",
    "ExecExit",
    "EXEC_WINDOW",
    "EXEC_CHUNK",
    "EXEC_AGENT_FRAMES",
    "EXEC_MANAGER_FRAMES",
    "AGENT_FRAMES",
    "MANAGER_FRAMES",
    "FRAMES",
]

SESSION_PATH = "/v1/dispatcher/session"
MAX_FRAME = 4 << 20  # bytes; both ends refuse larger websocket messages


class Frame(Model):
    """Base of every frame; `KIND` is its `"t"` on the wire."""

    KIND: ClassVar[str]


class FrameError(ValidationError):
    """Bytes that are not a valid frame. `kind` is the frame kind when it
    could be read ("" otherwise); `errors` has (field path, message) pairs."""

    def __init__(self, kind: str, errors: list[tuple[str, str]]) -> None:
        self.kind = kind
        super().__init__(errors, what=f"session frame {kind!r}" if kind else "session frame")


# -- agent -> manager -------------------------------------------------------------


class Register(Frame):
    """First frame of a session. `description` None keeps the one the
    manager has (the agent could not describe itself); `addr` is the address
    other nodes reach this one at ("" = the connection's peer address)."""

    KIND: ClassVar[str] = "register"
    description: NodeDescription | None = None
    addr: str = ""


class Heartbeat(Frame):
    KIND: ClassVar[str] = "hb"


class StatusUpdate(Model):
    """One task's observed state, as the agent decided it. The manager keeps
    forward moves only, from the node the task is assigned to."""

    id: str = Field(min_length=1)
    state: _TaskStateField
    message: str = ""
    err: str = ""
    timestamp: float = 0.0  # unix seconds; 0 = when the manager received it
    exit_code: int | None = None
    container_id: str = ""


class StatusBatch(Frame):
    KIND: ClassVar[str] = "status"
    updates: tuple[StatusUpdate, ...]


LogLine = tuple[str, str, str]  # (RFC 3339 timestamp, "stdout" | "stderr", text)


class LogLines(Frame):
    """Lines of one task's log for request `id`."""

    KIND: ClassVar[str] = "log"
    id: str
    task: str
    lines: tuple[LogLine, ...]


class LogEnd(Frame):
    """The end of one task's log stream for request `id`; `error` says why
    there is none ("" when it simply ended)."""

    KIND: ClassVar[str] = "log_end"
    id: str
    task: str
    error: str = ""


# -- manager -> agent -------------------------------------------------------------


class SessionStarted(Frame):
    """The leader accepted `Register`. `period`: heartbeat period (s);
    `managers`: manager addresses to try when the session ends."""

    KIND: ClassVar[str] = "session"
    session_id: str = Field(min_length=1)
    node_id: str = Field(min_length=1)
    period: float = Field(gt=0)
    managers: tuple[str, ...] = ()


class Redirect(Frame):
    """This manager is not the leader; `leader` is its address ("" = not known yet)."""

    KIND: ClassVar[str] = "redirect"
    leader: str = ""


class Close(Frame):
    """The session is refused or ended; `message` says why and what to do."""

    KIND: ClassVar[str] = "close"
    message: str


class HeartbeatAck(Frame):
    """`period`: the heartbeat period (s) from now on; `role`: the role the
    cluster wants this node to have (None when the node is not in the store)."""

    KIND: ClassVar[str] = "hb_ack"
    period: float = Field(gt=0)
    role: NodeRole | None = None


class TaskUpdate(Model):
    """A task the node must know, new or changed. `service_name` names its
    container; the task's status is the manager's view when it was sent."""

    op: Literal["task_update"] = "task_update"
    task: Task
    service_name: str = ""


class TaskRemove(Model):
    """The node no longer has to know task `id`: its container goes."""

    op: Literal["task_remove"] = "task_remove"
    id: str


class SecretUpdate(Model):
    """A secret some assigned task uses; `secret.spec.data` is plaintext."""

    op: Literal["secret_update"] = "secret_update"
    secret: Secret


class SecretRemove(Model):
    op: Literal["secret_remove"] = "secret_remove"
    id: str


class ConfigUpdate(Model):
    op: Literal["config_update"] = "config_update"
    config: Config


class ConfigRemove(Model):
    op: Literal["config_remove"] = "config_remove"
    id: str


class NetworkUpdate(Model):
    """A network some assigned task is on (with its allocation: VNI,
    subnet, gateway). Its endpoint table follows as `EndpointUpdate`s."""

    op: Literal["network_update"] = "network_update"
    network: Network


class NetworkRemove(Model):
    """No assigned task is on network `id` any more: its sandbox and its
    endpoint table go."""

    op: Literal["network_remove"] = "network_remove"
    id: str


class PublishedPort(Model):
    """A port a service publishes (as allocated: `published` is never 0).
    ingress: every node accepts on `published` and balances over the
    service's serving tasks; host: only the node running the task does,
    straight to it."""

    protocol: Literal["tcp", "udp"] = "tcp"
    target: int = Field(ge=1, le=65535)
    published: int = Field(ge=1, le=65535)
    mode: Literal["ingress", "host"] = "ingress"


class Endpoint(Model):
    """One task's place on a network, as every node on that network learns
    it: where it runs (`node_id`, `node_addr` = the node's underlay IP) and
    its address; the names a resolver answers for it come from the service
    name, slot and aliases.

    Load balancing: `serving` says the task is RUNNING (healthy, when it
    has a health check) and still wanted: only serving entries are
    backends of the service's virtual IP `vip` (its address on this
    network, "" in dnsrr mode) and answer `tasks.NAME`. Entries of tasks
    about to stop leave that set before the task is stopped. `ports`: the
    service's published ports, on entries of the ingress network only."""

    network_id: str
    task_id: str
    service_id: str = ""
    service_name: str = ""
    slot: int = 0
    node_id: str
    node_addr: str
    address: str  # "10.0.1.5/24"
    aliases: tuple[str, ...] = ()
    serving: bool = False
    vip: str = ""  # "10.0.1.2/24"
    ports: tuple[PublishedPort, ...] = ()


class EndpointUpdate(Model):
    op: Literal["endpoint_update"] = "endpoint_update"
    endpoint: Endpoint


class EndpointRemove(Model):
    op: Literal["endpoint_remove"] = "endpoint_remove"
    network_id: str
    task_id: str


Update = Annotated[TaskUpdate | SecretUpdate | ConfigUpdate | NetworkUpdate | EndpointUpdate,
                   Field(discriminator="op")]
Change = Annotated[
    TaskUpdate | TaskRemove | SecretUpdate | SecretRemove | ConfigUpdate | ConfigRemove
    | NetworkUpdate | NetworkRemove | EndpointUpdate | EndpointRemove,
    Field(discriminator="op"),
]


class AssignmentsFull(Frame):
    """The node's whole assignment set: the agent drops whatever it held.
    Sent once per session, first thing after `SessionStarted`."""

    KIND: ClassVar[str] = "assign_full"
    changes: tuple[Update, ...] = ()


class AssignmentChanges(Frame):
    """What changed in the node's set since the previous assignments frame,
    applied in order. Never empty: no change, no frame."""

    KIND: ClassVar[str] = "assign_changes"
    changes: tuple[Change, ...]

    @field_validator("changes")
    @classmethod
    def _not_empty(cls, v: tuple[Any, ...]) -> tuple[Any, ...]:
        if not v:
            raise PydanticCustomError("no_changes", "must list at least one change (no change, no frame)", {})
        return v


class AttachRequest(Frame):
    """Agent -> manager: put a plain container of this node (`container`,
    its name) on attachable `networks` (names or ids). Answered by an
    `AttachResult` with the same `id`."""

    KIND: ClassVar[str] = "attach"
    id: str = Field(min_length=1, max_length=64)
    container: str = Field(min_length=1, max_length=255)
    networks: tuple[str, ...] = Field(min_length=1)


class AttachResult(Frame):
    """Manager -> agent: the network attachment task made for an
    `AttachRequest` (it reaches the node as a task like any other, with its
    addresses), or why none was made."""

    KIND: ClassVar[str] = "attach_result"
    id: str
    task_id: str = ""
    error: str = ""


class LogRequest(Frame):
    """Stream the logs of `tasks` under request `id`: the last `tail` lines
    (None = all), then new lines while `follow`."""

    KIND: ClassVar[str] = "logs"
    id: str = Field(min_length=1)
    tasks: tuple[str, ...]
    follow: bool = False
    tail: int | None = Field(None, ge=0)


class LogCancel(Frame):
    KIND: ClassVar[str] = "logs_cancel"
    id: str


# -- exec (manager -> agent: start, input, resize, acks, cancel; agent -> manager: output, exit, input acks) --

EXEC_WINDOW = 1 << 20
"""Bytes of exec output an agent may have sent and not had acknowledged
(and of input a manager may have sent unacknowledged): the flow-control
window that keeps one fast process from flooding the session. Measured on
the fleet (3 netns hosts on a loaded 2-core machine), `head -c 64M` out:
256 KiB gave ~30 MiB/s, 1 MiB ~50-75 MiB/s (the ack round trip bounds it);
a heartbeat waits behind at most this much output (~20 ms)."""

EXEC_CHUNK = 64 << 10  # bytes of output or input per frame at most


class ExecStart(Frame):
    """Run `argv` in the container of task `task` under exec `id`: with a
    terminal of `width` x `height` when `tty`, with stdin when `stdin`."""

    KIND: ClassVar[str] = "exec_start"
    id: str = Field(min_length=1, max_length=64)
    task: str = Field(min_length=1, max_length=64)
    argv: tuple[str, ...] = Field(min_length=1)
    tty: bool = False
    stdin: bool = False
    user: str = ""
    env: tuple[str, ...] = ()  # "NAME=value"
    workdir: str = ""
    width: int = Field(80, ge=1, le=65535)
    height: int = Field(24, ge=1, le=65535)

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v[0]:
            raise PydanticCustomError("empty_command", "the command must not be empty", {})
        return v


class ExecInput(Frame):
    """Bytes for the process's stdin; `eof` closes it after them."""

    KIND: ClassVar[str] = "exec_in"
    id: str
    data: bytes = Field(b"", max_length=EXEC_CHUNK)
    eof: bool = False


class ExecResize(Frame):
    KIND: ClassVar[str] = "exec_resize"
    id: str
    width: int = Field(ge=1, le=65535)
    height: int = Field(ge=1, le=65535)


class ExecOutputAck(Frame):
    """The manager passed on `n` more bytes of output: the window reopens by that much."""

    KIND: ClassVar[str] = "exec_out_ack"
    id: str
    n: int = Field(ge=0)


class ExecCancel(Frame):
    """Kill the process of exec `id` (the user went away)."""

    KIND: ClassVar[str] = "exec_cancel"
    id: str


class ExecOutput(Frame):
    """Output of exec `id`; `stream` 1 = stdout (and the terminal), 2 = stderr."""

    KIND: ClassVar[str] = "exec_out"
    id: str
    stream: Literal[1, 2] = 1
    data: bytes = Field(max_length=EXEC_CHUNK)


class ExecInputAck(Frame):
    """The agent wrote `n` more bytes of input to the process."""

    KIND: ClassVar[str] = "exec_in_ack"
    id: str
    n: int = Field(ge=0)


class ExecExit(Frame):
    """Exec `id` ended: the process's `code` (128+N when killed by signal N),
    or `error` when it could not run (no such task here, not running...);
    after all of its output."""

    KIND: ClassVar[str] = "exec_exit"
    id: str
    code: int | None = None
    error: str = ""


EXEC_AGENT_FRAMES: tuple[type[Frame], ...] = (ExecOutput, ExecInputAck, ExecExit)
EXEC_MANAGER_FRAMES: tuple[type[Frame], ...] = (ExecStart, ExecInput, ExecResize, ExecOutputAck, ExecCancel)


AgentFrame = Register | Heartbeat | StatusBatch | LogLines | LogEnd | AttachRequest
ManagerFrame = (
    SessionStarted | Redirect | Close | HeartbeatAck | AssignmentsFull | AssignmentChanges | LogRequest | LogCancel
    | AttachResult
)

AGENT_FRAMES: tuple[type[Frame], ...] = (Register, Heartbeat, StatusBatch, LogLines, LogEnd, AttachRequest,
                                         *EXEC_AGENT_FRAMES)
MANAGER_FRAMES: tuple[type[Frame], ...] = (
    SessionStarted, Redirect, Close, HeartbeatAck, AssignmentsFull, AssignmentChanges, LogRequest, LogCancel,
    AttachResult, *EXEC_MANAGER_FRAMES,
)
FRAMES: dict[str, type[Frame]] = {cls.KIND: cls for cls in AGENT_FRAMES + MANAGER_FRAMES}
"""Frame kind ("t") -> frame class."""


def encode(frame: Frame) -> bytes:
    """The frame as one msgpack map: `{"t": kind, field: value, ...}`."""
    d = frame.model_dump()
    d["t"] = frame.KIND
    return msgpack.packb(d, use_bin_type=True)


def decode(data: bytes, expect: tuple[type[Frame], ...] | None = None) -> Frame:
    """Parse and validate one frame; `expect` limits the kinds accepted (a
    manager takes only `AGENT_FRAMES`, an agent only `MANAGER_FRAMES`).
    Raises `FrameError` naming the kind and the field that is wrong."""
    try:
        d: Any = msgpack.unpackb(data, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on bad bytes
        why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise FrameError("", [("", f"not valid msgpack ({why})")]) from None
    if not isinstance(d, dict):
        raise FrameError("", [("", f"must be a map with a \"t\" key (got {type(d).__name__})")])
    kind = d.pop("t", None)
    cls = FRAMES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(FRAMES))
        if kind is None:
            raise FrameError("", [("t", f"is required: the frame kind (one of: {known})")])
        shown = kind if isinstance(kind, str) and len(kind) <= 40 else show_value(kind)
        raise FrameError(shown, [("t", f"unknown frame kind (known: {known})")])
    if expect is not None and cls not in expect:
        allowed = ", ".join(c.KIND for c in expect)
        raise FrameError(kind, [("t", f"not accepted in this direction (expected one of: {allowed})")])
    try:
        return cls.model_validate(d)
    except PydanticValidationError as e:
        raise FrameError(kind, ValidationError.from_pydantic(e).errors) from None
