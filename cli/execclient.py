"""`orch service exec`: run a command in a running task's container,
wherever it runs, through a manager's `/v1/exec` websocket (the protocol
is described in `manager.execapi`).

Output goes to this process's stdout and stderr; the command's exit status
is this command's. With `-i` stdin is sent (its end too); with `-t` the
command gets a terminal of this terminal's size (following resizes), and
this terminal is put in raw mode for the while, so keys such as Ctrl-C
reach the command instead of ending this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import sys
from typing import Any

import click

from .client import ConnectError, Endpoint
from .output import fail

EXEC_PATH = "/v1/exec"
READ_CHUNK = 64 << 10


async def run_exec(ep: Endpoint, target: str, cmd: list[str], *, interactive: bool, tty: bool,
                   user: str = "", env: tuple[str, ...] = (), workdir: str = "") -> int:
    """Run it; the exit status, or raise ConnectError / click.ClickException."""
    import aiohttp

    cols, rows = _term_size() if tty else (80, 24)
    req = {"target": target, "cmd": cmd, "tty": tty, "stdin": interactive, "user": user or "", "env": list(env),
           "workdir": workdir or "", "width": max(1, cols), "height": max(1, rows)}
    url = ep.base_url().replace("http", "ws", 1) + EXEC_PATH
    try:
        async with aiohttp.ClientSession(connector=ep.connector()) as s:
            try:
                ws = await s.ws_connect(url, max_msg_size=4 << 20, heartbeat=None)
            except aiohttp.WSServerHandshakeError as e:
                raise click.ClickException(await _refusal(s, ep.base_url() + EXEC_PATH, e.status, e.message)) from None
            async with ws:
                await ws.send_str(json.dumps(req))
                return await _session(ws, interactive=interactive, tty=tty)
    except (aiohttp.ClientConnectionError, FileNotFoundError, PermissionError) as e:
        raise ConnectError(f"cannot reach the orch daemon at {ep.describe()}: {e}") from None


async def _refusal(s: Any, url: str, status: int, reason: str) -> str:
    """Why the websocket was refused: the API's error message (the handshake
    error has only the status), asked again without the upgrade."""
    try:
        async with s.get(url) as r:
            if r.status == status:
                return str((await r.json(content_type=None))["error"]["message"])
    except Exception:  # the status line is all there is
        pass
    return f"the manager refused the exec ({status} {reason})"


async def _session(ws: Any, *, interactive: bool, tty: bool) -> int:
    import aiohttp

    loop = asyncio.get_running_loop()
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    senders: list[asyncio.Task[None]] = []
    winch = False
    try:
        async for m in ws:
            if m.type == aiohttp.WSMsgType.BINARY:
                data = m.data
                f = out.get(data[0], out[1])
                f.write(data[1:])
                f.flush()
            elif m.type == aiohttp.WSMsgType.TEXT:
                msg = json.loads(m.data)
                if "error" in msg:
                    raise click.ClickException(str(msg["error"]))
                if "exit" in msg:
                    code = msg["exit"]
                    return code if isinstance(code, int) else 1
                if "started" in msg:
                    if interactive:
                        senders.append(asyncio.create_task(_send_stdin(ws)))
                    if tty and sys.stdin.isatty():
                        def on_winch() -> None:
                            c, r = _term_size()
                            asyncio.ensure_future(ws.send_str(json.dumps({"resize": [max(1, c), max(1, r)]})))

                        loop.add_signal_handler(signal.SIGWINCH, on_winch)
                        winch = True
            else:
                break
        raise click.ClickException("the connection to the manager ended before the command did")
    finally:
        if winch:
            loop.remove_signal_handler(signal.SIGWINCH)
        for t in senders:
            t.cancel()
        await asyncio.gather(*senders, return_exceptions=True)


def _term_size() -> tuple[int, int]:
    """This terminal's size (the terminal's own, not $COLUMNS/$LINES)."""
    for f in (sys.stdout, sys.stdin, sys.stderr):
        try:
            sz = os.get_terminal_size(f.fileno())
            return sz.columns, sz.lines
        except (OSError, ValueError, AttributeError):
            continue
    return shutil.get_terminal_size((80, 24))


async def _send_stdin(ws: Any) -> None:
    """Stdin to the websocket: read when the event loop says it is readable
    (a terminal, a pipe), or straight through (a file, which always is)."""
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    ready = asyncio.Event()
    try:
        loop.add_reader(fd, ready.set)
    except (PermissionError, OSError):  # a regular file: epoll refuses it, reads never block long
        while data := os.read(fd, READ_CHUNK):
            await ws.send_bytes(data)
        await ws.send_str(json.dumps({"eof": True}))
        return
    try:
        while True:
            await ready.wait()
            ready.clear()
            # The wake-up may be stale (level-triggered, queued before the
            # last read) and stdin blocks: read only what is there now.
            if not select.select([fd], [], [], 0)[0]:
                continue
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            if not data:
                await ws.send_str(json.dumps({"eof": True}))
                return
            await ws.send_bytes(data)
    finally:
        loop.remove_reader(fd)


@contextlib.contextmanager
def _raw_terminal(enabled: bool) -> Any:
    """This terminal in raw mode while the command runs (restored after)."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty as tty_mod

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty_mod.setraw(fd, termios.TCSANOW)  # keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Send stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal.")
@click.option("-u", "--user", default="", help="Run as this user (uid[:gid]; the task's user by default).")
@click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE added to the command's environment.")
@click.option("-w", "--workdir", default="", help="Working directory in the container.")
@click.argument("target")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(ep: Endpoint, interactive: bool, tty: bool, user: str, env: tuple[str, ...], workdir: str,
                 target: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in a running task's container, on whichever node runs it.

    TARGET is SERVICE (its running task of the lowest slot), SERVICE.SLOT,
    SERVICE.SLOT.TASK_ID (as `service ps` shows) or a task id. The exit
    status is the command's. Managers only.
    """
    for e in env:
        if "=" not in e:
            fail(f"--env {e!r}: expected KEY=VALUE")
    try:
        with _raw_terminal(tty and interactive):
            code = asyncio.run(run_exec(ep, target, list(cmd), interactive=interactive, tty=tty, user=user,
                                        env=env, workdir=workdir))
    except ConnectError as e:
        fail(str(e))
    except click.ClickException as e:
        fail(e.message)
    sys.exit(code)
