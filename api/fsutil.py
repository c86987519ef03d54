"""Replacing a file so that a crash leaves either the old content or the
new one, never a mix, and never a moment where the file is readable by
more than its final mode allows.

One helper for every package that keeps state in files (CA material and
the secrets key in pki, membership state in the daemon, the engine's
container records and bundles, the image store's metadata, volumes).

The data goes to a temporary file in the same directory (the rename stays
on one filesystem), named `.<name>.tmp-<random>` so that concurrent writers
never share one and sweeps of leftovers can recognise them; it is created
0600 and set to the final mode before any byte is written (the umask does
not apply). With `fsync` (the default) the data is flushed before the
rename and the directory after it, so both survive a power loss; callers
whose files are re-derived after a crash pass `fsync=False`.
"""

from __future__ import annotations

import os
import secrets


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory `path` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int = 0o644, *,
                 fsync: bool = True) -> None:
    """Replace `path` with `data` (str is written as UTF-8) atomically,
    leaving the file with exactly `mode`."""
    if isinstance(data, str):
        raw = data.encode()
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:  # bytes(5) would silently write five zero bytes
        raise TypeError(f"write_atomic needs str or bytes, got {type(data).__name__}")
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    tmp = os.path.join(directory, f".{os.path.basename(target)}.tmp-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(directory)
