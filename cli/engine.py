"""`orch image ...` and `orch container ...`: the node-local engine (like podman).

These talk to the local daemon's unix socket only: they act on this host's
engine, not on the cluster.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from . import privflags
from .client import APIError, ConnectError, Endpoint, request
from .output import FORMAT_OPTION, fail, print_json, print_table
from .specflags import parse_pairs, build_healthcheck, health_options, parse_mount, parse_size, parse_tmpfs, parse_volume


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


async def _stream(ep: Endpoint, method: str, path: str, body: Any = None, timeout: float | None = None):  # type: ignore[no-untyped-def]
    """Yield the JSON lines of a streaming (ndjson) response."""
    import aiohttp

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


# -- containers ---------------------------------------------------------------


@click.group()
def container() -> None:
    """Run and manage containers on this node."""


async def _print_logs(ep: Endpoint, ref: str, follow: bool, tail: int | None) -> int | None:
    q = f"?follow={'1' if follow else '0'}" + (f"&tail={tail}" if tail is not None else "")
    code = None
    async for msg in _stream(ep, "GET", f"/v1/containers/{ref}/logs{q}"):
        if "line" in msg:
            stream = sys.stdout if msg["stream"] == "stdout" else sys.stderr
            print(msg["line"], file=stream, flush=True)
        else:
            code = msg.get("exit_code")
    return code


@container.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-d", "--detach", is_flag=True, help="Print the id and return; do not wait.")
@click.option("--name")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE")
@click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE")
@click.option("-u", "--user")
@click.option("-w", "--workdir")
@click.option("-h", "--hostname")
@click.option("-m", "--memory", help="Memory limit, e.g. 64m")
@click.option("--pids-limit", type=int, default=0)
@click.option("--cpus", type=float, default=0.0)
@click.option("--entrypoint", help="Override the image's entrypoint")
@click.option("-v", "--volume", "volumes", multiple=True, help="SOURCE:TARGET[:ro] (host path or volume name)")
@click.option("--mount", "mounts", multiple=True, help="type=bind|volume|tmpfs,source=...,target=...[,readonly]")
@click.option("--tmpfs", "tmpfs", multiple=True, help="TARGET[:size=64m,mode=1777]")
@click.option("--privileged", is_flag=True, help="All capabilities, all devices, no seccomp or masked paths.")
@click.option("--cap-add", multiple=True)
@click.option("--cap-drop", multiple=True)
@click.option("--read-only", is_flag=True, help="Mount the root filesystem read-only.")
@click.option("--security-opt", "security_opts", multiple=True,
              help="seccomp=unconfined or seccomp=PROFILE.json (Docker's format)")
@click.option("--device", "devices", multiple=True, help="HOST[:CONTAINER[:PERMS]] device to expose")
@click.option("--sysctl", "sysctls", multiple=True, help="NAME=VALUE, a namespaced sysctl (net.*, fs.mqueue.*, ...)")
@click.option("--ulimit", "ulimits", multiple=True, help="NAME=SOFT[:HARD], e.g. nofile=1024:4096")
@click.option("--init", "init", is_flag=True, help="Run an init (tini) as PID 1.")
@click.option("--stop-signal")
@click.option("--stop-timeout", type=float, default=None, help="Seconds between the stop signal and SIGKILL.")
@click.option("--network", "networks", multiple=True,
              help="Attach to an attachable overlay network of the cluster (repeatable).")
@health_options
@click.argument("image_ref")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def container_run(ep: Endpoint, detach: bool, name: str | None, env: tuple[str, ...], labels: tuple[str, ...],
                  user: str | None, workdir: str | None, hostname: str | None, memory: str | None,
                  pids_limit: int, cpus: float, entrypoint: str | None, volumes: tuple[str, ...],
                  mounts: tuple[str, ...], tmpfs: tuple[str, ...], privileged: bool, cap_add: tuple[str, ...],
                  cap_drop: tuple[str, ...], read_only: bool, security_opts: tuple[str, ...],
                  devices: tuple[str, ...], sysctls: tuple[str, ...], ulimits: tuple[str, ...], init: bool,
                  stop_signal: str | None,
                  stop_timeout: float | None, networks: tuple[str, ...], image_ref: str, cmd: tuple[str, ...],
                  **health: Any) -> None:
    """Run IMAGE_REF [CMD...] (pulled first if needed)."""
    body: dict[str, Any] = {
        "image": image_ref, "env": parse_pairs(env, "--env"), "labels": parse_pairs(labels, "--label"),
        "memory": parse_size(memory, "--memory") if memory else 0, "pids_limit": pids_limit, "cpus": cpus,
        "mounts": [*map(parse_volume, volumes), *map(parse_mount, mounts), *map(parse_tmpfs, tmpfs)],
        "privileged": privileged, "read_only": read_only,
        "devices": list(devices), "networks": list(networks), "init": init,
        "cap_add": privflags.caps(cap_add, "--cap-add"), "cap_drop": privflags.caps(cap_drop, "--cap-drop"),
        "sysctls": privflags.sysctls(sysctls, "--sysctl"),
        "ulimits": [f"{u['name']}={u['soft']}:{u['hard']}" for u in privflags.ulimits(ulimits, "--ulimit")],
    }
    privflags.devices(devices, "--device")
    for opt in security_opts:
        k, sep, v = opt.partition("=")
        if k != "seccomp" or not sep or not v:
            raise click.BadParameter(f"{opt!r}: supported: seccomp=unconfined or seccomp=PATH", param_hint="--security-opt")
        body["seccomp"] = v
    for k, v in (("name", name), ("user", user), ("workdir", workdir), ("hostname", hostname),
                 ("stop_signal", stop_signal)):
        if v:
            body[k] = v
    if stop_timeout is not None:
        body["stop_grace"] = stop_timeout
    hc = build_healthcheck(health)
    if hc is not None:
        body["healthcheck"] = hc
    if entrypoint is not None:
        body["command"] = [entrypoint]
    if cmd:
        body["args"] = list(cmd)
    rec = request(ep, "POST", "/v1/containers", body, timeout=300)
    if detach:
        click.echo(rec["id"])
        return
    code = asyncio.run(_print_logs(ep, rec["id"], True, None))
    sys.exit(code if isinstance(code, int) and code >= 0 else 0)


@container.command("ls")
@click.option("-a", "--all", "all_", is_flag=True, help="Include exited containers.")
@FORMAT_OPTION
@click.pass_obj
def container_ls(ep: Endpoint, all_: bool, fmt: str) -> None:
    """List containers."""
    items = [c for c in request(ep, "GET", "/v1/containers") if all_ or c["status"] != "exited"]
    if fmt == "json":
        print_json(items)
        return
    print_table(items, [
        ("CONTAINER ID", lambda c: c["id"][:12]),
        ("NAME", lambda c: c["name"]),
        ("IMAGE", lambda c: c["image"]),
        ("STATUS", _status),
    ])


def _status(c: dict[str, Any]) -> str:
    if c["status"] == "exited":
        return f"exited ({c['exit_code']})" + (" OOM-killed" if c.get("oom_killed") else "")
    hs = c.get("health_state")
    return c["status"] + (f" ({hs['status']})" if hs else "")


@container.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def container_inspect(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Show containers."""
    print_json([request(ep, "GET", f"/v1/containers/{r}") for r in refs])


@container.command("logs")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=int, default=None)
@click.argument("ref")
@click.pass_obj
def container_logs(ep: Endpoint, follow: bool, tail: int | None, ref: str) -> None:
    """Print a container's output."""
    asyncio.run(_print_logs(ep, ref, follow, tail))


@container.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-u", "--user")
@click.argument("ref")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def container_exec(ep: Endpoint, user: str | None, ref: str, cmd: tuple[str, ...]) -> None:
    """Run CMD inside a running container."""
    body: dict[str, Any] = {"cmd": list(cmd)}
    if user:
        body["user"] = user
    res = request(ep, "POST", f"/v1/containers/{ref}/exec", body, timeout=120)
    sys.stdout.write(res["output"])
    sys.exit(res["exit_code"])


@container.command("stop")
@click.option("-t", "--time", "timeout", type=float, default=None, help="Seconds before SIGKILL.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def container_stop(ep: Endpoint, timeout: float | None, refs: tuple[str, ...]) -> None:
    """Stop containers (stop signal, then SIGKILL after the grace period)."""
    for r in refs:
        q = f"?timeout={timeout}" if timeout is not None else ""
        request(ep, "POST", f"/v1/containers/{r}/stop{q}", {}, timeout=120)
        click.echo(r)


@container.command("rm")
@click.option("-f", "--force", is_flag=True, help="Kill it first if running.")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def container_rm(ep: Endpoint, force: bool, refs: tuple[str, ...]) -> None:
    """Remove containers."""
    for r in refs:
        request(ep, "DELETE", f"/v1/containers/{r}" + ("?force=1" if force else ""), timeout=60)
        click.echo(r)


# -- volumes ---------------------------------------------------------------


@click.group()
def volume() -> None:
    """Manage this node's named volumes."""


@volume.command("create")
@click.argument("name", required=False)
@click.option("-l", "--label", "labels", multiple=True, help="KEY=VALUE")
@click.pass_obj
def volume_create(ep: Endpoint, name: str | None, labels: tuple[str, ...]) -> None:
    """Create a volume (a name is made up if none is given)."""
    body: dict[str, Any] = {"labels": parse_pairs(labels, "--label")}
    if name:
        body["name"] = name
    click.echo(request(ep, "POST", "/v1/volumes", body)["name"])


@volume.command("ls")
@FORMAT_OPTION
@click.pass_obj
def volume_ls(ep: Endpoint, fmt: str) -> None:
    """List volumes."""
    items = request(ep, "GET", "/v1/volumes")
    if fmt == "json":
        print_json(items)
        return
    print_table(items, [("NAME", lambda v: v["name"]), ("USED BY", lambda v: ", ".join(v["used_by"]) or "-"),
                        ("PATH", lambda v: v["path"])])


@volume.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def volume_inspect(ep: Endpoint, names: tuple[str, ...]) -> None:
    """Show volumes."""
    print_json([request(ep, "GET", f"/v1/volumes/{n}") for n in names])


@volume.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def volume_rm(ep: Endpoint, names: tuple[str, ...]) -> None:
    """Remove volumes no container uses."""
    for n in names:
        request(ep, "DELETE", f"/v1/volumes/{n}")
        click.echo(n)


COMMANDS: list[click.Command] = [image, container, volume]
