"""The engine's node-local API, served on the daemon's root-only unix socket.

`orch image ...` and `orch container ...` talk to this: it is the engine's
debugging surface (like podman's), not a cluster API. Long operations stream
newline-delimited JSON (pull progress, logs with follow). The daemon adds
the membership routes and the manager's control API to the same socket
(daemon.localapi).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import asdict
from typing import Any

from aiohttp import web

from agent.engine import Engine, EngineError, RunRequest, volume_users
from agent.runtime.runtime import ContainerManager, ContainerRecord, NotFound, RuntimeError_
from agent.runtime.volumes import Volume, VolumeError, VolumeInUse, VolumeNotFound, VolumeStore
from api.codec import from_json
from api.errors import ValidationError

from agent.images import ImageError, ImageService, ProgressEvent
from agent.images.errors import (
    AmbiguousImage,
    ImageInUse,
    ImageNotFound,
    InvalidReference,
    ManifestUnknown,
    RepositoryUnknown,
)

log = logging.getLogger(__name__)

IMAGES_KEY = web.AppKey("images", ImageService)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json")


def _err(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


def image_error_response(e: ImageError) -> web.Response:
    if isinstance(e, (ImageNotFound, ManifestUnknown, RepositoryUnknown)):
        return _err(404, "not_found", str(e))
    if isinstance(e, (InvalidReference, AmbiguousImage)):
        return _err(400, "invalid_argument", str(e))
    if isinstance(e, ImageInUse):
        return _err(409, "conflict", str(e))
    return _err(502 if "registry" in type(e).__name__.lower() else 500, type(e).__name__, str(e))


def add_image_routes(app: web.Application, images: ImageService) -> None:
    app[IMAGES_KEY] = images
    app.router.add_post("/v1/images/pull", pull_image)
    app.router.add_get("/v1/images", list_images)
    app.router.add_get("/v1/images/{ref:.+}/json", inspect_image)
    app.router.add_delete("/v1/images/{ref:.+}", remove_image)
    app.router.add_post("/v1/images/gc", gc_images)


async def pull_image(request: web.Request) -> web.StreamResponse:
    images = request.app[IMAGES_KEY]
    try:
        body = await request.json()
        ref = body["ref"]
        if not isinstance(ref, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return _err(400, "invalid_argument", 'body must be {"ref": "IMAGE"}')
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def progress(ev: ProgressEvent) -> None:
        queue.put_nowait(
            {"progress": {"kind": ev.kind, "id": ev.id, "status": str(ev.status),
                          "current": ev.current, "total": ev.total}}
        )

    task = asyncio.create_task(images.pull(ref, progress=progress))
    try:
        while not task.done() or not queue.empty():
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, task}, return_when=asyncio.FIRST_COMPLETED)
            if get.done():
                await resp.write((json.dumps(get.result()) + "\n").encode())
            else:
                get.cancel()
        try:
            img = task.result()
            final: dict[str, Any] = {"image": img.to_dict()}
        except ImageError as e:
            final = {"error": {"code": type(e).__name__, "message": str(e)}}
        await resp.write((json.dumps(final) + "\n").encode())
    finally:
        if not task.done():
            task.cancel()
    await resp.write_eof()
    return resp


async def list_images(request: web.Request) -> web.Response:
    return _json([i.to_dict() for i in request.app[IMAGES_KEY].list()])


async def inspect_image(request: web.Request) -> web.Response:
    images = request.app[IMAGES_KEY]
    ref = request.match_info["ref"]
    try:
        img = images.inspect(ref)
        d = img.to_dict()
        d["config"] = images.image_config(ref)
        return _json(d)
    except ImageError as e:
        return image_error_response(e)


async def remove_image(request: web.Request) -> web.Response:
    images = request.app[IMAGES_KEY]
    force = request.query.get("force") in ("1", "true")
    try:
        r = images.remove(request.match_info["ref"], force=force)
    except ImageError as e:
        return image_error_response(e)
    return _json(
        {"untagged": r.untagged, "deleted_images": r.deleted_images,
         "deleted_blobs": len(r.deleted_blobs), "deleted_snapshots": len(r.deleted_snapshots)}
    )


async def gc_images(request: web.Request) -> web.Response:
    r = request.app[IMAGES_KEY].gc()
    return _json({"images": len(r.images), "blobs": len(r.blobs), "snapshots": len(r.snapshots)})


# -- containers ------------------------------------------------------------

CONTAINERS_KEY = web.AppKey("containers", ContainerManager)
WORKER_KEY = web.AppKey("worker", object)  # agent.worker.Worker: plain containers on overlay networks
VOLUMES_KEY = web.AppKey("volumes", VolumeStore)


def add_container_routes(
    app: web.Application, images: ImageService, containers: ContainerManager, volumes: VolumeStore
) -> None:
    app[CONTAINERS_KEY] = containers
    app[VOLUMES_KEY] = volumes
    app.router.add_post("/v1/containers", run_container)
    app.router.add_get("/v1/containers", list_containers)
    app.router.add_get("/v1/containers/{ref}", inspect_container)
    app.router.add_get("/v1/containers/{ref}/logs", container_logs)
    app.router.add_post("/v1/containers/{ref}/exec", exec_container)
    app.router.add_post("/v1/containers/{ref}/stop", stop_container)
    app.router.add_delete("/v1/containers/{ref}", remove_container)
    app.router.add_post("/v1/volumes", create_volume)
    app.router.add_get("/v1/volumes", list_volumes)
    app.router.add_get("/v1/volumes/{name}", inspect_volume)
    app.router.add_delete("/v1/volumes/{name}", remove_volume)


def _rec(rec: ContainerRecord) -> dict[str, Any]:
    return asdict(rec)


async def run_container(request: web.Request) -> web.Response:
    engine = Engine(request.app[IMAGES_KEY], request.app[CONTAINERS_KEY], request.app[VOLUMES_KEY])
    try:
        body = await request.json()
    except ValueError:
        return _err(400, "invalid_argument", "request body is not valid JSON")
    try:
        req = from_json(RunRequest, body, what="container")
    except ValidationError as e:
        return _err(400, "invalid_argument", str(e))
    if req.networks:
        return await _run_attached(request, engine, req)
    try:
        rec = await engine.run(req)
    except ImageError as e:
        return image_error_response(e)
    except EngineError as e:
        return _err(e.status, e.code, str(e))
    return _json(_rec(rec), 201)


async def _run_attached(request: web.Request, engine: Engine, req: RunRequest) -> web.Response:
    """`container run --network`: the managers allocate the container's
    addresses as a network attachment; it starts in a namespace already on
    its networks and keeps them until it is removed."""
    from .worker import ATTACHMENT_LABEL, AttachError

    worker: Any = request.app.get(WORKER_KEY)
    if worker is None:
        return _err(503, "unavailable", "this daemon runs no worker: plain containers cannot join networks here")
    mgr = request.app[CONTAINERS_KEY]
    if req.name is not None and any(r.name == req.name for r in mgr.records.values()):
        return _err(409, "conflict", f"a container named {req.name!r} already exists")
    name = req.name or f"attached-{uuid.uuid4().hex[:12]}"
    try:
        await engine.ensure_image(req.image)  # a bad image fails before anything is allocated
        task = await worker.attach(name, list(req.networks))
    except ImageError as e:
        return image_error_response(e)
    except AttachError as e:
        return _err(400, "invalid_argument", f"networks: {e}")
    try:
        try:
            path = await worker.prepare_attachment(task)
        except AttachError as e:
            return _err(500, "network", f"networks: {e}")
        addr = task.networks[0].addresses[0].split("/")[0] if task.networks[0].addresses else None
        labels = {**req.labels, ATTACHMENT_LABEL: task.id}
        run = req.model_copy(update={"name": name, "netns": path, "address": addr, "labels": labels,
                                     "networks": ()})
        try:
            rec = await engine.run(run)
        except ImageError as e:
            return image_error_response(e)
        except EngineError as e:
            return _err(e.status, e.code, str(e))
    finally:
        worker.attachment_done(task.id)
    return _json(_rec(rec), 201)


def _get(request: web.Request) -> ContainerRecord:
    mgr = request.app[CONTAINERS_KEY]
    try:
        return mgr.get(request.match_info["ref"])
    except NotFound as e:
        raise web.HTTPNotFound(text=json.dumps({"error": {"code": "not_found", "message": str(e)}}),
                               content_type="application/json") from None


async def list_containers(request: web.Request) -> web.Response:
    return _json([_rec(r) for r in request.app[CONTAINERS_KEY].list()])


async def inspect_container(request: web.Request) -> web.Response:
    rec = _get(request)
    request.app[CONTAINERS_KEY].list()  # refresh exit status
    return _json(_rec(rec))


async def container_logs(request: web.Request) -> web.StreamResponse:
    rec = _get(request)
    mgr = request.app[CONTAINERS_KEY]
    follow = request.query.get("follow") in ("1", "true")
    tail_q = request.query.get("tail")
    tail = int(tail_q) if tail_q and tail_q.isdigit() else None
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await resp.prepare(request)
    async for ts, stream, line in mgr.logs(rec.id, follow=follow, tail=tail):
        await resp.write((json.dumps({"ts": ts, "stream": stream, "line": line}) + "\n").encode())
    mgr.list()
    await resp.write((json.dumps({"exit_code": rec.exit_code, "status": rec.status}) + "\n").encode())
    await resp.write_eof()
    return resp


async def exec_container(request: web.Request) -> web.Response:
    rec = _get(request)
    mgr = request.app[CONTAINERS_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _err(400, "invalid_argument", "request body is not valid JSON")
    cmd = body.get("cmd") if isinstance(body, dict) else None
    if not isinstance(cmd, list) or not cmd or not all(isinstance(c, str) for c in cmd):
        return _err(400, "invalid_argument", "cmd: a non-empty list of strings")
    try:
        code, out = await mgr.exec(rec.id, cmd, user=body.get("user"))
    except RuntimeError_ as e:
        return _err(409, "conflict", str(e))
    return _json({"exit_code": code, "output": out.decode(errors="replace")})


async def stop_container(request: web.Request) -> web.Response:
    rec = _get(request)
    t = request.query.get("timeout")
    try:
        timeout = float(t) if t else None
    except ValueError:
        return _err(400, "invalid_argument", f"timeout: must be a number of seconds (got {t!r})")
    code = await request.app[CONTAINERS_KEY].stop(rec.id, timeout=timeout)
    return _json({"id": rec.id, "exit_code": code})


async def remove_container(request: web.Request) -> web.Response:
    rec = _get(request)
    engine = Engine(request.app[IMAGES_KEY], request.app[CONTAINERS_KEY], request.app[VOLUMES_KEY])
    try:
        await engine.remove(rec.id, force=request.query.get("force") in ("1", "true"))
    except RuntimeError_ as e:
        return _err(409, "conflict", str(e))
    return _json({"id": rec.id, "removed": True})


# -- volumes ---------------------------------------------------------------


def _volume_json(mgr: ContainerManager, vol: Volume) -> dict[str, Any]:
    return {**asdict(vol), "used_by": volume_users(mgr, vol)}


def _volume_error(e: VolumeError) -> web.Response:
    if isinstance(e, VolumeNotFound):
        return _err(404, "not_found", str(e))
    if isinstance(e, VolumeInUse):
        return _err(409, "conflict", str(e))
    return _err(400, "invalid_argument", str(e))


async def create_volume(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _err(400, "invalid_argument", "request body is not valid JSON")
    name = body.get("name") if isinstance(body, dict) else None
    labels = body.get("labels") or {} if isinstance(body, dict) else {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        return _err(400, "invalid_argument", "labels: a mapping of strings to strings")
    try:
        vol, fresh = request.app[VOLUMES_KEY].create(name or f"vol-{uuid.uuid4().hex[:12]}", labels)
    except VolumeError as e:
        return _volume_error(e)
    return _json(_volume_json(request.app[CONTAINERS_KEY], vol), 201 if fresh else 200)


async def list_volumes(request: web.Request) -> web.Response:
    mgr = request.app[CONTAINERS_KEY]
    return _json([_volume_json(mgr, v) for v in request.app[VOLUMES_KEY].list()])


async def inspect_volume(request: web.Request) -> web.Response:
    try:
        vol = request.app[VOLUMES_KEY].get(request.match_info["name"])
    except VolumeError as e:
        return _volume_error(e)
    return _json(_volume_json(request.app[CONTAINERS_KEY], vol))


async def remove_volume(request: web.Request) -> web.Response:
    volumes = request.app[VOLUMES_KEY]
    mgr = request.app[CONTAINERS_KEY]
    try:
        vol = volumes.get(request.match_info["name"])
        volumes.remove(vol.name, volume_users(mgr, vol))
    except VolumeError as e:
        return _volume_error(e)
    return _json({"name": vol.name, "removed": True})

