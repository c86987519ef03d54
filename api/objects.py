"""The object model: one pydantic model per cluster object, and task states.

Objects are immutable (frozen models; dict fields are `FrozenDict`, list
fields are tuples). The store hands the objects it holds to every reader
without copying, so nobody can change stored state behind its back; to change
an object build a new one with `evolve()` and write it in a transaction.

Every object has `id`, `meta` (version = Raft index of its last write, set by
the store) and `spec` (desired state written by managers); objects with an
observed side have `status` (written from agents' reports). `TABLE` names the
store table that holds each kind.

Config and Secret are complete; Node, Service, Task, Network and Cluster hold
the minimal fields the first components need and grow with them. A Stack
records what one `orch stack deploy` made and owns.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, NamedTuple, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import privileges
from .validation import (
    Data,
    FrozenDict,
    Labels,
    Name,
    ObjectId,
    OptionalName,
    SecretData,
)

__all__ = [
    "UpdateStatus",
    "UpdateState",
    "UpdateOrder",
    "UpdateConfig",
    "RestartPolicy",
    "RestartCondition",
    "Resources",
    "ResourceSpec",
    "Placement",
    "FailureAction",
    "Cluster",
    "ClusterSpec",
    "Config",
    "ConfigReference",
    "ConfigSpec",
    "ContainerSpec",
    "DependsCondition",
    "DependsOnProblem",
    "ServiceDependency",
    "depends_on_problems",
    "HealthcheckSpec",
    "DeviceMapping",
    "UlimitSpec",
    "MountSpec",
    "MountType",
    "IPAMConfig",
    "AddressPoolSpec",
    "Endpoint",
    "EndpointMode",
    "EndpointSpec",
    "DYNAMIC_PORT_MAX",
    "VXLAN_PORT",
    "DYNAMIC_PORT_MIN",
    "INGRESS_ATTACHMENT",
    "PortConfig",
    "PortProtocol",
    "PublishMode",
    "held_ports",
    "port_claims",
    "port_conflict",
    "port_exclusive",
    "ports_clash",
    "trim_endpoint",
    "NetworkAllocation",
    "NetworkAttachment",
    "NetworkAttachmentConfig",
    "VirtualIP",
    "ManagerStatus",
    "Meta",
    "Model",
    "Network",
    "RootCAState",
    "NetworkSpec",
    "Node",
    "NodeAvailability",
    "NodeDescription",
    "NodeRole",
    "NodeSpec",
    "NodeState",
    "NodeStatus",
    "Secret",
    "SecretReference",
    "SecretSpec",
    "Service",
    "ServiceMode",
    "Stack",
    "StackDependency",
    "StackResource",
    "StackResourceKind",
    "StackSpec",
    "ServiceSpec",
    "StoredObject",
    "TABLE_MODELS",
    "Task",
    "TaskSpec",
    "TaskState",
    "TaskStatus",
    "evolve",
]


class Model(BaseModel):
    """Base of every model: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Meta(Model):
    """Bookkeeping the store sets on every write (callers' values are
    overwritten): `version` is the Raft index of the object's last write and
    the token for optimistic concurrency; times are unix seconds taken from
    the transaction, so every replica has the same ones."""

    version: int = Field(0, ge=0)
    created_at: float = 0.0
    updated_at: float = 0.0


def _empty_labels() -> FrozenDict[str, str]:
    return FrozenDict()


LabelsField = Annotated[Labels, Field(default_factory=_empty_labels)]


# -- Config and Secret ---------------------------------------------------------


class ConfigSpec(Model):
    name: Name
    labels: LabelsField
    data: Data = b""


class Config(Model):
    """A named blob made available to services as a file (Swarm config)."""

    TABLE: ClassVar[str] = "configs"
    id: ObjectId
    meta: Meta = Meta()
    spec: ConfigSpec


class SecretSpec(Model):
    name: Name
    labels: LabelsField
    data: SecretData

    def __repr_args__(self) -> Any:
        # Secrets end up in logs through reprs; never their payload.
        for k, v in super().__repr_args__():
            yield (k, f"<redacted {len(v)} bytes>" if k == "data" else v)


class Secret(Model):
    """A sensitive named blob. Its data goes to the nodes that run tasks using
    it, never into API responses: use `public()` (and `codec.to_json`, which
    calls it)."""

    TABLE: ClassVar[str] = "secrets"
    id: ObjectId
    meta: Meta = Meta()
    spec: SecretSpec

    def public(self) -> dict[str, Any]:
        """JSON-ready view without the payload (spec.data is left out)."""
        return self.model_dump(mode="json", exclude={"spec": {"data"}})


# -- Nodes -----------------------------------------------------------------------


class NodeRole(enum.StrEnum):
    WORKER = "worker"
    MANAGER = "manager"


class NodeAvailability(enum.StrEnum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class NodeState(enum.StrEnum):
    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


class NodeSpec(Model):
    # Optional and unique when set: the user's name for the node. The host
    # name (not unique across a fleet) lives in description.hostname.
    name: OptionalName = ""
    labels: LabelsField
    role: NodeRole = NodeRole.WORKER  # desired role
    availability: NodeAvailability = NodeAvailability.ACTIVE


class NodeDescription(Model):
    """What the node reports about itself."""

    hostname: str = ""
    os: str = ""
    arch: str = ""
    nano_cpus: int = Field(0, ge=0)
    memory_bytes: int = Field(0, ge=0)


class NodeStatus(Model):
    state: NodeState = NodeState.UNKNOWN
    message: str = ""
    addr: str = ""


class ManagerStatus(Model):
    """A manager's place in the Raft group: its member id and peer address."""

    raft_id: int = Field(0, ge=0)
    addr: str = ""


class Node(Model):
    TABLE: ClassVar[str] = "nodes"
    id: ObjectId
    meta: Meta = Meta()
    spec: NodeSpec = NodeSpec()
    role: NodeRole = NodeRole.WORKER  # observed role
    description: NodeDescription = NodeDescription()
    status: NodeStatus = NodeStatus()
    manager_status: ManagerStatus | None = None


# -- Services and tasks ------------------------------------------------------------


class TaskState(enum.IntEnum):
    """Task lifecycle, ordered (and numbered) as in Swarm: a task only moves
    forward, so `state >= TaskState.RUNNING` style comparisons are meaningful.
    JSON shows the lower-case name."""

    NEW = 0
    PENDING = 64
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def terminal(self) -> bool:
        """The task has stopped for good (or never ran)."""
        return self > TaskState.RUNNING


def _parse_task_state(v: Any) -> Any:
    if isinstance(v, TaskState):
        return v
    if isinstance(v, str):
        try:
            return TaskState[v.upper()]
        except KeyError:
            raise PydanticCustomError(
                "task_state",
                "must be a task state: {states}",
                {"states": ", ".join(s.label for s in TaskState)},
            ) from None
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return TaskState(v)
        except ValueError:
            pass
    raise PydanticCustomError(
        "task_state",
        "must be a task state: {states}",
        {"states": ", ".join(s.label for s in TaskState)},
    )


TaskStateField = Annotated[
    TaskState,
    BeforeValidator(_parse_task_state),
    PlainSerializer(lambda s: s.name.lower(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "enum": [s.name.lower() for s in TaskState]}),
]


def _state_default(state: TaskState) -> Any:
    # The schema shows states by name in requests and responses alike.
    return Field(state, json_schema_extra={"default": state.label})


class ServiceMode(enum.StrEnum):
    REPLICATED = "replicated"
    GLOBAL = "global"
    REPLICATED_JOB = "replicated-job"
    GLOBAL_JOB = "global-job"


class _FileReference(Model):
    # Where the file appears in the container (under /run/secrets or /, as
    # Swarm); "" means the object's name.
    target: str = ""
    uid: str = "0"
    gid: str = "0"
    mode: int = Field(0o444, ge=0, le=0o7777)


class SecretReference(_FileReference):
    secret_id: ObjectId
    secret_name: Name


class ConfigReference(_FileReference):
    config_id: ObjectId
    config_name: Name


class MountType(enum.StrEnum):
    BIND = "bind"
    VOLUME = "volume"
    TMPFS = "tmpfs"


class MountSpec(Model):
    """A mount, as `--mount type=...,source=...,target=...` in Docker.
    bind: source is an absolute host path; volume: source is a volume name
    (created on first use; "" = anonymous); tmpfs: no source."""

    type: MountType = MountType.VOLUME
    source: str = ""
    target: str = Field(min_length=1)
    readonly: bool = False
    tmpfs_size: int = Field(0, ge=0)  # bytes; 0 = the kernel's default (half of RAM)
    tmpfs_mode: int = Field(0o1777, ge=0, le=0o7777)

    @field_validator("target")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise PydanticCustomError("mount_target", "must be an absolute path", {})
        return v


class HealthcheckSpec(Model):
    """`test`: ["CMD", arg...], ["CMD-SHELL", "command"] or ["NONE"] (disable
    the image's). Durations in seconds; 0 = Docker's default (30 s, 30 s,
    0 s, 3 retries)."""

    test: tuple[str, ...] = Field(min_length=1)
    interval: float = Field(0.0, ge=0)
    timeout: float = Field(0.0, ge=0)
    start_period: float = Field(0.0, ge=0)
    retries: int = Field(0, ge=0)

    @field_validator("test")
    @classmethod
    def _kind(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if v[0] == "NONE":
            return v
        if v[0] not in ("CMD", "CMD-SHELL") or len(v) < 2:
            raise PydanticCustomError(
                "healthcheck_test", 'must be ["CMD", arg...], ["CMD-SHELL", "command"] or ["NONE"]', {}
            )
        return v


class DeviceMapping(Model):
    """A host device node given to the container (`--device HOST[:CONTAINER[:PERMS]]`)."""

    host: str = Field(min_length=1)  # absolute path on the node
    container: str = ""  # absolute path in the container; "" = the host path
    permissions: str = "rwm"  # read, write, mknod

    @model_validator(mode="after")
    def _valid(self) -> DeviceMapping:
        try:
            privileges.check_device(self.host, self.container, self.permissions)
        except privileges.PrivilegeError as e:
            raise PydanticCustomError("device", str(e), {}) from None
        return self

    def text(self) -> str:
        return f"{self.host}:{self.container or self.host}:{self.permissions}"


class UlimitSpec(Model):
    """A resource limit (`--ulimit NAME=SOFT[:HARD]`); -1 = unlimited."""

    name: str
    soft: int
    hard: int

    @model_validator(mode="after")
    def _valid(self) -> UlimitSpec:
        try:
            privileges.check_ulimit(self.name, self.soft, self.hard)
        except privileges.PrivilegeError as e:
            raise PydanticCustomError("ulimit", str(e), {}) from None
        return self


class ContainerSpec(Model):
    """What runs in each task's container (`docker service create` flags)."""

    image: str = Field(min_length=1)  # resolved to repo@digest at create/update
    command: tuple[str, ...] = ()  # replaces the image's Entrypoint
    args: tuple[str, ...] = ()  # replaces the image's Cmd
    env: tuple[str, ...] = ()  # KEY=VALUE
    dir: str = ""
    user: str = ""
    hostname: str = ""
    labels: LabelsField
    mounts: tuple[MountSpec, ...] = ()
    secrets: tuple[SecretReference, ...] = ()
    configs: tuple[ConfigReference, ...] = ()
    healthcheck: HealthcheckSpec | None = None
    stop_signal: str = ""
    stop_grace_period: float = Field(10.0, ge=0)
    read_only: bool = False
    cap_add: tuple[str, ...] = ()  # capability names (NET_ADMIN or CAP_NET_ADMIN) or ALL
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False  # every capability and device, no seccomp, writable /sys: an explicit opt-in
    devices: tuple[DeviceMapping, ...] = ()
    sysctls: dict[str, str] = Field(default_factory=_empty_labels)  # namespaced ones only
    ulimits: tuple[UlimitSpec, ...] = ()
    init: bool = False  # run an init (tini) as PID 1 that reaps zombies and forwards signals

    @field_validator("cap_add", "cap_drop")
    @classmethod
    def _caps(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        try:
            privileges.check_capabilities(v)
        except privileges.PrivilegeError as e:
            raise PydanticCustomError("capability", str(e), {}) from None
        return v

    @field_validator("sysctls")
    @classmethod
    def _sysctls(cls, v: dict[str, str]) -> FrozenDict[str, str]:
        for name in v:
            try:
                privileges.check_sysctl(name)
            except privileges.PrivilegeError as e:
                raise PydanticCustomError("sysctl", str(e), {}) from None
        return FrozenDict(v)

    @field_validator("ulimits")
    @classmethod
    def _ulimits_once(cls, v: tuple[UlimitSpec, ...]) -> tuple[UlimitSpec, ...]:
        seen = set()
        for u in v:
            if u.name in seen:
                raise PydanticCustomError("ulimit", "ulimit {name} is given twice", {"name": u.name})
            seen.add(u.name)
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, item in enumerate(v):
            if "=" not in item or item.startswith("="):
                raise PydanticCustomError("env_item", "item {i} must be KEY=VALUE (got {got})",
                                          {"i": i, "got": repr(item)})
        return v


class ResourceSpec(Model):
    nano_cpus: int = Field(0, ge=0)  # 1e9 = one CPU
    memory_bytes: int = Field(0, ge=0)
    pids: int = Field(0, ge=0)  # limits only


class Resources(Model):
    limits: ResourceSpec = ResourceSpec()
    reservations: ResourceSpec = ResourceSpec()


class RestartCondition(enum.StrEnum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


class RestartPolicy(Model):
    condition: RestartCondition = RestartCondition.ANY
    delay: float = Field(5.0, ge=0)
    max_attempts: int = Field(0, ge=0)  # 0 = unlimited
    window: float = Field(0.0, ge=0)  # seconds over which attempts are counted; 0 = forever


class Placement(Model):
    constraints: tuple[str, ...] = ()  # "node.labels.zone==eu", "node.role!=manager"
    preferences: tuple[str, ...] = ()  # spread over these label keys: "node.labels.zone"
    max_replicas: int = Field(0, ge=0)  # per node; 0 = no limit
    platforms: tuple[str, ...] = ()  # "linux/amd64"


class NetworkAttachment(Model):
    """A task's place on one network, written by the allocator before the
    task is scheduled: its address (with prefix length) and DNS aliases."""

    network_id: ObjectId
    addresses: tuple[str, ...] = ()  # "10.0.1.5/24"
    aliases: tuple[str, ...] = ()


class EndpointMode(enum.StrEnum):
    VIP = "vip"  # the service name resolves to one virtual IP balanced over its tasks
    DNSRR = "dnsrr"  # the service name resolves to its tasks' addresses


DYNAMIC_PORT_MIN = 30000
DYNAMIC_PORT_MAX = 32767
"""Where published ports given as 0 (or not at all) are allocated from (as Swarm)."""


class PortProtocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PublishMode(enum.StrEnum):
    INGRESS = "ingress"  # every node accepts on the port (the routing mesh over the ingress network)
    HOST = "host"  # only the nodes running a task accept, straight to their task


class PortConfig(Model):
    """A published port (`--publish published=8080,target=80`). In a spec,
    `published_port` 0 asks the allocator for one from DYNAMIC_PORT_MIN to
    DYNAMIC_PORT_MAX; in `Service.endpoint.ports` it is always filled in."""

    name: str = ""
    protocol: PortProtocol = PortProtocol.TCP
    target_port: int = Field(ge=1, le=65535)  # the port inside the container
    published_port: int = Field(0, ge=0, le=65535)
    publish_mode: PublishMode = PublishMode.INGRESS

    @property
    def label(self) -> str:
        """"8080/tcp", as messages name a published port."""
        return f"{self.published_port}/{self.protocol}"


class EndpointSpec(Model):
    mode: EndpointMode = EndpointMode.VIP
    ports: tuple[PortConfig, ...] = ()

    @field_validator("ports")
    @classmethod
    def _unique(cls, v: tuple[PortConfig, ...]) -> tuple[PortConfig, ...]:
        # One listener per published port and protocol, whatever the mode:
        # a node cannot both route a port through the mesh and hand it to a task.
        seen: dict[tuple[PortProtocol, int], int] = {}
        for i, p in enumerate(v):
            if p.published_port == 0:
                continue
            key = (p.protocol, p.published_port)
            if key in seen:
                raise PydanticCustomError(
                    "port_twice", "ports[{i}]: published port {port} is given twice (also ports[{j}])",
                    {"i": i, "j": seen[key], "port": p.label})
            seen[key] = i
        return v

    @property
    def needs_ingress(self) -> bool:
        """Whether the service's tasks must be on the ingress network: they
        are when it publishes any port. The routing mesh reaches them there
        (ingress mode), and a node learns which host-mode ports its tasks
        take from their entries in the ingress network's endpoint table."""
        return bool(self.ports)


class VirtualIP(Model):
    network_id: ObjectId
    addr: str  # "10.0.1.2/24"


class Endpoint(Model):
    """What the allocator gave a service: one virtual IP per network (vip
    mode), and its published ports with every published_port filled in."""

    spec: EndpointSpec = EndpointSpec()
    virtual_ips: tuple[VirtualIP, ...] = ()
    ports: tuple[PortConfig, ...] = ()


def held_ports(wanted: EndpointSpec, have: Endpoint) -> list[PortConfig | None]:
    """For each port of `wanted`, the allocated port of `have` that serves it,
    or None when it has none yet. A port with a fixed published port is
    served by an allocated one equal to it (its name aside); a dynamic one
    (published 0) by an allocated one with the same target, protocol and
    mode whose published port no fixed port of `wanted` asks for. Each
    allocated port serves at most one; those serving none are stale (the
    spec no longer asks for them)."""
    out: list[PortConfig | None] = [None] * len(wanted.ports)
    free = list(have.ports)
    fixed = {(p.protocol, p.published_port) for p in wanted.ports if p.published_port}
    for i, w in enumerate(wanted.ports):
        if w.published_port:
            for j, h in enumerate(free):
                if (h.protocol, h.published_port, h.target_port, h.publish_mode) == \
                        (w.protocol, w.published_port, w.target_port, w.publish_mode):
                    out[i] = free.pop(j)
                    break
    for i, w in enumerate(wanted.ports):
        if not w.published_port:
            for j, h in enumerate(free):
                if (h.protocol, h.target_port, h.publish_mode) == (w.protocol, w.target_port, w.publish_mode) \
                        and (h.protocol, h.published_port) not in fixed and h.published_port:
                    out[i] = free.pop(j)
                    break
    return out


def trim_endpoint(spec: EndpointSpec, have: Endpoint) -> Endpoint:
    """`have` without the ports `spec` no longer asks for: what a spec change
    leaves of a service's endpoint until the allocator has seen the change
    (which fills in the new ports and drops unneeded VIPs)."""
    kept = tuple(h for h in held_ports(spec, have) if h is not None)
    return have if kept == have.ports else have.model_copy(update={"ports": kept})


def port_exclusive(mode: PublishMode) -> bool:
    """Whether a published port held in this mode is its holder's alone
    (ingress: every node's port is the routing mesh's); host-mode holders
    share a port with each other (the scheduler keeps their tasks apart)."""
    return mode == PublishMode.INGRESS


def ports_clash(a: PublishMode, b: PublishMode) -> bool:
    """Whether two services may not both hold one published port."""
    return port_exclusive(a) or port_exclusive(b)


def port_claims(spec: EndpointSpec, have: Endpoint) -> tuple[tuple[PortProtocol, int, PublishMode], ...]:
    """The published ports a service holds: (protocol, port, mode) for each
    fixed port of its spec and each allocated port still serving a dynamic
    one. Ingress-mode ports are the service's alone in the cluster; a
    host-mode port may be held by other services in host mode too (the
    scheduler keeps their tasks on different nodes). The store enforces this
    (`manager.store.tables`), so two writers racing for a port cannot both win."""
    out: list[tuple[PortProtocol, int, PublishMode]] = []
    for w, h in zip(spec.ports, held_ports(spec, have)):
        if w.published_port:
            out.append((w.protocol, w.published_port, w.publish_mode))
        elif h is not None:
            out.append((h.protocol, h.published_port, h.publish_mode))
    return tuple(out)


def _attachment_config(v: Any) -> Any:
    return {"target": v} if isinstance(v, str) else v


class NetworkAttachmentConfig(Model):
    """A service's wish to be on a network (`--network name=N,alias=A`):
    the network's id and extra DNS names for its tasks there."""

    target: ObjectId
    aliases: tuple[Name, ...] = ()


NetworkAttachmentConfigField = Annotated[NetworkAttachmentConfig, BeforeValidator(_attachment_config)]


class TaskSpec(Model):
    """What a task runs; a service's template, copied into each task."""

    container: ContainerSpec
    resources: Resources = Resources()
    restart_policy: RestartPolicy = RestartPolicy()
    placement: Placement = Placement()
    networks: tuple[NetworkAttachmentConfigField, ...] = ()  # network ids or {target, aliases}
    force_update: int = Field(0, ge=0)  # bump to redeploy with an unchanged spec


class FailureAction(enum.StrEnum):
    PAUSE = "pause"
    CONTINUE = "continue"
    ROLLBACK = "rollback"


class UpdateOrder(enum.StrEnum):
    STOP_FIRST = "stop-first"
    START_FIRST = "start-first"


class UpdateConfig(Model):
    parallelism: int = Field(1, ge=0)  # 0 = all at once
    delay: float = Field(0.0, ge=0)
    failure_action: FailureAction = FailureAction.PAUSE
    monitor: float = Field(5.0, ge=0)
    max_failure_ratio: float = Field(0.0, ge=0, le=1)
    order: UpdateOrder = UpdateOrder.STOP_FIRST


class DependsCondition(enum.StrEnum):
    """What a service waits for in a dependency (compose's `depends_on` conditions)."""

    SERVICE_STARTED = "service_started"  # one of its tasks RUNNING
    SERVICE_HEALTHY = "service_healthy"  # one of its tasks RUNNING, which means healthy when it has a check
    SERVICE_COMPLETED_SUCCESSFULLY = "service_completed_successfully"  # one of its tasks COMPLETE, none failing


class ServiceDependency(Model):
    """One entry of `ServiceSpec.depends_on`: the service's tasks are not
    scheduled until service `service` (a NAME, so that services created
    together in one transaction can refer to each other) satisfies
    `condition`. Order of start only: tasks that started keep running if the
    dependency goes down later."""

    service: Name
    condition: DependsCondition = DependsCondition.SERVICE_STARTED


def _dependencies(v: Any) -> Any:
    # Also {name: condition} (as compose writes it) and bare names.
    if isinstance(v, Mapping):
        return [{"service": k, "condition": c} for k, c in v.items()]
    if isinstance(v, (list, tuple)):
        return [{"service": d} if isinstance(d, str) else d for d in v]
    return v


class ServiceSpec(Model):
    name: Name
    labels: LabelsField
    task: TaskSpec
    mode: ServiceMode = ServiceMode.REPLICATED
    replicas: int = Field(1, ge=0)  # replicated: desired tasks; ignored in global mode
    max_concurrent: int = Field(0, ge=0)  # jobs: tasks running at once (0 = replicas)
    total_completions: int = Field(0, ge=0)  # replicated jobs: successful runs wanted (0 = replicas)
    update_config: UpdateConfig = UpdateConfig()
    rollback_config: UpdateConfig = UpdateConfig(failure_action=FailureAction.PAUSE)
    endpoint_spec: EndpointSpec = EndpointSpec()
    # Services whose condition must hold before this one's tasks are scheduled
    # ([{service, condition}], {name: condition} or [name]); the names are
    # checked against the other services by the control API
    # (`depends_on_problems`), not here.
    depends_on: Annotated[tuple[ServiceDependency, ...], BeforeValidator(_dependencies)] = ()

    @field_validator("depends_on")
    @classmethod
    def _one_each(cls, v: tuple[ServiceDependency, ...]) -> tuple[ServiceDependency, ...]:
        seen: dict[str, int] = {}
        for i, d in enumerate(v):
            if d.service in seen:
                raise PydanticCustomError(
                    "dependency_twice", 'depends_on[{i}].service: service "{name}" is given twice (also depends_on[{j}])',
                    {"i": i, "j": seen[d.service], "name": d.service})
            seen[d.service] = i
        return v


class UpdateState(enum.StrEnum):
    UPDATING = "updating"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK_PAUSED = "rollback_paused"
    ROLLBACK_COMPLETED = "rollback_completed"


class UpdateStatus(Model):
    state: UpdateState = UpdateState.COMPLETED
    started_at: float = 0.0
    completed_at: float = 0.0
    message: str = ""


class Service(Model):
    TABLE: ClassVar[str] = "services"
    id: ObjectId
    meta: Meta = Meta()
    spec: ServiceSpec
    previous_spec: ServiceSpec | None = None  # what a rollback returns to
    spec_version: int = Field(0, ge=0)  # bumped by every spec change; tasks record the one they run
    update_status: UpdateStatus | None = None
    endpoint: Endpoint = Endpoint()  # virtual IPs, set by the allocator


def port_conflict(svc: Service, others: Iterable[Service]) -> tuple[PortProtocol, int, Service, PublishMode] | None:
    """The first published port `svc` would hold that one of `others` holds
    in a way that excludes it (either holds it in ingress mode), as
    (protocol, port, that service, its mode); None when every port is free."""
    mine = port_claims(svc.spec.endpoint_spec, svc.endpoint)
    if not mine:
        return None
    held: dict[tuple[PortProtocol, int], list[tuple[str, Service, PublishMode]]] = {}
    for o in others:
        if o.id != svc.id:
            for proto, port, mode in port_claims(o.spec.endpoint_spec, o.endpoint):
                held.setdefault((proto, port), []).append((o.spec.name, o, mode))
    for proto, port, mode in mine:
        for _, o, other_mode in sorted(held.get((proto, port), ()), key=lambda x: (x[0], x[1].id)):
            if ports_clash(mode, other_mode):
                return proto, port, o, other_mode
    return None


class DependsOnProblem(NamedTuple):
    """What is wrong with one dependency: the service (name) that has it,
    the field path in that service's spec, and why."""

    service: str
    field: str
    message: str


def depends_on_problems(specs: Mapping[str, ServiceSpec],
                        existing: Mapping[str, ServiceSpec]) -> list[DependsOnProblem]:
    """The problems with the `depends_on` of `specs` (name -> spec: the
    services written together in one transaction, created or updated) given
    the services stored besides them (`existing`, name -> spec; one also in
    `specs` counts as its new spec). A dependency must name another service
    of either set, and the dependencies of both sets together must not form
    a cycle through any service of `specs` (each cycle is reported once, at
    the first service of `specs` on it: `a -> b -> a`). Pure; the control
    API and the stack deploy answer the first problem with a 400."""
    known = {**existing, **specs}
    out: list[DependsOnProblem] = []
    for name, spec in specs.items():
        for i, d in enumerate(spec.depends_on):
            where = f"depends_on[{i}].service"
            if d.service == name:
                out.append(DependsOnProblem(name, where, "a service cannot depend on itself"))
            elif d.service not in known:
                close = difflib.get_close_matches(d.service, sorted(known), n=1, cutoff=0.6)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                out.append(DependsOnProblem(name, where, f'no service named "{d.service}"{hint}'))

    graph: dict[str, list[str]] = {}

    def edges(n: str) -> list[str]:
        e = graph.get(n)
        if e is None:
            spec = known.get(n)
            e = graph[n] = [d.service for d in spec.depends_on if d.service in known and d.service != n] \
                if spec is not None else []
        return e

    # A service is on a cycle when its strongly connected component has
    # another member; one cycle per component is reported (linear overall,
    # whatever the number of services written together).
    order = {n: i for i, n in enumerate(specs)}
    for comp in _components(list(specs), edges):
        mine = [n for n in comp if n in specs]
        if len(comp) < 2 or not mine:
            continue
        first = min(mine, key=order.__getitem__)
        members = set(comp)
        cyc = _shortest_cycle(first, lambda n: [d for d in edges(n) if d in members])
        i = next(i for i, d in enumerate(known[first].depends_on) if d.service == cyc[1])
        out.append(DependsOnProblem(first, f"depends_on[{i}].service",
                                    "depends_on forms a cycle: " + " -> ".join([*cyc, first])))
    return out


def _components(roots: list[str], edges: Any) -> list[list[str]]:
    """The strongly connected components reachable from `roots` (Tarjan's
    algorithm, iterative: a long chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in roots:
        if root in index:
            continue
        work = [(root, iter(edges(root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            n, it = work[-1]
            d = next(it, None)
            if d is not None:
                if d not in index:
                    index[d] = low[d] = len(index)
                    stack.append(d)
                    on_stack.add(d)
                    work.append((d, iter(edges(d))))
                elif d in on_stack:
                    low[n] = min(low[n], index[d])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[n])
            if low[n] == index[n]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == n:
                        break
                out.append(comp)
    return out


def _shortest_cycle(start: str, edges: Any) -> list[str]:
    """The shortest path from `start` back to itself, as [start, ...]
    (breadth first over `edges(name)`); `start` must be on a cycle."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for n in frontier:
            for d in edges(n):
                if d == start:
                    path = [n]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1]
                if d not in parent:
                    parent[d] = n
                    nxt.append(d)
        frontier = nxt
    raise ValueError(f"{start} is on no cycle")


class TaskStatus(Model):
    """Observed state, as last reported (or decided by a manager before the
    task reached a node)."""

    state: TaskStateField = _state_default(TaskState.NEW)
    timestamp: float = 0.0
    message: str = ""
    err: str = ""
    container_id: str = ""
    exit_code: int | None = None


class Task(Model):
    """One scheduled instance of a service (slot N of a replicated service,
    or the service's task on node N of a global one). Tasks have no name of
    their own, so the store does not index them by name."""

    TABLE: ClassVar[str] = "tasks"
    id: ObjectId
    meta: Meta = Meta()
    service_id: str = ""
    slot: int = Field(0, ge=0)  # 0 for global services
    node_id: str = ""  # "" until scheduled
    spec: TaskSpec
    spec_version: int = Field(0, ge=0)  # the service's spec_version this task runs
    desired_state: TaskStateField = _state_default(TaskState.RUNNING)
    status: TaskStatus = TaskStatus()
    created_at: float = 0.0
    not_before: float = 0.0  # restart delay: not scheduled before this time (unix s)
    networks: tuple[NetworkAttachment, ...] = ()  # addresses, set by the allocator (NEW -> PENDING)
    # Not "" for a network attachment: a plain container's place on attachable
    # networks (`orch container run --network`), named here. It has no service
    # and no container of its own; it ends when that container does.
    # INGRESS_ATTACHMENT ("@ingress", never a container name) is a node's
    # ingress sandbox: its place on the ingress network (the routing mesh).
    attachment: str = ""


INGRESS_ATTACHMENT = "@ingress"
"""`Task.attachment` of a node's ingress sandbox task: one per node while the
cluster has an ingress network, made by the orchestrator. Container names
cannot start with "@", so it never collides with a plain container's."""


# -- Networks and the cluster ------------------------------------------------------


VNI_MIN = 4096
"""Lowest VXLAN network id the allocator hands out (as Swarm: below is left to users)."""
VNI_MAX = (1 << 24) - 1
MTU_MIN = 68
MTU_MAX = 65535
VXLAN_PORT = 4789
"""The UDP port every node's overlay networks use (IANA's VXLAN port)."""
DEFAULT_MTU = 1450
"""An overlay's MTU when none is given: a 1500-byte underlay minus VXLAN's 50 bytes."""


def _ipv4_network(v: str, what: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(v, strict=False)
    except ValueError:
        raise PydanticCustomError("cidr", "must be a network in CIDR form, e.g. 10.0.1.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise PydanticCustomError("cidr", "only IPv4 networks are supported for {what}", {"what": what})
    return net


class IPAMConfig(Model):
    """One address range of a network. `subnet` is required; the gateway
    defaults to the subnet's first address; `ip_range` narrows where task
    addresses come from (it must lie inside the subnet)."""

    subnet: str
    gateway: str = ""
    ip_range: str = ""

    @field_validator("subnet", "ip_range")
    @classmethod
    def _cidr(cls, v: str) -> str:
        if v == "":
            return v
        return str(_ipv4_network(v, "subnets"))

    @field_validator("gateway")
    @classmethod
    def _ip(cls, v: str) -> str:
        if v == "":
            return v
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise PydanticCustomError("ip", "must be an IPv4 address, e.g. 10.0.1.1") from None
        return v

    @model_validator(mode="after")
    def _inside(self) -> IPAMConfig:
        if not self.subnet:
            raise PydanticCustomError("cidr", "subnet is required when an IPAM config is given")
        net = ipaddress.IPv4Network(self.subnet)
        if net.prefixlen > 30:
            raise PydanticCustomError("cidr", "subnet {subnet} is too small: use /30 or larger", {"subnet": self.subnet})
        if self.gateway and ipaddress.IPv4Address(self.gateway) not in net:
            raise PydanticCustomError("ip", "gateway {gw} is outside subnet {subnet}",
                                      {"gw": self.gateway, "subnet": self.subnet})
        if self.gateway and ipaddress.IPv4Address(self.gateway) in (net.network_address, net.broadcast_address):
            raise PydanticCustomError("ip", "gateway {gw} is the network or broadcast address of {subnet}",
                                      {"gw": self.gateway, "subnet": self.subnet})
        if self.ip_range and not ipaddress.IPv4Network(self.ip_range).subnet_of(net):
            raise PydanticCustomError("cidr", "ip_range {r} is outside subnet {subnet}",
                                      {"r": self.ip_range, "subnet": self.subnet})
        return self


class NetworkSpec(Model):
    """A user's network. Only the `overlay` driver exists: a VXLAN segment
    spanning every node that runs a task on it."""

    name: Name
    labels: LabelsField
    driver: str = "overlay"
    attachable: bool = False  # plain containers (`orch container run --network`) may join
    internal: bool = False  # no egress: containers get no default route out of the cluster
    ipam: tuple[IPAMConfig, ...] = Field((), max_length=1)  # () = a subnet from the cluster's pool
    options: LabelsField  # driver options: mtu, vni
    # The routing mesh's network (`orch init` makes one named "ingress"; at
    # most one per cluster): tasks of services publishing ports
    # and every node's ingress sandbox are on it. Never attachable.
    ingress: bool = False

    @field_validator("driver")
    @classmethod
    def _driver(cls, v: str) -> str:
        if v != "overlay":
            raise PydanticCustomError("driver", "unknown network driver '{d}': only 'overlay' is supported", {"d": v})
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: FrozenDict[str, str]) -> FrozenDict[str, str]:
        for k, val in v.items():
            if k == "mtu":
                if not val.isdigit() or not MTU_MIN <= int(val) <= MTU_MAX:
                    raise PydanticCustomError("mtu", "mtu must be a number from {lo} to {hi}, not '{v}'",
                                              {"lo": MTU_MIN, "hi": MTU_MAX, "v": val})
            elif k == "vni":
                if not val.isdigit() or not 1 <= int(val) <= VNI_MAX:
                    raise PydanticCustomError("vni", "vni must be a number from 1 to {hi}, not '{v}'",
                                              {"hi": VNI_MAX, "v": val})
            else:
                raise PydanticCustomError("option", "unknown network option '{k}' (known: mtu, vni)", {"k": k})
        return v

    @field_validator("ingress")
    @classmethod
    def _ingress(cls, v: bool, info: ValidationInfo) -> bool:
        if v and info.data.get("attachable"):
            raise PydanticCustomError("ingress_attachable", "an ingress network cannot be attachable: "
                                      "plain containers do not take part in the routing mesh")
        if v and info.data.get("internal"):
            raise PydanticCustomError("ingress_internal", "an ingress network cannot be internal: the routing "
                                      "mesh reaches tasks from every node's own addresses")
        return v

    @property
    def mtu(self) -> int:
        return int(self.options.get("mtu", DEFAULT_MTU))


class NetworkAllocation(Model):
    """What the allocator gave a network: its VXLAN id and its effective
    subnet and gateway (the user's, or a subnet from the cluster's pool)."""

    vni: int = Field(ge=1, le=VNI_MAX)
    subnet: str
    gateway: str


class Network(Model):
    TABLE: ClassVar[str] = "networks"
    id: ObjectId
    meta: Meta = Meta()
    spec: NetworkSpec
    allocation: NetworkAllocation | None = None  # None until the leader's allocator has run


class AddressPoolSpec(Model):
    """Where networks without a subnet of their own get one: each pool is
    carved into subnets of `subnet_size` bits (Swarm: 10.0.0.0/8 in /24s).
    Set once, at `orch init --default-addr-pool ... --default-addr-pool-mask-len N`."""

    pools: tuple[str, ...] = Field(("10.0.0.0/8",), min_length=1)
    subnet_size: int = Field(24, ge=8, le=29)

    @field_validator("pools")
    @classmethod
    def _pools(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(str(_ipv4_network(p, "address pools")) for p in v)

    @model_validator(mode="after")
    def _fits(self) -> AddressPoolSpec:
        for p in self.pools:
            if ipaddress.IPv4Network(p).prefixlen > self.subnet_size:
                raise PydanticCustomError("pool", "pool {p} is smaller than the subnet size /{n}",
                                          {"p": p, "n": self.subnet_size})
        return self


class ClusterSpec(Model):
    name: Name = "default"
    labels: LabelsField
    task_history_retention_limit: int = Field(5, ge=0)
    heartbeat_period: float = Field(5.0, gt=0)


class RootCAState(Model):
    """The cluster CA, replicated to every manager so any of them can issue
    node certificates. The key and the join secrets never leave the
    managers: `Cluster.public()` drops them."""

    ca_cert: str = ""  # PEM
    ca_key: bytes = b""  # PEM
    worker_secret: str = ""
    manager_secret: str = ""

    def __repr_args__(self) -> Any:
        for k, v in super().__repr_args__():
            yield (k, "<redacted>" if k in ("ca_key", "worker_secret", "manager_secret") else v)


class Cluster(Model):
    TABLE: ClassVar[str] = "clusters"
    id: ObjectId
    meta: Meta = Meta()
    spec: ClusterSpec = ClusterSpec()
    root_ca: RootCAState = RootCAState()
    # Nodes removed from the cluster: their certificates are refused until
    # they expire (a removed node must join again with a token).
    removed_nodes: tuple[str, ...] = ()
    default_addr_pool: AddressPoolSpec = AddressPoolSpec()

    def public(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"root_ca": {"ca_key", "worker_secret", "manager_secret"}})


# -- Stacks ------------------------------------------------------------------------


class StackResourceKind(enum.StrEnum):
    SERVICE = "service"
    NETWORK = "network"
    SECRET = "secret"
    CONFIG = "config"

    @property
    def table(self) -> str:
        return f"{self.value}s"


class StackResource(Model):
    """One object a stack owns: its kind, id and name, and its key in the
    compose file (a secret's key names all its versions)."""

    kind: StackResourceKind
    id: ObjectId
    name: Name
    key: str = ""


class StackDependency(Model):
    """`depends_on` of the compose file: service `service` (a key of the
    file) waits for `on` to satisfy `condition`."""

    service: str
    on: str
    condition: str = "service_started"


class StackSpec(Model):
    name: Name
    labels: LabelsField
    # The normalised compose file of the last deploy (`orch stack config`'s
    # text): what the stack was deployed from, for `stack inspect` and audits.
    compose: str = ""


class Stack(Model):
    """What `orch stack deploy` made: the objects it owns (named STACK_x and
    labelled com.docker.stack.namespace=STACK) and a version counting its
    deploys. Objects it no longer wants but something still uses (a
    network tasks are still on, an old version of a secret a task still
    mounts) wait in `garbage` until the leader's stack reaper removes them;
    a stack being removed (`removing`) goes once that list is empty."""

    TABLE: ClassVar[str] = "stacks"
    id: ObjectId
    meta: Meta = Meta()
    spec: StackSpec
    version: int = Field(0, ge=0)  # deploys so far: 1 after the first
    resources: tuple[StackResource, ...] = ()
    garbage: tuple[StackResource, ...] = ()
    removing: bool = False
    depends_on: tuple[StackDependency, ...] = ()


StoredObject = Node | Service | Task | Network | Secret | Config | Cluster | Stack

TABLE_MODELS: dict[str, type[Model]] = {
    m.TABLE: m  # type: ignore[attr-defined]
    for m in (Node, Service, Task, Network, Secret, Config, Cluster, Stack)
}
"""Store table name -> the model of the objects it holds."""


M = TypeVar("M", bound=BaseModel)


def evolve(obj: M, **changes: Any) -> M:
    """A copy of `obj` with fields changed; `a__b=v` reaches into nested
    models: `evolve(task, status__state=TaskState.RUNNING, node_id="n1")`.

    No validation happens here (it is a cheap shallow copy); the store
    validates every object when the transaction is encoded and applied.
    """
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        head, sep, rest = key.partition("__")
        if head not in type(obj).model_fields:
            raise AttributeError(f"{type(obj).__name__} has no field {head!r}")
        if sep:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        base = direct.get(head, getattr(obj, head))
        if not isinstance(base, BaseModel):
            raise AttributeError(f"{type(obj).__name__}.{head} is not a model; cannot set {sorted(sub)}")
        direct[head] = evolve(base, **sub)
    return obj.model_copy(update=direct)
