"""An in-memory engine for worker tests: implements `agent.worker.TaskEngine`
with plain container records; containers exit when the test says so."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from agent.engine import RunRequest, TaskFile
from agent.images.errors import RegistryError
from agent.runtime.runtime import ContainerRecord, NotFound
from agent.worker import TASK_LABEL


class FakeEngine:
    """Containers as records; exits happen when the test says so."""

    def __init__(self) -> None:
        self.records: dict[str, ContainerRecord] = {}
        self.callback: Callable[[ContainerRecord], None] | None = None
        self.missing_images: dict[str, str] = {}  # ref -> pull error
        self.calls: list[tuple[str, str]] = []
        self.files: dict[str, list[TaskFile]] = {}
        self.logs_of: dict[str, list[tuple[str, str, str]]] = {}
        self.gate: asyncio.Event | None = None  # when set up, pulls wait for it
        self._ids = itertools.count(1)

    def add(self, task_id: str, status: str = "running", exit_code: int | None = None) -> ContainerRecord:
        """A container that was there before the worker (recovered after a restart)."""
        cid = f"c{next(self._ids)}"
        rec = ContainerRecord(id=cid, name=f"old.{task_id}", image="busybox", spec={"labels": {TASK_LABEL: task_id}},
                              created=time.time(), status=status, exit_code=exit_code)
        self.records[cid] = rec
        return rec

    def exit(self, task_id: str, code: int, *, oom: bool = False) -> None:
        rec = self.of(task_id)
        rec.status, rec.exit_code, rec.oom_killed = "exited", code, oom
        assert self.callback is not None
        self.callback(rec)

    def of(self, task_id: str) -> ContainerRecord:
        return next(r for r in self.records.values() if r.spec["labels"].get(TASK_LABEL) == task_id)

    # -- TaskEngine -------------------------------------------------------------

    def list_containers(self) -> list[ContainerRecord]:
        return sorted(self.records.values(), key=lambda r: r.created)

    def subscribe(self, callback: Callable[[ContainerRecord], None]) -> None:
        self.callback = callback

    async def ensure_image(self, ref: str) -> Any:
        self.calls.append(("pull", ref))
        if self.gate is not None:
            await self.gate.wait()
        if ref in self.missing_images:
            raise RegistryError(self.missing_images[ref], status=404)
        return {}

    async def run(self, req: RunRequest, *, files: list[TaskFile] | None = None) -> ContainerRecord:
        if self.gate is not None:
            await self.gate.wait()
        cid = f"c{next(self._ids)}"
        self.calls.append(("run", req.labels[TASK_LABEL]))
        rec = ContainerRecord(id=cid, name=req.name or cid, image=req.image, spec={"labels": dict(req.labels)},
                              created=time.time(), status="running")
        self.records[cid] = rec
        self.files[req.labels[TASK_LABEL]] = list(files or [])
        return rec

    async def stop(self, cid: str) -> int | None:
        rec = self.records.get(cid)
        if rec is None:
            raise NotFound(cid)
        self.calls.append(("stop", rec.spec["labels"][TASK_LABEL]))
        if rec.status != "exited":
            rec.status, rec.exit_code = "exited", 143
            assert self.callback is not None
            self.callback(rec)
        return rec.exit_code

    async def remove(self, cid: str, force: bool = False) -> None:
        rec = self.records.pop(cid, None)
        if rec is None:
            raise NotFound(cid)
        self.calls.append(("remove", rec.spec["labels"][TASK_LABEL]))

    async def logs(self, cid: str, *, follow: bool = False, tail: int | None = None
                   ) -> AsyncIterator[tuple[str, str, str]]:
        rec = self.records.get(cid)
        if rec is None:
            raise NotFound(cid)
        lines = self.logs_of.get(rec.spec["labels"][TASK_LABEL], [])
        for line in lines[-tail:] if tail else lines:
            yield line
