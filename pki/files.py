"""Writing CA material to disk without ever exposing a half-written or
world-readable key.

A crash mid-write must leave either the old file or the new one: the data
goes to a temporary file in the same directory (so the rename stays on one
filesystem), is fsynced, then renamed over the target; the directory is
fsynced too so the rename itself survives a power loss. The temporary file
is created with the final mode, so a private key is never readable by
others, not even for an instant.
"""

from __future__ import annotations

import os
import tempfile

from .errors import CAError


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` atomically, leaving the file with `mode`."""
    if isinstance(data, str):
        raw = data.encode()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:  # bytes(5) would silently write five zero bytes
        raise TypeError(f"write_atomic needs str or bytes, got {type(data).__name__}")
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    # mkstemp creates the file 0600; fchmod before any byte is written.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # owns fd from here on, closes it on error
            os.fchmod(f.fileno(), mode)
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of `path`, or a CAError naming what was being read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CAError(f"cannot read the {what} at {os.fspath(path)}: {e.strerror or e}") from None
