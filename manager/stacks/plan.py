"""The stack planner: a deploy request and the store as it is -> what a
deploy would do, as plan entries for people and store operations for the
one transaction that applies it. Sans-I/O: no clock, no registry, no key
files; the caller passes the time, the images it resolved and the
secrets key.

What a stack owns is found by name and label: objects named `STACK_x` and
labelled `com.docker.stack.namespace=STACK`. An object with a stack's
name but not its label is someone else's, and the deploy is refused.

- Networks: created; updated in place where that is safe (labels,
  attachable); a change of what the dataplane was built from (subnet,
  internal, options) replaces a network nobody uses and is refused for one
  in use. External networks must exist.
- Secrets and configs: immutable versions named `STACK_key-<digest>` (the
  content's; keyed with the cluster's secrets key for secrets, so a
  version's name says nothing about its content), the logical name in a
  label. Changed content makes a new version, the services using it switch
  to it (and roll). Versions the deploy leaves unused are deleted in the
  same transaction when nothing uses them, else left to the stack reaper.
- Services: created or updated as `orch service update` does (a changed
  task template or published ports bumps spec_version: tasks roll with the
  update config); names of networks, secrets and configs are resolved to
  ids, those made in the same transaction included.
- With `prune`, objects of the stack the request no longer names are
  deleted (those still in use wait in the stack's garbage); without it they
  stay, listed as unchanged.

`plan_deploy`, `plan_remove` and `reap` are the three entry points.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError as PydanticValidationError

from api import codec
from api.errors import ValidationError
from api.objects import (
    Config,
    ConfigReference,
    ConfigSpec,
    EndpointMode,
    Meta,
    Network,
    NodeAvailability,
    NodeState,
    PublishMode,
    Secret,
    SecretReference,
    SecretSpec,
    Service,
    ServiceMode,
    ServiceSpec,
    Stack,
    StackDependency,
    StackResource,
    StackResourceKind,
    StackSpec,
    Task,
    UpdateState,
    UpdateStatus,
    evolve,
    port_conflict,
    trim_endpoint,
)
from api.stacks import (
    DIGEST_LABEL,
    IMAGE_LABEL,
    LOGICAL_LABEL,
    NAMESPACE_LABEL,
    FieldChange,
    PlanAction,
    PlanEntry,
    ResolveImage,
    StackBlobRequest,
    StackPlan,
    StackRequest,
    StackServiceRequest,
    field_changes,
    stack_labels,
)
from manager import store as store_ops
from scheduler.constraints import ConstraintError, parse_constraint

__all__ = ["StackError", "InvalidStack", "StackConflict", "MissingObject", "SecretKey", "Plan", "View",
           "plan_deploy", "plan_remove", "reap", "images_to_resolve", "in_use", "owned"]

NETWORK_IMMUTABLE = ("driver", "internal", "ipam", "options", "ingress")
"""NetworkSpec fields the dataplane is built from: never changed under tasks."""


class StackError(Exception):
    """A deploy or removal refused, with the reason; `field` names the
    part of the request (services.web.task.networks[0])."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidStack(StackError):
    """The request cannot be applied as written (400)."""


class StackConflict(StackError):
    """The request conflicts with the cluster's state: a name or port taken,
    the stack at another version, a network in use (409)."""


class MissingObject(StackError):
    """An external network, secret or config does not exist (404)."""


class View(Protocol):
    """The part of the store's ReadView the planner reads."""

    def get(self, table: str, id: str) -> Any | None: ...

    def get_by_name(self, table: str, name: str) -> Any | None: ...

    def find(self, table: str, index: str, value: Hashable) -> list[Any]: ...

    def list(self, table: str) -> list[Any]: ...


@dataclass(frozen=True)
class SecretKey:
    """The cluster's secrets key and how it is used here: to seal a new
    secret version's payload and to name versions by a keyed digest."""

    key: bytes
    seal: Callable[[bytes, str, bytes], bytes]  # pki.secretbox.seal(key, secret_id, data)

    def digest(self, data: bytes) -> str:
        return hmac.new(self.key, b"orch-stack-secret\0" + data, hashlib.sha256).hexdigest()[:8]


def config_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:8]


@dataclass
class Plan:
    """What a deploy (or removal) would do: `entries` to show, `ops` to
    commit as one transaction, the stack object as it leaves it."""

    stack: str
    version: int  # before
    entries: list[PlanEntry] = field(default_factory=list)
    ops: list[store_ops.Op] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    services: dict[str, str] = field(default_factory=dict)  # service name -> id (the stack's, as it leaves them)

    @property
    def changed(self) -> bool:
        return any(e.action != PlanAction.UNCHANGED for e in self.entries)

    def public(self) -> StackPlan:
        return StackPlan(stack=self.stack, version=self.version, entries=tuple(self.entries),
                         warnings=tuple(self.warnings))


# -- what a stack owns, and what is in use --------------------------------------------


def owned(view: View, table: str, stack: str) -> list[Any]:
    """The objects of `table` labelled as stack `stack`'s, by name."""
    return sorted(view.find(table, "label", (NAMESPACE_LABEL, stack)), key=lambda o: (o.spec.name, o.id))


def _live(t: Task) -> bool:
    return not t.status.state.terminal


def _refs(spec: ServiceSpec | None, kind: StackResourceKind) -> set[str]:
    if spec is None:
        return set()
    c = spec.task.container
    if kind == StackResourceKind.SECRET:
        return {r.secret_id for r in c.secrets}
    if kind == StackResourceKind.CONFIG:
        return {r.config_id for r in c.configs}
    return {a.target for a in spec.task.networks}


def _task_refs(t: Task, kind: StackResourceKind) -> set[str]:
    c = t.spec.container
    if kind == StackResourceKind.SECRET:
        return {r.secret_id for r in c.secrets}
    if kind == StackResourceKind.CONFIG:
        return {r.config_id for r in c.configs}
    return {a.network_id for a in t.networks} | {a.target for a in t.spec.networks}


@dataclass
class _Usage:
    """Who uses objects of one kind: services (spec or rollback spec) and
    tasks that have not ended, by object id."""

    services: dict[str, set[str]] = field(default_factory=dict)  # id -> service names
    rollbacks: dict[str, set[str]] = field(default_factory=dict)  # id -> services whose rollback spec uses it
    tasks: dict[str, int] = field(default_factory=dict)  # id -> live tasks

    def reason(self, oid: str) -> str:
        parts = []
        if self.services.get(oid):
            parts.append(f"service(s) {', '.join(sorted(self.services[oid]))}")
        if self.rollbacks.get(oid):
            parts.append(f"the rollback spec of {', '.join(sorted(self.rollbacks[oid]))}")
        if self.tasks.get(oid):
            parts.append(f"{self.tasks[oid]} task(s) not yet stopped")
        return ", ".join(parts)


def _usage(services: Iterable[Service], tasks: Iterable[Task], kind: StackResourceKind) -> _Usage:
    u = _Usage()
    for s in services:
        now = _refs(s.spec, kind)
        for oid in now:
            u.services.setdefault(oid, set()).add(s.spec.name)
        for oid in _refs(s.previous_spec, kind) - now:
            u.rollbacks.setdefault(oid, set()).add(s.spec.name)
    for t in tasks:
        if _live(t):
            for oid in _task_refs(t, kind):
                u.tasks[oid] = u.tasks.get(oid, 0) + 1
    return u


def in_use(view: View, res: StackResource) -> str:
    """Why `res` cannot be deleted yet ("" when it can): a service refers
    to it (its spec, or the spec a rollback returns to) or a task that has
    not ended does (mounts it, or has an address on the network)."""
    if res.kind == StackResourceKind.SERVICE:
        return ""
    if res.kind == StackResourceKind.NETWORK:
        tasks = [t for t in view.find("tasks", "network", res.id) if _live(t)]
    else:
        tasks = [t for t in view.list("tasks") if _live(t)]
    return _usage(view.list("services"), tasks, res.kind).reason(res.id)


# -- images ------------------------------------------------------------------------


def _unpinned(image: str) -> str:
    return image.split("@", 1)[0]


def images_to_resolve(req: StackRequest, stack: str, view: View) -> set[str]:
    """The images (as written) the registry must be asked about for this
    request, by its resolve_image mode."""
    if req.resolve_image == ResolveImage.NEVER:
        return set()
    out = set()
    for s in req.services:
        image = s.spec.task.container.image
        if "@" in image:
            continue
        if req.resolve_image == ResolveImage.CHANGED:
            have = view.get_by_name("services", s.spec.name)
            if have is not None and have.spec.labels.get(IMAGE_LABEL) == image:
                continue
        out.add(image)
    return out


def _pin(image: str, have: Service | None, resolved: Mapping[str, str]) -> str:
    """The image a service runs: the registry's digest when it was asked
    (`resolved`), else what the service runs now if it asked for the same
    image, else the image as written."""
    if "@" in image:
        return image
    if image in resolved:
        return resolved[image]
    if have is not None and have.spec.labels.get(IMAGE_LABEL) == image:
        return have.spec.task.container.image
    return image


# -- deploy ------------------------------------------------------------------------


class _Planner:
    def __init__(self, req: StackRequest, stack: str, view: View, *, now: float, images: Mapping[str, str],
                 secret_key: SecretKey | None, new_id: Callable[[], str]) -> None:
        self.req = req
        self.ns = stack
        self.view = view
        self.now = now
        self.images = images
        self.secret_key = secret_key
        self.new_id = new_id
        self.labels = stack_labels(stack)
        self.stack: Stack | None = view.get_by_name("stacks", stack)
        self.plan = Plan(stack, self.stack.version if self.stack is not None else 0)
        self.deletes: list[store_ops.Op] = []  # after the creates and updates
        self.early: list[store_ops.Op] = []  # before them (a replaced network frees its name)
        self.resources: list[StackResource] = []
        self.garbage: list[StackResource] = []
        # To delete if nothing uses them: (what, its name in the stack, why:
        # "old" version, "pruned", or "pending" removal of an earlier deploy).
        self.candidates: list[tuple[StackResource, str, str]] = []
        self.pending = {g.id for g in self.stack.garbage} if self.stack is not None else set()
        self.stack_ops: list[store_ops.Op] = []
        self.net_ids: dict[str, str] = {}  # network name -> id, as the deploy leaves it
        self.net_names: dict[str, str] = {}  # id -> name, for showing specs
        self.blob_ids: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, logical name) -> (id, stored name)
        self.services: dict[str, Service] = {}  # the stack's services as the deploy leaves them, by id
        self.changed_services: list[tuple[StackServiceRequest, Service]] = []
        self.service_entries: dict[str, PlanEntry] = {}

    def entry(self, **kw: Any) -> PlanEntry:
        e = PlanEntry(**kw)
        self.plan.entries.append(e)
        return e

    def owned_check(self, table: str, obj: Any, where: str) -> None:
        if obj.spec.labels.get(NAMESPACE_LABEL) != self.ns:
            other = obj.spec.labels.get(NAMESPACE_LABEL)
            whose = f"stack {other}'s" if other else "not part of a stack"
            raise StackConflict(f"{where}: a {table.rstrip('s')} named {obj.spec.name} exists and is {whose}, not "
                                f"stack {self.ns}'s: remove it, or give the object another name in the file (name:)",
                                where)

    # -- the whole deploy

    def run(self) -> Plan:
        req = self.req
        if req.check_version is not None and req.check_version != self.plan.version:
            raise StackConflict(
                f"stack {self.ns} is at version {self.plan.version}, not {req.check_version}: it was deployed "
                "since that plan was made; look at `orch stack diff` again and deploy with the version it shows",
                "check_version")
        self.networks()
        self.blobs(StackResourceKind.SECRET, req.secrets)
        self.blobs(StackResourceKind.CONFIG, req.configs)
        for s in req.services:
            self.service(s)
        self.prune_services()
        self.check_ports()
        self.unused_blobs()
        self.stack_object()
        self.plan.ops = self.early + self.plan.ops + self.deletes + self.stack_ops
        return self.plan

    # -- networks

    def networks(self) -> None:
        wanted: set[str] = set()
        for n in self.req.networks:
            where = f"networks.{n.key}"
            if n.external:
                have = self.view.get_by_name("networks", n.name)
                if have is None:
                    raise MissingObject(f"{where}: external network {n.name} does not exist: create it first "
                                        f"(`orch network create {n.name}`), or leave out `external: true` to have "
                                        "the stack make it", where)
                if have.spec.ingress:
                    raise InvalidStack(f"{where}: network {n.name} is the ingress network: services join it by "
                                       "publishing ports (ports:), not as a network", where)
                self.net_ids[n.name] = have.id
                self.net_names[have.id] = n.name
                continue
            assert n.spec is not None
            spec = evolve(n.spec, name=n.name, labels={**n.spec.labels, **self.labels})
            if spec.ingress:
                raise InvalidStack(f"{where}: a stack cannot make an ingress network", where)
            wanted.add(n.name)
            have = self.view.get_by_name("networks", n.name)
            if have is None:
                net = Network(id=self.new_id(), meta=Meta(created_at=self.now, updated_at=self.now), spec=spec)
                self.plan.ops.append(store_ops.Create("networks", net))
                self.entry(kind="network", name=n.name, action=PlanAction.CREATE, id=net.id)
                self.own(StackResourceKind.NETWORK, net.id, n.name, n.key)
                continue
            self.owned_check("networks", have, where)
            self.own(StackResourceKind.NETWORK, have.id, n.name, n.key)
            if have.spec == spec:
                self.entry(kind="network", name=n.name, action=PlanAction.UNCHANGED, id=have.id)
                continue
            changes = field_changes(have.spec.model_dump(mode="json"), spec.model_dump(mode="json"))
            fixed = [c for c in changes if c.path.split(".")[0].split("[")[0] in NETWORK_IMMUTABLE]
            if not fixed:
                self.plan.ops.append(store_ops.Update("networks", evolve(have, spec=spec)))
                self.entry(kind="network", name=n.name, action=PlanAction.UPDATE, id=have.id, changes=tuple(changes))
                continue
            users = self.network_users(have.id)
            if users:
                c = fixed[0]
                raise StackConflict(
                    f"{where}: {c.path} cannot change ({_show(c.old)} -> {_show(c.new)}) while network {n.name} is "
                    f"in use (by {users}): a network is never rebuilt under running tasks. Remove what uses it "
                    "first, or give the network another name in the file", where)
            # No task is on it: replace it (same name, new id) in the same transaction.
            net = Network(id=self.new_id(), meta=Meta(created_at=self.now, updated_at=self.now), spec=spec)
            self.early.append(store_ops.Delete("networks", have.id))
            self.plan.ops.append(store_ops.Create("networks", net))
            self.resources = [r for r in self.resources if r.id != have.id]
            self.own(StackResourceKind.NETWORK, net.id, n.name, n.key)
            self.entry(kind="network", name=n.name, action=PlanAction.UPDATE, id=net.id, changes=tuple(changes),
                       note="replaced by a new network (nothing uses it)")
        for have in owned(self.view, "networks", self.ns):
            if have.spec.name in wanted:
                continue
            res = StackResource(kind=StackResourceKind.NETWORK, id=have.id, name=have.spec.name,
                                key=self.key_of(have.id))
            self.leftover(res, have.spec.name)

    def network_users(self, nid: str) -> str:
        """Who keeps a network from being rebuilt: tasks with an address on
        it, services outside the stack (the stack's own are pointed at the
        new network in the same transaction)."""
        services = sorted(s.spec.name for s in self.view.list("services")
                          if nid in _refs(s.spec, StackResourceKind.NETWORK)
                          and s.spec.labels.get(NAMESPACE_LABEL) != self.ns)
        tasks = [t for t in self.view.find("tasks", "network", nid) if _live(t)]
        parts = ([f"service(s) {', '.join(services)}"] if services else []) + (
            [f"{len(tasks)} task(s) with an address on it"] if tasks else [])
        return " and ".join(parts)

    def own(self, kind: StackResourceKind, oid: str, name: str, key: str) -> None:
        self.resources.append(StackResource(kind=kind, id=oid, name=name, key=key))
        if kind == StackResourceKind.NETWORK:
            self.net_ids[name] = oid
            self.net_names[oid] = name

    def key_of(self, oid: str) -> str:
        if self.stack is not None:
            for r in (*self.stack.resources, *self.stack.garbage):
                if r.id == oid:
                    return r.key
        return ""

    def leftover(self, res: StackResource, label: str) -> None:
        """An object of the stack the file no longer names: kept without
        --prune, else removed (refused while a service outside the stack
        uses it). One an earlier deploy already gave up is removed in any case."""
        if res.id in self.pending:
            self.candidates.append((res, label, "pending"))
            return
        if not self.req.prune:
            self.keep(res, res.kind.value, label)
            return
        outside = sorted(s.spec.name for s in self.view.list("services")
                         if res.id in _refs(s.spec, res.kind) and s.spec.labels.get(NAMESPACE_LABEL) != self.ns)
        if outside:
            raise StackConflict(f"{res.kind.table}: {res.kind} {label} is no longer in the file but service(s) "
                                f"{', '.join(outside)} outside stack {self.ns} use it: --prune removes it only once "
                                "they no longer do", res.kind.table)
        self.candidates.append((res, label, "pruned"))

    def keep(self, res: StackResource, kind: str, name: str | None = None) -> None:
        """An object of the stack the file no longer names, without --prune."""
        self.resources.append(res)
        if res.kind == StackResourceKind.NETWORK:
            self.net_names[res.id] = res.name
        self.entry(kind=kind, name=name or res.name, action=PlanAction.UNCHANGED, id=res.id,
                   note="no longer in the file: kept (deploy with --prune to remove it)")

    # -- secrets and configs

    def blobs(self, kind: StackResourceKind, wanted: tuple[StackBlobRequest, ...]) -> None:
        table = kind.table
        versions: dict[str, list[Any]] = {}
        for o in owned(self.view, table, self.ns):
            versions.setdefault(o.spec.labels.get(LOGICAL_LABEL, o.spec.name), []).append(o)
        names = set()
        for b in wanted:
            where = f"{table}.{b.key}"
            if b.external:
                have = self.view.get_by_name(table, b.name)
                if have is None:
                    raise MissingObject(f"{where}: external {kind} {b.name} does not exist: create it first "
                                        f"(`orch {kind} create {b.name} FILE`), or leave out `external: true`", where)
                self.blob_ids[(kind, b.name)] = (have.id, have.spec.name)
                continue
            names.add(b.name)
            self.blob(kind, b, versions.get(b.name, []), where)
        for logical, objs in sorted(versions.items()):
            if logical in names:
                continue
            for o in objs:
                self.leftover(StackResource(kind=kind, id=o.id, name=o.spec.name, key=self.key_of(o.id)), logical)

    def blob(self, kind: StackResourceKind, b: StackBlobRequest, versions: list[Any], where: str) -> None:
        table = kind.table
        assert b.data is not None
        if kind == StackResourceKind.SECRET:
            if self.secret_key is None:
                raise StackConflict(f"{where}: secrets need a cluster made with `orch init` (this manager has no "
                                    "cluster secrets key)", where)
            digest = self.secret_key.digest(b.data)
        else:
            digest = config_digest(b.data)
        stored = f"{b.name}-{digest}"
        labels = {**b.labels, **self.labels, LOGICAL_LABEL: b.name, DIGEST_LABEL: digest}
        model: type[SecretSpec] | type[ConfigSpec] = SecretSpec if kind == StackResourceKind.SECRET else ConfigSpec
        try:
            spec = model(name=stored, labels=labels, data=b.data)
        except PydanticValidationError as e:
            err = ValidationError.from_pydantic(e)
            p, msg = err.errors[0]
            if p == "name":
                raise InvalidStack(f"{where}: name {b.name} is too long for a stack {kind}: its versions are named "
                                   f"{b.name}-<8 hex digits>, which must fit in 64 characters; give it a shorter "
                                   "name (name:)", where) from None
            raise InvalidStack(f"{where}: {p}: {msg}" if p else f"{where}: {msg}", where) from None
        have = next((o for o in versions if o.spec.name == stored), None)
        if have is None:
            other = self.view.get_by_name(table, stored)
            if other is not None:
                self.owned_check(table, other, where)
        old = [o for o in versions if o is not have]
        if have is not None:
            oid = have.id
            if have.spec.labels != spec.labels:
                changes = field_changes({"labels": dict(have.spec.labels)}, {"labels": dict(spec.labels)})
                self.plan.ops.append(store_ops.Update(table, evolve(have, spec=evolve(have.spec, labels=spec.labels))))
                self.entry(kind=kind.value, name=b.name, action=PlanAction.UPDATE, id=oid, object=stored,
                           changes=tuple(changes))
            else:
                self.entry(kind=kind.value, name=b.name, action=PlanAction.UNCHANGED, id=oid, object=stored)
        else:
            oid = self.new_id()
            meta = Meta(created_at=self.now, updated_at=self.now)
            obj: Secret | Config
            if isinstance(spec, SecretSpec):
                assert self.secret_key is not None
                obj = Secret(id=oid, meta=meta, spec=evolve(spec, data=self.secret_key.seal(
                    self.secret_key.key, oid, b.data)))
            else:
                obj = Config(id=oid, meta=meta, spec=spec)
            self.plan.ops.append(store_ops.Create(table, obj))
            current = next((o for o in old if o.id in self.in_stack_refs(kind)), old[-1] if old else None)
            if current is None:
                self.entry(kind=kind.value, name=b.name, action=PlanAction.CREATE, id=oid, object=stored)
            else:
                was = current.spec.labels.get(DIGEST_LABEL, "?")
                self.entry(kind=kind.value, name=b.name, action=PlanAction.UPDATE, id=oid, object=stored,
                           changes=(FieldChange(path="data (digest)", old=was, new=digest),),
                           note=f"new content: new version {stored}; the services using it are updated")
        self.resources.append(StackResource(kind=kind, id=oid, name=stored, key=b.key))
        self.blob_ids[(kind, b.name)] = (oid, stored)
        for o in old:
            res = StackResource(kind=kind, id=o.id, name=o.spec.name, key=b.key)
            self.candidates.append((res, b.name, "old"))

    def in_stack_refs(self, kind: StackResourceKind) -> set[str]:
        out: set[str] = set()
        for s in owned(self.view, "services", self.ns):
            out |= _refs(s.spec, kind)
        return out

    # -- services

    def service(self, s: StackServiceRequest) -> None:
        where = f"services.{s.key}"
        spec = self.desired_service(s, where)
        have = self.view.get_by_name("services", spec.name)
        if have is None:
            svc = Service(id=self.new_id(), meta=Meta(created_at=self.now, updated_at=self.now), spec=spec,
                          spec_version=1)
            self.plan.ops.append(store_ops.Create("services", svc))
            started = spec.replicas if spec.mode in (ServiceMode.REPLICATED, ServiceMode.REPLICATED_JOB) \
                else self.active_nodes()
            e = self.entry(kind="service", name=spec.name, action=PlanAction.CREATE, id=svc.id,
                           tasks_started=started)
            self.services[svc.id] = svc
            self.changed_services.append((s, svc))
            self.service_entries[svc.id] = e
            self.resources.append(StackResource(kind=StackResourceKind.SERVICE, id=svc.id, name=spec.name,
                                                key=s.key))
            return
        self.owned_check("services", have, where)
        self.resources.append(StackResource(kind=StackResourceKind.SERVICE, id=have.id, name=spec.name, key=s.key))
        if spec.mode != have.spec.mode:
            raise InvalidStack(f"{where}: deploy.mode cannot change ({have.spec.mode} -> {spec.mode}): remove the "
                               "service from the file, deploy with --prune, then add it back", where)
        if spec == have.spec:
            self.services[have.id] = have
            self.service_entries[have.id] = self.entry(kind="service", name=spec.name,
                                                       action=PlanAction.UNCHANGED, id=have.id)
            return
        changes: dict[str, Any] = {"spec": spec, "endpoint": trim_endpoint(spec.endpoint_spec, have.endpoint)}
        rolls = spec.task != have.spec.task or spec.endpoint_spec.ports != have.spec.endpoint_spec.ports
        if rolls:
            changes.update(previous_spec=have.spec, spec_version=have.spec_version + 1,
                           update_status=UpdateStatus(state=UpdateState.UPDATING, started_at=self.now,
                                                      message="update in progress (stack deploy)"))
        new = evolve(have, **changes)
        self.plan.ops.append(store_ops.Update("services", new))
        self.services[new.id] = new
        self.changed_services.append((s, new))
        live = len([t for t in self.view.find("tasks", "service_id", have.id)
                    if t.desired_state <= t.desired_state.RUNNING and _live(t)])
        started = replaced = stopped = 0
        if spec.mode == ServiceMode.REPLICATED:
            want = spec.replicas
            started = max(0, want - live)
            stopped = max(0, live - want)
            replaced = min(live, want) if rolls else 0
        elif rolls:
            replaced = live
        digest = ""
        old_image, new_image = have.spec.task.container.image, spec.task.container.image
        if old_image != new_image and "@" in new_image and _unpinned(old_image) == _unpinned(new_image):
            digest = new_image.split("@", 1)[1]
        e = self.entry(kind="service", name=spec.name, action=PlanAction.UPDATE, id=have.id,
                       changes=tuple(self.show_changes(have.spec, spec)), tasks_started=started,
                       tasks_replaced=replaced, tasks_stopped=stopped, new_digest=digest)
        self.service_entries[have.id] = e

    def active_nodes(self) -> int:
        return len([n for n in self.view.list("nodes") if n.status.state == NodeState.READY
                    and n.spec.availability == NodeAvailability.ACTIVE])

    def show_changes(self, old: ServiceSpec, new: ServiceSpec) -> list[FieldChange]:
        """The field-level diff of two service specs, with networks by name
        (ids mean nothing to a reader) and file references by name only."""
        def shown(spec: ServiceSpec) -> dict[str, Any]:
            d = spec.model_dump(mode="json")
            for a in d["task"]["networks"]:
                a["target"] = self.net_names.get(a["target"]) or self.name_of("networks", a["target"])
            for r in d["task"]["container"]["secrets"]:
                r.pop("secret_id")
            for r in d["task"]["container"]["configs"]:
                r.pop("config_id")
            return d
        return field_changes(shown(old), shown(new))

    def name_of(self, table: str, oid: str) -> str:
        o = self.view.get(table, oid)
        return o.spec.name if o is not None else oid

    def desired_service(self, s: StackServiceRequest, where: str) -> ServiceSpec:
        spec = s.spec
        want_name = f"{self.ns}_{s.key}"
        if spec.name != want_name:
            raise InvalidStack(f"{where}: name must be {want_name} (the stack's name, '_', the key), not {spec.name}",
                               f"{where}.name")
        c = spec.task.container
        nets = []
        seen: set[str] = set()
        for i, att in enumerate(spec.task.networks):
            nid = self.net_ids.get(att.target)
            if nid is None:
                raise InvalidStack(f"{where}: task.networks[{i}]: network {att.target} is neither a network of the "
                                   "stack nor an external one", f"{where}.task.networks[{i}]")
            if nid in seen:
                raise InvalidStack(f"{where}: task.networks[{i}]: network {att.target} is given twice",
                                   f"{where}.task.networks[{i}]")
            seen.add(nid)
            nets.append(evolve(att, target=nid))
        secrets = tuple(self.file_ref(StackResourceKind.SECRET, r, i, where) for i, r in enumerate(c.secrets))
        configs = tuple(self.file_ref(StackResourceKind.CONFIG, r, i, where) for i, r in enumerate(c.configs))
        for i, expr in enumerate(spec.task.placement.constraints):
            try:
                parse_constraint(expr, f"{where}: task.placement.constraints[{i}]")
            except ConstraintError as e:
                raise InvalidStack(str(e), f"{where}.task.placement.constraints[{i}]") from None
        for i, p in enumerate(spec.task.placement.preferences):
            if not p.startswith("node.labels.") or len(p) <= len("node.labels."):
                raise InvalidStack(f"{where}: task.placement.preferences[{i}]: spread over node.labels.NAME "
                                   f"(got {p!r})", f"{where}.task.placement.preferences[{i}]")
        have = self.view.get_by_name("services", spec.name)
        image = _pin(c.image, have, self.images)
        container = evolve(c, image=image, secrets=secrets, configs=configs)
        labels = {**spec.labels, **self.labels, IMAGE_LABEL: c.image}
        spec = evolve(spec, labels=labels, task=evolve(spec.task, container=container, networks=tuple(nets)))
        return _with_depends_on(spec, s, self.ns)

    def file_ref(self, kind: StackResourceKind, ref: Any, i: int, where: str) -> Any:
        name = ref.secret_name if kind == StackResourceKind.SECRET else ref.config_name
        got = self.blob_ids.get((kind, name))
        if got is None:
            raise InvalidStack(f"{where}: task.container.{kind.table}[{i}]: {kind} {name} is neither a {kind} of the "
                               "stack nor an external one", f"{where}.task.container.{kind.table}[{i}]")
        oid, stored = got
        if isinstance(ref, SecretReference):
            return evolve(ref, secret_id=oid, secret_name=stored)
        assert isinstance(ref, ConfigReference)
        return evolve(ref, config_id=oid, config_name=stored)

    def prune_services(self) -> None:
        wanted = {f"{self.ns}_{s.key}" for s in self.req.services}
        for have in owned(self.view, "services", self.ns):
            if have.spec.name in wanted:
                continue
            res = StackResource(kind=StackResourceKind.SERVICE, id=have.id, name=have.spec.name,
                                key=self.key_of(have.id))
            if not self.req.prune:
                self.keep(res, "service")
                self.services[have.id] = have
                continue
            live = len([t for t in self.view.find("tasks", "service_id", have.id) if _live(t)])
            self.deletes.append(store_ops.Delete("services", have.id))
            self.entry(kind="service", name=have.spec.name, action=PlanAction.DELETE, id=have.id,
                       tasks_stopped=live, note="no longer in the file")

    def check_ports(self) -> None:
        """Published ports as the deploy leaves every service: a port held
        elsewhere (or twice in the stack) is refused naming its holder."""
        outside = [s for s in self.view.list("services") if s.spec.labels.get(NAMESPACE_LABEL) != self.ns]
        after = outside + list(self.services.values())
        has_ingress = any(n.spec.ingress for n in self.view.list("networks"))
        keys = {f"{self.ns}_{s.key}": s.key for s in self.req.services}
        for s, svc in self.changed_services:
            where = f"services.{s.key}"
            ep = svc.spec.endpoint_spec
            for i, p in enumerate(ep.ports):
                if p.publish_mode == PublishMode.INGRESS and ep.mode == EndpointMode.DNSRR:
                    raise InvalidStack(f"{where}: ports[{i}]: port {p.target_port}/{p.protocol} is published in "
                                       "ingress mode, which balances over the service's virtual IP: use "
                                       "endpoint_mode: vip, or publish it with mode: host", f"{where}.ports[{i}]")
            if ep.needs_ingress and not has_ingress:
                raise StackConflict(f"{where}: ports: the service publishes ports but the cluster has no ingress "
                                    "network: create one (`orch network create --ingress ingress`)", f"{where}.ports")
            taken = port_conflict(svc, after)
            if taken is not None:
                proto, port, other, mode = taken
                at = next((i for i, p in enumerate(ep.ports) if (p.protocol, p.published_port) == (proto, port)), 0)
                holder = (f"service {keys[other.spec.name]} of this stack" if other.spec.name in keys
                          else f'service "{other.spec.name}"')
                how = "" if mode == PublishMode.INGRESS else " in host mode"
                raise StackConflict(f"{where}: ports[{at}]: published port {port}/{proto} is already used by "
                                    f"{holder}{how}; publish another port, or leave the published port out to get "
                                    "a free one", f"{where}.ports[{at}]")

    def unused_blobs(self) -> None:
        """Old versions and pruned objects: deleted now when nothing uses
        them as the deploy leaves things, else left in the stack's garbage
        for the reaper. Pruned networks are judged the same way."""
        deleted_services = {op.id for op in self.deletes if isinstance(op, store_ops.Delete)
                            and op.table == "services"}
        services = [s for s in self.view.list("services")
                    if s.id not in self.services and s.id not in deleted_services] + list(self.services.values())
        tasks = [t for t in self.view.list("tasks") if _live(t)]
        usage = {k: _usage(services, tasks, k) for k in StackResourceKind}
        notes: dict[str, list[str]] = {}
        for res, label, why_candidate in self.candidates:
            why = usage[res.kind].reason(res.id)
            if why:
                self.garbage.append(res)
                later = f"removed once nothing uses it (used by {why})"
            else:
                self.deletes.append(store_ops.Delete(res.kind.table, res.id))
                later = "removed"
            if why_candidate == "old":
                notes.setdefault(label, []).append(f"old version {res.name} {later}")
            elif why_candidate == "pruned" or not why:
                self.entry(kind=res.kind.value, name=label, action=PlanAction.DELETE, id=res.id, object=res.name,
                           note=f"no longer in the file: {later}")
            else:  # given up by an earlier deploy, still in use: nothing new happens to it
                self.entry(kind=res.kind.value, name=label, action=PlanAction.UNCHANGED, id=res.id, object=res.name,
                           note=f"being removed: {later}")
        for e_i, e in enumerate(self.plan.entries):
            extra = notes.get(e.name)
            if extra and e.kind in ("secret", "config") and e.action != PlanAction.DELETE:
                note = "; ".join(([e.note] if e.note else []) + extra)
                self.plan.entries[e_i] = e.model_copy(update={"note": note})

    # -- the stack object

    def stack_object(self) -> None:
        keep_ids = {r.id for r in self.resources}
        gone = {op.id for op in self.deletes if isinstance(op, store_ops.Delete)} | {
            op.id for op in self.early if isinstance(op, store_ops.Delete)}
        garbage = [g for g in (self.stack.garbage if self.stack is not None else ())
                   if g.id not in keep_ids and g.id not in gone and all(g.id != x.id for x in self.garbage)]
        garbage += self.garbage
        deps = tuple(StackDependency(service=s.key, on=on, condition=cond)
                     for s in self.req.services for on, cond in sorted(s.depends_on.items()))
        spec = StackSpec(name=self.ns, labels={**self.req.labels, **self.labels}, compose=self.req.compose)
        fields: dict[str, Any] = dict(spec=spec, version=self.plan.version + 1, resources=tuple(self.resources),
                                      garbage=tuple(garbage), removing=False, depends_on=deps)
        if self.stack is None:
            st = Stack(id=self.new_id(), meta=Meta(created_at=self.now, updated_at=self.now), **fields)
            op: store_ops.Op = store_ops.Create("stacks", st)
        else:
            # Expecting the version read: a deploy committed meanwhile makes
            # this one fail (then it is planned again), so --check-version
            # holds for the transaction, not only for the read.
            op = store_ops.Update("stacks", evolve(self.stack, **fields))
        self.stack_ops = [op]
        self.plan.services = {s.spec.name: s.id for s in self.services.values()}


def _with_depends_on(spec: ServiceSpec, s: StackServiceRequest, stack: str) -> ServiceSpec:
    """THE one place `depends_on` of the file reaches the service spec
    (`ServiceSpec.depends_on`, by the services' full names), validated; the
    orchestrator's gate holds the service's tasks until they are met."""
    if not s.depends_on:
        return spec
    deps = {f"{stack}_{k}": cond for k, cond in sorted(s.depends_on.items())}
    try:
        return ServiceSpec.model_validate({**spec.model_dump(), "depends_on": deps})
    except PydanticValidationError as e:
        raise InvalidStack(f"services.{s.key}: {ValidationError.from_pydantic(e)}", f"services.{s.key}") from None


def _show(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def plan_deploy(req: StackRequest, stack: str, view: View, *, now: float, images: Mapping[str, str] | None = None,
                secret_key: SecretKey | None = None, new_id: Callable[[], str] = codec.new_id) -> Plan:
    """What deploying `req` as stack `stack` would do to the state `view`
    holds. `images` maps images as written to the digests the registry
    gave (see `images_to_resolve`); `secret_key` is needed for secrets.
    Raises StackError (InvalidStack, StackConflict, MissingObject)."""
    return _Planner(req, stack, view, now=now, images=images or {}, secret_key=secret_key, new_id=new_id).run()


# -- removal and the reaper ----------------------------------------------------------------


def plan_remove(stack: str, view: View) -> Plan:
    """`stack rm`: every service, network, secret and config of the stack.
    Services go at once (the orchestrator stops their tasks); what tasks
    still use waits in the stack's garbage, and the stack object stays,
    marked removing, until the reaper has removed it all. Refused when a
    service outside the stack uses one of its networks, secrets or configs.
    Raises MissingObject when there is no such stack."""
    st: Stack | None = view.get_by_name("stacks", stack)
    plan = Plan(stack, st.version if st is not None else 0)
    objs = {t: owned(view, t, stack) for t in ("services", "networks", "secrets", "configs")}
    if st is None and not any(objs.values()):
        raise MissingObject(f"no stack named {stack}")
    known = {r.id: r for r in (*(st.resources if st else ()), *(st.garbage if st else ()))}
    outside = [s for s in view.list("services") if s.spec.labels.get(NAMESPACE_LABEL) != stack]
    for table in ("networks", "secrets", "configs"):
        kind = StackResourceKind(table[:-1])
        for o in objs[table]:
            users = sorted(s.spec.name for s in outside if o.id in _refs(s.spec, kind) | _refs(s.previous_spec, kind))
            if users:
                raise StackConflict(f"{kind} {o.spec.name} of stack {stack} is used by service(s) {', '.join(users)} "
                                    "outside the stack: remove it from them first, then remove the stack")
    for s in objs["services"]:
        live = len([t for t in view.find("tasks", "service_id", s.id) if _live(t)])
        plan.ops.append(store_ops.Delete("services", s.id))
        plan.entries.append(PlanEntry(kind="service", name=s.spec.name, action=PlanAction.DELETE, id=s.id,
                                      tasks_stopped=live))
    tasks = [t for t in view.list("tasks") if _live(t)]
    garbage: list[StackResource] = []
    for table in ("networks", "secrets", "configs"):
        kind = StackResourceKind(table[:-1])
        usage = _usage(outside, tasks, kind)
        for o in objs[table]:
            res = known.get(o.id) or StackResource(kind=kind, id=o.id, name=o.spec.name)
            why = usage.reason(o.id)
            note = ""
            if why:
                garbage.append(res)
                note = f"removed once nothing uses it (used by {why})"
            else:
                plan.ops.append(store_ops.Delete(table, o.id))
            plan.entries.append(PlanEntry(kind=kind.value, name=o.spec.labels.get(LOGICAL_LABEL, o.spec.name),
                                          action=PlanAction.DELETE, id=o.id, object=o.spec.name, note=note))
    present = {o.id for os in objs.values() for o in os}
    garbage += [g for g in (st.garbage if st else ()) if g.id not in present and view.get(g.kind.table, g.id)]
    if st is not None:
        if garbage:
            plan.ops.append(store_ops.Update("stacks", evolve(st, resources=(), garbage=tuple(garbage),
                                                              removing=True)))
        else:
            plan.ops.append(store_ops.Delete("stacks", st.id))
    plan.services = {s.spec.name: s.id for s in objs["services"]}
    return plan


def reap(view: View) -> list[store_ops.Op]:
    """The stack reaper's pass: delete the garbage of every stack that
    nothing uses any more, and the stacks being removed that have none left."""
    ops: list[store_ops.Op] = []
    for st in view.list("stacks"):
        if not st.garbage and not st.removing:
            continue
        left = []
        for g in st.garbage:
            if view.get(g.kind.table, g.id) is None:
                continue
            if in_use(view, g):
                left.append(g)
            else:
                ops.append(store_ops.Delete(g.kind.table, g.id))
        if st.removing and not left:
            ops.append(store_ops.Delete("stacks", st.id))
        elif tuple(left) != st.garbage:
            ops.append(store_ops.Update("stacks", evolve(st, garbage=tuple(left))))
    return ops
