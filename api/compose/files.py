"""The one place the stack parser touches the disk: reading the compose
files, `.env` files and files they name, for a caller on the machine that
has them (the CLI)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .loader import Loaded, Source, load

__all__ = ["DiskFiles", "load_paths"]


class DiskFiles:
    """FileAccess on the local filesystem."""

    def read_text(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.isfile(path)


def load_paths(paths: Sequence[str], *, environ: Mapping[str, str] | None = None,
               env_files: Sequence[str] | None = None) -> Loaded:
    """Load the compose files at `paths` (as `load`); messages name them as
    given, relative paths inside them resolve from their directories.
    `environ` defaults to the process environment. Raises ComposeError, and
    OSError when a compose file itself cannot be read."""
    files = DiskFiles()
    sources = [Source(p, files.read_text(p), os.path.dirname(os.path.abspath(p))) for p in paths]
    return load(sources, environ=dict(os.environ) if environ is None else environ,
                env_files=[os.path.abspath(p) for p in env_files] if env_files is not None else None, files=files)
