"""Every supported compose field, in its short and long forms, and the
long form the model holds (as `stack config` writes it)."""

from __future__ import annotations

from typing import Any

import pytest

from api.compose import to_config

from .util import load_text, service

PORT = {"protocol": "tcp", "mode": "ingress"}

CASES: list[tuple[str, str, dict[str, Any]]] = [
    # command and entrypoint: a string is split as a shell would, a list is kept
    ("command string", 'command: nginx -g "daemon off;"', {"command": ["nginx", "-g", "daemon off;"]}),
    ("command list", "command: [sh, -c, 'echo $$HOME']", {"command": ["sh", "-c", "echo $$HOME"]}),
    ("command numbers", "command: [sleep, 10]", {"command": ["sleep", "10"]}),
    ("entrypoint", "entrypoint: /docker-entrypoint.sh --flag", {"entrypoint": ["/docker-entrypoint.sh", "--flag"]}),
    ("empty command", "command: []", {"command": []}),
    # environment and labels: lists and maps
    ("environment list", "environment: [A=1, B=x=y, C=]", {"environment": {"A": "1", "B": "x=y", "C": ""}}),
    ("environment map", "environment: {A: 1, B: true, C: 1.50, D: '', E: 0123}",
     {"environment": {"A": "1", "B": "true", "C": "1.50", "D": "", "E": "0123"}}),
    ("labels list", "labels: [com.example.a=1, flag]", {"labels": {"com.example.a": "1", "flag": ""}}),
    ("labels map", "labels: {com.example.a: 1, b: null}", {"labels": {"com.example.a": "1", "b": ""}}),
    # ports
    ("port target only", "ports: ['80', 81]", {"ports": [{"target": 80, **PORT}, {"target": 81, **PORT}]}),
    ("port published", "ports: ['8080:80']", {"ports": [{"target": 80, "published": 8080, **PORT}]}),
    ("port udp", "ports: ['5353:53/udp']",
     {"ports": [{"target": 53, "published": 5353, "protocol": "udp", "mode": "ingress"}]}),
    ("port range", "ports: ['9000-9001:90-91']",
     {"ports": [{"target": 90, "published": 9000, **PORT}, {"target": 91, "published": 9001, **PORT}]}),
    ("port long", "ports: [{target: 80, published: '8080', protocol: udp, mode: host, name: web}]",
     {"ports": [{"target": 80, "published": 8080, "protocol": "udp", "mode": "host", "name": "web"}]}),
    ("port long defaults", "ports: [{target: 80}]", {"ports": [{"target": 80, **PORT}]}),
    # networks
    ("networks list", "networks: [front, back]", {"networks": {"front": {}, "back": {}}}),
    ("networks map", "networks:\n  front:\n    aliases: [www, site]\n  back:",
     {"networks": {"front": {"aliases": ["www", "site"]}, "back": {}}}),
    # volumes
    ("volume named", "volumes: ['data:/var/lib/data']",
     {"volumes": [{"type": "volume", "source": "data", "target": "/var/lib/data"}]}),
    ("volume anonymous", "volumes: [/cache]", {"volumes": [{"type": "volume", "target": "/cache"}]}),
    ("volume relative bind", "volumes: ['./conf:/etc/app:ro']",
     {"volumes": [{"type": "bind", "source": "/srv/app/conf", "target": "/etc/app", "read_only": True}]}),
    ("volume parent bind", "volumes: ['../shared:/shared:rw']",
     {"volumes": [{"type": "bind", "source": "/srv/shared", "target": "/shared"}]}),
    ("volume absolute bind", "volumes: ['/var/run/docker.sock:/var/run/docker.sock:ro']",
     {"volumes": [{"type": "bind", "source": "/var/run/docker.sock", "target": "/var/run/docker.sock",
                   "read_only": True}]}),
    ("volume home bind", "volumes: ['~/data:/data']",
     {"volumes": [{"type": "bind", "source": "/home/me/data", "target": "/data"}]}),
    ("volume nocopy", "volumes: ['data:/data:nocopy']",
     {"volumes": [{"type": "volume", "source": "data", "target": "/data", "volume": {"nocopy": True}}]}),
    ("volume long volume", "volumes: [{type: volume, source: data, target: /data, read_only: true,"
                           " volume: {nocopy: true}}]",
     {"volumes": [{"type": "volume", "source": "data", "target": "/data", "read_only": True,
                   "volume": {"nocopy": True}}]}),
    ("volume long bind", "volumes: [{type: bind, source: ./html, target: /usr/share/nginx/html,"
                         " bind: {propagation: rslave, create_host_path: true}}]",
     {"volumes": [{"type": "bind", "source": "/srv/app/html", "target": "/usr/share/nginx/html",
                   "bind": {"propagation": "rslave", "create_host_path": True}}]}),
    ("volume long tmpfs", "volumes: [{type: tmpfs, target: /tmp, tmpfs: {size: 64m, mode: 01777}}, {type: tmpfs, target: /t2, tmpfs: {mode: '1777'}}]",
     {"volumes": [{"type": "tmpfs", "target": "/tmp", "tmpfs": {"size": 64 << 20, "mode": "01777"}},
                 {"type": "tmpfs", "target": "/t2", "tmpfs": {"mode": "01777"}}]}),
    # secrets and configs
    ("secrets short", "secrets: [db_password]", {"secrets": [{"source": "db_password"}]}),
    ("secrets long", "secrets: [{source: db_password, target: db.pw, uid: '103', gid: 103, mode: 0440}]",
     {"secrets": [{"source": "db_password", "target": "db.pw", "uid": "103", "gid": "103", "mode": "0440"}]}),
    ("secrets mode as string", "secrets: [{source: db_password, mode: '0400'}]",
     {"secrets": [{"source": "db_password", "mode": "0400"}]}),
    ("configs short", "configs: [app_conf]", {"configs": [{"source": "app_conf"}]}),
    ("configs long", "configs: [{source: app_conf, target: /etc/app.conf, mode: 0444}]",
     {"configs": [{"source": "app_conf", "target": "/etc/app.conf", "mode": "0444"}]}),
    # healthcheck
    ("healthcheck string", "healthcheck:\n  test: curl -f http://localhost/ || exit 1\n  interval: 1m30s\n"
                           "  timeout: 10s\n  retries: 3\n  start_period: 40s\n  start_interval: 5s",
     {"healthcheck": {"test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"], "interval": "1m30s",
                      "timeout": "10s", "start_period": "40s", "start_interval": "5s", "retries": 3}}),
    ("healthcheck list", "healthcheck: {test: [CMD, pg_isready, -U, postgres], interval: 500ms}",
     {"healthcheck": {"test": ["CMD", "pg_isready", "-U", "postgres"], "interval": "500ms"}}),
    ("healthcheck disable", "healthcheck: {disable: true}", {"healthcheck": {"disable": True}}),
    ("healthcheck none", "healthcheck: {test: [NONE]}", {"healthcheck": {"test": ["NONE"]}}),
    # plain container settings
    ("hostname user dir signal", "hostname: web1\nuser: '1000:1000'\nworking_dir: /app\nstop_signal: SIGQUIT",
     {"hostname": "web1", "user": "1000:1000", "working_dir": "/app", "stop_signal": "SIGQUIT"}),
    ("user number", "user: 1000", {"user": "1000"}),
    ("stop_grace_period", "stop_grace_period: 1m30s", {"stop_grace_period": "1m30s"}),
    ("stop_grace_period seconds", "stop_grace_period: 20", {"stop_grace_period": "20s"}),
    ("read_only", "read_only: true", {"read_only": True}),
    ("caps", "cap_add: [NET_ADMIN, SYS_TIME]\ncap_drop: [ALL]",
     {"cap_add": ["NET_ADMIN", "SYS_TIME"], "cap_drop": ["ALL"]}),
    ("tmpfs string", "tmpfs: /run", {"tmpfs": ["/run"]}),
    ("tmpfs list", "tmpfs: [/run, '/tmp:size=64m,mode=1777']", {"tmpfs": ["/run", "/tmp:size=64m,mode=1777"]}),
    ("extra_hosts list", "extra_hosts: ['somehost:162.242.195.82', 'other=50.31.209.229', 'v6=::1']",
     {"extra_hosts": {"somehost": "162.242.195.82", "other": "50.31.209.229", "v6": "::1"}}),
    ("extra_hosts map", "extra_hosts: {somehost: 162.242.195.82}", {"extra_hosts": {"somehost": "162.242.195.82"}}),
    ("init", "init: true", {"init": True}),
    ("ulimits", "ulimits:\n  nproc: 65535\n  nofile: {soft: 20000, hard: 40000}",
     {"ulimits": {"nproc": {"soft": 65535, "hard": 65535}, "nofile": {"soft": 20000, "hard": 40000}}}),
    ("sysctls list", "sysctls: [net.core.somaxconn=1024]", {"sysctls": {"net.core.somaxconn": "1024"}}),
    ("sysctls map", "sysctls: {net.ipv4.tcp_syncookies: 0}", {"sysctls": {"net.ipv4.tcp_syncookies": "0"}}),
    ("privileged", "privileged: true", {"privileged": True}),
    ("devices", "devices: [/dev/fuse, '/dev/sda:/dev/xvda:rwm', '/dev/kvm:rw']",
     {"devices": [{"source": "/dev/fuse"}, {"source": "/dev/sda", "target": "/dev/xvda", "permissions": "rwm"},
                  {"source": "/dev/kvm", "permissions": "rw"}]}),
    ("devices long", "devices: [{source: /dev/fuse, target: /dev/fuse}]",
     {"devices": [{"source": "/dev/fuse", "target": "/dev/fuse"}]}),
    ("security_opt", "security_opt: [seccomp=unconfined, no-new-privileges:true]",
     {"security_opt": ["seccomp=unconfined", "no-new-privileges:true"]}),
    # depends_on (the services named exist in the test file)
    ("depends_on list", "depends_on: [db]", {"depends_on": {"db": {"condition": "service_started", "required": True}}}),
    ("depends_on map", "depends_on:\n  db: {condition: service_healthy, restart: true}\n"
                       "  migrate: {condition: service_completed_successfully, required: false}",
     {"depends_on": {"db": {"condition": "service_healthy", "required": True, "restart": True},
                     "migrate": {"condition": "service_completed_successfully", "required": False}}}),
    # deploy
    ("deploy replicated", "deploy: {mode: replicated, replicas: 3, endpoint_mode: dnsrr}",
     {"deploy": {"mode": "replicated", "replicas": 3, "endpoint_mode": "dnsrr"}}),
    ("deploy global", "deploy: {mode: global}", {"deploy": {"mode": "global"}}),
    ("deploy jobs", "deploy: {mode: replicated-job, replicas: 2}", {"deploy": {"mode": "replicated-job", "replicas": 2}}),
    ("deploy global job", "deploy: {mode: global-job}", {"deploy": {"mode": "global-job"}}),
    ("deploy placement", "deploy:\n  placement:\n    constraints: [node.role == manager, node.labels.disk == ssd]\n"
                         "    preferences: [{spread: node.labels.zone}]\n    max_replicas_per_node: 1",
     {"deploy": {"placement": {"constraints": ["node.role == manager", "node.labels.disk == ssd"],
                               "preferences": [{"spread": "node.labels.zone"}], "max_replicas_per_node": 1}}}),
    ("deploy resources", "deploy:\n  resources:\n    limits: {cpus: '0.50', memory: 512M, pids: 100}\n"
                         "    reservations: {cpus: 0.25, memory: 64MiB}",
     {"deploy": {"resources": {"limits": {"cpus": 0.5, "memory": 512 << 20, "pids": 100},
                               "reservations": {"cpus": 0.25, "memory": 64 << 20}}}}),
    ("deploy restart_policy", "deploy:\n  restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3,"
                              " window: 2m}",
     {"deploy": {"restart_policy": {"condition": "on-failure", "delay": "5s", "max_attempts": 3, "window": "2m"}}}),
    ("deploy update and rollback", "deploy:\n  update_config: {parallelism: 2, delay: 10s, failure_action: rollback,"
                                   " monitor: 60s, max_failure_ratio: 0.3, order: start-first}\n"
                                   "  rollback_config: {parallelism: 0, order: stop-first, failure_action: continue}",
     {"deploy": {"update_config": {"parallelism": 2, "delay": "10s", "failure_action": "rollback", "monitor": "1m",
                                   "max_failure_ratio": 0.3, "order": "start-first"},
                 "rollback_config": {"parallelism": 0, "failure_action": "continue", "order": "stop-first"}}}),
    ("deploy labels list", "deploy: {labels: [traefik.enable=true, com.example=x]}",
     {"deploy": {"labels": {"traefik.enable": "true", "com.example": "x"}}}),
    ("deploy labels map", "deploy: {labels: {traefik.port: 80}}", {"deploy": {"labels": {"traefik.port": "80"}}}),
    # extension keys are ignored
    ("x- keys", "x-note: anything\ndeploy: {x-also: 1, replicas: 1}", {"deploy": {"replicas": 1}}),
]

TOP = """\
networks: {front: {}, back: {}}
volumes: {data: {}}
secrets: {db_password: {external: true}}
configs: {app_conf: {external: true}}
"""


@pytest.mark.parametrize("snippet, expected", [(s, e) for _, s, e in CASES], ids=[n for n, _, _ in CASES])
def test_service_field(snippet: str, expected: dict[str, Any]) -> None:
    web = _service_with_others(snippet)
    assert web == expected


def _service_with_others(snippet: str) -> dict[str, Any]:
    import textwrap

    body = textwrap.indent(snippet, "    ")
    text = f"services:\n  web:\n    image: img\n{body}\n  db:\n    image: db\n  migrate:\n    image: m\n{TOP}"
    out = to_config(load_text(text, environ={"HOME": "/home/me"}).project)["services"]["web"]
    del out["image"]
    return out


def test_model_values_are_typed() -> None:
    p = load_text("""\
        services:
          web:
            image: img
            stop_grace_period: 1m30s
            secrets: [{source: s, mode: 0440}]
            deploy:
              resources: {limits: {cpus: '1.5', memory: 1g}}
        secrets: {s: {external: true}}
        """).project
    web = p.services["web"]
    assert web.stop_grace_period == 90.0
    assert web.secrets[0].mode == 0o440
    assert web.deploy.resources.limits.cpus == 1.5  # type: ignore[union-attr]
    assert web.deploy.resources.limits.memory == 1 << 30  # type: ignore[union-attr]


TOP_LEVEL = """\
name: shop
version: "3.8"
x-defaults: &defaults
  image: img
services:
  web:
    <<: *defaults
    networks: [front, outside]
    volumes: [data:/data, cache:/cache]
    secrets: [api_key, db_password, token]
    configs: [nginx_conf, inline, from_env]
networks:
  front:
    driver: overlay
    attachable: true
    internal: true
    driver_opts: {mtu: "1400"}
    ipam:
      driver: default
      config:
        - subnet: 10.20.0.0/24
          gateway: 10.20.0.1
          ip_range: 10.20.0.128/25
    labels: [tier=front]
  outside:
    external: true
    name: host-net
volumes:
  data:
    driver: local
    driver_opts: {type: nfs, o: "addr=10.0.0.1,rw", device: ":/exports"}
    labels: {backup: daily}
  cache:
    external: true
secrets:
  api_key:
    file: ./secrets/api_key.txt
    labels: {kind: api}
  db_password:
    external: true
    name: prod_db_password
  token:
    environment: TOKEN
configs:
  nginx_conf:
    file: /etc/shop/nginx.conf
  inline:
    content: |
      listen 80;
  from_env:
    environment: TOKEN
x-trailer: ignored
"""


def test_top_level_objects() -> None:
    files = {"/srv/app/secrets/api_key.txt": "k", "/etc/shop/nginx.conf": "c"}
    cfg = to_config(load_text(TOP_LEVEL, files=files, environ={"TOKEN": "t"}).project)
    assert cfg == {
        "name": "shop",
        "services": {"web": {
            "image": "img",
            "networks": {"front": {}, "outside": {}},
            "volumes": [{"type": "volume", "source": "data", "target": "/data"},
                        {"type": "volume", "source": "cache", "target": "/cache"}],
            "secrets": [{"source": "api_key"}, {"source": "db_password"}, {"source": "token"}],
            "configs": [{"source": "nginx_conf"}, {"source": "inline"}, {"source": "from_env"}],
        }},
        "networks": {
            "front": {"driver": "overlay", "driver_opts": {"mtu": "1400"}, "attachable": True, "internal": True,
                      "ipam": {"driver": "default", "config": [{"subnet": "10.20.0.0/24", "gateway": "10.20.0.1",
                                                                "ip_range": "10.20.0.128/25"}]},
                      "labels": {"tier": "front"}},
            "outside": {"name": "host-net", "external": True},
        },
        "volumes": {
            "data": {"driver": "local", "driver_opts": {"type": "nfs", "o": "addr=10.0.0.1,rw", "device": ":/exports"},
                     "labels": {"backup": "daily"}},
            "cache": {"external": True},
        },
        "secrets": {
            "api_key": {"file": "/srv/app/secrets/api_key.txt", "labels": {"kind": "api"}},
            "db_password": {"name": "prod_db_password", "external": True},
            "token": {"environment": "TOKEN"},
        },
        "configs": {
            "nginx_conf": {"file": "/etc/shop/nginx.conf"},
            "inline": {"content": "listen 80;\n"},
            "from_env": {"environment": "TOKEN"},
        },
    }


def test_legacy_external_name() -> None:
    loaded = load_text("services:\n  web: {image: img, networks: [n]}\nnetworks:\n  n:\n    external:\n"
                       "      name: real\n")
    assert to_config(loaded.project)["networks"] == {"n": {"name": "real", "external": True}}
    assert [str(w) for w in loaded.warnings] == [
        "stack.yml:5:5: networks.n.external.name: external.name is deprecated: write name: real and external: true"]


def test_service_shorthand_via_util() -> None:
    assert service("hostname: h\n") == {"hostname": "h"}
