"""Flags for what a container may do beyond the defaults: --cap-add/--cap-drop,
--device, --privileged, --sysctl, --ulimit, --init, for `service create`,
`service update` (with -add/-rm forms) and `container run`.

Values are parsed by `api.privileges` (the same rules the managers apply);
a bad one is a click.BadParameter naming the flag. The results are the
service API's JSON shape (`api.objects.ContainerSpec` fields).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from api.privileges import PrivilegeError, capability, parse_device, parse_sysctl, parse_ulimit


def _parsed(values: Iterable[str], flag: str, parse: Callable[[str], Any]) -> list[Any]:
    out = []
    for v in values:
        try:
            out.append(parse(v))
        except PrivilegeError as e:
            raise click.BadParameter(str(e), param_hint=flag) from None
    return out


def caps(values: Iterable[str], flag: str) -> list[str]:
    """Capability names as given (NET_ADMIN, cap_net_admin, ALL), checked."""
    _parsed(values, flag, capability)
    return list(values)


def devices(values: Iterable[str], flag: str) -> list[dict[str, str]]:
    return [{"host": d.host, "container": d.container, "permissions": d.permissions}
            for d in _parsed(values, flag, parse_device)]


def sysctls(values: Iterable[str], flag: str) -> dict[str, str]:
    return dict(_parsed(values, flag, parse_sysctl))


def ulimits(values: Iterable[str], flag: str) -> list[dict[str, Any]]:
    return [{"name": n, "soft": s, "hard": h} for n, s, h in _parsed(values, flag, parse_ulimit)]


def _options(opts: list[Any]) -> Callable[[Any], Any]:
    def deco(f: Any) -> Any:
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


_CAP_HELP = "a capability such as NET_ADMIN, or ALL (repeatable)"
_DEVICE_HELP = "HOST[:CONTAINER[:PERMS]], PERMS letters of rwm (repeatable)"
_SYSCTL_HELP = "NAME=VALUE, a namespaced sysctl: net.*, fs.mqueue.*, kernel.shm*/msg*/sem (repeatable)"
_ULIMIT_HELP = "NAME=SOFT[:HARD], e.g. nofile=1024:4096; -1 or unlimited (repeatable)"
_PRIV_HELP = ("Every capability and host device, no seccomp, writable /sys: the container can take "
              "over the node. An explicit opt-in, shown by `service inspect`.")
_INIT_HELP = "Run an init (tini) as PID 1: it reaps zombies and forwards signals."

create_options = _options([
    click.option("--cap-add", "cap_add", multiple=True, help="Add " + _CAP_HELP),
    click.option("--cap-drop", "cap_drop", multiple=True, help="Drop " + _CAP_HELP),
    click.option("--device", "devices", multiple=True, help=_DEVICE_HELP),
    click.option("--privileged", is_flag=True, default=False, help=_PRIV_HELP),
    click.option("--sysctl", "sysctls", multiple=True, help=_SYSCTL_HELP),
    click.option("--ulimit", "ulimits", multiple=True, help=_ULIMIT_HELP),
    click.option("--init", "init", is_flag=True, default=False, help=_INIT_HELP),
])
"""`service create`: the container's capabilities, devices, sysctls, ulimits, init."""

update_options = _options([
    click.option("--cap-add", "cap_add", multiple=True, help="Add " + _CAP_HELP + "; takes it off the drop list"),
    click.option("--cap-drop", "cap_drop", multiple=True,
                 help="Drop " + _CAP_HELP + "; takes it off the add list"),
    click.option("--device-add", multiple=True, help="Add a device: " + _DEVICE_HELP),
    click.option("--device-rm", multiple=True, help="Remove a device by its host path (repeatable)"),
    click.option("--privileged/--no-privileged", "privileged", default=None, help=_PRIV_HELP),
    click.option("--sysctl-add", multiple=True, help="Add or change a sysctl: " + _SYSCTL_HELP),
    click.option("--sysctl-rm", multiple=True, help="Remove a sysctl by name (repeatable)"),
    click.option("--ulimit-add", multiple=True, help="Add or change a ulimit: " + _ULIMIT_HELP),
    click.option("--ulimit-rm", multiple=True, help="Remove a ulimit by name (repeatable)"),
    click.option("--init/--no-init", "init", default=None, help=_INIT_HELP),
])
"""`service update`: the -add/-rm forms of `create_options`."""


def apply_create(c: dict[str, Any], o: dict[str, Any]) -> None:
    """Fold `create_options` into a container spec (JSON form)."""
    if o.get("cap_add"):
        c["cap_add"] = caps(o["cap_add"], "--cap-add")
    if o.get("cap_drop"):
        c["cap_drop"] = caps(o["cap_drop"], "--cap-drop")
    if o.get("devices"):
        c["devices"] = devices(o["devices"], "--device")
    if o.get("privileged"):
        c["privileged"] = True
    if o.get("sysctls"):
        c["sysctls"] = sysctls(o["sysctls"], "--sysctl")
    if o.get("ulimits"):
        c["ulimits"] = ulimits(o["ulimits"], "--ulimit")
    if o.get("init"):
        c["init"] = True


def _cap_key(name: str) -> str:
    return capability(name)


def apply_update(c: dict[str, Any], o: dict[str, Any]) -> None:
    """Fold `update_options` into a service's current container spec."""
    add = caps(o.get("cap_add") or (), "--cap-add")
    drop = caps(o.get("cap_drop") or (), "--cap-drop")
    if add or drop:
        # As `docker service update`: adding a capability takes it off the
        # drop list and the other way round; each name is kept once.
        add_k, drop_k = {_cap_key(x) for x in add}, {_cap_key(x) for x in drop}
        cur_add = [x for x in c.get("cap_add", []) if _cap_key(x) not in drop_k | add_k]
        cur_drop = [x for x in c.get("cap_drop", []) if _cap_key(x) not in add_k | drop_k]
        c["cap_add"] = cur_add + list(dict.fromkeys(add))
        c["cap_drop"] = cur_drop + list(dict.fromkeys(drop))
    new_devs = devices(o.get("device_add") or (), "--device-add")
    if new_devs or o.get("device_rm"):
        gone = set(o.get("device_rm") or ()) | {d["host"] for d in new_devs}
        c["devices"] = [d for d in c.get("devices", []) if d["host"] not in gone] + new_devs
    if o.get("privileged") is not None:
        c["privileged"] = o["privileged"]
    new_sysctls = sysctls(o.get("sysctl_add") or (), "--sysctl-add")
    if new_sysctls or o.get("sysctl_rm"):
        cur = {k: v for k, v in (c.get("sysctls") or {}).items() if k not in set(o.get("sysctl_rm") or ())}
        c["sysctls"] = {**cur, **new_sysctls}
    new_ulimits = ulimits(o.get("ulimit_add") or (), "--ulimit-add")
    if new_ulimits or o.get("ulimit_rm"):
        gone = set(o.get("ulimit_rm") or ()) | {u["name"] for u in new_ulimits}
        c["ulimits"] = [u for u in c.get("ulimits", []) if u["name"] not in gone] + new_ulimits
    if o.get("init") is not None:
        c["init"] = o["init"]


def _limit(v: int) -> str:
    return "unlimited" if v < 0 else str(v)


def pretty_lines(c: dict[str, Any]) -> list[str]:
    """`service inspect --pretty`: privileges, plainly (privileged first)."""
    lines = [f"Privileged:     {'YES (every capability and device, no seccomp)' if c.get('privileged') else 'no'}"]
    if c.get("cap_add"):
        lines.append(f"Cap add:        {', '.join(c['cap_add'])}")
    if c.get("cap_drop"):
        lines.append(f"Cap drop:       {', '.join(c['cap_drop'])}")
    for i, d in enumerate(c.get("devices") or []):
        lines.append(("Devices:        " if i == 0 else " " * 16)
                     + f"{d['host']} -> {d.get('container') or d['host']} ({d.get('permissions', 'rwm')})")
    for i, (k, v) in enumerate(sorted((c.get("sysctls") or {}).items())):
        lines.append(("Sysctls:        " if i == 0 else " " * 16) + f"{k}={v}")
    for i, u in enumerate(c.get("ulimits") or []):
        lines.append(("Ulimits:        " if i == 0 else " " * 16)
                     + f"{u['name']}={_limit(u['soft'])}:{_limit(u['hard'])}")
    if c.get("init"):
        lines.append("Init:           yes")
    return lines
