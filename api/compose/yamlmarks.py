"""YAML with places: compose files read into a tree of `Node`s that remember
where each value (and each mapping key) was written.

The tree is what interpolation, normalisation and merging work on, so that
every later error can still say `file:line:col`. Scalars are resolved as in
YAML 1.2's core schema, which is what docker compose reads (Go's yaml.v3):
`yes`/`no`/`on`/`off` stay strings, `22:22` is a string (YAML 1.1 would
make it the number 1342), and a leading-zero integer such as `0440` is
octal, as yaml.v3 reads it, so file modes keep working. Numbers keep the
text they were written as (`RawInt.raw`), so `ZIP: 02134` in an environment
is the string "02134", not 1116.

Anchors, aliases and merge keys (`<<: *defaults`) work; a key given twice in
one mapping is an error (YAML parsers quietly keep the last). The compose
merge tags `!reset` and `!override` are kept on the node for the merger.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver, Resolver
from yaml.scanner import Scanner

from .diagnostics import Path, Place, Report

__all__ = ["Node", "RawInt", "RawFloat", "parse_yaml", "plain", "dump_yaml", "MERGE_TAGS"]

STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
FLOAT = "tag:yaml.org,2002:float"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
MAP = "tag:yaml.org,2002:map"
SEQ = "tag:yaml.org,2002:seq"
MERGE = "tag:yaml.org,2002:merge"
MERGE_TAGS = frozenset({"!reset", "!override"})


class RawInt(int):
    """An integer read from YAML, with the text it was written as."""

    raw: str

    def __new__(cls, value: int, raw: str) -> RawInt:
        obj = super().__new__(cls, value)
        obj.raw = raw
        return obj

    def __reduce__(self) -> Any:
        return (RawInt, (int(self), self.raw))


class RawFloat(float):
    """A float read from YAML, with the text it was written as."""

    raw: str

    def __new__(cls, value: float, raw: str) -> RawFloat:
        obj = super().__new__(cls, value)
        obj.raw = raw
        return obj

    def __reduce__(self) -> Any:
        return (RawFloat, (float(self), self.raw))


@dataclass(slots=True, eq=False)
class Node:
    """A value with its place. `value` is a dict[str, Node] (insertion
    ordered), a list[Node], or a scalar (str, int, float, bool, None).
    `key_place` is where the mapping key of this value is written, if it
    is a mapping's value; errors about a key's value point there."""

    value: Any
    place: Place
    key_place: Place | None = None
    tag: str | None = None  # "!reset" / "!override"

    @property
    def where(self) -> Place:
        return self.key_place or self.place

    def with_value(self, value: Any) -> Node:
        return replace(self, value=value)

    @property
    def is_map(self) -> bool:
        return isinstance(self.value, dict)

    @property
    def is_seq(self) -> bool:
        return isinstance(self.value, list)


# -- scalar resolution (YAML 1.2 core schema, yaml.v3's octals) -------------------

class _Resolver12(BaseResolver):
    pass


_BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_RE = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
_NULL_RE = re.compile(r"^(?:~|null|Null|NULL|)$")
_Resolver12.add_implicit_resolver(BOOL, _BOOL_RE, list("tTfF"))
_Resolver12.add_implicit_resolver(INT, _INT_RE, list("-+0123456789"))
_Resolver12.add_implicit_resolver(FLOAT, _FLOAT_RE, list("-+0123456789."))
_Resolver12.add_implicit_resolver(NULL, _NULL_RE, ["~", "n", "N", ""])
_Resolver12.add_implicit_resolver(MERGE, re.compile(r"^(?:<<)$"), ["<"])


def _int(text: str) -> int:
    t = text.replace("_", "")
    sign = -1 if t.startswith("-") else 1
    body = t.lstrip("+-")
    if body.startswith("0x"):
        return int(body[2:], 16)
    if body.startswith("0o"):
        return int(body[2:], 8)
    if len(body) > 1 and body.startswith("0") and all(c in "01234567" for c in body):
        return sign * int(body, 8)
    return sign * int(body, 10)


def _float(text: str) -> float:
    low = text.lower()
    if low.endswith(".inf"):
        return float("-inf") if low.startswith("-") else float("inf")
    if low == ".nan":
        return float("nan")
    return float(text)


def scalar_value(tag: str, text: str) -> Any:
    if tag == NULL:
        return None
    if tag == BOOL:
        return text.lower() == "true"
    if tag == INT:
        return RawInt(_int(text), text)
    if tag == FLOAT:
        return RawFloat(_float(text), text)
    return text


class _Loader(Reader, Scanner, Parser, Composer, _Resolver12):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        _Resolver12.__init__(self)


def _place(filename: str, mark: Any) -> Place:
    return Place(filename, mark.line + 1, mark.column + 1)


class _Converter:
    def __init__(self, filename: str, report: Report, resolver: _Resolver12) -> None:
        self.filename = filename
        self.report = report
        self.resolver = resolver
        self.active: set[int] = set()

    def node(self, y: Any, path: Path) -> Node:
        place = _place(self.filename, y.start_mark)
        tag = y.tag if y.tag in MERGE_TAGS else None
        if id(y) in self.active:
            self.report.error(place, path, "an alias refers to the mapping or list that contains it")
            return Node(None, place, tag=tag)
        self.active.add(id(y))
        try:
            if isinstance(y, ScalarNode):
                return Node(self.scalar(y, path), place, tag=tag)
            if isinstance(y, SequenceNode):
                return Node([self.node(item, (*path, i)) for i, item in enumerate(y.value)], place, tag=tag)
            return Node(self.mapping(y, path), place, tag=tag)
        finally:
            self.active.discard(id(y))

    def scalar(self, y: ScalarNode, path: Path) -> Any:
        tag = y.tag
        if tag in MERGE_TAGS:  # the content is read as if untagged
            tag = self.resolver.resolve(ScalarNode, y.value, (y.style is None, False)) if y.style is None else STR
        if tag not in (STR, INT, FLOAT, BOOL, NULL):
            self.report.error(_place(self.filename, y.start_mark), path,
                              f"unsupported YAML tag {y.tag}")
            return y.value
        try:
            return scalar_value(tag, y.value)
        except ValueError:
            return y.value

    def key(self, k: Any, path: Path) -> str | None:
        if not isinstance(k, ScalarNode):
            self.report.error(_place(self.filename, k.start_mark), path, "mapping keys must be strings")
            return None
        return str(k.value)

    def mapping(self, y: MappingNode, path: Path) -> dict[str, Node]:
        own: dict[str, Node] = {}
        merged: dict[str, Node] = {}
        for k, v in y.value:
            if k.tag == MERGE:
                for src in (v.value if isinstance(v, SequenceNode) else [v]):
                    if not isinstance(src, MappingNode):
                        self.report.error(_place(self.filename, src.start_mark), path,
                                          "a merge key (<<) takes a mapping or a list of mappings")
                        continue
                    for mk, mv in self.node(src, path).value.items():
                        merged.setdefault(mk, mv)  # the first mapping named wins
                continue
            key = self.key(k, path)
            if key is None:
                continue
            kplace = _place(self.filename, k.start_mark)
            if key in own:
                first = own[key].where
                self.report.error(kplace, (*path, key), f"the key is given twice (first at line {first.line})")
                continue
            child = self.node(v, (*path, key))
            child.key_place = kplace
            own[key] = child
        if not merged:
            return own
        out = {k: v for k, v in merged.items() if k not in own}
        out.update(own)
        return out


def parse_yaml(text: str, filename: str, report: Report) -> Node | None:
    """The tree of one YAML document, or None when it could not be read
    (the reason is in `report`)."""
    loader = _Loader(text)
    try:
        y = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        place = _place(filename, mark) if mark is not None else Place(filename, 1, 1)
        what = " ".join(s for s in (e.context, e.problem) if s)
        report.error(place, "", f"invalid YAML: {what}")
        return None
    except yaml.YAMLError as e:
        report.error(Place(filename, 1, 1), "", f"invalid YAML: {e}")
        return None
    finally:
        loader.dispose()
    if y is None:
        report.error(Place(filename, 1, 1), "", "the file is empty")
        return None
    return _Converter(filename, report, loader).node(y, ())


def plain(node: Node | None) -> Any:
    """The tree's values without places (dicts, lists, scalars)."""
    if node is None:
        return None
    v = node.value
    if isinstance(v, dict):
        return {k: plain(c) for k, c in v.items()}
    if isinstance(v, list):
        return [plain(c) for c in v]
    return v


# -- writing ------------------------------------------------------------------------

class _DumpResolver(BaseResolver):
    """Quotes every string that either YAML 1.1 or 1.2 would read as
    something else, so the output reads back the same in both."""


_DumpResolver.yaml_implicit_resolvers = {
    ch: list(Resolver.yaml_implicit_resolvers.get(ch, [])) + list(_Resolver12.yaml_implicit_resolvers.get(ch, []))
    for ch in set(Resolver.yaml_implicit_resolvers) | set(_Resolver12.yaml_implicit_resolvers)
}


class _Dumper(yaml.emitter.Emitter, yaml.serializer.Serializer, yaml.representer.SafeRepresenter, _DumpResolver):
    def __init__(self, stream: Any, **kw: Any) -> None:
        yaml.emitter.Emitter.__init__(self, stream, width=kw.get("width", 120), allow_unicode=True)
        yaml.serializer.Serializer.__init__(self)
        yaml.representer.SafeRepresenter.__init__(self, default_flow_style=False, sort_keys=False)
        _DumpResolver.__init__(self)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: _Dumper, data: str) -> Any:
    style = "|" if "\n" in data and data == data.strip(" ") and all(c == "\n" or c.isprintable()
                                                                    for c in data) else None
    return dumper.represent_scalar(STR, data, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(RawInt, lambda d, v: d.represent_int(int(v)))
_Dumper.add_representer(RawFloat, lambda d, v: d.represent_float(float(v)))


def dump_yaml(data: Any) -> str:
    """YAML text of plain data (dicts, lists, str, int, float, bool, None),
    keys in the order given."""
    return yaml.dump(data, Dumper=_Dumper)
