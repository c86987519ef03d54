"""Stacks on the wire: what `orch stack deploy` sends a manager, and the
plan it answers.

The client parses the compose files (`api.compose`), reads the secret and
config files they name, and sends a `StackRequest`: every object of the
stack as orch's own specs, with references by name (a service's networks,
secrets and configs name them; the manager resolves them to ids, inside the
one transaction that applies the stack). The manager compares it with what
exists and answers a `StackPlan`: one `PlanEntry` per object (create,
update with a field-level diff, delete, unchanged), which `plan` only shows
and `deploy` applies.

`build_request` turns the parser's `StackSpecs` into a request (the client's
side); `field_changes` is the field-level diff both sides use.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError

from .compose.convert import NAMESPACE_LABEL, ORCH_STACK_LABEL, StackSpecs
from .compose.diagnostics import ComposeError, Diagnostic
from .compose.loader import SourceMap
from .errors import ValidationError, field_path
from .objects import LabelsField, Model, NetworkSpec, PortConfig, ServiceSpec, evolve
from .validation import Bytes, Name

__all__ = [
    "IMAGE_LABEL", "LOGICAL_LABEL", "DIGEST_LABEL", "NAMESPACE_LABEL", "ORCH_STACK_LABEL",
    "ResolveImage", "StackServiceRequest", "StackNetworkRequest", "StackBlobRequest", "StackVolumeRequest",
    "StackRequest", "build_request", "unapplied",
    "FieldChange", "PlanAction", "PlanEntry", "StackPlan", "field_changes", "stack_labels",
]

IMAGE_LABEL = "com.docker.stack.image"
"""A stack service's image as the file names it (as `docker stack deploy`):
the spec's image is pinned to a digest, this says what to resolve again."""
LOGICAL_LABEL = "orch.stack.object"
"""A stack secret's or config's name in the stack (STACK_key), on each of
its immutable versions (named STACK_key-<digest>)."""
DIGEST_LABEL = "orch.stack.digest"
"""The content digest of a secret or config version (8 hex digits)."""


def stack_labels(stack: str) -> dict[str, str]:
    """The labels that make an object part of stack `stack`."""
    return {NAMESPACE_LABEL: stack, ORCH_STACK_LABEL: stack}


class ResolveImage(enum.StrEnum):
    """When a deploy asks the registry for the digest of a service's image
    tag (as `docker stack deploy --resolve-image`)."""

    ALWAYS = "always"  # every service, every deploy: a moved tag rolls the service
    CHANGED = "changed"  # only services whose image (as written) changed, and new ones
    NEVER = "never"  # never: new images run as written, others keep their digest


# -- the request -----------------------------------------------------------------


class StackServiceRequest(Model):
    key: str = Field(min_length=1)  # its name in the file: its short name on the stack's networks
    # Network targets, secret and config ids are names here (the manager
    # resolves them); the image is as written.
    spec: ServiceSpec
    depends_on: LabelsField  # key of another service -> condition


class StackNetworkRequest(Model):
    key: str = Field(min_length=1)
    name: Name
    external: bool = False
    spec: NetworkSpec | None = None  # None when external

    @model_validator(mode="after")
    def _spec(self) -> StackNetworkRequest:
        if not self.external and self.spec is None:
            raise PydanticCustomError("network_spec", "a network of the stack needs a spec (only external ones have none)")
        return self


class StackBlobRequest(Model):
    """A secret or config: external (it must exist) or with its data."""

    key: str = Field(min_length=1)
    name: Name
    external: bool = False
    labels: LabelsField
    data: Bytes | None = None

    def __repr_args__(self) -> Any:
        for k, v in super().__repr_args__():
            yield (k, f"<{len(v)} bytes>" if k == "data" and v is not None else v)

    @model_validator(mode="after")
    def _data(self) -> StackBlobRequest:
        if not self.external and self.data is None:
            raise PydanticCustomError("blob_data", "data is required unless the object is external")
        return self


class StackVolumeRequest(Model):
    key: str = Field(min_length=1)
    name: Name
    external: bool = False
    driver: str = "local"
    driver_opts: LabelsField
    labels: LabelsField


def _unique(items: Sequence[Any], what: str) -> None:
    seen: dict[str, int] = {}
    for i, x in enumerate(items):
        if x.key in seen:
            raise PydanticCustomError("stack_key_twice", "{what}[{i}]: key {key} is given twice (also [{j}])",
                                      {"what": what, "i": i, "j": seen[x.key], "key": x.key})
        seen[x.key] = i


class StackRequest(Model):
    """POST /v1/stacks/{name}/plan and /deploy."""

    services: tuple[StackServiceRequest, ...] = ()
    networks: tuple[StackNetworkRequest, ...] = ()
    secrets: tuple[StackBlobRequest, ...] = ()
    configs: tuple[StackBlobRequest, ...] = ()
    volumes: tuple[StackVolumeRequest, ...] = ()
    labels: LabelsField
    compose: str = ""  # the normalised compose file (`orch stack config`), kept with the stack
    prune: bool = False  # remove the stack's objects the request no longer names
    resolve_image: ResolveImage = ResolveImage.ALWAYS
    check_version: int | None = Field(None, ge=0)  # refuse unless the stack is at this version (0: new)

    @field_validator("services", "networks", "secrets", "configs", "volumes")
    @classmethod
    def _keys(cls, v: tuple[Any, ...], info: Any) -> tuple[Any, ...]:
        _unique(v, info.field_name)
        return v


def _port(p: Any) -> dict[str, Any]:
    return {"target_port": p.target, "published_port": p.published, "protocol": p.protocol,
            "publish_mode": p.mode, "name": p.name}


def build_request(specs: StackSpecs, *, read_file: Callable[[str], bytes], compose: str = "",
                  places: SourceMap | None = None, prune: bool = False,
                  resolve_image: ResolveImage | str = ResolveImage.ALWAYS,
                  check_version: int | None = None) -> StackRequest:
    """The deploy request for `specs` (from `api.compose.to_specs`).
    `read_file` reads a secret's or config's file (the caller's I/O); a
    file that cannot be read, and ports orch's model refuses, are
    ComposeErrors at their place in the compose files."""
    places = places or SourceMap()
    errors: list[Diagnostic] = []
    services = []
    for s in specs.services:
        spec = s.spec
        if s.ports:
            try:
                ports = tuple(PortConfig.model_validate(_port(p)) for p in s.ports)
                spec = evolve(spec, endpoint_spec=evolve(spec.endpoint_spec, ports=ports))
                ServiceSpec.model_validate(spec.model_dump())  # the ports together (one listener per port)
            except PydanticValidationError as e:
                for p, msg in ValidationError.from_pydantic(e).errors:
                    path = ("services", s.key, "ports")
                    errors.append(Diagnostic(places.find(path), field_path(path), f"{p}: {msg}" if p else msg))
                continue
        services.append(StackServiceRequest(key=s.key, spec=spec, depends_on=dict(s.depends_on)))
    blobs: dict[str, list[StackBlobRequest]] = {"secret": [], "config": []}
    for b in (*specs.secrets, *specs.configs):
        data = b.data
        if not b.external and data is None and b.file is not None:
            try:
                data = read_file(b.file)
            except OSError as e:
                path = (f"{b.kind}s", b.key, "file")
                errors.append(Diagnostic(places.find(path), field_path(path),
                                         f"cannot read {b.file}: {e.strerror or e}"))
                continue
        blobs[b.kind].append(StackBlobRequest(key=b.key, name=b.name, external=b.external, labels=dict(b.labels),
                                              data=None if b.external else data))
    if errors:
        raise ComposeError(errors)
    return StackRequest(
        services=tuple(services),
        networks=tuple(StackNetworkRequest(key=n.key, name=n.name, external=n.external, spec=n.spec)
                       for n in specs.networks),
        secrets=tuple(blobs["secret"]), configs=tuple(blobs["config"]),
        volumes=tuple(StackVolumeRequest(key=v.key, name=v.name, external=v.external, driver=v.driver,
                                         driver_opts=dict(v.driver_opts), labels=dict(v.labels))
                      for v in specs.volumes),
        compose=compose, prune=prune, resolve_image=ResolveImage(resolve_image), check_version=check_version)


def unapplied(specs: StackSpecs, places: SourceMap | None = None) -> list[Diagnostic]:
    """One warning per compose field the parser accepted that orch's
    service model cannot carry yet (`StackService.extras`: extra_hosts,
    security_opt, bind options, ...): the deploy goes on without them."""
    places = places or SourceMap()
    out = []
    for s in specs.services:
        for k in s.extras:
            head = k.split(".")[0].split("[")[0]
            out.append(Diagnostic(places.find(("services", s.key, head)), f"services.{s.key}.{k}",
                                  "not applied: orch's services have no such setting yet; deployed without it"))
    return out


# -- the plan ----------------------------------------------------------------------


class PlanAction(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    UNCHANGED = "unchanged"


class FieldChange(Model):
    """One field of a spec that a deploy changes: `path` as in the
    object's spec ("task.container.env[1]"), its JSON values before and
    after (None: absent)."""

    path: str
    old: Any = None
    new: Any = None


class PlanEntry(Model):
    """What a deploy does to one object of the stack."""

    kind: str  # service | network | secret | config
    name: str  # its name in the stack (a secret's or config's logical name)
    action: PlanAction
    id: str = ""  # the object's id, when it exists or is made by the deploy
    object: str = ""  # the stored object's name, when it differs (a secret's version)
    changes: tuple[FieldChange, ...] = ()
    tasks_started: int = 0  # services: tasks the change starts (new replicas)
    tasks_replaced: int = 0  # services: running tasks replaced by new ones (the task template changed)
    tasks_stopped: int = 0  # services: tasks stopped (fewer replicas, or the service removed)
    new_digest: str = ""  # services: the digest the image's tag resolves to now, when it moved
    note: str = ""


class StackPlan(Model):
    """The answer to plan and deploy: `version` is the stack's version
    before the deploy (0: it does not exist); deploying with
    `check_version=version` applies exactly this plan or nothing."""

    stack: str
    version: int = 0
    entries: tuple[PlanEntry, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return any(e.action != PlanAction.UNCHANGED for e in self.entries)


def field_changes(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """The leaves that differ between two JSON values: mappings key by
    key, lists of equal length item by item, anything else as a whole."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[FieldChange] = []
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{k}" if path else str(k)
            out += field_changes(old.get(k), new.get(k), sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new)):
            out += field_changes(a, b, f"{path}[{i}]")
        return out
    return [FieldChange(path=path, old=old, new=new)]
