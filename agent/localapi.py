"""The engine's node-local API, served on the daemon's root-only unix socket.

`orch image ...` and `orch container ...` talk to this: it is the engine's
debugging surface (like podman's), not a cluster API. Long operations stream
newline-delimited JSON (pull progress, logs with follow).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from aiohttp import web

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

CONTAINERS_KEY = web.AppKey("containers", object)


def add_container_routes(app: web.Application, images: ImageService, containers: Any) -> None:
    app[CONTAINERS_KEY] = containers
    app.router.add_post("/v1/containers", run_container)
    app.router.add_get("/v1/containers", list_containers)
    app.router.add_get("/v1/containers/{ref}", inspect_container)
    app.router.add_get("/v1/containers/{ref}/logs", container_logs)
    app.router.add_post("/v1/containers/{ref}/exec", exec_container)
    app.router.add_post("/v1/containers/{ref}/stop", stop_container)
    app.router.add_delete("/v1/containers/{ref}", remove_container)


def _rec(rec: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(rec)


async def run_container(request: web.Request) -> web.Response:
    import uuid

    from agent.runtime.runtime import RuntimeError_
    from agent.runtime.spec import ContainerSpec, SpecError

    images = request.app[IMAGES_KEY]
    mgr: Any = request.app[CONTAINERS_KEY]
    try:
        body = await request.json()
    except ValueError:
        return _err(400, "invalid_argument", "request body is not valid JSON")
    if not isinstance(body, dict) or not isinstance(body.get("image"), str):
        return _err(400, "invalid_argument", "image: required (a reference to a pulled or pullable image)")
    allowed = {"image", "name", "command", "args", "env", "user", "workdir", "memory", "pids_limit",
               "cpus", "stop_signal", "stop_grace", "hostname"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        return _err(400, "invalid_argument", f"unknown field {unknown[0]!r}")
    ref = body["image"]
    try:
        try:
            images.inspect(ref)
        except ImageNotFound:
            await images.pull(ref)
        image_config = images.image_config(ref)
    except ImageError as e:
        return image_error_response(e)
    try:
        cpus = float(body.get("cpus") or 0)
        spec = ContainerSpec(
            image=ref, command=body.get("command"), args=body.get("args"),
            env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
            user=body.get("user"), workdir=body.get("workdir"), hostname=body.get("hostname"),
            memory=int(body.get("memory") or 0), pids_limit=int(body.get("pids_limit") or 0),
            cpu_quota=int(cpus * 100_000), stop_signal=body.get("stop_signal"),
            stop_grace=float(body.get("stop_grace") or 10.0),
        )
    except (TypeError, ValueError, AttributeError) as e:
        return _err(400, "invalid_argument", f"bad container options: {e}")
    cid = uuid.uuid4().hex
    cdir = mgr.cdir(cid)
    try:
        rootfs = await images.prepare_rootfs(ref, cdir)
    except ImageError as e:
        return image_error_response(e)
    try:
        await mgr.create(spec, str(rootfs), image_config, name=body.get("name"), cid=cid)
        rec = await mgr.start(cid)
    except (RuntimeError_, SpecError) as e:
        try:
            await mgr.remove(cid, force=True, before_cleanup=images.release_rootfs)
        except Exception:
            images.release_rootfs(cdir)
        return _err(400 if isinstance(e, SpecError) else 500, type(e).__name__.rstrip("_"), str(e))
    return _json(_rec(rec), 201)


def _get(request: web.Request) -> Any:
    from agent.runtime.runtime import NotFound

    mgr: Any = request.app[CONTAINERS_KEY]
    try:
        return mgr.get(request.match_info["ref"])
    except NotFound as e:
        raise web.HTTPNotFound(text=json.dumps({"error": {"code": "not_found", "message": str(e)}}),
                               content_type="application/json") from None


async def list_containers(request: web.Request) -> web.Response:
    mgr: Any = request.app[CONTAINERS_KEY]
    return _json([_rec(r) for r in mgr.list()])


async def inspect_container(request: web.Request) -> web.Response:
    rec = _get(request)
    request.app[CONTAINERS_KEY].list()  # refresh exit status
    return _json(_rec(rec))


async def container_logs(request: web.Request) -> web.StreamResponse:
    rec = _get(request)
    mgr: Any = request.app[CONTAINERS_KEY]
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
    from agent.runtime.runtime import RuntimeError_

    rec = _get(request)
    mgr: Any = request.app[CONTAINERS_KEY]
    body = await request.json()
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
    mgr: Any = request.app[CONTAINERS_KEY]
    t = request.query.get("timeout")
    code = await mgr.stop(rec.id, timeout=float(t) if t else None)
    return _json({"id": rec.id, "exit_code": code})


async def remove_container(request: web.Request) -> web.Response:
    from agent.runtime.runtime import RuntimeError_

    rec = _get(request)
    mgr: Any = request.app[CONTAINERS_KEY]
    images = request.app[IMAGES_KEY]
    try:
        await mgr.remove(rec.id, force=request.query.get("force") in ("1", "true"),
                         before_cleanup=images.release_rootfs)
    except RuntimeError_ as e:
        return _err(409, "conflict", str(e))
    return _json({"id": rec.id, "removed": True})
