"""`orch service ...`: services across the cluster, flags as `docker service`.

create, scale, update and rollback wait until the service converged (every
wanted task RUNNING on the current spec, or all gone when scaled to 0) with a
live progress display, unless --detach; a task that cannot be placed shows
the scheduler's reason while waiting.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from . import privflags, progress, taskps
from .client import Endpoint, request
from .execclient import exec_command
from .output import FORMAT_OPTION, fail, print_json, print_table
from .specflags import (
    build_healthcheck,
    health_options,
    parse_duration,
    parse_mount,
    parse_depends_on,
    parse_octal,
    parse_pairs,
    parse_publish,
    parse_publish_rm,
    parse_size,
    update_depends_on,
)

LIVE = progress.LIVE


def _spec_options(f: Any) -> Any:
    opts = [
        click.option("--replicas", type=click.IntRange(min=0), help="Number of tasks (replicated mode)."),
        click.option("-e", "--env", "env", multiple=True, help="KEY=VALUE"),
        click.option("-l", "--label", "labels", multiple=True, help="Service label KEY=VALUE"),
        click.option("--container-label", multiple=True, help="Container label KEY=VALUE"),
        click.option("-u", "--user"),
        click.option("-w", "--workdir"),
        click.option("--hostname"),
        click.option("--entrypoint", help="Override the image's entrypoint (space-separated)."),
        click.option("--mount", "mounts", multiple=True, help="type=bind|volume|tmpfs,source=...,target=..."),
        click.option("--constraint", "constraints", multiple=True, help="e.g. node.labels.zone==eu"),
        click.option("--placement-pref", "prefs", multiple=True, help="spread=node.labels.NAME"),
        click.option("--max-replicas", type=click.IntRange(min=0), help="Maximum tasks per node."),
        click.option("--reserve-cpu", type=float, help="CPUs reserved per task."),
        click.option("--reserve-memory", help="Memory reserved per task, e.g. 512m."),
        click.option("--limit-cpu", type=float, help="CPU limit per task."),
        click.option("--limit-memory", help="Memory limit per task, e.g. 512m."),
        click.option("--limit-pids", type=click.IntRange(min=0), help="Pids limit per task."),
        click.option("--restart-condition", type=click.Choice(["none", "on-failure", "any"])),
        click.option("--restart-delay", help="Delay between restarts (e.g. 5s)."),
        click.option("--restart-max-attempts", type=click.IntRange(min=0)),
        click.option("--restart-window", help="Window in which restarts are counted (e.g. 1m)."),
        click.option("--update-parallelism", type=click.IntRange(min=0)),
        click.option("--update-delay"),
        click.option("--update-order", type=click.Choice(["stop-first", "start-first"])),
        click.option("--update-failure-action", type=click.Choice(["pause", "continue", "rollback"])),
        click.option("--update-monitor"),
        click.option("--update-max-failure-ratio", type=click.FloatRange(0, 1)),
        click.option("--rollback-parallelism", type=click.IntRange(min=0)),
        click.option("--rollback-order", type=click.Choice(["stop-first", "start-first"])),
        click.option("--stop-signal"),
        click.option("--stop-grace-period"),
        click.option("--read-only", is_flag=True, default=None),
        click.option("--secret", "secrets", multiple=True,
                     help="NAME or source=NAME[,target=PATH][,uid=][,gid=][,mode=0444]; at /run/secrets/NAME"),
        click.option("--config", "configs", multiple=True,
                     help="NAME or source=NAME[,target=PATH][,uid=][,gid=][,mode=0444]; at /NAME"),
        click.option("--endpoint-mode", type=click.Choice(["vip", "dnsrr"]),
                     help="vip: the name resolves to one virtual IP; dnsrr: to the tasks' addresses."),
        click.option("-d", "--detach", is_flag=True, help="Return at once; do not wait for convergence."),
        click.option("-q", "--quiet", is_flag=True, help="Print only the service id."),
    ]
    for o in reversed(opts):
        f = o(f)
    return health_options(f)


def _file_ref(ep: Endpoint, kind: str, s: str) -> dict[str, Any]:
    """--secret/--config: NAME or source=NAME,target=...,uid=...,gid=...,mode=0400."""
    flag = f"--{kind}"
    fields: dict[str, str] = {}
    for part in s.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            fields["source"] = k
        elif k in ("source", "src", "target", "uid", "gid", "mode"):
            fields["source" if k == "src" else k] = v
        else:
            raise click.BadParameter(f"unknown key {k!r} in {s!r}", param_hint=flag)
    if not fields.get("source"):
        raise click.BadParameter(f"{s!r} names no {kind}", param_hint=flag)
    obj = request(ep, "GET", f"/v1/{kind}s/{fields['source']}")
    ref: dict[str, Any] = {f"{kind}_id": obj["id"], f"{kind}_name": obj["spec"]["name"],
                           "target": fields.get("target", "")}
    for k in ("uid", "gid"):
        if k in fields:
            ref[k] = fields[k]
    if "mode" in fields:
        ref["mode"] = parse_octal(fields["mode"], f"mode {fields['mode']!r} is not octal", flag)
    return ref


def parse_network(s: str, flag: str = "--network") -> dict[str, Any]:
    """--network NAME or name=NAME[,alias=A]... -> {"target", "aliases"}."""
    target = ""
    aliases: list[str] = []
    for part in s.split(","):
        k, sep, v = part.partition("=")
        if not sep:
            if target:
                raise click.BadParameter(f"{s!r}: give the network once (name=N)", param_hint=flag)
            target = k
        elif k in ("name", "target"):
            target = v
        elif k == "alias":
            aliases.append(v)
        else:
            raise click.BadParameter(f"unknown key {k!r} in {s!r} (known: name, alias)", param_hint=flag)
    if not target:
        raise click.BadParameter(f"{s!r} names no network", param_hint=flag)
    return {"target": target, "aliases": aliases}


def _apply(spec: dict[str, Any], o: dict[str, Any], ep: Endpoint | None = None) -> None:
    """Fold the flags that were given into a service spec (JSON form)."""
    task = spec.setdefault("task", {})
    c = task.setdefault("container", {})
    if o.get("replicas") is not None:
        spec["replicas"] = o["replicas"]
    if o.get("endpoint_mode"):
        spec.setdefault("endpoint_spec", {})["mode"] = o["endpoint_mode"]
    if o.get("env"):
        env = dict(e.split("=", 1) for e in c.get("env", []) if "=" in e)
        env.update(parse_pairs(o["env"], "--env"))
        c["env"] = [f"{k}={v}" for k, v in env.items()]
    if o.get("labels"):
        spec["labels"] = {**spec.get("labels", {}), **parse_pairs(o["labels"], "--label")}
    if o.get("container_label"):
        c["labels"] = {**c.get("labels", {}), **parse_pairs(o["container_label"], "--container-label")}
    for flag, key in (("user", "user"), ("workdir", "dir"), ("hostname", "hostname"), ("stop_signal", "stop_signal")):
        if o.get(flag):
            c[key] = o[flag]
    if o.get("entrypoint"):
        c["command"] = o["entrypoint"].split()
    if o.get("mounts"):
        c["mounts"] = [parse_mount(m) for m in o["mounts"]]
    if o.get("read_only") is not None:
        c["read_only"] = o["read_only"]
    if o.get("secrets") and ep is not None:
        c["secrets"] = [_file_ref(ep, "secret", x) for x in o["secrets"]]
    if o.get("configs") and ep is not None:
        c["configs"] = [_file_ref(ep, "config", x) for x in o["configs"]]
    if o.get("stop_grace_period"):
        c["stop_grace_period"] = parse_duration(o["stop_grace_period"], "--stop-grace-period")
    hc = build_healthcheck(o)
    if hc is not None:
        c["healthcheck"] = hc
    pl = task.setdefault("placement", {})
    if o.get("constraints"):
        pl["constraints"] = list(o["constraints"])
    if o.get("prefs"):
        prefs = []
        for p in o["prefs"]:
            kind, _, label = p.partition("=")
            if kind != "spread" or not label:
                raise click.BadParameter(f"{p!r}: expected spread=node.labels.NAME", param_hint="--placement-pref")
            prefs.append(label)
        pl["preferences"] = prefs
    if o.get("max_replicas") is not None:
        pl["max_replicas"] = o["max_replicas"]
    res = task.setdefault("resources", {})
    lim, rsv = res.setdefault("limits", {}), res.setdefault("reservations", {})
    if o.get("reserve_cpu") is not None:
        rsv["nano_cpus"] = int(o["reserve_cpu"] * 1e9)
    if o.get("reserve_memory"):
        rsv["memory_bytes"] = parse_size(o["reserve_memory"], "--reserve-memory")
    if o.get("limit_cpu") is not None:
        lim["nano_cpus"] = int(o["limit_cpu"] * 1e9)
    if o.get("limit_memory"):
        lim["memory_bytes"] = parse_size(o["limit_memory"], "--limit-memory")
    if o.get("limit_pids") is not None:
        lim["pids"] = o["limit_pids"]
    rp = task.setdefault("restart_policy", {})
    if o.get("restart_condition"):
        rp["condition"] = o["restart_condition"]
    if o.get("restart_delay"):
        rp["delay"] = parse_duration(o["restart_delay"], "--restart-delay")
    if o.get("restart_max_attempts") is not None:
        rp["max_attempts"] = o["restart_max_attempts"]
    if o.get("restart_window"):
        rp["window"] = parse_duration(o["restart_window"], "--restart-window")
    uc = spec.setdefault("update_config", {})
    if o.get("update_parallelism") is not None:
        uc["parallelism"] = o["update_parallelism"]
    if o.get("update_delay"):
        uc["delay"] = parse_duration(o["update_delay"], "--update-delay")
    if o.get("update_order"):
        uc["order"] = o["update_order"]
    if o.get("update_failure_action"):
        uc["failure_action"] = o["update_failure_action"]
    if o.get("update_monitor"):
        uc["monitor"] = parse_duration(o["update_monitor"], "--update-monitor")
    if o.get("update_max_failure_ratio") is not None:
        uc["max_failure_ratio"] = o["update_max_failure_ratio"]
    rc = spec.setdefault("rollback_config", {})
    if o.get("rollback_parallelism") is not None:
        rc["parallelism"] = o["rollback_parallelism"]
    if o.get("rollback_order"):
        rc["order"] = o["rollback_order"]


def _port_key(p: dict[str, Any]) -> tuple[Any, ...]:
    return (p["target_port"], p.get("protocol", "tcp"), p.get("publish_mode", "ingress"))


def update_ports(spec: dict[str, Any], endpoint: dict[str, Any], add: list[dict[str, Any]],
                 rm: list[tuple[int, str | None]]) -> list[dict[str, Any]]:
    """The spec's ports after --publish-rm (PUBLISHED[/PROTOCOL]: a fixed port
    of the spec, or the port the allocator gave a dynamic one) and then
    --publish-add (replacing a port with the same published port and
    protocol). A port the service does not publish is an error."""
    ports = list((spec.get("endpoint_spec") or {}).get("ports") or [])
    allocated = list((endpoint or {}).get("ports") or [])
    for port, proto in rm:
        def hit(p: dict[str, Any], port: int = port, proto: str | None = proto) -> bool:
            return bool(p["published_port"] == port and (proto is None or p.get("protocol", "tcp") == proto))

        drop = {i for i, p in enumerate(ports) if p["published_port"] and hit(p)}
        for a in allocated:
            if hit(a):
                i = next((i for i, p in enumerate(ports) if not p["published_port"] and i not in drop
                          and _port_key(p) == _port_key(a)), None)
                if i is not None:
                    drop.add(i)
        if not drop:
            raise click.BadParameter(f"{port}{'/' + proto if proto else ''}: the service publishes no such port",
                                     param_hint="--publish-rm")
        ports = [p for i, p in enumerate(ports) if i not in drop]
    for p in add:
        if p["published_port"]:
            ports = [q for q in ports if (q["published_port"], q.get("protocol", "tcp")) !=
                     (p["published_port"], p["protocol"])]
        ports.append(p)
    return ports


def format_port(p: dict[str, Any]) -> str:
    """As Swarm lists them: *:8080->80/tcp (ingress), 8080->80/tcp (host);
    a port not allocated yet shows as ?."""
    base = f"{p['published_port'] or '?'}->{p['target_port']}/{p.get('protocol', 'tcp')}"
    return f"{base} (host)" if p.get("publish_mode") == "host" else f"*:{base}"


def service_ports(s: dict[str, Any]) -> list[dict[str, Any]]:
    """The ports as allocated, or as the spec asks for them until they are."""
    allocated = (s.get("endpoint") or {}).get("ports") or []
    wanted = (s["spec"].get("endpoint_spec") or {}).get("ports") or []
    return allocated if len(allocated) == len(wanted) else wanted


def wait_converged(ep: Endpoint, sid: str, timeout: float, *, rollback_is_failure: bool = False) -> None:
    wait_all_converged(ep, [sid], timeout, rollback_is_failure=rollback_is_failure)


def wait_all_converged(ep: Endpoint, sids: list[str], timeout: float, *, rollback_is_failure: bool = False) -> None:
    """Wait until every service of `sids` converged, showing each task slot's
    state and latest error (cli/progress.py); exit 1 with a summary when one
    failed (its update paused or, with `rollback_is_failure`, rolled back; its
    restart policy gave up) or `timeout` seconds passed."""
    def fetch(sid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        return request(ep, "GET", f"/v1/services/{sid}"), request(ep, "GET", f"/v1/tasks?service={sid}")

    code = progress.wait(fetch, lambda: node_names(ep), sids, timeout, rollback_is_failure=rollback_is_failure)
    if code:
        sys.exit(code)


def node_names(ep: Endpoint) -> dict[str, str]:
    return {n["id"]: n["description"]["hostname"] for n in request(ep, "GET", "/v1/nodes")}


@click.group()
def service() -> None:
    """Manage services (on a manager)."""


service.add_command(exec_command)


@service.command("create", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--name", required=True)
@click.option("--mode", type=click.Choice(["replicated", "global", "replicated-job", "global-job"]),
              default="replicated", show_default=True)
@click.option("--max-concurrent", type=click.IntRange(min=0), help="Jobs: tasks running at once.")
@click.option("--network", "networks", multiple=True,
              help="Attach to an overlay network: NAME or name=NAME,alias=ALIAS (repeatable).")
@click.option("-p", "--publish", "publish", multiple=True,
              help="Publish a port: published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host], or "
                   "8080:80[/udp], or 80 (a published port from 30000-32767) (repeatable).")
@click.option("--depends-on", "depends_on", multiple=True, metavar="SERVICE[:CONDITION]",
              help="Start only once SERVICE satisfies CONDITION: service_started (default), service_healthy or "
                   "service_completed_successfully (short: started, healthy, completed) (repeatable).")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait for convergence.")
@_spec_options
@privflags.create_options
@click.argument("image")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create(ep: Endpoint, name: str, mode: str, max_concurrent: int | None, networks: tuple[str, ...],
           publish: tuple[str, ...], depends_on: tuple[str, ...], timeout: float, image: str, args: tuple[str, ...],
           detach: bool, quiet: bool, **o: Any) -> None:
    """Create a service running IMAGE [ARGS...]."""
    spec: dict[str, Any] = {"name": name, "mode": mode, "task": {"container": {"image": image}}}
    if depends_on:
        spec["depends_on"] = update_depends_on([], [parse_depends_on(d) for d in depends_on], ())
    if networks:
        spec["task"]["networks"] = [parse_network(n) for n in networks]
    if publish:
        spec["endpoint_spec"] = {"ports": [parse_publish(p) for p in publish]}
    if args:
        spec["task"]["container"]["args"] = list(args)
    if max_concurrent is not None:
        spec["max_concurrent"] = max_concurrent
    if mode == "replicated-job" and o.get("replicas") is None:
        o["replicas"] = 1
    _apply(spec, o, ep)
    privflags.apply_create(spec["task"]["container"], o)
    svc = request(ep, "POST", "/v1/services", spec)
    for w in svc.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    click.echo(svc["id"])
    if not detach:
        wait_converged(ep, svc["id"], timeout)


@service.command("update", context_settings={"ignore_unknown_options": True})
@click.option("--image", help="New image.")
@click.option("--args", "new_args", help="New command arguments (space-separated).")
@click.option("--force", is_flag=True, help="Redeploy the tasks even if nothing changed.")
@click.option("--env-rm", multiple=True, help="Remove an environment variable.")
@click.option("--constraint-rm", multiple=True)
@click.option("--network-add", multiple=True, help="Attach to a network: NAME or name=NAME,alias=ALIAS.")
@click.option("--network-rm", multiple=True, help="Detach from a network (name or id).")
@click.option("--publish-add", multiple=True, help="Publish a port (as --publish of create; repeatable).")
@click.option("--publish-rm", multiple=True,
              help="Stop publishing a port: PUBLISHED[/PROTOCOL] (no protocol: every protocol; repeatable).")
@click.option("--depends-on-add", multiple=True, metavar="SERVICE[:CONDITION]",
              help="Add a dependency (as --depends-on of create), or change its condition (repeatable).")
@click.option("--depends-on-rm", multiple=True, metavar="SERVICE", help="Remove a dependency (repeatable).")
@click.option("--timeout", type=float, default=600, show_default=True)
@_spec_options
@privflags.update_options
@click.argument("ref")
@click.pass_obj
def update(ep: Endpoint, image: str | None, new_args: str | None, force: bool, env_rm: tuple[str, ...],
           constraint_rm: tuple[str, ...], network_add: tuple[str, ...], network_rm: tuple[str, ...],
           publish_add: tuple[str, ...], publish_rm: tuple[str, ...], depends_on_add: tuple[str, ...],
           depends_on_rm: tuple[str, ...], timeout: float, ref: str, detach: bool, quiet: bool, **o: Any) -> None:
    """Change a service; tasks are replaced as its update config says."""
    add = [parse_publish(p, "--publish-add") for p in publish_add]
    rm = [parse_publish_rm(p) for p in publish_rm]
    deps_add = [parse_depends_on(d, "--depends-on-add") for d in depends_on_add]
    svc = request(ep, "GET", f"/v1/services/{ref}")
    spec = copy.deepcopy(svc["spec"])
    if deps_add or depends_on_rm:
        spec["depends_on"] = update_depends_on(spec.get("depends_on") or [], deps_add, depends_on_rm)
    if add or rm:
        spec.setdefault("endpoint_spec", {})["ports"] = update_ports(spec, svc.get("endpoint") or {}, add, rm)
    if network_rm:
        drop = {request(ep, "GET", f"/v1/networks/{r}")["id"] for r in network_rm}
        spec["task"]["networks"] = [a for a in spec["task"].get("networks", []) if a["target"] not in drop]
    if network_add:
        spec["task"]["networks"] = spec["task"].get("networks", []) + [parse_network(n, "--network-add")
                                                                       for n in network_add]
    c = spec["task"]["container"]
    if image:
        c["image"] = image
    if new_args is not None:
        c["args"] = new_args.split()
    if env_rm:
        c["env"] = [e for e in c.get("env", []) if e.split("=", 1)[0] not in env_rm]
    if constraint_rm:
        pl = spec["task"]["placement"]
        pl["constraints"] = [x for x in pl.get("constraints", []) if x not in constraint_rm]
    if force:
        spec["task"]["force_update"] = spec["task"].get("force_update", 0) + 1
    _apply(spec, o, ep)
    privflags.apply_update(spec["task"]["container"], o)
    new = request(ep, "POST", f"/v1/services/{svc['id']}/update", {"spec": spec, "version": svc["meta"]["version"]})
    click.echo(new["id"] if quiet else new["spec"]["name"])
    if not detach:
        wait_converged(ep, new["id"], timeout, rollback_is_failure=True)


@service.command("scale")
@click.argument("pairs", nargs=-1, required=True)
@click.option("-d", "--detach", is_flag=True)
@click.option("--timeout", type=float, default=600, show_default=True)
@click.pass_obj
def scale(ep: Endpoint, pairs: tuple[str, ...], detach: bool, timeout: float) -> None:
    """Set replicas: SERVICE=N [SERVICE=N...]."""
    for p in pairs:
        ref, sep, n = p.partition("=")
        if not sep or not n.isdigit():
            raise click.BadParameter(f"{p!r}: expected SERVICE=REPLICAS", param_hint="PAIRS")
        svc = request(ep, "GET", f"/v1/services/{ref}")
        if svc["spec"]["mode"] != "replicated":
            fail(f"{ref}: scale works on replicated services only (this one is {svc['spec']['mode']})")
        spec = copy.deepcopy(svc["spec"])
        spec["replicas"] = int(n)
        request(ep, "POST", f"/v1/services/{svc['id']}/update", {"spec": spec, "version": svc["meta"]["version"]})
        click.echo(f"{svc['spec']['name']} scaled to {n}")
        if not detach:
            wait_converged(ep, svc["id"], timeout)


@service.command("rollback")
@click.argument("ref")
@click.option("-d", "--detach", is_flag=True)
@click.option("--timeout", type=float, default=600, show_default=True)
@click.pass_obj
def rollback(ep: Endpoint, ref: str, detach: bool, timeout: float) -> None:
    """Return a service to its previous spec."""
    svc = request(ep, "POST", f"/v1/services/{ref}/rollback", {})
    click.echo(svc["spec"]["name"])
    if not detach:
        wait_converged(ep, svc["id"], timeout)


def _replicas(s: dict[str, Any]) -> str:
    rs = s.get("replicas_status") or {}
    mode = s["spec"]["mode"]
    if mode == "replicated":
        return f"{rs.get('running', 0)}/{s['spec']['replicas']}"
    if mode == "replicated-job":
        return f"{rs.get('running', 0)}/{s['spec'].get('max_concurrent') or s['spec']['replicas']} " \
               f"({rs.get('completed', 0)}/{s['spec'].get('total_completions') or s['spec']['replicas']} completed)"
    return f"{rs.get('running', 0)}/{rs.get('desired', 0)}"


@service.command("ls")
@FORMAT_OPTION
@click.option("-q", "--quiet", is_flag=True)
@click.pass_obj
def ls(ep: Endpoint, fmt: str, quiet: bool) -> None:
    """List services."""
    items = request(ep, "GET", "/v1/services")
    if fmt == "json":
        print_json(items)
        return
    if quiet:
        for s in items:
            click.echo(s["id"])
        return
    print_services(sorted(items, key=lambda s: s["spec"]["name"]))


def print_services(items: list[dict[str, Any]]) -> None:
    """The table of `service ls` (and `stack services`)."""
    print_table(items, [
        ("ID", lambda s: s["id"][:12]),
        ("NAME", lambda s: s["spec"]["name"]),
        ("MODE", lambda s: s["spec"]["mode"]),
        ("REPLICAS", _replicas),
        ("IMAGE", lambda s: s["spec"]["task"]["container"]["image"]),
        ("PORTS", lambda s: ", ".join(format_port(p) for p in service_ports(s))),
    ])


@service.command("ps")
@click.argument("ref")
@taskps.ps_options
@click.pass_obj
def ps(ep: Endpoint, ref: str, fmt: str, all_: bool, no_trunc: bool, filters: tuple[str, ...], quiet: bool) -> None:
    """List a service's tasks, each slot's current task then its history, with
    why each failed or (not placed yet) waits: the scheduler's reason, or the
    dependency it waits for."""
    tasks = request(ep, "GET", f"/v1/tasks?service={ref}")
    name = request(ep, "GET", f"/v1/services/{ref}")["spec"]["name"] if tasks or fmt != "json" else ref
    cut = None if no_trunc else 12
    taskps.show(tasks, fmt=fmt, all_=all_, no_trunc=no_trunc, filters=filters, quiet=quiet,
                task_name=lambda t: f"{name}.{t['slot']}" if t["slot"] else f"{name}.{t['node_id'][:cut]}",
                nodes=lambda: node_names(ep),
                nets=lambda: {n["id"]: n["spec"]["name"] for n in request(ep, "GET", "/v1/networks")})


def print_tasks(tasks: list[dict[str, Any]], task_name: Callable[[dict[str, Any]], str], nodes: dict[str, str],
                nets: dict[str, str], *, cut: int | None = 12,
                error: Callable[[dict[str, Any]], str] | None = None) -> None:
    """The table of `service ps` (and `stack ps`): `nodes` and `nets` map
    ids to names; ids are shortened to `cut` characters."""
    print_table(tasks, [
        ("ID", lambda t: t["id"][:cut]),
        ("NAME", task_name),
        ("IMAGE", lambda t: t["spec"]["container"]["image"]),
        ("NODE", lambda t: nodes.get(t["node_id"], t["node_id"][:cut])),
        ("DESIRED STATE", lambda t: t["desired_state"].capitalize()),
        ("CURRENT STATE", lambda t: f"{t['status']['state'].capitalize()} {_ago(t['status']['timestamp'])}"),
        ("ADDRESSES", lambda t: task_addresses(t, nets)),
        ("ERROR", error or task_error),
    ])


task_error = progress.task_error


def task_addresses(t: dict[str, Any], nets: dict[str, str]) -> str:
    """10.0.0.5 (ingress), 10.0.1.3 (app): the task's address on each network."""
    return ", ".join(f"{a.split('/')[0]} ({nets.get(att['network_id'], att['network_id'][:12])})"
                     for att in t.get("networks") or [] for a in att.get("addresses") or [])


def _ago(ts: float) -> str:
    d = max(0.0, time.time() - ts)
    if d < 60:
        return f"{d:.0f} seconds ago"
    if d < 3600:
        return f"{d / 60:.0f} minutes ago"
    return f"{d / 3600:.0f} hours ago"


def pretty_service(s: dict[str, Any]) -> str:
    """`service inspect --pretty`: what the service is and where it is reached."""
    spec = s["spec"]
    mode = spec["mode"] + (f" ({spec['replicas']} replicas)" if spec["mode"] == "replicated" else "")
    lines = [f"ID:             {s['id']}", f"Name:           {spec['name']}", f"Mode:           {mode}",
             f"Image:          {spec['task']['container']['image']}",
             f"Endpoint mode:  {(spec.get('endpoint_spec') or {}).get('mode', 'vip')}"]
    vips = s.get("virtual_ips") or []
    lines.append("Virtual IPs:" + ("" if vips else "    -"))
    lines += [f"  {v['network']:<14}{v['addr']}" for v in vips]
    deps = spec.get("depends_on") or []
    lines.append("Depends on:" + ("" if deps else "     -"))
    lines += [f"  {d['service']:<14}{d.get('condition', 'service_started')}" for d in deps]
    lines += privflags.pretty_lines(spec["task"]["container"])
    ports = service_ports(s)
    lines.append("Ports:" + ("" if ports else "          -"))
    for p in ports:
        lines.append(f"  {format_port(p):<26}published={p['published_port'] or '(allocating)'} "
                     f"target={p['target_port']} protocol={p.get('protocol', 'tcp')} "
                     f"mode={p.get('publish_mode', 'ingress')}" + (f" name={p['name']}" if p.get("name") else ""))
    return "\n".join(lines)


@service.command("inspect")
@click.argument("refs", nargs=-1, required=True)
@click.option("--pretty", is_flag=True, help="Human-readable, not JSON.")
@click.pass_obj
def inspect(ep: Endpoint, refs: tuple[str, ...], pretty: bool) -> None:
    """Show services in detail (virtual IPs per network and published ports included)."""
    items = [request(ep, "GET", f"/v1/services/{r}") for r in refs]
    if pretty:
        click.echo("\n\n".join(pretty_service(s) for s in items))
    else:
        print_json(items)


@service.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.pass_obj
def rm(ep: Endpoint, refs: tuple[str, ...]) -> None:
    """Remove services (their tasks are stopped)."""
    for r in refs:
        request(ep, "DELETE", f"/v1/services/{r}")
        click.echo(r)


@service.command("logs")
@click.argument("ref")
@click.option("-f", "--follow", is_flag=True)
@click.option("--tail", type=click.IntRange(min=0), default=None, help="Lines from the end of each task's log.")
@click.option("--no-prefix", is_flag=True, help="Print the lines only.")
@click.option("-t", "--timestamps", is_flag=True)
@click.pass_obj
def logs(ep: Endpoint, ref: str, follow: bool, tail: int | None, no_prefix: bool, timestamps: bool) -> None:
    """The logs of all of a service's tasks, from every node, merged."""
    import asyncio

    from .engine import _stream

    q = f"?follow={'1' if follow else '0'}" + (f"&tail={tail}" if tail is not None else "")

    async def run() -> None:
        async for m in _stream(ep, "GET", f"/v1/services/{ref}/logs{q}"):
            prefix = "" if no_prefix else f"{m['name']}@{m['node']}    | "
            if "error" in m:
                click.echo(f"{prefix}(logs unavailable: {m['error']})", err=True)
                continue
            ts = f"{m['ts']} " if timestamps else ""
            click.echo(f"{prefix}{ts}{m['line']}", err=m["stream"] == "stderr")

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


COMMANDS: list[click.Command] = [service]

