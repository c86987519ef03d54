"""Parsing of the container flags `container run` and `service create` share
(--mount, -v, --tmpfs, --health-*), named as in Docker. Each parser returns
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
