"""The compose model of a stack: what a (merged, interpolated, normalised)
compose file says, as frozen pydantic models.

Field names are the compose keys, so a model dumps back to a compose file
(`api.compose.config`). Fields hold long forms only: short forms (ports
"8080:80", volumes "data:/var/lib", environment lists, ...) are turned into
long ones before validation (`api.compose.normalize`). Unset scalars are
None, so "not given" and "given as the default" stay apart; the defaults of
orch's objects are applied by the conversion (`api.compose.convert`).

Enumerations reuse those of `api.objects` where there is one, and values
that become objects are checked with the rules of `api.objects`, so a
compose file is refused with the words the control API would use.

`check_references()` holds the rules across services and top-level
objects (undefined networks, depends_on cycles, ...).
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import ValidationError as ApiError
from ..errors import show_value
from ..objects import (
    EndpointMode,
    FailureAction,
    IPAMConfig,
    RestartCondition,
    ServiceMode,
    UpdateOrder,
)
from ..validation import FrozenDict, Name
from .yamlmarks import RawFloat, RawInt

__all__ = [
    "Project", "Service", "Deploy", "Port", "ServiceVolume", "FileRef", "Healthcheck", "Ulimit", "Device",
    "DependsOn", "ServiceNetwork", "PlacementConfig", "Preference", "ResourcesConfig", "ResourceLimits",
    "ResourceReservations", "RestartPolicyConfig", "UpdateConfigCompose", "Network", "Ipam", "IpamPool",
    "Volume", "Secret", "Config", "Protocol", "PortMode", "VolumeType", "Condition",
    "parse_duration", "format_duration", "parse_size", "tmpfs_options", "check_references",
]


# -- value types ---------------------------------------------------------------------


def _to_str(v: Any) -> Any:
    """Scalars in string fields read as written: numbers keep their text,
    booleans are lower case (compose's own rules); the rest is left to fail
    as "must be a string"."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (RawInt, RawFloat)):
        return v.raw
    if isinstance(v, (int, float)):
        return str(v)
    return v


Str = Annotated[str, BeforeValidator(_to_str)]


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9,
                   "h": 3600 * 10**9}


def parse_duration(v: Any) -> float:
    """Seconds from a Go duration ("1m30s", "500ms", "2h") or a number of
    seconds. Raises ValueError."""
    if isinstance(v, bool):
        raise ValueError("not a duration")
    if isinstance(v, (int, float)):
        if v < 0 or v != v or v == float("inf"):
            raise ValueError("not a duration")
        return round(v * 1e9) / 1e9  # whole nanoseconds, as Go's durations
    if not isinstance(v, str):
        raise ValueError("not a duration")
    s = v.strip()
    if s in ("0", ""):
        if s == "":
            raise ValueError("not a duration")
        return 0.0
    pos, ns = 0, 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            raise ValueError("not a duration")
        ns += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or pos == 0:
        raise ValueError("not a duration")
    return round(ns) / 1e9


def format_duration(seconds: float) -> str:
    """Go's spelling of a duration: 90.0 -> "1m30s", 0.5 -> "500ms"."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    out = []
    h, rest = divmod(ns, 3600 * 10**9)
    m, rest = divmod(rest, 60 * 10**9)
    if h:
        out.append(f"{h}h")
    if m:
        out.append(f"{m}m")
    if rest:
        if not out and rest < 10**9:
            for unit, size in (("ms", 10**6), ("us", 10**3), ("ns", 1)):
                if rest % size == 0:
                    out.append(f"{rest // size}{unit}")
                    break
        else:
            whole, frac = divmod(rest, 10**9)
            out.append(f"{whole}.{frac:09d}".rstrip("0").rstrip(".") + "s")
    return "".join(out)


def _duration(v: Any) -> float:
    try:
        return parse_duration(v)
    except ValueError:
        raise PydanticCustomError("compose_duration", "must be a duration such as 10s, 1m30s or 500ms (got {got})",
                                  {"got": show_value(v)}) from None


Duration = Annotated[float, BeforeValidator(_duration), PlainSerializer(format_duration, return_type=str)]
"""Seconds; written as a Go duration ("1m30s")."""

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)


def parse_size(v: Any) -> int:
    """Bytes from a number or "512m", "1.5g", "64MiB", "100kb" (1024-based,
    as Docker's units). Raises ValueError."""
    if isinstance(v, bool):
        raise ValueError("not a size")
    if isinstance(v, int):
        if v < 0:
            raise ValueError("not a size")
        return int(v)
    if not isinstance(v, str):
        raise ValueError("not a size")
    m = _SIZE.match(v.strip())
    if m is None:
        raise ValueError("not a size")
    power = "kmgtp".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(float(m.group(1)) * (1024**power))


def _size(v: Any) -> int:
    try:
        return parse_size(v)
    except ValueError:
        raise PydanticCustomError("compose_size", "must be a size such as 512m, 64k or 1g (got {got})",
                                  {"got": show_value(v)}) from None


Size = Annotated[int, BeforeValidator(_size)]
"""Bytes."""


def _octal(v: Any) -> Any:
    if isinstance(v, str):
        try:
            v = int(v, 8)
        except ValueError:
            raise PydanticCustomError("compose_mode", "must be an octal file mode such as 0440 (got {got})",
                                      {"got": show_value(v)}) from None
    if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= 0o7777:
        raise PydanticCustomError("compose_mode", "must be a file mode from 0 to 07777 (got {got})",
                                  {"got": f"0{v:o}" if v >= 0 else str(v)})
    return v


Octal = Annotated[int, BeforeValidator(_octal), PlainSerializer(lambda v: f"0{v:o}", return_type=str)]
"""A file mode; written as an octal string ("0440")."""

def tmpfs_options(item: str) -> tuple[str, int | None, int | None, tuple[str, ...]]:
    """"/run:size=64m,mode=1777,noexec" -> ("/run", size, mode, other options)."""
    path, _, opts = item.partition(":")
    size = mode = None
    other: list[str] = []
    for o in filter(None, opts.split(",")):
        k, _, v = o.partition("=")
        try:
            if k == "size":
                size = parse_size(v)
            elif k == "mode":
                mode = int(v, 8)
            else:
                other.append(o)
        except ValueError:
            raise PydanticCustomError("compose_tmpfs", "bad tmpfs option {o} in {item} (size=64m, mode=1777)",
                                      {"o": repr(o), "item": repr(item)}) from None
    return path, size, mode, tuple(other)


NonNegInt = Annotated[int, Field(ge=0)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


def _freeze(d: dict[Any, Any]) -> FrozenDict[Any, Any]:
    return FrozenDict(d)


V = TypeVar("V")

Map = Annotated[dict[str, V], AfterValidator(_freeze)]
"""A mapping of the file, held read-only (a FrozenDict)."""

NameMap = Annotated[dict[Name, V], AfterValidator(_freeze)]
"""A mapping whose keys name objects (services, networks, ...)."""


def _empty() -> FrozenDict[Any, Any]:
    return FrozenDict()


def _absolute(v: str) -> str:
    if not v.startswith("/"):
        raise PydanticCustomError("compose_path", "must be an absolute path (got {got})", {"got": show_value(v)})
    return v


AbsPath = Annotated[Str, AfterValidator(_absolute)]


# -- the models -----------------------------------------------------------------------


class _M(BaseModel):
    """Frozen, unknown keys refused, `x-` extension keys dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _drop_extensions(cls, v: Any) -> Any:
        if isinstance(v, dict) and any(isinstance(k, str) and k.startswith("x-") for k in v):
            return {k: x for k, x in v.items() if not (isinstance(k, str) and k.startswith("x-"))}
        return v


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class PortMode(enum.StrEnum):
    INGRESS = "ingress"  # the routing mesh: every node answers
    HOST = "host"  # only nodes running a task answer


class Port(_M):
    target: PortNumber
    published: Annotated[int, Field(ge=0, le=65535)] | None = None
    protocol: Protocol = Protocol.TCP
    mode: PortMode = PortMode.INGRESS
    name: Str | None = None


class VolumeType(enum.StrEnum):
    VOLUME = "volume"
    BIND = "bind"
    TMPFS = "tmpfs"


class BindOptions(_M):
    propagation: Str | None = None
    create_host_path: bool | None = None


class VolumeOptions(_M):
    nocopy: bool = False


class TmpfsOptions(_M):
    size: Size | None = None
    mode: Octal | None = None


class ServiceVolume(_M):
    type: VolumeType
    source: Str | None = None
    target: AbsPath
    read_only: bool = False
    consistency: Str | None = None
    bind: BindOptions | None = None
    volume: VolumeOptions | None = None
    tmpfs: TmpfsOptions | None = None

    @model_validator(mode="after")
    def _shape(self) -> ServiceVolume:
        if self.type == VolumeType.BIND:
            if not self.source:
                raise PydanticCustomError("compose_volume", "a bind mount needs a source (a host path)")
            _absolute(self.source)
        if self.type == VolumeType.TMPFS and self.source:
            raise PydanticCustomError("compose_volume", "a tmpfs mount has no source")
        for opt, kind in (("bind", VolumeType.BIND), ("volume", VolumeType.VOLUME), ("tmpfs", VolumeType.TMPFS)):
            if getattr(self, opt) is not None and self.type != kind:
                raise PydanticCustomError("compose_volume", "{opt} options are for {opt} mounts, not {t} mounts",
                                          {"opt": opt, "t": self.type.value})
        return self


class FileRef(_M):
    """A service's use of a secret or config."""

    source: Str
    target: Str | None = None
    uid: Str | None = None
    gid: Str | None = None
    mode: Octal | None = None


class Healthcheck(_M):
    test: tuple[Str, ...] | None = None
    interval: Duration | None = None
    timeout: Duration | None = None
    start_period: Duration | None = None
    start_interval: Duration | None = None
    retries: NonNegInt | None = None
    disable: bool = False

    @field_validator("test")
    @classmethod
    def _kind(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # The rule of api.objects.HealthcheckSpec, in its words.
        if v is None or (v and v[0] == "NONE"):
            return v
        if not v or v[0] not in ("CMD", "CMD-SHELL") or len(v) < 2:
            raise PydanticCustomError(
                "compose_healthcheck",
                'must be ["CMD", arg...], ["CMD-SHELL", "command"], ["NONE"] or a command string (got {got})',
                {"got": show_value(list(v))})
        return v

    @model_validator(mode="after")
    def _disable(self) -> Healthcheck:
        if self.disable and self.test not in (None, ("NONE",)):
            raise PydanticCustomError("compose_healthcheck", "disable: true cannot be combined with a test")
        return self


class Ulimit(_M):
    soft: Annotated[int, Field(ge=-1)]  # -1: unlimited
    hard: Annotated[int, Field(ge=-1)]

    @model_validator(mode="after")
    def _order(self) -> Ulimit:
        unlimited = 2**63
        if (self.soft if self.soft >= 0 else unlimited) > (self.hard if self.hard >= 0 else unlimited):
            raise PydanticCustomError("compose_ulimit", "soft ({soft}) must not exceed hard ({hard})",
                                      {"soft": self.soft, "hard": self.hard})
        return self


class Device(_M):
    source: AbsPath
    target: AbsPath | None = None
    permissions: Annotated[Str, Field(pattern=r"^[rwm]{1,3}$")] | None = None


class Condition(enum.StrEnum):
    STARTED = "service_started"
    HEALTHY = "service_healthy"
    COMPLETED = "service_completed_successfully"


class DependsOn(_M):
    condition: Condition = Condition.STARTED
    required: bool = True
    restart: bool = False


class ServiceNetwork(_M):
    aliases: tuple[Str, ...] = ()


class Preference(_M):
    spread: Str


class PlacementConfig(_M):
    constraints: tuple[Str, ...] = ()
    preferences: tuple[Preference, ...] = ()
    max_replicas_per_node: NonNegInt | None = None


Cpus = Annotated[float, Field(ge=0)]


class ResourceLimits(_M):
    cpus: Cpus | None = None
    memory: Size | None = None
    pids: NonNegInt | None = None


class ResourceReservations(_M):
    cpus: Cpus | None = None
    memory: Size | None = None


class ResourcesConfig(_M):
    limits: ResourceLimits | None = None
    reservations: ResourceReservations | None = None


class RestartPolicyConfig(_M):
    condition: RestartCondition | None = None
    delay: Duration | None = None
    max_attempts: NonNegInt | None = None
    window: Duration | None = None


class UpdateConfigCompose(_M):
    parallelism: NonNegInt | None = None
    delay: Duration | None = None
    failure_action: FailureAction | None = None
    monitor: Duration | None = None
    max_failure_ratio: Annotated[float, Field(ge=0, le=1)] | None = None
    order: UpdateOrder | None = None


class Deploy(_M):
    mode: ServiceMode | None = None
    replicas: NonNegInt | None = None
    placement: PlacementConfig | None = None
    resources: ResourcesConfig | None = None
    restart_policy: RestartPolicyConfig | None = None
    update_config: UpdateConfigCompose | None = None
    rollback_config: UpdateConfigCompose | None = None
    endpoint_mode: EndpointMode | None = None
    labels: Map[Str] = Field(default_factory=_empty)

    @model_validator(mode="after")
    def _replicas(self) -> Deploy:
        if self.replicas is not None and self.mode in (ServiceMode.GLOBAL, ServiceMode.GLOBAL_JOB):
            raise PydanticCustomError("compose_replicas", "replicas cannot be set in {mode} mode",
                                      {"mode": self.mode.value})
        return self


class Service(_M):
    image: Str
    command: tuple[Str, ...] | None = None
    entrypoint: tuple[Str, ...] | None = None
    environment: Map[Str] = Field(default_factory=_empty)
    labels: Map[Str] = Field(default_factory=_empty)
    ports: tuple[Port, ...] = ()
    networks: NameMap[ServiceNetwork] = Field(default_factory=_empty)
    volumes: tuple[ServiceVolume, ...] = ()
    secrets: tuple[FileRef, ...] = ()
    configs: tuple[FileRef, ...] = ()
    healthcheck: Healthcheck | None = None
    hostname: Str | None = None
    user: Str | None = None
    working_dir: Str | None = None
    stop_signal: Str | None = None
    stop_grace_period: Duration | None = None
    read_only: bool = False
    cap_add: tuple[Str, ...] = ()
    cap_drop: tuple[Str, ...] = ()
    tmpfs: tuple[AbsPath, ...] = ()  # "/run" or "/run:size=64m,mode=1777,noexec"
    extra_hosts: Map[Str] = Field(default_factory=_empty)
    init: bool = False
    ulimits: Map[Ulimit] = Field(default_factory=_empty)
    sysctls: Map[Str] = Field(default_factory=_empty)
    privileged: bool = False
    devices: tuple[Device, ...] = ()
    security_opt: tuple[Str, ...] = ()
    depends_on: NameMap[DependsOn] = Field(default_factory=_empty)
    deploy: Deploy | None = None

    @field_validator("tmpfs")
    @classmethod
    def _tmpfs_options(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for item in v:
            tmpfs_options(item)
        return v

    @field_validator("environment")
    @classmethod
    def _env_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not k or "=" in k:
                raise PydanticCustomError("compose_env", "variable names must not be empty or contain = (got {got})",
                                          {"got": show_value(k)})
        return v

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, v: dict[str, str]) -> dict[str, str]:
        if "" in v:
            raise PydanticCustomError("compose_label", "label keys must not be empty")
        return v


class IpamPool(_M):
    subnet: Str
    gateway: Str | None = None
    ip_range: Str | None = None

    @model_validator(mode="after")
    def _api_rules(self) -> IpamPool:
        _api_check(IPAMConfig, {"subnet": self.subnet, "gateway": self.gateway or "",
                                "ip_range": self.ip_range or ""})
        return self


class Ipam(_M):
    driver: Str | None = None
    config: tuple[IpamPool, ...] = Field((), max_length=1)

    @field_validator("driver")
    @classmethod
    def _default_only(cls, v: str | None) -> str | None:
        if v not in (None, "default"):
            raise PydanticCustomError("compose_ipam", "unknown IPAM driver '{d}': only 'default' is supported",
                                      {"d": v})
        return v


def _check_external(obj: Any, kind: str, allowed: tuple[str, ...]) -> None:
    if not obj.external:
        return
    extra = [f for f in obj.model_fields_set if f not in ("external", "name", *allowed)
             and getattr(obj, f) not in (None, False, {}, ())]
    if extra:
        raise PydanticCustomError("compose_external",
                                  "an external {kind} is not created by the stack: {fields} cannot be set with it",
                                  {"kind": kind, "fields": ", ".join(sorted(extra))})


class Network(_M):
    name: Name | None = None
    driver: Str | None = None
    driver_opts: Map[Str] = Field(default_factory=_empty)
    attachable: bool = False
    internal: bool = False
    ipam: Ipam | None = None
    external: bool = False
    labels: Map[Str] = Field(default_factory=_empty)

    @field_validator("driver")
    @classmethod
    def _overlay(cls, v: str | None) -> str | None:
        # api.objects.NetworkSpec's rule and words.
        if v not in (None, "overlay"):
            raise PydanticCustomError("compose_driver", "unknown network driver '{d}': only 'overlay' is supported", {"d": v})
        return v

    @model_validator(mode="after")
    def _external(self) -> Network:
        _check_external(self, "network", ())
        return self


class Volume(_M):
    name: Name | None = None
    driver: Str | None = None
    driver_opts: Map[Str] = Field(default_factory=_empty)
    external: bool = False
    labels: Map[Str] = Field(default_factory=_empty)

    @field_validator("driver")
    @classmethod
    def _local(cls, v: str | None) -> str | None:
        if v not in (None, "local"):
            raise PydanticCustomError("compose_driver", "unknown volume driver '{d}': only 'local' is supported",
                                      {"d": v})
        return v

    @model_validator(mode="after")
    def _external(self) -> Volume:
        _check_external(self, "volume", ())
        return self


class _Blob(_M):
    name: Name | None = None
    file: Str | None = None
    environment: Str | None = None
    external: bool = False
    labels: Map[Str] = Field(default_factory=_empty)

    def _sources(self) -> list[str]:
        return [k for k in ("file", "environment", "content") if getattr(self, k, None) is not None]

    @model_validator(mode="after")
    def _one_source(self) -> _Blob:
        kind = type(self).__name__.lower()
        sources = self._sources()
        if self.external:
            _check_external(self, kind, ())
        elif len(sources) != 1:
            options = "file, environment, content or external" if kind == "config" else \
                "file, environment or external"
            raise PydanticCustomError(
                "compose_source", "a {kind} needs exactly one of {options} (got {got})",
                {"kind": kind, "options": options, "got": ", ".join(sources) or "none"})
        return self


class Secret(_Blob):
    pass


class Config(_Blob):
    content: Str | None = None


class Project(_M):
    name: Str | None = None
    services: NameMap[Service] = Field(default_factory=_empty)
    networks: NameMap[Network] = Field(default_factory=_empty)
    volumes: NameMap[Volume] = Field(default_factory=_empty)
    secrets: NameMap[Secret] = Field(default_factory=_empty)
    configs: NameMap[Config] = Field(default_factory=_empty)

    @model_validator(mode="before")
    @classmethod
    def _drop_version(cls, v: Any) -> Any:
        if isinstance(v, dict) and "version" in v:
            return {k: x for k, x in v.items() if k != "version"}
        return v


def _api_check(model: type[BaseModel], data: dict[str, Any]) -> None:
    """Validate `data` with a model of api.objects and re-raise its first
    problem in its words."""
    try:
        model.model_validate(data)
    except ValidationError as e:
        path, msg = ApiError.from_pydantic(e).errors[0]
        if not path:  # a rule over the whole object: its message says it all
            msg = e.errors(include_url=False)[0]["msg"]
        raise PydanticCustomError("compose_api", "{msg}", {"msg": f"{path}: {msg}" if path else msg}) from None


# -- rules across the file ----------------------------------------------------------

Problem = tuple[tuple[str | int, ...], str]


def check_references(data: Any, file_exists: Callable[[str], bool]) -> list[Problem]:
    """Problems that involve more than one part of the file, as (path,
    message): references to undefined networks, volumes, secrets, configs
    and services; depends_on cycles; secret and config files that do not
    exist (asked through `file_exists`).

    Works on the plain (normalised, long-form) data rather than on a
    `Project`, so that these problems are found even when other parts of
    the file do not validate; values of the wrong shape are skipped (the
    model reports them)."""
    out: list[Problem] = []
    if not isinstance(data, dict):
        return out

    def table(key: str) -> dict[str, Any]:
        v = data.get(key)
        return v if isinstance(v, dict) else {}

    def seq(v: Any) -> list[Any]:
        return v if isinstance(v, list) else []

    services, networks, volumes = table("services"), table("networks"), table("volumes")
    if not services:
        out.append((("services",), "a stack needs at least one service"))
    graph: dict[str, list[str]] = {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            continue
        base = ("services", name)
        nets = svc.get("networks")
        for net in nets if isinstance(nets, dict) else {}:
            if net not in networks and net != "default":
                out.append(((*base, "networks", net),
                            f"network {net} is not defined under the top-level networks" + _hint(net, networks)))
        for i, vol in enumerate(seq(svc.get("volumes"))):
            src = vol.get("source") if isinstance(vol, dict) else None
            if isinstance(vol, dict) and vol.get("type") == "volume" and isinstance(src, str) and src \
                    and src not in volumes:
                out.append(((*base, "volumes", i),
                            f"volume {src} is not defined under the top-level volumes" + _hint(src, volumes)))
        for kind in ("secrets", "configs"):
            defined = table(kind)
            for i, ref in enumerate(seq(svc.get(kind))):
                src = ref.get("source") if isinstance(ref, dict) else None
                if isinstance(src, str) and src not in defined:
                    out.append(((*base, kind, i), f"{kind[:-1]} {src} is not defined under the top-level {kind}"
                                + _hint(src, defined)))
        deps = svc.get("depends_on")
        graph[name] = []
        for dep in deps if isinstance(deps, dict) else {}:
            if dep == name:
                out.append(((*base, "depends_on", dep), "a service cannot depend on itself"))
            elif dep not in services:
                out.append(((*base, "depends_on", dep), f"service {dep} is not defined" + _hint(dep, services)))
            else:
                graph[name].append(dep)
    for cycle in _cycles(graph):
        out.append((("services", cycle[0], "depends_on", cycle[1]),
                    "depends_on forms a cycle: " + " -> ".join([*cycle, cycle[0]])))
    for kind in ("secrets", "configs"):
        for key, obj in table(kind).items():
            f = obj.get("file") if isinstance(obj, dict) else None
            if isinstance(f, str) and not obj.get("external") and not file_exists(f):
                out.append(((kind, key, "file"), f"file {f} does not exist"))
    return out


def _hint(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _cycles(graph: dict[str, list[str]]) -> Iterator[list[str]]:
    """Each depends_on cycle once, starting at its first service in file order."""
    order = {name: i for i, name in enumerate(graph)}
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n: str) -> Iterator[list[str]]:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                cyc = stack[stack.index(d):]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    start = min(range(len(cyc)), key=lambda i: order[cyc[i]])
                    yield cyc[start:] + cyc[:start]
            elif d not in state:
                yield from visit(d)
        stack.pop()
        state[n] = 2

    for n in graph:
        if n not in state:
            yield from visit(n)
