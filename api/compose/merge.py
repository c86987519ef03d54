"""Merging several compose files into one, by the compose specification's
rules (later files override earlier ones).

Mappings merge key by key, recursively. Sequences are appended, with
these exceptions: `command`, `entrypoint` and `healthcheck.test` are
replaced; `ports`, `volumes`, `secrets`, `configs`, `devices` and
`env_file` entries with the same unique key (for ports: published, target
and protocol; for volumes and devices: target; for secrets and configs: the
target, or the source when no target is given; for env files: the path)
are merged into one entry; lists of plain values keep each value once.
Environment, labels and the other maps are already mappings (the
normaliser turned their list forms into maps), so they merge key by key.

The merge tags of the compose specification work: `!reset` removes what
earlier files said, `!override` replaces it instead of merging.

The merged tree keeps each value's place, so errors point into the file
that set the value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .normalize import text_of
from .yamlmarks import Node

__all__ = ["merge", "merge_all"]

_REPLACE = {("services", "*", "command"), ("services", "*", "entrypoint"), ("services", "*", "healthcheck", "test")}


def _field(n: Node, key: str) -> Any:
    c = n.value.get(key) if n.is_map else None
    return text_of(c.value) if c is not None else None


def _port_key(n: Node) -> Any:
    return ("port", _field(n, "published") or "0", _field(n, "target"), _field(n, "protocol") or "tcp")


def _target_key(n: Node) -> Any:
    return ("target", _field(n, "target"))


def _file_ref_key(n: Node) -> Any:
    return ("target", _field(n, "target") or _field(n, "source"))


def _path_key(n: Node) -> Any:
    return ("path", _field(n, "path"))


_KEYED: dict[tuple[str, ...], Callable[[Node], Any]] = {
    ("services", "*", "ports"): _port_key,
    ("services", "*", "volumes"): _target_key,
    ("services", "*", "secrets"): _file_ref_key,
    ("services", "*", "configs"): _file_ref_key,
    ("services", "*", "devices"): _target_key,
    ("services", "*", "env_file"): _path_key,
}


def _pattern(path: tuple[str, ...]) -> tuple[str, ...]:
    return tuple("*" if i == 1 and path and path[0] == "services" else p for i, p in enumerate(path))


def _clean(n: Node) -> Node | None:
    """A node of the first file to name a value: `!reset` drops it,
    other tags are only markers."""
    if n.tag == "!reset":
        return None
    v = n.value
    if isinstance(v, dict):
        v = {k: c2 for k, c in v.items() if (c2 := _clean(c)) is not None}
    elif isinstance(v, list):
        v = [c2 for c in v if (c2 := _clean(c)) is not None]
    return Node(v, n.place, n.key_place)


def merge(base: Node, over: Node, path: tuple[str, ...] = ()) -> Node | None:
    """`over` merged onto `base`; None when `over` resets the value."""
    if over.tag == "!reset":
        return None
    if over.tag == "!override":
        return _clean(Node(over.value, over.place, over.key_place))
    if base.is_map and over.is_map:
        out = dict(base.value)
        for k, c in over.value.items():
            if k in out:
                m = merge(out[k], c, (*path, k))
            else:
                m = _clean(c)
            if m is None:
                out.pop(k, None)
            else:
                out[k] = m
        return Node(out, base.place, base.key_place)
    if base.is_seq and over.is_seq:
        pat = _pattern(path)
        if pat in _REPLACE:
            return _clean(over)
        keyed = _KEYED.get(pat)
        items = list(base.value)
        if keyed is not None:
            index = {keyed(item): i for i, item in enumerate(items)}
            for c in over.value:
                k = keyed(c)
                if k in index:
                    m = merge(items[index[k]], c, (*path, "[]"))
                    if m is not None:
                        items[index[k]] = m
                else:
                    cc = _clean(c)
                    if cc is not None:
                        index[k] = len(items)
                        items.append(cc)
            return Node(items, base.place, base.key_place)
        seen = {_scalar_key(i) for i in items if _scalar_key(i) is not None}
        for c in over.value:
            sk = _scalar_key(c)
            if sk is not None and sk in seen:
                continue
            if sk is not None:
                seen.add(sk)
            cc = _clean(c)
            if cc is not None:
                items.append(cc)
        return Node(items, base.place, base.key_place)
    return _clean(over)


def _scalar_key(n: Node) -> Any:
    if n.is_map or n.is_seq:
        return None
    return (type(n.value).__name__, n.value)


def merge_all(trees: Sequence[Node]) -> Node:
    """The files' trees merged in order (one tree is only cleaned of tags)."""
    if not trees:
        raise ValueError("no compose files")
    out = _clean(trees[0]) or Node({}, trees[0].place)
    for t in trees[1:]:
        m = merge(out, t)
        out = m if m is not None else Node({}, t.place)
    return out
