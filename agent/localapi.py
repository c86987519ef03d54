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
