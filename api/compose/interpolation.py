"""Variable interpolation and `.env` files, as the compose specification
defines them.

`substitute()` expands one string: `$$` is a literal `$`; `$V` and `${V}`
are V's value ("" with a warning when V is unset); `${V:-d}` / `${V-d}`
give d when V is unset or empty / unset; `${V:?msg}` / `${V?msg}` are an
error when V is unset or empty / unset; `${V:+alt}` / `${V+alt}` give alt
when V is set and not empty / set. Defaults and alternatives are templates
themselves (`${A:-${B:-x}}`) and are only expanded when used. A `$` that
starts none of these is an error (write `$$`).

`interpolate()` applies it to every string value of a file's tree (never
to keys), before files are merged. `parse_dotenv()` reads `.env` syntax the
way docker compose does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .diagnostics import Path, Place, Report
from .yamlmarks import Node

__all__ = ["InterpolationError", "Unresolved", "substitute", "interpolate", "parse_dotenv", "escape"]

Lookup = Callable[[str], "str | None"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    pass


class Unresolved(str):
    """A value that could not be read (its interpolation or short syntax
    failed, and that error is reported once); later stages pass it by
    rather than report it again."""


@dataclass
class _Result:
    text: str
    unset: list[str]


def escape(s: str) -> str:
    """The template that substitutes to `s` ($ doubled)."""
    return s.replace("$", "$$")


def substitute(template: str, lookup: Lookup, unset: list[str] | None = None) -> str:
    """Expand `template`; names of unset variables used without a default
    are appended to `unset` (for warnings). Raises InterpolationError."""
    out: list[str] = []
    i, n = 0, len(template)
    while i < n:
        j = template.find("$", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        if j + 1 >= n:
            raise InterpolationError(f"invalid interpolation in {template!r}: a lone $ at the end "
                                     "(write $$ for a literal $)")
        nxt = template[j + 1]
        if nxt == "$":
            out.append("$")
            i = j + 2
        elif nxt == "{":
            end = _closing(template, j + 2)
            if end < 0:
                raise InterpolationError(f"invalid interpolation in {template!r}: \"${{\" is not closed "
                                         "(write $$ for a literal $)")
            out.append(_braced(template[j + 2:end], lookup, unset, template))
            i = end + 1
        else:
            m = _NAME.match(template, j + 1)
            if m is None:
                raise InterpolationError(f"invalid interpolation in {template!r}: \"${nxt}\" is not a variable "
                                         "(write $$ for a literal $)")
            value = lookup(m.group())
            if value is None:
                if unset is not None:
                    unset.append(m.group())
                value = ""
            out.append(value)
            i = m.end()
    return "".join(out)


def _closing(s: str, start: int) -> int:
    """Index of the `}` closing a `${` whose body starts at `start`."""
    depth = 0
    i = start
    while i < len(s):
        c = s[i]
        if c == "$" and i + 1 < len(s) and s[i + 1] == "$":
            i += 2
            continue
        if c == "$" and i + 1 < len(s) and s[i + 1] == "{":
            depth += 1
            i += 2
            continue
        if c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


def _braced(body: str, lookup: Lookup, unset: list[str] | None, template: str) -> str:
    m = _NAME.match(body)
    if m is None:
        raise InterpolationError(f"invalid interpolation in {template!r}: \"${{{body}}}\" does not start with "
                                 "a variable name")
    name, rest = m.group(), body[m.end():]
    value = lookup(name)
    if not rest:
        if value is None:
            if unset is not None:
                unset.append(name)
            return ""
        return value
    op = next((o for o in _OPS if rest.startswith(o)), None)
    if op is None:
        raise InterpolationError(f"invalid interpolation in {template!r}: unknown operator in \"${{{body}}}\" "
                                 "(known: :- - :? ? :+ +)")
    word = rest[len(op):]
    empty_counts = op.startswith(":")
    is_set = value is not None and (value != "" or not empty_counts)
    kind = op[-1]
    if kind == "-":
        return value if is_set else substitute(word, lookup, unset)  # type: ignore[return-value]
    if kind == "+":
        return substitute(word, lookup, unset) if is_set else ""
    if is_set:  # "?"
        return value  # type: ignore[return-value]
    msg = substitute(word, lookup, unset) if word else ""
    detail = f"required variable {name} is missing a value"
    raise InterpolationError(f"{detail}: {msg}" if msg else detail)


def interpolate(node: Node, env: Mapping[str, str], report: Report, path: Path = ()) -> Node:
    """A copy of `node` with every string value expanded; errors and
    warnings (unset variables) go to `report` with the value's place."""
    v = node.value
    if isinstance(v, dict):
        return node.with_value({k: interpolate(c, env, report, (*path, k)) for k, c in v.items()})
    if isinstance(v, list):
        return node.with_value([interpolate(c, env, report, (*path, i)) for i, c in enumerate(v)])
    if not isinstance(v, str) or "$" not in v:
        return node
    unset: list[str] = []
    try:
        text = substitute(v, env.get, unset)
    except InterpolationError as e:
        report.error(node.place, path, str(e))
        return node.with_value(Unresolved(v))
    for name in dict.fromkeys(unset):
        report.warn(node.place, path, f"variable {name} is not set: using an empty string")
    return node.with_value(text)


# -- .env files ------------------------------------------------------------------------

_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "$$"}


def parse_dotenv(text: str, filename: str, lookup: Lookup, report: Report) -> dict[str, str]:
    """KEY=VALUE lines as docker compose reads them: `#` comments and blank
    lines, an optional `export ` prefix, values unquoted (trimmed, ` #`
    starts a comment), 'single-quoted' (literal) or "double-quoted" (\\n,
    \\t, \\", \\\\ escapes; may span lines). Unquoted and double-quoted
    values are interpolated from `lookup`, then from the file's earlier
    lines. A line with a key only takes the value from `lookup`, if set."""
    out: dict[str, str] = {}

    def look(name: str) -> str | None:
        v = lookup(name)
        return v if v is not None else out.get(name)

    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line_no, raw = i + 1, lines[i]
        i += 1
        s = raw.lstrip()
        col = len(raw) - len(s) + 1
        if not s or s.startswith("#"):
            continue
        if s.startswith("export ") or s.startswith("export\t"):
            rest = s[len("export"):].lstrip()
            col += len(s) - len(rest)
            s = rest
        m = _KEY.match(s)
        if m is None:
            report.error(Place(filename, line_no, col), "", f"expected KEY=VALUE, got {raw.strip()!r}")
            continue
        key, after = m.group(), s[m.end():]
        stripped = after.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            v = lookup(key)
            if v is not None:
                out[key] = v
            continue
        if not stripped.startswith("="):
            report.error(Place(filename, line_no, col + m.end()), "",
                         f"expected = after {key!r}, got {stripped[0]!r}")
            continue
        value = stripped[1:].lstrip(" \t")
        vcol = col + len(s) - len(value)
        place = Place(filename, line_no, vcol)
        if value[:1] in ("'", '"'):
            quote = value[0]
            body = value[1:]
            while True:
                end = _quote_end(body, quote)
                if end >= 0 or i >= len(lines):
                    break
                body += "\n" + lines[i]
                i += 1
            if end < 0:
                report.error(place, key, f"the {quote} quote is not closed")
                continue
            trailing = body[end + 1:].strip()
            if trailing and not trailing.startswith("#"):
                report.error(place, key, f"unexpected text after the closing quote: {trailing!r}")
                continue
            body = body[:end]
            if quote == "'":
                out[key] = body
                continue
            body = re.sub(r"\\(.)", lambda mm: _ESCAPES.get(mm.group(1), "\\" + mm.group(1)), body)
        else:
            body = re.split(r"[ \t]#", value, maxsplit=1)[0].rstrip(" \t")
        try:
            out[key] = substitute(body, look)
        except InterpolationError as e:
            report.error(place, key, str(e))
    return out


def _quote_end(body: str, quote: str) -> int:
    i = 0
    while i < len(body):
        if body[i] == "\\" and quote == '"':
            i += 2
            continue
        if body[i] == quote:
            return i
        i += 1
    return -1
