"""Named volumes: engine-managed directories that outlive containers.

`<engine root>/volumes/<name>/_data` is bind-mounted into containers. A
volume is created on first use; when it is new and the image has content at
the mount target, that content is copied in first (Docker does the same, so
an image's default data appears in a fresh volume). A volume in use by a
container cannot be removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field

from api.fsutil import write_atomic

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class VolumeError(Exception):
    pass


class VolumeNotFound(VolumeError):
    pass


class VolumeInUse(VolumeError):
    pass


@dataclass
class Volume:
    name: str
    path: str  # the host directory that is mounted
    created: float
    labels: dict[str, str] = field(default_factory=dict)


class VolumeStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.join(os.path.abspath(root), "volumes")
        os.makedirs(self.root, exist_ok=True)

    @staticmethod
    def check_name(name: str, where: str = "volume") -> None:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VolumeError(
                f"{where}: {name!r} is not a valid volume name "
                "(letters, digits, '_', '.', '-'; starting with a letter or digit; at most 128)"
            )

    def _meta(self, name: str) -> str:
        return os.path.join(self.root, name, "volume.json")

    def get(self, name: str) -> Volume:
        self.check_name(name)
        try:
            with open(self._meta(name)) as f:
                return Volume(**json.load(f))
        except FileNotFoundError:
            raise VolumeNotFound(f"no volume named {name!r}") from None
        except (ValueError, TypeError) as e:
            raise VolumeError(f"volume {name!r}: damaged metadata in {self._meta(name)}: {e}") from None

    def create(self, name: str, labels: dict[str, str] | None = None) -> tuple[Volume, bool]:
        """The volume, and whether it was made now."""
        self.check_name(name)
        try:
            return self.get(name), False
        except VolumeNotFound:
            pass
        d = os.path.join(self.root, name)
        os.makedirs(os.path.join(d, "_data"), exist_ok=True)
        vol = Volume(name, os.path.join(d, "_data"), time.time(), dict(labels or {}))
        write_atomic(self._meta(name), json.dumps(asdict(vol)))
        return vol, True

    def list(self) -> list[Volume]:
        out = []
        for name in sorted(os.listdir(self.root)):
            try:
                out.append(self.get(name))
            except VolumeError:
                continue
        return out

    def remove(self, name: str, users: list[str]) -> None:
        """`users`: names of containers that mount it (refused if any)."""
        self.get(name)
        if users:
            raise VolumeInUse(f"volume {name!r} is in use by container(s) {', '.join(sorted(users))}")
        shutil.rmtree(os.path.join(self.root, name))

    @staticmethod
    def seed_from_image(vol: Volume, rootfs: str, target: str) -> None:
        """Copy the image's content at `target` into a fresh volume.
        The source path is resolved inside the rootfs so that symlinks in
        the image cannot point the copy at the host."""
        src = _resolve_in_root(rootfs, target)
        if src is None or not os.path.isdir(src) or os.listdir(vol.path):
            return
        shutil.copytree(src, vol.path, symlinks=True, dirs_exist_ok=True)


def _resolve_in_root(root: str, path: str) -> str | None:
    """Resolve `path` as if `root` were /, following symlinks without leaving root."""
    cur = os.path.abspath(root)
    parts = [p for p in path.split("/") if p and p != "."]
    hops = 0
    while parts:
        p = parts.pop(0)
        if p == "..":
            cur = os.path.dirname(cur) if cur != os.path.abspath(root) else cur
            continue
        nxt = os.path.join(cur, p)
        if os.path.islink(nxt):
            hops += 1
            if hops > 40:
                return None
            link = os.readlink(nxt)
            if link.startswith("/"):
                cur = os.path.abspath(root)
            parts = [x for x in link.split("/") if x and x != "."] + parts
            continue
        if not os.path.exists(nxt):
            return None
        cur = nxt
    return cur
