"""From what a compose file may say to one way of saying it.

Per file, before merging (`normalize_file`): the fields Swarm ignores,
deprecates or rejects are dropped with a warning or an error; short forms
become long ones (ports "8080:80", volumes "data:/srv", environment and
labels as lists, networks and depends_on as lists, `command` as a string,
...); relative paths (bind mounts, `env_file`, secret and config files) are
made relative to the directory of the file that names them. New nodes keep
the place of what they were made from, so later errors still point into
the file.

After merging (`fold_environment`): `env_file`s are read (through the
caller's file access) and put under `environment`, and variables listed
without a value take theirs from the environment the stack is loaded in.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Mapping
from typing import Any

from .diagnostics import Path, Place, Report
from .interpolation import Unresolved, parse_dotenv
from .yamlmarks import Node, RawFloat, RawInt

__all__ = ["IGNORED", "DEPRECATED", "REJECTED", "UNSUPPORTED", "normalize_file", "fold_environment",
           "parse_port", "parse_volume"]

IGNORED: dict[str, str] = {
    "build": "stacks deploy images; build and push the image first",
    "cgroupns_mode": "not supported in a stack",
    "cgroup_parent": "not supported in a stack",
    "domainname": "not supported in a stack",
    "external_links": "not supported in a stack; services reach each other by name on their networks",
    "ipc": "not supported in a stack",
    "links": "not needed in a stack; services reach each other by name on their networks",
    "mac_address": "not supported in a stack",
    "network_mode": "not supported in a stack; use networks",
    "pid": "not supported in a stack",
    "restart": "not used by stacks; use deploy.restart_policy",
    "shm_size": "not supported in a stack",
    "userns_mode": "not supported in a stack",
}
"""Service fields docker stack deploy ignores; one warning each."""

DEPRECATED: dict[str, str] = {
    "container_name": "deprecated and ignored: a service's containers are named after its tasks",
    "expose": "deprecated and ignored: services reach every port of each other on their networks",
}

REJECTED: dict[str, str] = {
    "extends": "not supported in a stack; merge several files with -c instead",
    "volume_driver": "not supported in a stack; set the driver under the top-level volumes",
    "volumes_from": "not supported in a stack; share a named volume instead",
    "cpu_quota": "not supported in a stack; use deploy.resources.limits.cpus",
    "cpu_shares": "not supported in a stack; use deploy.resources.reservations.cpus",
    "cpuset": "not supported in a stack; use deploy.resources",
    "mem_limit": "not supported in a stack; use deploy.resources.limits.memory",
    "memswap_limit": "not supported in a stack; use deploy.resources.limits.memory",
}

UNSUPPORTED: dict[str, str] = {
    "logging": "orch does not choose log drivers yet: task logs are kept by the node (orch service logs)",
    "dns": "orch does not set DNS servers yet: containers use the node's resolver through 127.0.0.11",
    "dns_search": "orch does not set DNS search domains yet",
    "dns_opt": "orch does not set DNS options yet",
    "tty": "orch does not give service containers a terminal yet",
    "stdin_open": "orch does not keep service containers' stdin open yet",
}
"""Compose fields Swarm honours and orch does not yet: ignored with a
warning rather than refused, so files written for docker stack deploy load."""


def text_of(v: Any) -> str | None:
    """A scalar as text (numbers as written, booleans lower case); None for
    mappings, lists, null and values whose interpolation failed."""
    if isinstance(v, Unresolved):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (RawInt, RawFloat)):
        return v.raw
    if isinstance(v, (int, float, str)):
        return str(v)
    return None


def _build(value: Any, place: Place, key_place: Place | None = None) -> Node:
    """A node tree from plain data, every node at `place`."""
    if isinstance(value, dict):
        return Node({k: _build(v, place, place) for k, v in value.items()}, place, key_place)
    if isinstance(value, list):
        return Node([_build(v, place) for v in value], place, key_place)
    return Node(value, place, key_place)


# -- short syntaxes, as pure functions -----------------------------------------------


def _port_range(s: str, what: str, whole: str) -> list[int]:
    lo, sep, hi = s.partition("-")
    try:
        a = int(lo)
        b = int(hi) if sep else a
    except ValueError:
        raise ValueError(f"{what} port {s!r} is not a number or range such as 8080 or 8000-8010 "
                         f"(in {whole!r})") from None
    if not (1 <= a <= 65535 and 1 <= b <= 65535) or b < a:
        raise ValueError(f"{what} port {s!r} must be from 1 to 65535, a range low-high (in {whole!r})")
    return list(range(a, b + 1))


def parse_port(s: str) -> list[dict[str, Any]]:
    """"80", "8080:80", "8080:80/udp", "8000-8001:80-81" -> long forms.
    A host address ("127.0.0.1:8080:80") is refused: orch publishes a port
    on all of a node's addresses. Raises ValueError."""
    body, sep, proto = s.partition("/")
    if sep and proto not in ("tcp", "udp"):
        raise ValueError(f"protocol {proto!r} is not supported (tcp or udp) in {s!r}")
    protocol = proto if sep else "tcp"
    if body.startswith("[") or body.count(":") > 1:
        host, pub, target = body.rsplit(":", 2)
        keep = f"{pub}:{target}" if pub else target
        raise ValueError(f"host address {host} is not supported: orch publishes a port on all of a node's "
                         f'addresses (write "{keep}{sep}{proto}")')
    published_s, _, target_s = body.rpartition(":")
    targets = _port_range(target_s, "container", s)
    if not published_s:
        return [{"target": t, "protocol": protocol, "mode": "ingress"} for t in targets]
    published = _port_range(published_s, "published", s)
    if len(published) != len(targets):
        raise ValueError(f"the published and container port ranges of {s!r} must have the same length")
    return [{"target": t, "published": p, "protocol": protocol, "mode": "ingress"}
            for p, t in zip(published, targets)]


_VOLUME_MODES = {"ro", "rw", "nocopy", "cached", "delegated", "consistent"}


def parse_volume(s: str, resolve: Callable[[str], str]) -> dict[str, Any]:
    """"/data" (anonymous volume), "name:/data[:ro]", "./dir:/data",
    "/host:/data:ro" -> long form; `resolve` makes host paths absolute.
    Raises ValueError."""
    parts = s.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": s}
    if len(parts) > 3:
        raise ValueError(f"{s!r}: expected SOURCE:TARGET[:MODE]")
    source, target = parts[0], parts[1]
    modes = parts[2].split(",") if len(parts) == 3 else []
    bad = [m for m in modes if m not in _VOLUME_MODES]
    if bad:
        raise ValueError(f"{s!r}: unknown volume option {bad[0]!r} (known: ro, rw, nocopy)")
    if not source:
        raise ValueError(f"{s!r}: the source is empty")
    out: dict[str, Any]
    if source.startswith(("/", ".", "~")):
        out = {"type": "bind", "source": resolve(source), "target": target}
    else:
        out = {"type": "volume", "source": source, "target": target}
        if "nocopy" in modes:
            out["volume"] = {"nocopy": True}
    if "ro" in modes:
        out["read_only"] = True
    return out


def _parse_device(s: str) -> dict[str, Any]:
    parts = s.split(":")
    if len(parts) > 3:
        raise ValueError(f"{s!r}: expected HOST_PATH[:CONTAINER_PATH[:PERMISSIONS]]")
    out: dict[str, Any] = {"source": parts[0]}
    if len(parts) == 2 and not parts[1].startswith("/"):
        out["permissions"] = parts[1]
    elif len(parts) >= 2:
        out["target"] = parts[1]
        if len(parts) == 3:
            out["permissions"] = parts[2]
    return out


# -- the per-file pass -----------------------------------------------------------------


class _Normalizer:
    def __init__(self, base_dir: str, home: str | None, report: Report) -> None:
        self.base_dir = base_dir
        self.home = home
        self.report = report

    def path(self, p: str) -> str:
        if (p == "~" or p.startswith("~/")) and self.home:
            p = self.home + p[1:]
        if p.startswith("/") or not self.base_dir:
            return posixpath.normpath(p)
        return posixpath.normpath(posixpath.join(self.base_dir, p))

    # top level

    def file(self, root: Node) -> Node:
        if not root.is_map:
            self.report.error(root.place, "", "a compose file must be a mapping (services:, networks:, ...)")
            return root.with_value({})
        out: dict[str, Node] = {}
        for key, n in root.value.items():
            if key == "version":
                continue  # obsolete in the compose specification
            fn = {"services": self.service, "networks": self.network, "volumes": self.volume,
                  "secrets": self.blob, "configs": self.blob}.get(key)
            out[key] = self.each(n, (key,), fn) if fn else n
        return root.with_value(out)

    def each(self, n: Node, path: Path, fn: Callable[[Node, Path], Node]) -> Node:
        if n.value is None:
            return n.with_value({})
        if not n.is_map:
            return n
        return n.with_value({k: fn(c, (*path, k)) for k, c in n.value.items()})

    def network(self, n: Node, path: Path) -> Node:
        return self.resource(n, path)

    def volume(self, n: Node, path: Path) -> Node:
        return self.resource(n, path)

    def blob(self, n: Node, path: Path) -> Node:
        n = self.resource(n, path)
        f = n.value.get("file") if n.is_map else None
        t = text_of(f.value) if f is not None else None
        if f is None or t is None:
            return n
        return n.with_value({**n.value, "file": f.with_value(self.path(t))})

    def resource(self, n: Node, path: Path) -> Node:
        if n.value is None:
            return n.with_value({})
        if not n.is_map:
            return n
        out = dict(n.value)
        if "labels" in out:
            out["labels"] = self.labels(out["labels"], (*path, "labels"))
        ext = out.get("external")
        if ext is not None and ext.is_map:
            name = ext.value.get("name")
            if set(ext.value) - {"name"} or name is None:
                return n.with_value(out)  # the model says what is wrong
            if "name" in out:
                self.report.error(ext.where, (*path, "external", "name"),
                                  "external.name and name are both set: keep name")
            else:
                self.report.warn(ext.where, (*path, "external", "name"),
                                 f"external.name is deprecated: write name: {text_of(name.value)} and external: true")
                out["name"] = name
            out["external"] = Node(True, ext.place, ext.key_place)
        return n.with_value(out)

    # services

    def service(self, n: Node, path: Path) -> Node:
        if n.value is None:
            return n.with_value({})
        if not n.is_map:
            return n
        out: dict[str, Node] = {}
        for key, c in n.value.items():
            p = (*path, key)
            if key in IGNORED:
                self.report.warn(c.where, p, f"ignored: {IGNORED[key]}")
            elif key in DEPRECATED:
                self.report.warn(c.where, p, DEPRECATED[key])
            elif key in UNSUPPORTED:
                self.report.warn(c.where, p, f"ignored: {UNSUPPORTED[key]}")
            elif key in REJECTED:
                self.report.error(c.where, p, REJECTED[key])
            else:
                fn = _SERVICE_FIELDS.get(key)
                out[key] = fn(self, c, p) if fn is not None else c
        return n.with_value(out)

    def pairs(self, n: Node, path: Path, what: str, missing: Any) -> Node:
        """KEY=VALUE lists to maps; a bare KEY gets `missing`."""
        if not n.is_seq:
            return n
        out: dict[str, Node] = {}
        for i, item in enumerate(n.value):
            if isinstance(item.value, Unresolved):
                continue
            s = text_of(item.value)
            if s is None:
                self.report.error(item.place, (*path, i), f"must be a string {what} (got {_kind(item.value)})")
                continue
            k, sep, v = s.partition("=")
            out[k] = Node(v if sep else missing, item.place, item.place)
        return n.with_value(out)

    def environment(self, n: Node, path: Path) -> Node:
        return self.pairs(n, path, "KEY=VALUE", None)

    def labels(self, n: Node, path: Path) -> Node:
        n = self.pairs(n, path, "KEY=VALUE", "")
        if n.is_map:
            return n.with_value({k: (v.with_value("") if v.value is None else v) for k, v in n.value.items()})
        return n

    def sysctls(self, n: Node, path: Path) -> Node:
        return self.pairs(n, path, "NAME=VALUE", "")

    def extra_hosts(self, n: Node, path: Path) -> Node:
        if not n.is_seq:
            return n
        out: dict[str, Node] = {}
        for i, item in enumerate(n.value):
            s = text_of(item.value)
            if s is None:
                if not isinstance(item.value, Unresolved):
                    self.report.error(item.place, (*path, i), "must be a string HOST=IP")
                continue
            sep = "=" if "=" in s else ":"
            host, found, ip = s.partition(sep)
            if not found or not host or not ip:
                self.report.error(item.place, (*path, i), f"must be HOST=IP or HOST:IP (got {s!r})")
                continue
            out[host] = Node(ip, item.place, item.place)
        return n.with_value(out)

    def words(self, n: Node, path: Path) -> Node:
        """command and entrypoint: a string is split as a shell would."""
        s = n.value
        if not isinstance(s, str) or isinstance(s, Unresolved):
            return n
        try:
            parts = shlex.split(s)
        except ValueError as e:
            self.report.error(n.where, path, f"cannot split {s!r} into words: {e}")
            return n.with_value(Unresolved(s))
        return n.with_value([Node(p, n.place) for p in parts])

    def ports(self, n: Node, path: Path) -> Node:
        if not n.is_seq:
            return n
        out: list[Node] = []
        for i, item in enumerate(n.value):
            if item.is_map:
                out.append(self.port_long(item, (*path, i)))
                continue
            s = text_of(item.value)
            if s is None:
                out.append(item)
                continue
            try:
                specs = parse_port(s)
            except ValueError as e:
                self.report.error(item.place, (*path, i), str(e))
                out.append(item.with_value(Unresolved(s)))  # keeps the indices of the items after it
                continue
            out.extend(_build(spec, item.place) for spec in specs)
        return n.with_value(out)

    def port_long(self, n: Node, path: Path) -> Node:
        if "host_ip" not in n.value:
            return n
        hip = n.value["host_ip"]
        self.report.error(hip.where, (*path, "host_ip"), "publishing on one host address is not supported: orch "
                          "publishes a port on all of a node's addresses (remove host_ip)")
        return n.with_value({k: v for k, v in n.value.items() if k != "host_ip"})

    def volumes(self, n: Node, path: Path) -> Node:
        if not n.is_seq:
            return n
        out: list[Node] = []
        for i, item in enumerate(n.value):
            if item.is_map:
                src, typ = item.value.get("source"), item.value.get("type")
                src_text = text_of(src.value) if src is not None else None
                if src is not None and src_text is not None and typ is not None and typ.value == "bind":
                    item = item.with_value({**item.value, "source": src.with_value(self.path(src_text))})
                out.append(item)
                continue
            s = text_of(item.value)
            if s is None:
                out.append(item)
                continue
            try:
                out.append(_build(parse_volume(s, self.path), item.place))
            except ValueError as e:
                self.report.error(item.place, (*path, i), str(e))
                out.append(item.with_value(Unresolved(s)))
        return n.with_value(out)

    def file_refs(self, n: Node, path: Path) -> Node:
        if not n.is_seq:
            return n
        return n.with_value([
            _build({"source": text_of(item.value)}, item.place) if text_of(item.value) is not None else item
            for item in n.value])

    def names_to_map(self, n: Node, path: Path, default: dict[str, Any]) -> Node:
        if n.is_seq:
            out: dict[str, Node] = {}
            for i, item in enumerate(n.value):
                s = text_of(item.value)
                if s is None:
                    if not isinstance(item.value, Unresolved):
                        self.report.error(item.place, (*path, i), f"must be a name (got {_kind(item.value)})")
                    continue
                out[s] = _build(dict(default), item.place, item.place)
            return n.with_value(out)
        if n.is_map:
            return n.with_value({k: (v.with_value({}) if v.value is None else v) for k, v in n.value.items()})
        return n

    def networks(self, n: Node, path: Path) -> Node:
        return self.names_to_map(n, path, {})

    def depends_on(self, n: Node, path: Path) -> Node:
        return self.names_to_map(n, path, {"condition": "service_started"})

    def healthcheck(self, n: Node, path: Path) -> Node:
        if not n.is_map or "test" not in n.value:
            return n
        t = n.value["test"]
        if isinstance(t.value, str) and not isinstance(t.value, Unresolved):
            t = t.with_value([Node("CMD-SHELL", t.place), Node(t.value, t.place)])
        return n.with_value({**n.value, "test": t})

    def env_file(self, n: Node, path: Path) -> Node:
        items = [n] if isinstance(n.value, str) else n.value if n.is_seq else None
        if items is None:
            return n
        out: list[Node] = []
        for i, item in enumerate(items):
            if item.is_map and "path" in item.value:
                p = item.value["path"]
                t = text_of(p.value)
                out.append(item.with_value({**item.value, "path": p.with_value(self.path(t))}) if t else item)
                continue
            t = text_of(item.value)
            if t is None:
                out.append(item)
                continue
            out.append(_build({"path": self.path(t), "required": True}, item.place))
        return Node(out, n.place, n.key_place, n.tag)

    def ulimits(self, n: Node, path: Path) -> Node:
        if not n.is_map:
            return n
        return n.with_value({k: (_build({"soft": v.value, "hard": v.value}, v.place, v.key_place)
                                 if isinstance(v.value, int) and not isinstance(v.value, bool) else v)
                             for k, v in n.value.items()})

    def devices(self, n: Node, path: Path) -> Node:
        if not n.is_seq:
            return n
        out: list[Node] = []
        for i, item in enumerate(n.value):
            s = text_of(item.value)
            if s is None or item.is_map:
                out.append(item)
                continue
            try:
                out.append(_build(_parse_device(s), item.place))
            except ValueError as e:
                self.report.error(item.place, (*path, i), str(e))
                out.append(item.with_value(Unresolved(s)))
        return n.with_value(out)

    def one_or_many(self, n: Node, path: Path) -> Node:
        if isinstance(n.value, str) and not isinstance(n.value, Unresolved):
            return n.with_value([Node(n.value, n.place)])
        return n

    def deploy(self, n: Node, path: Path) -> Node:
        if not n.is_map or "labels" not in n.value:
            return n
        return n.with_value({**n.value, "labels": self.labels(n.value["labels"], (*path, "labels"))})


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return repr(v)


_SERVICE_FIELDS: dict[str, Callable[[_Normalizer, Node, Path], Node]] = {
    "environment": _Normalizer.environment,
    "labels": _Normalizer.labels,
    "sysctls": _Normalizer.sysctls,
    "extra_hosts": _Normalizer.extra_hosts,
    "command": _Normalizer.words,
    "entrypoint": _Normalizer.words,
    "ports": _Normalizer.ports,
    "volumes": _Normalizer.volumes,
    "secrets": _Normalizer.file_refs,
    "configs": _Normalizer.file_refs,
    "networks": _Normalizer.networks,
    "depends_on": _Normalizer.depends_on,
    "healthcheck": _Normalizer.healthcheck,
    "env_file": _Normalizer.env_file,
    "ulimits": _Normalizer.ulimits,
    "devices": _Normalizer.devices,
    "tmpfs": _Normalizer.one_or_many,
    "deploy": _Normalizer.deploy,
}


def normalize_file(root: Node, *, base_dir: str, home: str | None, report: Report) -> Node:
    """One file's tree in long forms; problems go to `report`."""
    return _Normalizer(base_dir, home, report).file(root)


# -- after merging ------------------------------------------------------------------------


def fold_environment(root: Node, env: Mapping[str, str], read_text: Callable[[str], str], report: Report) -> Node:
    """Each service's `env_file`s read in order and put under its
    `environment`, which wins; variables without a value take the value of
    `env` or, if unset there, are left out (as docker compose does)."""
    services = root.value.get("services") if root.is_map else None
    if services is None or not services.is_map:
        return root
    new_services: dict[str, Node] = {}
    for name, svc in services.value.items():
        if not svc.is_map:
            new_services[name] = svc
            continue
        fields = dict(svc.value)
        env_node = fields.get("environment")
        if env_node is not None and not env_node.is_map:
            new_services[name] = svc
            continue
        values: dict[str, Node] = {}
        files = fields.pop("env_file", None)
        if files is not None:
            values.update(_read_env_files(files, ("services", name, "env_file"), env, read_text, report))
        if env_node is not None:
            values.update(env_node.value)
        resolved: dict[str, Node] = {}
        for k, v in values.items():
            if v.value is None:
                if k in env:
                    resolved[k] = v.with_value(env[k])
            else:
                resolved[k] = v
        if env_node is not None or resolved:
            where = env_node if env_node is not None else files
            assert where is not None
            fields["environment"] = Node(resolved, where.place, where.key_place)
        new_services[name] = svc.with_value(fields)
    return root.with_value({**root.value, "services": services.with_value(new_services)})


def _read_env_files(n: Node, path: Path, env: Mapping[str, str], read_text: Callable[[str], str],
                    report: Report) -> dict[str, Node]:
    out: dict[str, Node] = {}
    if not n.is_seq:
        report.error(n.where, path, "must be a path or a list of paths")
        return out
    for i, item in enumerate(n.value):
        if not item.is_map or "path" not in item.value:
            if not isinstance(item.value, Unresolved):
                report.error(item.place, (*path, i), "must be a path or {path: ..., required: ...}")
            continue
        unknown = set(item.value) - {"path", "required"}
        if unknown:
            k = sorted(unknown)[0]
            report.error(item.value[k].where, (*path, i, k), "unknown key (known: path, required)")
            continue
        p = item.value["path"].value
        required = item.value.get("required")
        req = True if required is None else required.value
        if not isinstance(p, str) or not isinstance(req, bool):
            report.error(item.place, (*path, i), "path must be a string and required true or false")
            continue
        try:
            text = read_text(p)
        except FileNotFoundError:
            if req:
                report.error(item.place, (*path, i), f"env file {p} does not exist")
            continue
        except OSError as e:
            report.error(item.place, (*path, i), f"cannot read env file {p}: {e.strerror or e}")
            continue
        for k, v in parse_dotenv(text, p, env.get, report).items():
            out[k] = Node(v, item.place, item.place)
    return out
