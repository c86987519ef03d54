"""From the compose model to orch's objects (api.objects), named and
labelled as docker stack deploy does."""

from __future__ import annotations

import pytest

from api.compose import ComposeError, PublishedPort, StackSpecs, to_specs
from api.objects import (
    ConfigSpec,
    EndpointMode,
    FailureAction,
    MountType,
    RestartCondition,
    SecretSpec,
    ServiceMode,
    UpdateOrder,
)

from .util import load_text

NS = {"com.docker.stack.namespace": "shop", "orch.stack": "shop"}

TEXT = """\
services:
  web:
    image: nginx:1.25
    entrypoint: [/entry.sh]
    command: [nginx, -g, daemon off;]
    environment: {B: 2, A: 1}
    labels: {role: front}
    user: "101"
    working_dir: /srv
    hostname: web
    stop_signal: SIGQUIT
    stop_grace_period: 1m
    read_only: true
    cap_add: [NET_BIND_SERVICE]
    cap_drop: [ALL]
    ports: ["8080:80", {target: 443, published: 8443, mode: host}, "9000/udp"]
    networks:
      front:
        aliases: [www]
      back:
    volumes: [static:/usr/share/nginx/html:ro, ./conf:/etc/nginx/conf.d, /cache,
              {type: tmpfs, target: /tmp, tmpfs: {size: 16m, mode: 01700}},
              {type: bind, source: /var/log, target: /host-log, bind: {propagation: rslave}}]
    tmpfs: [/run, "/var/run:size=1m,noexec"]
    secrets: [tls_key, {source: tls_key, target: /etc/ssl/key.pem, uid: "101", gid: "101", mode: 0400}]
    configs: [site, {source: site, target: /etc/nginx/nginx.conf}]
    healthcheck: {test: curl -f localhost, interval: 30s, timeout: 5s, retries: 3, start_period: 10s,
                  start_interval: 1s}
    privileged: true
    init: true
    devices: [/dev/fuse]
    sysctls: {net.core.somaxconn: 1024}
    ulimits: {nofile: 65536}
    extra_hosts: {db.local: 10.0.0.5}
    security_opt: [seccomp=unconfined]
    depends_on:
      api: {condition: service_healthy}
    deploy:
      mode: replicated
      replicas: 3
      endpoint_mode: vip
      labels: {traefik.enable: "true"}
      resources:
        limits: {cpus: "0.5", memory: 256M, pids: 200}
        reservations: {cpus: "0.25", memory: 64M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 5, window: 1m}
      placement:
        constraints: [node.role == worker]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
      update_config: {parallelism: 2, delay: 10s, failure_action: rollback, monitor: 30s,
                      max_failure_ratio: 0.2, order: start-first}
      rollback_config: {parallelism: 0, order: stop-first}
  api:
    image: api:2
    healthcheck: {disable: true}
  migrate:
    image: api:2
    command: migrate
    networks: [back]
    deploy: {mode: replicated-job}
  agent:
    image: agent:1
    networks: [outside]
    deploy: {mode: global}
networks:
  front:
    attachable: true
    driver_opts: {mtu: "1400"}
    ipam: {config: [{subnet: 10.30.0.0/24}]}
    labels: {tier: front}
  back:
    internal: true
  outside:
    external: true
    name: shared-proxy
volumes:
  static: {labels: {backup: "no"}}
  logs: {external: true}
secrets:
  tls_key: {file: ./tls.key}
  db_password: {environment: DB_PASSWORD}
  registry: {external: true}
configs:
  site: {content: "server {}"}
  named: {file: ./named.conf, name: global_named}
"""

FILES = {"/srv/app/tls.key": "k", "/srv/app/named.conf": "n"}


def specs() -> StackSpecs:
    loaded = load_text(TEXT, files=FILES, environ={"DB_PASSWORD": "hunter2"})
    return to_specs(loaded.project, "shop", environment=loaded.environment, places=loaded.places)


def test_services_are_named_and_labelled_like_docker_stack() -> None:
    s = specs()
    assert [x.key for x in s.services] == ["web", "api", "migrate", "agent"]
    assert [x.spec.name for x in s.services] == ["shop_web", "shop_api", "shop_migrate", "shop_agent"]
    for x in s.services:
        assert {k: x.spec.labels[k] for k in NS} == NS
        assert {k: x.spec.task.container.labels[k] for k in NS} == NS


def test_the_container_spec() -> None:
    web = specs().services[0]
    c = web.spec.task.container
    assert c.image == "nginx:1.25"
    assert c.command == ("/entry.sh",) and c.args == ("nginx", "-g", "daemon off;")  # entrypoint / command
    assert c.env == ("A=1", "B=2")
    assert c.labels == {"role": "front", **NS}
    assert (c.user, c.dir, c.hostname, c.stop_signal, c.stop_grace_period) == ("101", "/srv", "web", "SIGQUIT", 60.0)
    assert c.read_only and c.cap_add == ("NET_BIND_SERVICE",) and c.cap_drop == ("ALL",)
    # Privileges are the container's own (issue 15), not warnings.
    assert c.privileged and c.init
    assert [d.model_dump() for d in c.devices] == [{"host": "/dev/fuse", "container": "", "permissions": "rwm"}]
    assert c.sysctls == {"net.core.somaxconn": "1024"}
    assert [(u.name, u.soft, u.hard) for u in c.ulimits] == [("nofile", 65536, 65536)]
    assert [(m.type, m.source, m.target, m.readonly, m.tmpfs_size, m.tmpfs_mode) for m in c.mounts] == [
        (MountType.VOLUME, "shop_static", "/usr/share/nginx/html", True, 0, 0o1777),
        (MountType.BIND, "/srv/app/conf", "/etc/nginx/conf.d", False, 0, 0o1777),
        (MountType.VOLUME, "", "/cache", False, 0, 0o1777),
        (MountType.TMPFS, "", "/tmp", False, 16 << 20, 0o1700),
        (MountType.BIND, "/var/log", "/host-log", False, 0, 0o1777),
        (MountType.TMPFS, "", "/run", False, 0, 0o1777),
        (MountType.TMPFS, "", "/var/run", False, 1 << 20, 0o1777),
    ]
    assert [(r.secret_name, r.secret_id, r.target, r.uid, r.gid, r.mode) for r in c.secrets] == [
        ("shop_tls_key", "shop_tls_key", "/run/secrets/tls_key", "0", "0", 0o444),
        ("shop_tls_key", "shop_tls_key", "/etc/ssl/key.pem", "101", "101", 0o400),
    ]
    assert [(r.config_name, r.target) for r in c.configs] == [("shop_site", "/site"),
                                                              ("shop_site", "/etc/nginx/nginx.conf")]
    hc = c.healthcheck
    assert hc is not None and hc.test == ("CMD-SHELL", "curl -f localhost")
    assert (hc.interval, hc.timeout, hc.retries, hc.start_period) == (30.0, 5.0, 3, 10.0)


def test_the_task_and_service_settings() -> None:
    web = specs().services[0].spec
    t = web.task
    assert (web.mode, web.replicas, web.endpoint_spec.mode) == (ServiceMode.REPLICATED, 3, EndpointMode.VIP)
    assert web.labels == {"traefik.enable": "true", **NS}
    assert (t.resources.limits.nano_cpus, t.resources.limits.memory_bytes, t.resources.limits.pids) == \
        (500_000_000, 256 << 20, 200)
    assert (t.resources.reservations.nano_cpus, t.resources.reservations.memory_bytes) == (250_000_000, 64 << 20)
    assert t.restart_policy.model_dump() == {"condition": RestartCondition.ON_FAILURE, "delay": 2.0,
                                             "max_attempts": 5, "window": 60.0}
    assert (t.placement.constraints, t.placement.preferences, t.placement.max_replicas) == \
        (("node.role == worker",), ("node.labels.zone",), 2)
    assert web.update_config.model_dump() == {"parallelism": 2, "delay": 10.0, "failure_action": FailureAction.ROLLBACK,
                                              "monitor": 30.0, "max_failure_ratio": 0.2,
                                              "order": UpdateOrder.START_FIRST}
    assert (web.rollback_config.parallelism, web.rollback_config.order) == (0, UpdateOrder.STOP_FIRST)


def test_networks_aliases_and_the_default_network() -> None:
    s = specs()
    nets = {n.key: n for n in s.networks}
    assert list(nets) == ["front", "back", "outside", "default"]
    front = nets["front"].spec
    assert front is not None and front.name == "shop_front" and front.attachable and front.mtu == 1400
    assert front.labels == {"tier": "front", **NS} and front.ipam[0].subnet == "10.30.0.0/24"
    assert nets["back"].spec is not None and nets["back"].spec.internal
    assert (nets["outside"].name, nets["outside"].external, nets["outside"].spec) == ("shared-proxy", True, None)
    default = nets["default"].spec
    assert default is not None and default.name == "shop_default" and default.labels == NS
    by = {x.key: [(a.target, a.aliases) for a in x.spec.task.networks] for x in s.services}
    assert by == {
        "web": [("shop_front", ("web", "www")), ("shop_back", ("web",))],
        "api": [("shop_default", ("api",))],
        "migrate": [("shop_back", ("migrate",))],
        "agent": [("shared-proxy", ("agent",))],
    }


def test_no_default_network_when_every_service_names_its_networks() -> None:
    loaded = load_text("services:\n  a: {image: x, networks: [n]}\nnetworks: {n: {}}\n")
    assert [n.name for n in to_specs(loaded.project, "s").networks] == ["s_n"]


def test_ports_depends_on_and_what_orch_objects_cannot_carry_yet() -> None:
    s = specs()
    web, api, migrate, agent = s.services
    assert web.ports == (PublishedPort(80, 8080, "tcp", "ingress"), PublishedPort(443, 8443, "tcp", "host"),
                         PublishedPort(9000, 0, "udp", "ingress"))
    assert web.depends_on == {"api": "service_healthy"}
    assert set(web.extras) == {"extra_hosts", "security_opt", "volumes[4].bind", "tmpfs[1]",
                               "healthcheck.start_interval"}
    assert web.extras["tmpfs[1]"] == ("noexec",)
    assert api.spec.task.container.healthcheck is not None
    assert api.spec.task.container.healthcheck.test == ("NONE",)
    assert (migrate.spec.mode, migrate.spec.replicas) == (ServiceMode.REPLICATED_JOB, 1)
    assert migrate.spec.task.container.args == ("migrate",)
    assert agent.spec.mode == ServiceMode.GLOBAL
    assert api.extras == {} and api.ports == () and api.depends_on == {}


def test_secrets_configs_and_volumes() -> None:
    s = specs()
    sec = {b.key: b for b in s.secrets}
    assert (sec["tls_key"].name, sec["tls_key"].file, sec["tls_key"].data) == ("shop_tls_key", "/srv/app/tls.key", None)
    assert sec["tls_key"].labels == NS
    assert sec["db_password"].data == b"hunter2"
    assert (sec["registry"].name, sec["registry"].external) == ("registry", True)
    spec = sec["tls_key"].spec(b"secret bytes")
    assert isinstance(spec, SecretSpec) and spec.name == "shop_tls_key" and spec.data == b"secret bytes"
    with pytest.raises(ValueError, match="read /srv/app/tls.key"):
        sec["tls_key"].spec()
    cfg = {b.key: b for b in s.configs}
    site = cfg["site"].spec()
    assert isinstance(site, ConfigSpec) and site.data == b"server {}" and site.name == "shop_site"
    assert (cfg["named"].name, cfg["named"].file) == ("global_named", "/srv/app/named.conf")
    vols = {v.key: v for v in s.volumes}
    assert (vols["static"].name, vols["static"].labels) == ("shop_static", {"backup": "no", **NS})
    assert (vols["logs"].name, vols["logs"].external) == ("logs", True)


def test_conversion_errors_name_the_place() -> None:
    long = "s" * 60
    loaded = load_text(f"services:\n  {long}:\n    image: x\n    networks:\n      n: {{aliases: ['bad alias']}}\n"
                       "networks: {n: {}}\nsecrets:\n  pw: {environment: PW}\n")
    with pytest.raises(ComposeError) as e:
        to_specs(loaded.project, "shop", places=loaded.places)
    assert e.value.messages() == [
        f"stack.yml:2:3: services.{long}: name: must be at most 64 characters, got 65",
        f"stack.yml:5:7: services.{long}.networks.n: task.networks[0].aliases[1]: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*: "
        "letters, digits, '_', '.', '-', starting with a letter or digit (got \"bad alias\")",
        "stack.yml:8:8: secrets.pw.environment: variable PW is not set",
    ]


def test_a_bad_stack_name() -> None:
    loaded = load_text("services:\n  a: {image: x}\n")
    with pytest.raises(ComposeError) as e:
        to_specs(loaded.project, "my stack")
    assert e.value.messages() == ["name my stack: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*: letters, digits, '_', "
                                  "'.', '-', starting with a letter or digit (got \"my stack\")"]


def test_a_healthcheck_without_test_is_a_warning() -> None:
    loaded = load_text("services:\n  a:\n    image: x\n    healthcheck: {interval: 5s}\n")
    s = to_specs(loaded.project, "st", places=loaded.places)
    assert [str(w) for w in s.warnings] == [
        "stack.yml:4:5: services.a.healthcheck: ignored: without a test orch cannot retune the image's "
        "healthcheck; give test as well"]
    assert s.services[0].spec.task.container.healthcheck is None
