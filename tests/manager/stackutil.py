"""Helpers of the stack tests: compose texts to deploy requests, and a real
store the planner's transactions are applied to."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

from api.compose import MemoryFiles, Source, dump_config, load, to_specs
from api.objects import Network, NetworkAttachment, NetworkSpec, Task, TaskState, evolve
from api.stacks import StackRequest, build_request
from manager.stacks.plan import Plan, SecretKey, plan_deploy
from manager.store import Create, MemoryStore, Op, Update
from pki.secretbox import seal

DIR = "/srv/app"
KEY = SecretKey(b"k" * 32, seal)
PIN = "@sha256:" + "a" * 64


def request(text: str, stack: str = "s", files: Mapping[str, str | bytes] | None = None,
            **kw: Any) -> StackRequest:
    """The deploy request the CLI would send for compose `text` (files named
    in it live under /srv/app)."""
    mem = MemoryFiles({f"{DIR}/{k}": v for k, v in (files or {}).items()})
    loaded = load([Source("stack.yml", textwrap.dedent(text), DIR)], environ={}, files=mem)
    specs = to_specs(loaded.project, stack, environment=loaded.environment, places=loaded.places)
    return build_request(specs, read_file=mem.read_bytes, compose=dump_config(loaded.project),
                         places=loaded.places, **kw)


class Cluster:
    """A real store, written by applying transactions as Raft would."""

    def __init__(self, *, ingress: bool = True) -> None:
        self.store = MemoryStore()
        self.index = 0
        self.now = 1000.0
        if ingress:
            self.apply([Create("networks", Network(id="ingress0", spec=NetworkSpec(name="ingress", ingress=True)))])

    @property
    def view(self) -> Any:
        return self.store.view()

    def apply(self, ops: list[Op]) -> None:
        if not ops:
            return
        self.index += 1
        r = self.store.apply(self.index, self.store.encode_tx(ops))
        assert r.ok, r.error

    def plan(self, req: StackRequest, stack: str = "s", images: Mapping[str, str] | None = None) -> Plan:
        self.now += 1
        return plan_deploy(req, stack, self.view, now=self.now, images=images, secret_key=KEY)

    def deploy(self, req: StackRequest, stack: str = "s", images: Mapping[str, str] | None = None) -> Plan:
        p = self.plan(req, stack, images)
        self.apply(p.ops)
        return p

    def get(self, table: str, name: str) -> Any:
        return self.view.get_by_name(table, name)

    def names(self, table: str) -> list[str]:
        return sorted(o.spec.name for o in self.view.list(table))

    def run_tasks(self, service: str, n: int | None = None) -> list[Task]:
        """Tasks of `service` running on its current spec (as the
        orchestrator and the agents would leave them): `n` of them
        (default: its replicas)."""
        svc = self.get("services", service)
        n = svc.spec.replicas if n is None else n
        tasks = []
        for slot in range(1, n + 1):
            nets = tuple(NetworkAttachment(network_id=a.target, addresses=(f"10.0.{i}.{slot + 1}/24",),
                                           aliases=a.aliases) for i, a in enumerate(svc.spec.task.networks))
            t = Task(id=f"{service}-t{svc.spec_version}-{slot}", service_id=svc.id, slot=slot, node_id="node1",
                     spec=svc.spec.task, spec_version=svc.spec_version, networks=nets,
                     status={"state": TaskState.RUNNING})
            tasks.append(t)
        self.apply([Create("tasks", t) for t in tasks])
        return tasks

    def stop_tasks(self, service_id: str | None = None) -> None:
        """Every live task (of one service) ends, as its node would report."""
        ops: list[Op] = []
        for t in self.view.list("tasks"):
            if (service_id is None or t.service_id == service_id) and not t.status.state.terminal:
                ops.append(Update("tasks", evolve(t, desired_state=TaskState.SHUTDOWN,
                                                  status=evolve(t.status, state=TaskState.SHUTDOWN))))
        self.apply(ops)


def entries(p: Plan) -> list[tuple[str, str, str]]:
    return [(e.kind, e.name, e.action.value) for e in p.entries]


def changes(p: Plan, name: str) -> list[tuple[str, Any, Any]]:
    e = next(e for e in p.entries if e.name == name)
    return [(c.path, c.old, c.new) for c in e.changes]
