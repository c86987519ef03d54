"""One process run inside a running container (`orch service exec`).

`runc exec` runs it in the container's namespaces and cgroup, with the
container's process settings (env, cwd, user) as the base. Without a
terminal, runc hands its own stdio to the process: stdin, stdout and stderr
are three pipes read and written here. With a terminal, runc in the
foreground makes the container's pty itself and copies between it and its
own stdio when that is a terminal, so runc's stdio is the slave of a pty
pair made here and the master is what we read and write (the terminal
size is set on that pair; runc carries it over on SIGWINCH). runc sizes
the container's terminal just after the process started, so a command
that asks for the size at once may see 0x0, as with `docker exec -t`.

The process's exit status is runc's (128+N when a signal N killed it;
127 or 126 when runc could not find or execute the command, as a shell).
Killing `runc exec` alone would leave the process running inside the
container, so `kill()` kills that process first (from runc's pid file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
import tty
import uuid
from collections.abc import Sequence

from .runtime import ContainerManager, RuntimeError_

__all__ = ["ExecProcess", "STDOUT", "STDERR"]

STDOUT = 1
STDERR = 2
READ_CHUNK = 64 << 10
TAIL = 2048  # bytes of the last output kept
DRAIN_AFTER_EXIT = 2.0  # seconds to wait for output after the process ended (a background child may hold it)


def _set_winsize(fd: int, width: int, height: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


class ExecProcess:
    """A process in container `cid`; `start()` it, then `read()` output
    until None, `write()` input, and `wait()` for its exit status."""

    def __init__(self, containers: ContainerManager, cid: str, argv: Sequence[str], *, tty: bool = False,
                 stdin: bool = False, user: str = "", env: Sequence[str] = (), workdir: str = "",
                 width: int = 80, height: int = 24) -> None:
        self.containers = containers
        self.cid = cid
        self.argv = list(argv)
        self.tty = tty
        self.stdin = stdin
        self.user = user
        self.env = list(env)
        self.workdir = workdir
        self.size = (width, height)
        self.proc: asyncio.subprocess.Process | None = None
        self.pid_file = ""
        self._master = -1
        self._slave = -1
        self._out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(8)
        self._readers: list[asyncio.Task[None]] = []
        self._writer: asyncio.StreamWriter | None = None
        self._open_streams = 0
        self._code: int | None = None
        self._tail = b""  # the last output, to tell runc's own failures apart

    def _args(self) -> list[str]:
        rec = self.containers.get(self.cid)
        if rec.status != "running" or self.containers._collect_exit(rec):
            raise RuntimeError_(f"container {rec.name} is not running")
        self.pid_file = os.path.join(self.containers.cdir(rec.id), f"exec-{uuid.uuid4().hex[:12]}.pid")
        args = self.containers._rt("exec", "--pid-file", self.pid_file)
        if self.tty:
            args.append("--tty")
        if self.user:
            args += ["--user", self.user]
        if self.workdir:
            args += ["--cwd", self.workdir]
        for e in self.env:
            args += ["--env", e]
        return [*args, rec.id, *self.argv]

    async def start(self) -> None:
        """Start the process; RuntimeError_ if the container is not running
        or runc cannot be started."""
        args = self._args()
        loop = asyncio.get_running_loop()
        try:
            if self.tty:
                self._master, self._slave = pty.openpty()
                _set_winsize(self._master, *self.size)
                # Raw from the start: what arrives before runc makes it raw
                # must not be echoed or turned into lines here too.
                tty.setraw(self._slave, termios.TCSANOW)
                os.set_blocking(self._master, False)
                self.proc = await asyncio.create_subprocess_exec(
                    *args, stdin=self._slave, stdout=self._slave, stderr=self._slave, start_new_session=True)
                os.close(self._slave)  # runc holds it now; its last close is our EOF
                self._slave = -1
                self._readers = [asyncio.create_task(self._pump_pty())]
            else:
                self.proc = await asyncio.create_subprocess_exec(
                    *args, stdin=asyncio.subprocess.PIPE if self.stdin else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
                assert self.proc.stdout is not None and self.proc.stderr is not None
                self._writer = self.proc.stdin
                self._readers = [asyncio.create_task(self._pump(self.proc.stdout, STDOUT)),
                                 asyncio.create_task(self._pump(self.proc.stderr, STDERR))]
        except OSError as e:
            self._close_fds()
            raise RuntimeError_(f"cannot run {args[0]}: {e}") from None
        self._open_streams = len(self._readers)

    async def _pump(self, reader: asyncio.StreamReader, stream: int) -> None:
        try:
            while True:
                try:
                    data = await reader.read(READ_CHUNK)
                except OSError:  # EIO on a pty master: every slave is closed
                    data = b""
                if not data:
                    break
                self._tail = (self._tail + data)[-TAIL:]
                await self._out.put((stream, data))
        finally:
            self._open_streams -= 1
            if self._open_streams == 0:
                await self._out.put(None)

    async def _ready(self, writable: bool = False) -> None:
        """Until the pty master is readable (writable). By hand, not with
        connect_read_pipe: uvloop's pipe transports end at once on a pty."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        (loop.add_writer if writable else loop.add_reader)(self._master, wake)
        try:
            await fut
        finally:
            (loop.remove_writer if writable else loop.remove_reader)(self._master)

    async def _pump_pty(self) -> None:
        try:
            while True:
                await self._ready()
                try:
                    data = os.read(self._master, READ_CHUNK)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every slave is closed
                    data = b""
                if not data:
                    break
                self._tail = (self._tail + data)[-TAIL:]
                await self._out.put((STDOUT, data))
        finally:
            self._open_streams -= 1
            if self._open_streams == 0:
                await self._out.put(None)

    async def read(self) -> tuple[int, bytes] | None:
        """The next chunk of output as (STDOUT or STDERR, bytes); None when
        every output stream ended (or the process ended and its output did
        not within `DRAIN_AFTER_EXIT`)."""
        if not self._readers:
            return None
        assert self.proc is not None
        get = asyncio.ensure_future(self._out.get())
        try:
            if self._code is None:
                waiter = asyncio.ensure_future(self.proc.wait())
                done, _ = await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if get in done:
                    waiter.cancel()
                    return get.result()
                self._code = waiter.result()
            try:
                return await asyncio.wait_for(asyncio.shield(get), DRAIN_AFTER_EXIT)
            except asyncio.TimeoutError:
                return None
        finally:
            if not get.done():
                get.cancel()

    async def write(self, data: bytes) -> None:
        """Input for the process (dropped when it asked for none or closed it)."""
        try:
            if self._writer is not None:
                self._writer.write(data)
                await self._writer.drain()
            elif self.tty and self.stdin and self._master >= 0:
                view = memoryview(data)
                while view:
                    try:
                        view = view[os.write(self._master, view):]
                    except BlockingIOError:
                        await self._ready(writable=True)
        except (ConnectionError, OSError):
            pass

    async def close_stdin(self) -> None:
        """End of input. On a terminal that is its EOF character (Ctrl-D),
        which ends the input of a program reading a line at its start."""
        if self._writer is not None:
            w, self._writer = self._writer, None
            with contextlib.suppress(ConnectionError, OSError):
                w.close()
        elif self.tty and self.stdin:
            await self.write(b"\x04")

    def resize(self, width: int, height: int) -> None:
        if self._master < 0 or self.proc is None:
            return
        with contextlib.suppress(OSError):
            _set_winsize(self._master, width, height)
            os.kill(self.proc.pid, signal.SIGWINCH)

    def kill(self) -> None:
        """Kill the process in the container (runc then exits with 137);
        runc itself when there is none yet."""
        pid = self.containers._read_pid(self.pid_file) if self.pid_file else 0
        self._kill(pid if pid > 0 else self._runc_pid())

    def _runc_pid(self) -> int:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else 0

    @staticmethod
    def _kill(pid: int) -> None:
        if pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def wait(self) -> int:
        """Its exit status (after `read()` returned None, all output is out)."""
        assert self.proc is not None
        code = await self.proc.wait()
        if code == 255 and b"unable to start container process" in self._tail:
            # runc could not start the command: the statuses a shell (and
            # docker exec) gives for these, rather than runc's 255.
            if b"executable file not found" in self._tail or b"no such file or directory" in self._tail:
                return 127
            if b"permission denied" in self._tail:
                return 126
        return 128 - code if code < 0 else code

    async def close(self) -> None:
        """Kill it if it still runs and let go of everything."""
        if self.proc is not None and self.proc.returncode is None:
            self.kill()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                self._kill(self._runc_pid())
                await self.proc.wait()
        for t in self._readers:
            t.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._writer is not None:
            self._writer.close()
        self._close_fds()
        if self.pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pid_file)

    def _close_fds(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
