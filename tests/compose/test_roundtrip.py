"""`stack config` output loads back to the same model (hypothesis): random
compose files, in short and long forms, are loaded, written out with
dump_config, and loaded again."""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.compose import MemoryFiles, Source, dump_config, load, to_config
from api.compose.yamlmarks import dump_yaml

TEXT = st.text(alphabet=st.sampled_from(list(string.ascii_letters + string.digits + " _-.:/=,#'\"{}[]&*!|>%@`$\\\n\t"
                                             ) + ["é", "ß", "中", "~"]), max_size=16)
NAME = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
VAR = st.from_regex(r"[A-Z_][A-Z0-9_]{0,6}", fullmatch=True)
LABEL = st.from_regex(r"[a-z][a-z0-9.-]{0,10}", fullmatch=True)
PATH = st.lists(st.from_regex(r"[a-z0-9._-]{1,6}", fullmatch=True).filter(lambda p: p not in (".", "..")),
                min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
WORD = st.from_regex(r"[a-z0-9/=-]{1,6}", fullmatch=True)
PORT = st.integers(1, 65535)
DURATION = st.one_of(
    st.integers(0, 10**6).map(lambda ms: f"{ms}ms"),
    st.integers(0, 7200).map(lambda s: f"{s}s"),
    st.tuples(st.integers(1, 90), st.integers(0, 59)).map(lambda t: f"{t[0]}m{t[1]}s"),
    st.integers(0, 3600),
)
SIZE = st.one_of(st.integers(0, 2**40), st.tuples(st.integers(1, 4096), st.sampled_from("kmgKMG")).map(
    lambda t: f"{t[0]}{t[1]}"))
FRACTION = st.floats(0, 1, allow_nan=False)
CPUS = st.one_of(st.integers(0, 64).map(float), st.decimals("0", "16", places=2).map(str))

FILES = {"/srv/app/secret.txt": "s", "/srv/app/conf/app.conf": "c"}
ENV = {"TOKEN": "t"}


def esc(s: str) -> str:
    return s.replace("$", "$$")


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


@st.composite
def service(draw: st.DrawFn, name: str, earlier: list[str], nets: list[str], vols: list[str], secrets: list[str],
            configs: list[str]) -> dict[str, Any]:
    svc: dict[str, Any] = {"image": esc(draw(TEXT.filter(bool)))}
    env = draw(st.dictionaries(VAR, TEXT.map(esc), max_size=3))
    env_form = draw(st.sampled_from(["map", "list"]))
    labels = draw(st.dictionaries(LABEL, TEXT.map(esc), max_size=3))
    extra = draw(optional(
        command=st.one_of(st.lists(TEXT.map(esc), max_size=3), st.lists(WORD, min_size=1, max_size=3).map(" ".join)),
        entrypoint=st.lists(TEXT.map(esc), max_size=2),
        hostname=TEXT.map(esc), user=st.one_of(TEXT.map(esc), st.integers(0, 70000)), working_dir=PATH,
        stop_signal=st.sampled_from(["SIGTERM", "SIGQUIT", "SIGINT"]), stop_grace_period=DURATION,
        read_only=st.booleans(), init=st.booleans(), privileged=st.booleans(),
        cap_add=st.lists(st.sampled_from(["NET_ADMIN", "SYS_TIME", "ALL"]), max_size=2),
        cap_drop=st.lists(st.sampled_from(["MKNOD", "ALL"]), max_size=2),
        tmpfs=st.lists(st.one_of(PATH, st.tuples(PATH, SIZE).map(lambda t: f"{t[0]}:size={t[1]}")), max_size=2),
        extra_hosts=st.dictionaries(NAME, st.sampled_from(["10.0.0.1", "::1", "192.168.1.20"]), max_size=2),
        sysctls=st.dictionaries(LABEL, st.one_of(st.integers(0, 9), WORD), max_size=2),
        ulimits=st.dictionaries(st.sampled_from(["nofile", "nproc", "core"]), st.one_of(
            st.integers(0, 10**6), st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(
                lambda t: {"soft": min(t), "hard": max(t)})), max_size=2),
        devices=st.lists(st.one_of(st.just("/dev/fuse"), st.just("/dev/sda:/dev/xvda:rwm"),
                                   st.just({"source": "/dev/kvm", "permissions": "rw"})), max_size=2),
        security_opt=st.lists(st.sampled_from(["seccomp=unconfined", "no-new-privileges:true"]), max_size=2),
        healthcheck=st.one_of(
            optional(test=st.one_of(WORD, st.lists(WORD, min_size=1, max_size=2).map(lambda w: ["CMD", *w])),
                     interval=DURATION, timeout=DURATION, retries=st.integers(0, 10), start_period=DURATION,
                     start_interval=DURATION).filter(lambda h: "test" in h or not h),
            st.just({"disable": True}), st.just({"test": ["NONE"]})),
        ports=st.lists(st.one_of(
            PORT.map(str), st.tuples(PORT, PORT).map(lambda t: f"{t[0]}:{t[1]}"),
            st.tuples(PORT, PORT).map(lambda t: f"{t[0]}:{t[1]}/udp"),
            optional(published=st.integers(0, 65535), protocol=st.sampled_from(["tcp", "udp"]),
                     mode=st.sampled_from(["ingress", "host"]), name=NAME).flatmap(
                lambda d: PORT.map(lambda t: {"target": t, **d}))), max_size=3),
    ))
    svc.update(extra)
    if env:
        svc["environment"] = env if env_form == "map" else [f"{k}={v}" for k, v in env.items()]
    if labels:
        svc["labels"] = labels if draw(st.booleans()) else [f"{k}={v}" for k, v in labels.items()]
    if nets and draw(st.booleans()):
        chosen = draw(st.lists(st.sampled_from(nets), unique=True, min_size=1))
        if draw(st.booleans()):
            svc["networks"] = chosen
        else:
            svc["networks"] = {n: draw(st.one_of(st.none(), st.just({}), st.fixed_dictionaries(
                {"aliases": st.lists(NAME, max_size=2)}))) for n in chosen}
    volumes: list[Any] = []
    for target in draw(st.lists(PATH, unique=True, max_size=3)):
        kind = draw(st.sampled_from(["named", "anon", "bind", "rel", "tmpfs", "long"]))
        if kind == "named" and vols:
            volumes.append(f"{draw(st.sampled_from(vols))}:{target}" + draw(st.sampled_from(["", ":ro", ":rw"])))
        elif kind == "bind":
            volumes.append(f"{draw(PATH)}:{target}:ro")
        elif kind == "rel":
            volumes.append(f"./{draw(WORD.filter(lambda w: '=' not in w))}:{target}")
        elif kind == "tmpfs":
            volumes.append({"type": "tmpfs", "target": target, "tmpfs": draw(optional(
                size=SIZE, mode=st.integers(0, 0o7777).map(lambda m: f"{m:o}")))})
        elif kind == "long" and vols:
            volumes.append({"type": "volume", "source": draw(st.sampled_from(vols)), "target": target,
                            "read_only": draw(st.booleans()), "volume": {"nocopy": draw(st.booleans())}})
        else:
            volumes.append(target)
    if volumes:
        svc["volumes"] = volumes
    for kind, names in (("secrets", secrets), ("configs", configs)):
        if names and draw(st.booleans()):
            svc[kind] = [draw(st.one_of(st.just(n), optional(
                target=NAME, uid=st.integers(0, 1000).map(str), gid=st.integers(0, 1000),
                mode=st.integers(0, 0o777)).map(lambda d, n=n: {"source": n, **d}))) for n in names]
    if earlier and draw(st.booleans()):
        deps = draw(st.lists(st.sampled_from(earlier), unique=True, min_size=1))
        svc["depends_on"] = deps if draw(st.booleans()) else {
            d: draw(optional(condition=st.sampled_from(["service_started", "service_healthy",
                                                         "service_completed_successfully"]),
                             required=st.booleans(), restart=st.booleans())) for d in deps}
    if draw(st.booleans()):
        mode = draw(st.sampled_from([None, "replicated", "global", "replicated-job", "global-job"]))
        deploy = draw(optional(
            placement=optional(constraints=st.lists(st.sampled_from(["node.role == worker", "node.labels.a != b"]),
                                                    max_size=2),
                               preferences=st.lists(st.fixed_dictionaries({"spread": LABEL}), max_size=2),
                               max_replicas_per_node=st.integers(0, 9)),
            resources=optional(limits=optional(cpus=CPUS, memory=SIZE, pids=st.integers(0, 1000)),
                               reservations=optional(cpus=CPUS, memory=SIZE)),
            restart_policy=optional(condition=st.sampled_from(["none", "on-failure", "any"]), delay=DURATION,
                                    max_attempts=st.integers(0, 9), window=DURATION),
            update_config=optional(parallelism=st.integers(0, 9), delay=DURATION,
                                   failure_action=st.sampled_from(["pause", "continue", "rollback"]),
                                   monitor=DURATION, max_failure_ratio=FRACTION,
                                   order=st.sampled_from(["stop-first", "start-first"])),
            rollback_config=optional(parallelism=st.integers(0, 9), order=st.sampled_from(["stop-first",
                                                                                           "start-first"])),
            endpoint_mode=st.sampled_from(["vip", "dnsrr"]),
            labels=st.dictionaries(LABEL, TEXT.map(esc), max_size=2),
        ))
        if mode is not None:
            deploy["mode"] = mode
        if mode not in ("global", "global-job") and draw(st.booleans()):
            deploy["replicas"] = draw(st.integers(0, 20))
        svc["deploy"] = deploy
    return svc


@st.composite
def compose_file(draw: st.DrawFn) -> dict[str, Any]:
    nets = draw(st.lists(NAME, unique=True, max_size=3))
    vols = draw(st.lists(NAME, unique=True, max_size=2))
    secrets = draw(st.lists(NAME, unique=True, max_size=2))
    configs = draw(st.lists(NAME, unique=True, max_size=2))
    names = draw(st.lists(NAME, unique=True, min_size=1, max_size=4))
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["name"] = draw(NAME)
    out["services"] = {n: draw(service(n, names[:i], nets, vols, secrets, configs)) for i, n in enumerate(names)}
    if nets:
        out["networks"] = {n: draw(st.one_of(st.none(), st.just({"external": True}), optional(
            attachable=st.booleans(), internal=st.booleans(), labels=st.dictionaries(LABEL, TEXT.map(esc), max_size=2),
            driver_opts=st.fixed_dictionaries({}, optional={"mtu": st.integers(1280, 9000).map(str)}),
            ipam=st.sampled_from([{"config": [{"subnet": "10.5.0.0/24"}]},
                                  {"config": [{"subnet": "10.6.0.0/16", "gateway": "10.6.0.1",
                                               "ip_range": "10.6.1.0/24"}]}])))) for n in nets}
    if vols:
        out["volumes"] = {n: draw(st.one_of(st.none(), st.just({"external": True, "name": "ext-" + n}), optional(
            driver=st.just("local"), labels=st.dictionaries(LABEL, TEXT.map(esc), max_size=1),
            driver_opts=st.dictionaries(LABEL, WORD, max_size=2)))) for n in vols}
    if secrets:
        out["secrets"] = {n: draw(st.sampled_from([{"external": True}, {"file": "./secret.txt"},
                                                   {"environment": "TOKEN", "labels": {"a": "b"}}]))
                          for n in secrets}
    if configs:
        out["configs"] = {n: draw(st.one_of(st.sampled_from([{"external": True, "name": "shared"},
                                                             {"file": "conf/app.conf"}]),
                                            TEXT.map(lambda t: {"content": esc(t)}))) for n in configs}
    return out


def _load(text: str) -> Any:
    return load([Source("stack.yml", text, "/srv/app")], environ=ENV, files=MemoryFiles(FILES))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(compose_file())
def test_stack_config_loads_back_to_the_same_model(data: dict[str, Any]) -> None:
    first = _load(dump_yaml(data)).project
    text = dump_config(first)
    second = _load(text).project
    assert second == first
    assert to_config(second) == to_config(first)
    assert dump_config(second) == text


# -- robustness: any YAML is either a stack or a ComposeError ---------------------------

KEYS = ["services", "networks", "volumes", "secrets", "configs", "name", "web", "db", "image", "command",
        "environment", "labels", "ports", "target", "published", "protocol", "mode", "volumes", "type", "source",
        "networks", "aliases", "secrets", "healthcheck", "test", "interval", "deploy", "replicas", "placement",
        "constraints", "resources", "limits", "memory", "cpus", "depends_on", "condition", "env_file", "path",
        "ulimits", "soft", "devices", "tmpfs", "extra_hosts", "sysctls", "external", "file", "ipam", "config",
        "subnet", "driver", "x-a", "build", "extends", "<<"]
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 70000), st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from(["", "x", "web", "db", "80", "8080:80", "/data", "data:/data", "${X}", "$", "${",
                                    "a=b", "overlay", "bridge", "10.0.0.0/24", "1m", "service_healthy", "global",
                                    "CMD", "~", "./f"]))
ANY_YAML = st.recursive(SCALAR, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)), max_leaves=30)


SERVICE_FIELDS = ["image", "command", "entrypoint", "environment", "labels", "ports", "networks", "volumes",
                  "secrets", "configs", "healthcheck", "user", "stop_grace_period", "read_only", "cap_add", "tmpfs",
                  "extra_hosts", "init", "ulimits", "sysctls", "privileged", "devices", "security_opt", "depends_on",
                  "deploy", "env_file", "restart", "extends", "x-a"]
ANY_FILE = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), ANY_YAML, max_size=5),
    st.fixed_dictionaries({"services": st.dictionaries(st.sampled_from(["web", "db"]), st.dictionaries(
        st.sampled_from(SERVICE_FIELDS), ANY_YAML, max_size=6), min_size=1)},
        optional={k: st.dictionaries(st.sampled_from(["web", "db", "data", "front"]), ANY_YAML, max_size=2)
                  for k in ("networks", "volumes", "secrets", "configs")}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ANY_FILE)
def test_any_yaml_loads_or_fails_with_compose_errors(data: dict[str, Any]) -> None:
    from api.compose import ComposeError, to_specs

    try:
        loaded = _load(dump_yaml(data))
    except ComposeError as e:
        assert e.problems and all(p.message for p in e.problems)
        return
    try:
        to_specs(loaded.project, "s", environment=loaded.environment, places=loaded.places)
    except ComposeError as e:
        assert e.problems
