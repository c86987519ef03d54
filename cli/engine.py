"""`orch image ...` and `orch container ...`: the node-local engine (like podman).

These talk to the local daemon's unix socket only: they act on this host's
engine, not on the cluster.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from .client import APIError, ConnectError, Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


async def _stream(ep: Endpoint, method: str, path: str, body: Any = None, timeout: float | None = None):  # type: ignore[no-untyped-def]
    """Yield the JSON lines of a streaming (ndjson) response."""
    try:
        async with aiohttp.ClientSession(
            connector=ep.connector(), timeout=aiohttp.ClientTimeout(total=timeout)
        ) as s:
            async with s.request(method, ep.base_url() + path, json=body) as r:
                if r.status >= 400:
                    text = await r.text()
                    try:
                        msg = json.loads(text)["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        msg = text
                    raise APIError(r.status, msg)
                async for line in r.content:
                    if line.strip():
                        yield json.loads(line)
    except (aiohttp.ClientConnectionError, FileNotFoundError, PermissionError) as e:
        raise ConnectError(f"cannot reach the orch daemon at {ep.describe()}: {e}") from None


# -- images -----------------------------------------------------------------


@click.group()
def image() -> None:
    """Manage this node's images."""


@image.command("pull")
@click.argument("ref")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.pass_obj
def image_pull(ep: Endpoint, ref: str, quiet: bool) -> None:
    """Pull an image from a registry."""

    async def run() -> dict[str, Any]:
        final: dict[str, Any] = {}
        console = Console(stderr=True)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
            console=console, disable=quiet or not console.is_terminal, transient=True,
        ) as prog:
            tasks: dict[str, Any] = {}
            async for msg in _stream(ep, "POST", "/v1/images/pull", {"ref": ref}):
                if "progress" in msg:
                    p = msg["progress"]
                    if p["kind"] != "layer":
                        continue
                    lid = p["id"][7:19]
                    if lid not in tasks:
                        tasks[lid] = prog.add_task(lid, total=p["total"] or None)
                    prog.update(tasks[lid], completed=p["current"], total=p["total"] or None,
                                description=f"{lid} {p['status']}")
                else:
                    final = msg
        return final

    final = asyncio.run(run())
    if "error" in final:
        fail(final["error"]["message"])
    img = final["image"]
    click.echo(img["id"] if quiet else f"pulled {ref}: {img['id']}")


@image.command("ls")
@FORMAT_OPTION
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def image_ls(ep: Endpoint, fmt: str, quiet: bool) -> None:
    """List images."""
    items = request(ep, "GET", "/v1/images")
    if fmt == "json":
        print_json(items)
        return
    if quiet:
        for i in items:
            click.echo(i["id"])
        return
    rows = []
    for i in items:
        for n in i["names"] or ["<none>"]:
            rows.append({**i, "name": n})
    print_table(
        rows,
        [
            ("NAME", lambda r: r["name"]),
            ("IMAGE ID", lambda r: r["id"].split(":")[-1][:12]),
            ("PLATFORM", lambda r: r["platform"]),
            ("SIZE", lambda r: _human(r["size"])),
            ("CONTAINERS", lambda r: r["containers"]),
        ],
    )


@image.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def image_inspect(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Show images with their config."""
    print_json([request(ep, "GET", f"/v1/images/{r}/json") for r in refs])


@image.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("-f", "--force", is_flag=True, help="Remove even if containers use it.")
@click.pass_obj
def image_rm(ep: Endpoint, refs: tuple[str, ...], force: bool) -> None:
    """Remove images."""
    for r in refs:
        res = request(ep, "DELETE", f"/v1/images/{r}" + ("?force=1" if force else ""))
        for u in res["untagged"]:
            click.echo(f"Untagged: {u}")
        for d in res["deleted_images"]:
            click.echo(f"Deleted: {d}")


@image.command("prune")
@click.pass_obj
def image_prune(ep: Endpoint) -> None:
    """Delete unreferenced images, blobs and layer snapshots."""
    res = request(ep, "POST", "/v1/images/gc")
    click.echo(f"removed {res['images']} images, {res['blobs']} blobs, {res['snapshots']} snapshots")


COMMANDS: list[click.Command] = [image]
