"""From a compose `Project` to orch's objects, as `docker stack deploy`
names and labels them.

Every object of stack STACK is named `STACK_<key>` (unless the file gives
it a `name:`; external objects keep theirs) and labelled
`com.docker.stack.namespace=STACK` and `orch.stack=STACK`. Services with no
network join `STACK_default`; on each of its networks a service answers to
its short name (an alias), so services reach each other as in compose.

What orch's objects cannot carry yet travels beside them: published ports
(`PublishedPort`), `depends_on`, and the compose fields the engine does not
apply yet (`StackService.extras`: extra_hosts, security_opt, tmpfs and
bind options, ...), for the
server side to wire. Secrets and configs whose data comes from a file carry
the file's path: reading it is the caller's I/O. privileged, devices,
cap_add/cap_drop, sysctls, ulimits and init are the container spec's own.

Objects are built with `api.objects`' models, so its rules apply; their
errors are reported at the service's place in the compose file when a
`SourceMap` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from ..errors import ValidationError as ApiValidationError
from ..objects import (
    ConfigSpec,
    IPAMConfig,
    NetworkSpec,
    SecretSpec,
    ServiceMode,
    ServiceSpec,
)
from ..validation import Name
from .diagnostics import ComposeError, Diagnostic, Path, path_str, sorted_problems
from .loader import SourceMap
from .model import Config, Project, Service, ServiceNetwork, VolumeType, tmpfs_options

__all__ = ["NAMESPACE_LABEL", "ORCH_STACK_LABEL", "PublishedPort", "StackService", "StackNetwork", "StackVolume",
           "StackBlob", "StackSpecs", "to_specs"]

NAMESPACE_LABEL = "com.docker.stack.namespace"
ORCH_STACK_LABEL = "orch.stack"
DEFAULT_NETWORK = "default"
SECRETS_DIR = "/run/secrets/"


@dataclass(frozen=True)
class PublishedPort:
    """A port of a service's tasks, published by the cluster."""

    target: int
    published: int  # 0: not given (the cluster picks one)
    protocol: str  # tcp | udp
    mode: str  # ingress | host
    name: str = ""


@dataclass(frozen=True)
class StackService:
    key: str  # the service's name in the file (its short name, its alias)
    spec: ServiceSpec  # secret/config references carry names in place of ids (the server resolves them)
    ports: tuple[PublishedPort, ...] = ()
    depends_on: Mapping[str, str] = field(default_factory=dict)  # short name -> condition
    extras: Mapping[str, Any] = field(default_factory=dict)  # compose fields not in ServiceSpec yet


@dataclass(frozen=True)
class StackNetwork:
    key: str
    name: str
    external: bool
    spec: NetworkSpec | None  # None when external: it must exist


@dataclass(frozen=True)
class StackVolume:
    key: str
    name: str
    external: bool
    driver: str = "local"
    driver_opts: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StackBlob:
    """A secret or config of the stack. Exactly one of: `external` (it must
    exist), `data` (from `environment:` or `content:`), `file` (a path the
    caller reads; then `spec(data)`)."""

    kind: str  # "secret" | "config"
    key: str
    name: str
    external: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    file: str | None = None
    data: bytes | None = None

    def spec(self, data: bytes | None = None) -> SecretSpec | ConfigSpec:
        """The object to create, with `data` (read from `file`) or the data
        the file gave. Raises api.errors.ValidationError."""
        payload = self.data if data is None else data
        if payload is None:
            raise ValueError(f"{self.kind} {self.key}: no data: read {self.file} and pass it")
        model = SecretSpec if self.kind == "secret" else ConfigSpec
        try:
            return model(name=self.name, labels=dict(self.labels), data=payload)
        except PydanticValidationError as e:
            raise ApiValidationError.from_pydantic(e, what=f"{self.kind} {self.key}") from None


@dataclass(frozen=True)
class StackSpecs:
    """Everything a stack deploy creates or uses, in file order. Networks
    include `STACK_default` when a service has no network of its own."""

    services: tuple[StackService, ...]
    networks: tuple[StackNetwork, ...]
    secrets: tuple[StackBlob, ...]
    configs: tuple[StackBlob, ...]
    volumes: tuple[StackVolume, ...]
    warnings: tuple[Diagnostic, ...] = ()
    stack: str = ""


_NAME = TypeAdapter(Name)


class _Converter:
    def __init__(self, project: Project, stack: str, environment: Mapping[str, str], places: SourceMap) -> None:
        self.p = project
        self.stack = stack
        self.env = environment
        self.places = places
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.labels = {NAMESPACE_LABEL: stack, ORCH_STACK_LABEL: stack}

    def error(self, path: Path, msg: str) -> None:
        self.errors.append(Diagnostic(self.places.find(path), path_str(path), msg))

    def warn(self, path: Path, msg: str) -> None:
        self.warnings.append(Diagnostic(self.places.find(path), path_str(path), msg))

    def scoped(self, key: str, given: str | None, external: bool) -> str:
        if given:
            return given
        return key if external else f"{self.stack}_{key}"

    def name_ok(self, path: Path, name: str) -> bool:
        try:
            _NAME.validate_python(name)
            return True
        except PydanticValidationError as e:
            _, msg = ApiValidationError.from_pydantic(e).errors[0]
            self.error(path, f"name {name}: {msg}")
            return False

    # -- top-level objects

    def network_names(self) -> dict[str, str]:
        names = {k: self.scoped(k, n.name, n.external) for k, n in self.p.networks.items()}
        names.setdefault(DEFAULT_NETWORK, f"{self.stack}_{DEFAULT_NETWORK}")
        return names

    def networks(self, used: set[str]) -> list[StackNetwork]:
        out = []
        names = self.network_names()
        keys = list(self.p.networks)
        if DEFAULT_NETWORK in used and DEFAULT_NETWORK not in self.p.networks:
            keys.append(DEFAULT_NETWORK)
        for key in keys:
            net = self.p.networks.get(key)
            name = names[key]
            path: Path = ("networks", key)
            if net is not None and net.external:
                out.append(StackNetwork(key, name, True, None))
                continue
            if net is None:
                data: dict[str, Any] = {"name": name, "labels": self.labels}
            else:
                data = {"name": name, "labels": {**net.labels, **self.labels}, "attachable": net.attachable,
                        "internal": net.internal, "options": dict(net.driver_opts),
                        "ipam": [IPAMConfig(subnet=c.subnet, gateway=c.gateway or "", ip_range=c.ip_range or "")
                                 for c in (net.ipam.config if net.ipam else ())]}
            try:
                out.append(StackNetwork(key, name, False, NetworkSpec.model_validate(data)))
            except PydanticValidationError as e:
                for p, msg in ApiValidationError.from_pydantic(e).errors:
                    self.error(path, f"{p}: {msg}" if p else msg)
        return out

    def volumes(self) -> list[StackVolume]:
        out = []
        for key, vol in self.p.volumes.items():
            name = self.scoped(key, vol.name, vol.external)
            if self.name_ok(("volumes", key), name):
                out.append(StackVolume(key, name, vol.external, vol.driver or "local", dict(vol.driver_opts),
                                       {} if vol.external else {**vol.labels, **self.labels}))
        return out

    def blobs(self, kind: str) -> list[StackBlob]:
        out = []
        table = self.p.secrets if kind == "secret" else self.p.configs
        for key, obj in table.items():
            path: Path = (f"{kind}s", key)
            name = self.scoped(key, obj.name, obj.external)
            if not self.name_ok(path, name):
                continue
            if obj.external:
                out.append(StackBlob(kind, key, name, True))
                continue
            labels = {**obj.labels, **self.labels}
            data: bytes | None = None
            if obj.environment is not None:
                value = self.env.get(obj.environment)
                if value is None:
                    self.error((*path, "environment"), f"variable {obj.environment} is not set")
                    continue
                data = value.encode()
            elif isinstance(obj, Config) and obj.content is not None:
                data = obj.content.encode()
            blob = StackBlob(kind, key, name, False, labels, obj.file, data)
            if data is not None:
                try:
                    blob.spec()
                except ApiValidationError as e:
                    for p, msg in e.errors:
                        self.error(path, f"{p}: {msg}" if p else msg)
                    continue
            out.append(blob)
        return out

    # -- services

    def service(self, key: str, svc: Service, net_names: dict[str, str]) -> StackService | None:
        path: Path = ("services", key)
        extras: dict[str, Any] = {}
        c: dict[str, Any] = {
            "image": svc.image,
            "command": list(svc.entrypoint or ()),  # ContainerSpec.command replaces the image's Entrypoint
            "args": list(svc.command or ()),
            "env": [f"{k}={v}" for k, v in sorted(svc.environment.items())],
            "dir": svc.working_dir or "",
            "user": svc.user or "",
            "hostname": svc.hostname or "",
            "labels": {**svc.labels, **self.labels},
            "mounts": self.mounts(key, svc, extras),
            "secrets": [self.file_ref("secret", r) for r in svc.secrets],
            "configs": [self.file_ref("config", r) for r in svc.configs],
            "stop_signal": svc.stop_signal or "",
            "read_only": svc.read_only,
            "cap_add": list(svc.cap_add),
            "cap_drop": list(svc.cap_drop),
            "privileged": svc.privileged,
            "init": svc.init,
            "devices": [{"host": d.source, "container": d.target or "", "permissions": d.permissions or "rwm"}
                        for d in svc.devices],
            "sysctls": dict(svc.sysctls),
            "ulimits": [{"name": k, "soft": u.soft, "hard": u.hard} for k, u in svc.ulimits.items()],
        }
        if svc.stop_grace_period is not None:
            c["stop_grace_period"] = svc.stop_grace_period
        hc = self.healthcheck(key, svc, extras)
        if hc is not None:
            c["healthcheck"] = hc
        d = svc.deploy
        task: dict[str, Any] = {"container": c, "networks": self.attachments(key, svc, net_names)}
        spec: dict[str, Any] = {"name": f"{self.stack}_{key}", "labels": {**(d.labels if d else {}), **self.labels},
                                "task": task}
        if d is not None:
            if d.mode is not None:
                spec["mode"] = d.mode
            if d.replicas is not None:
                spec["replicas"] = d.replicas
            if d.endpoint_mode is not None:
                spec["endpoint_spec"] = {"mode": d.endpoint_mode}
            if d.resources is not None:
                res: dict[str, Any] = {}
                for part, cfg in (("limits", d.resources.limits), ("reservations", d.resources.reservations)):
                    if cfg is None:
                        continue
                    r: dict[str, Any] = {}
                    if cfg.cpus is not None:
                        r["nano_cpus"] = round(cfg.cpus * 1e9)
                    if cfg.memory is not None:
                        r["memory_bytes"] = cfg.memory
                    if getattr(cfg, "pids", None) is not None:
                        r["pids"] = cfg.pids  # type: ignore[union-attr]
                    res[part] = r
                task["resources"] = res
            if d.restart_policy is not None:
                task["restart_policy"] = _set_fields(d.restart_policy)
            if d.placement is not None:
                task["placement"] = {"constraints": list(d.placement.constraints),
                                     "preferences": [p.spread for p in d.placement.preferences],
                                     "max_replicas": d.placement.max_replicas_per_node or 0}
            for name in ("update_config", "rollback_config"):
                cfg = getattr(d, name)
                if cfg is not None:
                    spec[name] = _set_fields(cfg)
        if spec.get("mode") == ServiceMode.REPLICATED_JOB and "replicas" not in spec:
            spec["replicas"] = 1
        for f in ("extra_hosts", "security_opt"):
            v = getattr(svc, f)
            if v:
                extras[f] = v
        try:
            service_spec = ServiceSpec.model_validate(spec)
        except PydanticValidationError as e:
            worded = ApiValidationError.from_pydantic(e).errors
            for err, (p, msg) in zip(e.errors(include_url=False), worded):
                where = _compose_path(svc, tuple(err["loc"]))
                self.error((*path, *where), f"{p}: {msg}" if p else msg)
            return None
        ports = tuple(PublishedPort(p.target, p.published or 0, p.protocol.value, p.mode.value, p.name or "")
                      for p in svc.ports)
        deps = {k: v.condition.value for k, v in svc.depends_on.items()}
        return StackService(key, service_spec, ports, deps, extras)

    def attachments(self, key: str, svc: Service, net_names: dict[str, str]) -> list[dict[str, Any]]:
        nets = svc.networks or {DEFAULT_NETWORK: ServiceNetwork()}
        out = []
        for net, cfg in nets.items():
            aliases = list(dict.fromkeys([key, *cfg.aliases]))
            out.append({"target": net_names[net], "aliases": aliases})
        return out

    def mounts(self, key: str, svc: Service, extras: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, v in enumerate(svc.volumes):
            m: dict[str, Any] = {"type": v.type.value, "target": v.target, "readonly": v.read_only}
            if v.type == VolumeType.VOLUME and v.source:
                vol = self.p.volumes.get(v.source)
                m["source"] = self.scoped(v.source, vol.name, vol.external) if vol else f"{self.stack}_{v.source}"
            elif v.type == VolumeType.BIND:
                m["source"] = v.source
            if v.tmpfs is not None:
                if v.tmpfs.size is not None:
                    m["tmpfs_size"] = v.tmpfs.size
                if v.tmpfs.mode is not None:
                    m["tmpfs_mode"] = v.tmpfs.mode
            for opt in ("bind", "volume"):
                o = getattr(v, opt)
                if o is not None and o.model_dump(exclude_defaults=True):
                    extras[f"volumes[{i}].{opt}"] = o
            out.append(m)
        for i, item in enumerate(svc.tmpfs):
            target, size, mode, other = tmpfs_options(item)
            m = {"type": "tmpfs", "target": target}
            if size is not None:
                m["tmpfs_size"] = size
            if mode is not None:
                m["tmpfs_mode"] = mode
            if other:
                extras[f"tmpfs[{i}]"] = other
            out.append(m)
        return out

    def file_ref(self, kind: str, ref: Any) -> dict[str, Any]:
        table = self.p.secrets if kind == "secret" else self.p.configs
        obj = table.get(ref.source)
        name = self.scoped(ref.source, obj.name, obj.external) if obj else f"{self.stack}_{ref.source}"
        # As Swarm: a secret's relative target is under /run/secrets, a
        # config's under /; nodes take targets as absolute paths.
        target = ref.target or ref.source
        if not target.startswith("/"):
            target = (SECRETS_DIR if kind == "secret" else "/") + target
        out: dict[str, Any] = {f"{kind}_id": name, f"{kind}_name": name, "target": target}
        if ref.uid is not None:
            out["uid"] = ref.uid
        if ref.gid is not None:
            out["gid"] = ref.gid
        if ref.mode is not None:
            out["mode"] = ref.mode
        return out

    def healthcheck(self, key: str, svc: Service, extras: dict[str, Any]) -> dict[str, Any] | None:
        h = svc.healthcheck
        if h is None:
            return None
        if h.disable or h.test == ("NONE",):
            return {"test": ["NONE"]}
        if h.start_interval is not None:
            extras["healthcheck.start_interval"] = h.start_interval
        if h.test is None:
            self.warn(("services", key, "healthcheck"), "ignored: without a test orch cannot retune the image's "
                      "healthcheck; give test as well")
            return None
        out: dict[str, Any] = {"test": list(h.test)}
        for f in ("interval", "timeout", "start_period", "retries"):
            if getattr(h, f) is not None:
                out[f] = getattr(h, f)
        return out


def _compose_path(svc: Service, loc: tuple[Any, ...]) -> Path:
    """Where in the service's compose entry the part of ServiceSpec at
    `loc` came from (as near as it can be told)."""
    head, rest = loc[:3], loc[3:]
    if loc[:2] == ("task", "networks") and len(loc) > 2:
        keys = list(svc.networks or [DEFAULT_NETWORK])
        return ("networks", keys[loc[2]]) if loc[2] < len(keys) and svc.networks else ()
    if head[:2] == ("task", "container") and len(loc) > 2:
        field_ = loc[2]
        if field_ == "mounts" and rest:
            i = rest[0]
            return ("volumes", i) if i < len(svc.volumes) else ("tmpfs", i - len(svc.volumes))
        simple = {"env": "environment", "labels": "labels", "healthcheck": "healthcheck", "image": "image",
                  "secrets": "secrets", "configs": "configs", "command": "entrypoint", "args": "command",
                  "dir": "working_dir", "user": "user", "hostname": "hostname"}
        if field_ in simple:
            return (simple[field_], *rest[:1]) if field_ in ("secrets", "configs") else (simple[field_],)
        if field_ in ("cap_add", "cap_drop", "devices", "sysctls", "privileged", "init"):
            return (field_, *rest[:1]) if field_ == "devices" else (field_,)
        if field_ == "ulimits":
            keys = list(svc.ulimits)
            return ("ulimits", keys[rest[0]]) if rest and rest[0] < len(keys) else ("ulimits",)
    if loc[:1] in (("update_config",), ("rollback_config",)):
        return ("deploy", loc[0])
    if loc[:2] in (("task", "resources"), ("task", "restart_policy"), ("task", "placement")):
        return ("deploy", loc[1])
    return ()


def _set_fields(model: Any) -> dict[str, Any]:
    return {k: v for k, v in model if v is not None}


def to_specs(project: Project, stack_name: str, *, environment: Mapping[str, str] | None = None,
             places: SourceMap | None = None) -> StackSpecs:
    """orch's objects for `project` deployed as stack `stack_name`.
    `environment` gives the values of secrets and configs with an
    `environment:` source (use `Loaded.environment`); `places` (from
    `Loaded.places`) puts file:line:col on errors. Raises ComposeError."""
    conv = _Converter(project, stack_name, environment or {}, places or SourceMap())
    if not conv.name_ok((), stack_name):
        raise ComposeError(conv.errors)
    net_names = conv.network_names()
    used = {n for s in project.services.values() for n in (s.networks or [DEFAULT_NETWORK])}
    networks = conv.networks(used)
    volumes = conv.volumes()
    secrets = conv.blobs("secret")
    configs = conv.blobs("config")
    services = [s for k, svc in project.services.items() if (s := conv.service(k, svc, net_names)) is not None]
    if conv.errors:
        raise ComposeError(sorted_problems(conv.errors))
    return StackSpecs(tuple(services), tuple(networks), tuple(secrets), tuple(configs), tuple(volumes),
                      tuple(conv.warnings), stack_name)
