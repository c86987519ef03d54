"""Several files merged by the compose specification's rules."""

from __future__ import annotations

from api.compose import to_config

from .util import errors, load_text, warnings

BASE = """\
services:
  web:
    image: web:1
    command: [serve, --port, "80"]
    environment: [A=1, B=1]
    labels: {tier: front}
    ports: ["8080:80", "443:443"]
    volumes: ["data:/data", "./conf:/etc/web:ro"]
    secrets: [api_key]
    cap_add: [NET_ADMIN]
    networks: [front]
    healthcheck: {test: [CMD, check], interval: 10s}
    deploy:
      replicas: 2
      resources: {limits: {cpus: "1", memory: 256M}}
      placement: {constraints: [node.role == worker]}
  db:
    image: db:1
networks: {front: {}}
volumes: {data: {}}
secrets: {api_key: {external: true}}
"""

OVERRIDE = """\
services:
  web:
    image: web:2
    command: [serve, --debug]
    environment: {B: 2, C: 3}
    labels: [extra=yes]
    ports: ["9090:80", {target: 443, published: 443, mode: host}]
    volumes: [{type: volume, source: other, target: /data}, "/cache"]
    secrets: [{source: api_key, mode: 0400}]
    cap_add: [NET_ADMIN, SYS_TIME]
    networks: {back: {aliases: [api]}}
    healthcheck: {test: [CMD, other]}
    deploy:
      replicas: 4
      resources: {limits: {memory: 512M}}
      placement: {constraints: [node.labels.ssd == true]}
  worker:
    image: worker:1
networks: {back: {}}
volumes: {other: {}}
"""


def test_two_files() -> None:
    cfg = to_config(load_text(BASE, OVERRIDE).project)
    web = cfg["services"]["web"]
    assert web["image"] == "web:2"
    assert web["command"] == ["serve", "--debug"]  # replaced, not appended
    assert web["environment"] == {"A": "1", "B": "2", "C": "3"}  # merged as maps
    assert web["labels"] == {"tier": "front", "extra": "yes"}
    # ports by (published, target, protocol): 9090:80 is new, 443:443 merged with its mode
    assert web["ports"] == [
        {"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"},
        {"target": 443, "published": 443, "protocol": "tcp", "mode": "host"},
        {"target": 80, "published": 9090, "protocol": "tcp", "mode": "ingress"},
    ]
    # volumes by target: /data replaced by the override's, /cache added
    assert web["volumes"] == [
        {"type": "volume", "source": "other", "target": "/data"},
        {"type": "bind", "source": "/srv/app/conf", "target": "/etc/web", "read_only": True},
        {"type": "volume", "target": "/cache"},
    ]
    assert web["secrets"] == [{"source": "api_key", "mode": "0400"}]  # by target (= source here)
    assert web["cap_add"] == ["NET_ADMIN", "SYS_TIME"]  # appended, each value once
    assert web["networks"] == {"front": {}, "back": {"aliases": ["api"]}}
    assert web["healthcheck"] == {"test": ["CMD", "other"], "interval": "10s"}  # test replaced, rest merged
    assert web["deploy"] == {
        "replicas": 4,
        "placement": {"constraints": ["node.role == worker", "node.labels.ssd == true"]},
        "resources": {"limits": {"cpus": 1.0, "memory": 512 << 20}},
    }
    assert set(cfg["services"]) == {"web", "db", "worker"}
    assert set(cfg["networks"]) == {"front", "back"} and set(cfg["volumes"]) == {"data", "other"}


def test_reset_and_override_tags() -> None:
    cfg = to_config(load_text(BASE, """\
        services:
          web:
            ports: !reset []
            environment: !override {ONLY: x}
            deploy:
              placement: !reset null
            cap_add: !override [SYS_TIME]
        """).project)
    web = cfg["services"]["web"]
    assert "ports" not in web
    assert web["environment"] == {"ONLY": "x"}
    assert web["cap_add"] == ["SYS_TIME"]
    assert "placement" not in web["deploy"]


def test_three_files_in_order() -> None:
    cfg = to_config(load_text("services:\n  s: {image: a, user: u1}\n", "services:\n  s: {image: b}\n",
                              "services:\n  s: {user: u3}\n").project)
    assert cfg["services"]["s"] == {"image": "b", "user": "u3"}


def test_errors_point_into_the_file_that_set_the_value() -> None:
    assert errors("services:\n  web:\n    image: img\n", "services:\n  web:\n    deploy:\n      replicas: many\n") == [
        'override1.yml:4:7: services.web.deploy.replicas: must be an integer (got "many")']


def test_an_override_may_add_a_service_without_image_only_if_the_base_has_it() -> None:
    assert errors("services:\n  web:\n    image: img\n", "services:\n  api:\n    user: x\n") == [
        "override1.yml:2:3: services.api.image: is required"]


def test_warnings_of_every_file() -> None:
    assert warnings("services:\n  web:\n    image: img\n    build: .\n",
                    "services:\n  web:\n    build: ./other\n    restart: always\n") == [
        "stack.yml:4:5: services.web.build: ignored: stacks deploy images; build and push the image first",
        "override1.yml:3:5: services.web.build: ignored: stacks deploy images; build and push the image first",
        "override1.yml:4:5: services.web.restart: ignored: not used by stacks; use deploy.restart_policy",
    ]


def test_each_file_is_interpolated_before_merging_and_paths_stay_its_own() -> None:
    from api.compose import Source, load, MemoryFiles

    loaded = load([Source("a/base.yml", "services:\n  web: {image: 'img:${TAG}', volumes: ['./x:/x']}\n", "/p/a"),
                   Source("b/over.yml", "services:\n  web: {volumes: ['./y:/y']}\n", "/p/b")],
                  environ={"TAG": "7"}, files=MemoryFiles())
    web = to_config(loaded.project)["services"]["web"]
    assert web["image"] == "img:7"
    assert [v["source"] for v in web["volumes"]] == ["/p/a/x", "/p/b/y"]
