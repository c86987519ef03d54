"""Helpers of the compose tests: load texts as files of a directory."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import pytest

from api.compose import ComposeError, Loaded, MemoryFiles, Source, load, to_config

DIR = "/srv/app"


def src(text: str, name: str = "stack.yml") -> Source:
    """A compose file at /srv/app/<name>; messages show <name>."""
    return Source(name, textwrap.dedent(text), DIR)


def load_text(*texts: str, environ: Mapping[str, str] | None = None, files: Mapping[str, str] | None = None,
              env_files: list[str] | None = None) -> Loaded:
    names = ["stack.yml"] + [f"override{i}.yml" for i in range(1, len(texts))]
    return load([src(t, n) for t, n in zip(texts, names)], environ=environ or {},
                files=MemoryFiles(files or {}), env_files=env_files)


def errors(*texts: str, **kw: Any) -> list[str]:
    with pytest.raises(ComposeError) as info:
        load_text(*texts, **kw)
    return info.value.messages()


def warnings(*texts: str, **kw: Any) -> list[str]:
    return [str(w) for w in load_text(*texts, **kw).warnings]


def service(snippet: str, **kw: Any) -> dict[str, Any]:
    """The normalised form (as `stack config` writes it) of service `web`
    made of `image: img` and `snippet` (YAML at the service's indentation)."""
    body = textwrap.indent(textwrap.dedent(snippet), "    ")
    text = f"services:\n  web:\n    image: img\n{body}"
    out = to_config(load_text(text, **kw).project)["services"]["web"]
    del out["image"]
    return out
