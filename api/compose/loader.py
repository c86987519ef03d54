"""Loading a stack: compose texts in, a validated `Project` out.

The steps, each its own module: read YAML keeping places (`yamlmarks`);
interpolate each file's values from the stack's environment
(`interpolation`); normalise each file to long forms and drop or refuse
the fields Swarm does not take (`normalize`); merge the files (`merge`);
fold `env_file`s into `environment`; validate the result as a `Project`
(`model`) and check what refers to what. Every problem of every file is
collected with its place, and they are raised together as one
`ComposeError`; warnings come back with the model.

Sans-I/O: files named inside the compose files (`.env`, `env_file`, secret
and config files) are reached through a `FileAccess` the caller passes in;
`api.compose.files` has the one that reads the disk.
"""

from __future__ import annotations

import difflib
import posixpath
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from ..errors import ValidationError as ApiValidationError
from ..errors import show_value
from .diagnostics import ComposeError, Diagnostic, Path, Place, Report, sorted_problems
from .interpolation import Unresolved, interpolate, parse_dotenv
from .merge import merge_all
from .model import Project, check_references
from .normalize import fold_environment, normalize_file
from .yamlmarks import Node, parse_yaml, plain

__all__ = ["Source", "FileAccess", "MemoryFiles", "NO_FILES", "SourceMap", "Loaded", "load", "stack_environment"]


@dataclass(frozen=True)
class Source:
    """One compose file's text. `name` is what messages show; relative
    paths inside the file are taken from `dir` (default: the directory of
    `name`)."""

    name: str
    text: str
    dir: str | None = None

    @property
    def base_dir(self) -> str:
        return self.dir if self.dir is not None else posixpath.dirname(self.name)


class FileAccess(Protocol):
    """How the loader reaches files that compose files name."""

    def read_text(self, path: str) -> str:
        """The file's text; raises FileNotFoundError or OSError."""
        ...

    def exists(self, path: str) -> bool:
        ...


class MemoryFiles:
    """Files held in a mapping (tests; a server given a client's files)."""

    def __init__(self, files: Mapping[str, str | bytes] | None = None) -> None:
        self.files = dict(files or {})

    def read_bytes(self, path: str) -> bytes:
        try:
            v = self.files[path]
        except KeyError:
            raise FileNotFoundError(path) from None
        return v.encode() if isinstance(v, str) else v

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode()

    def exists(self, path: str) -> bool:
        return path in self.files


NO_FILES = MemoryFiles()


class SourceMap:
    """Key path -> where it is written, for every value of the merged file."""

    def __init__(self, places: Mapping[Path, Place] | None = None) -> None:
        self._places = dict(places or {})

    @classmethod
    def of(cls, root: Node) -> SourceMap:
        places: dict[Path, Place] = {}

        def walk(n: Node, path: Path) -> None:
            places[path] = n.where
            if n.is_map:
                for k, c in n.value.items():
                    walk(c, (*path, k))
            elif n.is_seq:
                for i, c in enumerate(n.value):
                    walk(c, (*path, i))

        walk(root, ())
        return cls(places)

    def find(self, path: Sequence[str | int]) -> Place | None:
        """The place of `path`, or of its nearest ancestor that was written."""
        p = tuple(path)
        while True:
            if p in self._places:
                return self._places[p]
            if not p:
                return None
            p = p[:-1]


@dataclass(frozen=True)
class Loaded:
    project: Project
    warnings: tuple[Diagnostic, ...]
    places: SourceMap
    environment: Mapping[str, str]  # what values were interpolated from (.env files + process)


def stack_environment(sources: Sequence[Source], environ: Mapping[str, str], env_files: Sequence[str] | None,
                      files: FileAccess, report: Report) -> dict[str, str]:
    """The variables a stack is interpolated from: the `.env` beside the
    first file (or the `env_files` given instead, later ones winning),
    overridden by `environ` (the process environment)."""
    env: dict[str, str] = {}
    if env_files is None:
        paths: Sequence[str] = [posixpath.join(sources[0].base_dir, ".env")] if sources else []
        required = False
    else:
        paths, required = env_files, True
    for p in paths:
        try:
            text = files.read_text(p)
        except FileNotFoundError:
            if required:
                report.error(None, "", f"env file {p} does not exist")
            continue
        except OSError as e:
            report.error(None, "", f"cannot read env file {p}: {e.strerror or e}")
            continue
        env.update(parse_dotenv(text, p, lambda k: environ.get(k, env.get(k)), report))
    env.update(environ)
    return env


def load(sources: Sequence[Source], *, environ: Mapping[str, str] | None = None,
         env_files: Sequence[str] | None = None, files: FileAccess = NO_FILES) -> Loaded:
    """The stack the compose `sources` describe (later ones override
    earlier ones). `environ` is the process environment (it wins over
    `.env`); `env_files` replace the default `.env` beside the first file.
    Raises ComposeError with every problem found."""
    if not sources:
        raise ComposeError([Diagnostic(None, "", "no compose file given")])
    report = Report()
    environ = dict(environ or {})
    env = stack_environment(sources, environ, env_files, files, report)
    trees: list[Node] = []
    for src in sources:
        tree = parse_yaml(src.text, src.name, report)
        if tree is None:
            continue
        tree = interpolate(tree, env, report)
        trees.append(normalize_file(tree, base_dir=src.base_dir, home=environ.get("HOME"), report=report))
    if len(trees) != len(sources):  # a file could not be read at all
        report.raise_if_errors()
    merged = merge_all(trees)
    merged = fold_environment(merged, env, files.read_text, report)
    places = SourceMap.of(merged)
    data = plain(merged)
    project = _validate(data, places, report)
    for path, msg in check_references(data, files.exists):
        report.error(places.find(path), path, msg)
    report.raise_if_errors()
    assert project is not None
    return Loaded(project, tuple(sorted_problems(report.warnings)), places, env)


def _validate(data: Any, places: SourceMap, report: Report) -> Project | None:
    try:
        return Project.model_validate(data)
    except PydanticValidationError as e:
        for path, msg in pydantic_problems(e):
            report.error(places.find(path), path, msg)
        return None


def pydantic_problems(e: PydanticValidationError, prefix: Path = ()) -> list[tuple[Path, str]]:
    """pydantic's errors of a compose model as (key path, message), in the
    words of api.errors (the control API's) where it has them."""
    out: list[tuple[Path, str]] = []
    worded = ApiValidationError.from_pydantic(e).errors
    for err, (_, api_msg) in zip(e.errors(include_url=False), worded):
        if isinstance(err.get("input"), Unresolved):
            continue  # its interpolation error was reported already
        loc: Path = tuple(p for p in err["loc"] if p != "[key]")
        typ = err["type"]
        if typ == "extra_forbidden":
            msg = unknown_key(prefix + loc)
        elif typ.startswith("compose_"):
            msg = err["msg"]
        elif typ == "literal_error" or typ == "enum":
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"must be one of {expected} (got {show_value(err.get('input'))})"
        else:
            msg = api_msg
        out.append((prefix + loc, msg))
    return out


def unknown_key(path: Path) -> str:
    key = str(path[-1])
    fields = _fields_at(path[:-1])
    close = difflib.get_close_matches(key, fields, n=1, cutoff=0.6)
    if close:
        return f'unknown key "{key}"; did you mean "{close[0]}"?'
    if fields and len(fields) <= 8:
        return f'unknown key "{key}" (known: {", ".join(fields)})'
    return f'unknown key "{key}"'


def _unwrap(t: Any) -> Any:
    while True:
        origin = get_origin(t)
        if origin is Annotated:
            t = get_args(t)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(t) if a is not type(None)]
            if len(args) != 1:
                return t
            t = args[0]
        else:
            return t


def _fields_at(path: Path) -> list[str]:
    """The keys the model takes at `path` (a mapping of the compose file)."""
    t: Any = Project
    for part in path:
        t = _unwrap(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            f = t.model_fields.get(part) if isinstance(part, str) else None
            if f is None:
                return []
            t = f.annotation
        elif get_origin(t) is dict:
            t = get_args(t)[1]
        elif get_origin(t) in (tuple, list):
            t = get_args(t)[0]
        else:
            return []
    t = _unwrap(t)
    if isinstance(t, type) and issubclass(t, BaseModel):
        return list(t.model_fields)
    return []
