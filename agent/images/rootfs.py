"""Container root filesystems: an overlay mount of layer snapshots plus the container's own upper/work.

Layout inside a container directory (created here, removed by `remove_dirs`):

    rootfs/   the overlay mount point handed to the OCI runtime
    upper/    the container's writable layer
    work/     overlayfs scratch space (same filesystem as upper/)
    l/0 .. l/N  short symlinks to the snapshot directories, 0 = topmost

The mount data of mount(2) is limited to one page.  With 64-hex chain IDs in
absolute paths ~40 layers already overflow it, so the options name the
layers through the short `l/<i>` symlinks, relative to the container
directory: `mount` runs as a child process with that directory as its cwd
(the kernel resolves relative overlay paths against the mounting process's
cwd; changing our own cwd would affect the whole daemon).  That allows the
overlayfs maximum of 500 lower layers.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from agent.images.errors import RootfsError

MAX_MOUNT_DATA = 4095  # one page minus the terminating NUL
MAX_LOWER_LAYERS = 500  # OVL_MAX_STACK in the kernel
MNT_DETACH = 2


@dataclass(frozen=True)
class RootfsPaths:
    container_dir: Path

    @property
    def rootfs(self) -> Path:
        return self.container_dir / "rootfs"

    @property
    def upper(self) -> Path:
        return self.container_dir / "upper"

    @property
    def work(self) -> Path:
        return self.container_dir / "work"

    @property
    def links(self) -> Path:
        return self.container_dir / "l"

    @property
    def empty(self) -> Path:
        return self.container_dir / "empty"


def _unescape_mountinfo(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 3 < len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mount_points() -> list[tuple[str, str]]:
    """(mount point, fs type) for every mount in our mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-")
            except ValueError:
                continue
            out.append((_unescape_mountinfo(fields[4]), fields[sep + 1]))
    return out


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    return any(mp == target for mp, _ in mount_points())


def mount_options(n_layers: int) -> str:
    lower = ":".join(f"l/{i}" for i in range(n_layers))
    return f"lowerdir={lower},upperdir=upper,workdir=work"


async def mount_overlay(container_dir: Path, lower_dirs: Sequence[Path]) -> Path:
    """Mount `lower_dirs` (topmost first) + upper/work of `container_dir` at its rootfs/."""
    paths = RootfsPaths(Path(os.path.abspath(container_dir)))
    lowers = [Path(os.path.abspath(p)) for p in lower_dirs]
    if len(lowers) > MAX_LOWER_LAYERS:
        raise RootfsError(f"image has {len(lowers)} layers; overlayfs stacks at most {MAX_LOWER_LAYERS}")
    if is_mounted(paths.rootfs):
        raise RootfsError(f"{paths.rootfs} is already mounted")
    paths.container_dir.mkdir(parents=True, exist_ok=True)
    paths.upper.mkdir(mode=0o755, exist_ok=True)
    paths.work.mkdir(mode=0o700, exist_ok=True)
    paths.rootfs.mkdir(mode=0o755, exist_ok=True)
    if not lowers:
        # overlayfs needs at least one lower layer; an image without layers gets an empty one.
        paths.empty.mkdir(mode=0o755, exist_ok=True)
        lowers = [paths.empty]
    if paths.links.exists():
        shutil.rmtree(paths.links)
    paths.links.mkdir(mode=0o700)
    for i, target in enumerate(lowers):
        if not target.is_dir():
            raise RootfsError(f"layer directory {target} is missing")
        os.symlink(target, paths.links / str(i))
    opts = mount_options(len(lowers))
    if len(opts) > MAX_MOUNT_DATA:
        raise RootfsError(f"overlay mount options for {len(lowers)} layers exceed {MAX_MOUNT_DATA} bytes")
    from agent import proc  # spawned from a thread: cheap under any event loop

    try:
        res = await proc.run(["mount", "-t", "overlay", "overlay", "-o", opts, "rootfs"],
                             cwd=str(paths.container_dir), timeout=60)
    except FileNotFoundError:
        raise RootfsError("mount(8) not found; util-linux is required") from None
    if res.returncode != 0:
        raise RootfsError(
            f"mounting overlay at {paths.rootfs} failed (exit {res.returncode}): "
            f"{res.stderr.decode(errors='replace').strip()}"
        )
    return paths.rootfs


def unmount(container_dir: Path) -> None:
    """Unmount rootfs/ (lazily if busy); a no-op if it is not mounted."""
    rootfs = RootfsPaths(Path(os.path.abspath(container_dir))).rootfs
    libc = ctypes.CDLL(None, use_errno=True)
    for _ in range(16):  # stacked mounts on the same point come off one by one
        if not is_mounted(rootfs):
            return
        if libc.umount2(os.fsencode(rootfs), 0) == 0:
            continue
        err = ctypes.get_errno()
        if err == errno.EBUSY:
            # A process still has it open; detach now, the kernel frees it later.
            if libc.umount2(os.fsencode(rootfs), MNT_DETACH) == 0:
                continue
            err = ctypes.get_errno()
        if err == errno.EINVAL:
            return
        raise RootfsError(f"unmounting {rootfs} failed: {os.strerror(err)}")
    raise RootfsError(f"{rootfs} is still mounted after 16 unmounts")


def remove_dirs(container_dir: Path) -> None:
    """Remove what `mount_overlay` created; refuses while rootfs/ is mounted."""
    paths = RootfsPaths(Path(os.path.abspath(container_dir)))
    if is_mounted(paths.rootfs):
        raise RootfsError(f"{paths.rootfs} is still mounted; unmount it first")
    for d in (paths.links, paths.upper, paths.work, paths.empty):
        if d.is_symlink():
            d.unlink()
        elif d.exists():
            shutil.rmtree(d)
    try:
        paths.rootfs.rmdir()  # never rmtree: a non-empty rootfs/ means something is wrong
    except FileNotFoundError:
        pass
    except OSError as e:
        raise RootfsError(f"cannot remove {paths.rootfs}: {e.strerror}") from None
