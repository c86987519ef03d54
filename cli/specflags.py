"""Parsing of the container flags `container run` and `service create` share
(--mount, -v, --tmpfs, --health-*), named as in Docker, and of the service
flags that take structured values (--publish, --depends-on). Each parser returns
the API's JSON shape and raises click.BadParameter naming the flag."""

from __future__ import annotations

import re
from typing import Any

import click

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_duration(s: str, flag: str) -> float:
    """'30s', '1m30s', '500ms', or plain seconds."""
    s = s.strip()
    try:
        return float(s)
    except ValueError:
        pass
    if not _DURATION.match(s):
        raise click.BadParameter(f"{s!r} is not a duration such as 30s, 1m30s or 500ms", param_hint=flag)
    return sum(float(n) * _UNIT[u] for n, u in _PART.findall(s))


def parse_size(s: str, flag: str) -> int:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$", s)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise click.BadParameter(f"{s!r} is not a size such as 64m, 512k or 1g", param_hint=flag)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_octal(v: str, message: str, flag: str) -> int:
    """A file mode such as 1777; `message` says what was wrong, for the flag."""
    try:
        return int(v, 8)
    except ValueError:
        raise click.BadParameter(message, param_hint=flag) from None


def parse_mount(s: str) -> dict[str, Any]:
    """--mount type=bind|volume|tmpfs,source=...,target=...[,readonly][,tmpfs-size=..][,tmpfs-mode=..]"""
    out: dict[str, Any] = {"type": "volume"}
    for part in s.split(","):
        if not part:
            continue
        k, sep, v = part.partition("=")
        k = k.strip().lower()
        if k in ("readonly", "ro"):
            if sep and v.lower() not in ("1", "true", "0", "false"):
                raise click.BadParameter(f"{part!r}: readonly takes true or false", param_hint="--mount")
            out["readonly"] = not sep or v.lower() in ("1", "true")
        elif k == "type":
            out["type"] = v
        elif k in ("source", "src"):
            out["source"] = v
        elif k in ("target", "destination", "dst"):
            out["target"] = v
        elif k == "tmpfs-size":
            out["tmpfs_size"] = parse_size(v, "--mount tmpfs-size")
        elif k == "tmpfs-mode":
            out["tmpfs_mode"] = parse_octal(v, f"{part!r}: tmpfs-mode is octal, e.g. 1777", "--mount")
        else:
            raise click.BadParameter(f"unknown key {k!r} in {s!r}", param_hint="--mount")
    if "target" not in out:
        raise click.BadParameter(f"{s!r} has no target=", param_hint="--mount")
    return out


def parse_volume(s: str) -> dict[str, Any]:
    """-v SOURCE:TARGET[:ro|rw]: a host path (bind) or a volume name; -v TARGET: anonymous volume."""
    parts = s.split(":")
    if len(parts) == 1:
        return {"type": "volume", "target": parts[0]}
    if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise click.BadParameter(f"{s!r}: expected SOURCE:TARGET[:ro|rw]", param_hint="-v")
    src, target = parts[0], parts[1]
    return {"type": "bind" if src.startswith("/") else "volume", "source": src, "target": target,
            "readonly": len(parts) == 3 and parts[2] == "ro"}


def parse_tmpfs(s: str) -> dict[str, Any]:
    """--tmpfs TARGET[:size=64m,mode=1777]"""
    target, _, opts = s.partition(":")
    m: dict[str, Any] = {"type": "tmpfs", "target": target}
    for o in filter(None, opts.split(",")):
        k, _, v = o.partition("=")
        if k == "size":
            m["tmpfs_size"] = parse_size(v, "--tmpfs size")
        elif k == "mode":
            m["tmpfs_mode"] = parse_octal(v, f"{o!r}: mode is octal", "--tmpfs")
        else:
            raise click.BadParameter(f"unknown option {k!r} in {s!r}", param_hint="--tmpfs")
    return m


def health_options(f: Any) -> Any:
    for opt in reversed([
        click.option("--health-cmd", help="Command to run to check health (through /bin/sh -c)."),
        click.option("--health-interval", help="Time between checks (e.g. 30s)."),
        click.option("--health-timeout", help="Time a check may take (e.g. 30s)."),
        click.option("--health-retries", type=int, help="Consecutive failures before unhealthy."),
        click.option("--health-start-period", help="Start period during which failures do not count."),
        click.option("--no-healthcheck", is_flag=True, help="Disable the image's healthcheck."),
    ]):
        f = opt(f)
    return f


def build_healthcheck(opts: dict[str, Any]) -> dict[str, Any] | None:
    if opts.get("no_healthcheck"):
        if opts.get("health_cmd"):
            raise click.BadParameter("--no-healthcheck conflicts with --health-cmd", param_hint="--no-healthcheck")
        return {"test": ["NONE"]}
    tuned = any(opts.get(k) is not None for k in
                ("health_interval", "health_timeout", "health_retries", "health_start_period"))
    if not opts.get("health_cmd"):
        if tuned:
            raise click.BadParameter("needs --health-cmd (the image's check cannot be retuned here)",
                                     param_hint="--health-*")
        return None
    hc: dict[str, Any] = {"test": ["CMD-SHELL", opts["health_cmd"]]}
    for flag, key in (("health_interval", "interval"), ("health_timeout", "timeout"),
                      ("health_start_period", "start_period")):
        if opts.get(flag) is not None:
            hc[key] = parse_duration(opts[flag], "--" + flag.replace("_", "-"))
    if opts.get("health_retries") is not None:
        hc["retries"] = opts["health_retries"]
    return hc


def parse_pairs(items: tuple[str, ...], flag: str) -> dict[str, str]:
    """KEY=VALUE flags (--env, --label) into a dict; a bad item names its flag."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not k or not sep:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=flag)
        out[k] = v
    return out


_PROTOCOLS = ("tcp", "udp")
_PUBLISH_MODES = ("ingress", "host")


def _port_number(v: str, what: str, s: str, flag: str, *, zero: bool = False) -> int:
    if not v.isdigit() or not (0 if zero else 1) <= int(v) <= 65535:
        if "-" in v:
            raise click.BadParameter(f"{s!r}: port ranges are not supported; publish each port", param_hint=flag)
        raise click.BadParameter(f"{s!r}: {what} {v!r} is not a port number ({0 if zero else 1}-65535)",
                                 param_hint=flag)
    return int(v)


def _choice(v: str, choices: tuple[str, ...], what: str, s: str, flag: str) -> str:
    if v.lower() not in choices:
        raise click.BadParameter(f"{s!r}: {what} {v!r} is not one of {', '.join(choices)}", param_hint=flag)
    return v.lower()


def parse_publish(s: str, flag: str = "--publish") -> dict[str, Any]:
    """--publish published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host],
    or short: 8080:80, 8080:80/udp, 80 (target only: a published port is
    allocated from 30000-32767). Returns a PortConfig in JSON form."""
    out: dict[str, Any] = {"protocol": "tcp", "publish_mode": "ingress", "published_port": 0}
    if "=" in s:
        for part in s.split(","):
            k, sep, v = part.partition("=")
            k = k.strip().lower()
            if not sep:
                raise click.BadParameter(f"{s!r}: {part!r} is not KEY=VALUE (keys: published, target, protocol, "
                                         "mode)", param_hint=flag)
            if k == "published":
                out["published_port"] = _port_number(v, "published port", s, flag, zero=True)
            elif k == "target":
                out["target_port"] = _port_number(v, "target port", s, flag)
            elif k == "protocol":
                out["protocol"] = _choice(v, _PROTOCOLS, "protocol", s, flag)
            elif k == "mode":
                out["publish_mode"] = _choice(v, _PUBLISH_MODES, "mode", s, flag)
            else:
                raise click.BadParameter(f"{s!r}: unknown key {k!r} (keys: published, target, protocol, mode)",
                                         param_hint=flag)
        if "target_port" not in out:
            raise click.BadParameter(f"{s!r}: target= is required (the port inside the container)", param_hint=flag)
        return out
    ports, slash, proto = s.partition("/")
    if slash:
        out["protocol"] = _choice(proto, _PROTOCOLS, "protocol", s, flag)
    parts = ports.split(":")
    if len(parts) > 2:
        raise click.BadParameter(f"{s!r}: publishing on one host address is not supported; "
                                 "use PUBLISHED:TARGET[/PROTOCOL]", param_hint=flag)
    if len(parts) == 2:
        out["published_port"] = _port_number(parts[0], "published port", s, flag, zero=True)
    out["target_port"] = _port_number(parts[-1], "target port", s, flag)
    return out


def parse_publish_rm(s: str, flag: str = "--publish-rm") -> tuple[int, str | None]:
    """PUBLISHED[/PROTOCOL] -> (port, protocol or None for every protocol)."""
    port, slash, proto = s.partition("/")
    return (_port_number(port, "published port", s, flag),
            _choice(proto, _PROTOCOLS, "protocol", s, flag) if slash else None)


DEPENDS_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
_CONDITION_ALIASES = {"started": "service_started", "healthy": "service_healthy",
                      "completed": "service_completed_successfully",
                      "completed_successfully": "service_completed_successfully"}


def parse_depends_on(s: str, flag: str = "--depends-on") -> dict[str, str]:
    """SERVICE[:CONDITION] -> {"service", "condition"}; the condition is one of
    service_started (default), service_healthy, service_completed_successfully,
    or started, healthy, completed for short."""
    name, sep, cond = s.partition(":")
    if not name:
        raise click.BadParameter(f"{s!r}: expected SERVICE[:CONDITION]", param_hint=flag)
    if not sep:
        return {"service": name, "condition": "service_started"}
    c = cond.strip().lower().replace("-", "_")
    c = _CONDITION_ALIASES.get(c, c)
    if c not in DEPENDS_CONDITIONS:
        raise click.BadParameter(f"{s!r}: condition {cond!r} is not one of {', '.join(DEPENDS_CONDITIONS)} "
                                 "(or started, healthy, completed)", param_hint=flag)
    return {"service": name, "condition": c}


def update_depends_on(deps: list[dict[str, str]], add: list[dict[str, str]], rm: tuple[str, ...],
                      flag_rm: str = "--depends-on-rm") -> list[dict[str, str]]:
    """The dependencies after --depends-on-rm SERVICE (one the service does not
    have is an error) and then --depends-on-add (replacing the condition of a
    service already there, in its place)."""
    out = list(deps)
    for name in rm:
        if not any(d["service"] == name for d in out):
            raise click.BadParameter(f"{name!r}: the service does not depend on it", param_hint=flag_rm)
        out = [d for d in out if d["service"] != name]
    for d in add:
        at = next((i for i, x in enumerate(out) if x["service"] == d["service"]), None)
        if at is None:
            out.append(d)
        else:
            out[at] = d
    return out
