"""Reading CA material from disk with errors that say what was being read.

Writing goes through `api.fsutil.write_atomic` (a crash leaves the old file
or the new one; a key is never readable by others, not even for an instant).
"""

from __future__ import annotations

import os

from .errors import CAError


def read_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of `path`, or a CAError naming what was being read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CAError(f"cannot read the {what} at {os.fspath(path)}: {e.strerror or e}") from None
