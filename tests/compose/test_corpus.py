"""The corpus: compose files of our own, shaped like real Swarm stacks
(the voting app, monitoring, reverse proxy, management UI, blog, log
search, Git hosting, object storage, Redis with Sentinel, CI, jobs, a
two-file deploy). Each loads with exactly the warnings expected, its
`stack config` loads back to the same model, and it converts to orch's
objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api.compose import ComposeError, Loaded, MemoryFiles, Source, dump_config, load, to_config, to_specs

CORPUS = Path(__file__).parent / "corpus"
D = str(CORPUS)


@dataclass
class Case:
    files: list[str]
    services: list[str]
    environ: dict[str, str] = field(default_factory=dict)
    side_files: dict[str, str] = field(default_factory=dict)  # relative to the corpus directory
    warnings: list[str] = field(default_factory=list)


LOGGING = ("ignored: orch does not choose log drivers yet: task logs are kept by the node (orch service logs)")

CASES: dict[str, Case] = {
    "voting-app": Case(["voting-app.yml"], ["redis", "db", "vote", "result", "worker", "visualizer"]),
    "monitoring": Case(
        ["monitoring.yml"], ["prometheus", "grafana", "alertmanager", "node-exporter", "cadvisor"],
        side_files={"prometheus/prometheus.yml": "scrape_configs: []\n", "prometheus/rules/node.rules.yml": "",
                    "alertmanager/alertmanager.yml": "route: {}\n", "grafana/datasource.yml": "",
                    "secrets/grafana_admin_password.txt": "pw"},
        warnings=[f"monitoring.yml:17:3: services.prometheus.logging: {LOGGING}",
                  f"monitoring.yml:17:3: services.grafana.logging: {LOGGING}"]),
    "traefik": Case(["traefik.yml"], ["traefik", "whoami"],
                    side_files={".env": "DOMAIN=example.test\nACME_EMAIL=ops@example.test\n"},
                    environ={"HASHED_PASSWORD": "$$apr1$$x"}),
    "portainer": Case(["portainer.yml"], ["agent", "portainer"], warnings=[
        "portainer.yml:25:5: services.portainer.restart: ignored: not used by stacks; use deploy.restart_policy"]),
    "wordpress": Case(["wordpress.yml"], ["db", "wordpress"],
                      side_files={"wordpress.env": "WORDPRESS_TABLE_PREFIX=wp_\nWORDPRESS_DB_USER=wordpress\n",
                                  "secrets/db_password.txt": "pw", "secrets/db_root_password.txt": "root"}),
    "elk": Case(["elk.yml"], ["elasticsearch", "logstash", "kibana"],
                side_files={"logstash/pipeline/logstash.conf": "input {}\n"}),
    "gitea": Case(["gitea.yml"], ["server", "db"], warnings=[
        "gitea.yml:18:5: services.server.build: ignored: stacks deploy images; build and push the image first",
        "gitea.yml:19:5: services.server.container_name: deprecated and ignored: a service's containers are named "
        "after its tasks",
        "gitea.yml:37:5: services.server.links: ignored: not needed in a stack; services reach each other by name on "
        "their networks",
        "gitea.yml:44:5: services.db.container_name: deprecated and ignored: a service's containers are named after "
        "its tasks",
        "gitea.yml:49:5: services.db.expose: deprecated and ignored: services reach every port of each other on "
        "their networks",
    ]),
    "minio": Case(["minio.yml"], ["minio1", "minio2", "minio3", "minio4"], environ={"MINIO_ROOT_PASSWORD": "s3cr3t"}),
    "redis-sentinel": Case(["redis-sentinel.yml"], ["primary", "replica", "sentinel"]),
    "ci-runner": Case(["ci-runner.yml"], ["server", "agent"], environ={"CI_AGENT_SECRET": "shared"}),
    "jobs": Case(["jobs.yml"], ["migrate", "api", "backup", "warm-cache"]),
    "shop": Case(["shop.yml", "shop.prod.yml"], ["web", "api", "db"], environ={"TAG": "2.0.1"}),
}


def load_case(case: Case) -> Loaded:
    sources = [Source(name, (CORPUS / name).read_text(), D) for name in case.files]
    files = MemoryFiles({f"{D}/{k}": v for k, v in case.side_files.items()})
    return load(sources, environ=case.environ, files=files)


def test_the_corpus_is_complete() -> None:
    on_disk = sorted(p.name for p in CORPUS.glob("*.yml"))
    named = sorted(f for c in CASES.values() for f in c.files)
    assert on_disk == named and len(CASES) >= 10


@pytest.mark.parametrize("name", list(CASES))
def test_loads_with_the_expected_warnings(name: str) -> None:
    case = CASES[name]
    loaded = load_case(case)
    assert list(loaded.project.services) == case.services
    assert [str(w) for w in loaded.warnings] == case.warnings


@pytest.mark.parametrize("name", list(CASES))
def test_stack_config_round_trips(name: str) -> None:
    case = CASES[name]
    loaded = load_case(case)
    text = dump_config(loaded.project)
    again = load([Source("config.yml", text, "/elsewhere")], files=MemoryFiles(
        {f"{D}/{k}": v for k, v in case.side_files.items()}))
    assert again.project == loaded.project
    assert again.warnings == ()
    assert dump_config(again.project) == text


@pytest.mark.parametrize("name", list(CASES))
def test_converts_to_orch_objects(name: str) -> None:
    loaded = load_case(CASES[name])
    specs = to_specs(loaded.project, name, environment=loaded.environment, places=loaded.places)
    assert [s.spec.name for s in specs.services] == [f"{name}_{k}" for k in loaded.project.services]
    for s in specs.services:
        assert s.spec.labels["com.docker.stack.namespace"] == name
        assert all(s.key in a.aliases for a in s.spec.task.networks)
    for n in specs.networks:
        assert n.external or (n.spec is not None and n.spec.labels["orch.stack"] == name)
    assert specs.warnings == ()


# -- what some files are there to show ------------------------------------------------


def test_voting_app() -> None:
    p = load_case(CASES["voting-app"]).project
    assert p.services["vote"].image == "registry.local:5000/voting/vote:before"
    assert p.services["visualizer"].stop_grace_period == 90.0
    worker = to_specs(p, "vote").services[4]
    assert worker.spec.task.restart_policy.max_attempts == 3 and worker.spec.task.restart_policy.window == 120.0
    assert [a.target for a in worker.spec.task.networks] == ["vote_frontend", "vote_backend"]
    assert to_specs(p, "vote").services[3].depends_on == {"db": "service_healthy"}


def test_monitoring_anchors_and_host_ports() -> None:
    p = load_case(CASES["monitoring"]).project
    prom = p.services["prometheus"]
    assert prom.deploy is not None and prom.deploy.update_config is not None
    assert prom.deploy.update_config.failure_action == "rollback"
    assert prom.command is not None and prom.command[2] == "--storage.tsdb.retention.time=24h"
    assert p.services["node-exporter"].command[2].endswith("($|/)")  # type: ignore[index]
    specs = to_specs(p, "mon")
    node = specs.services[3]
    assert node.ports[0].mode == "host" and node.spec.mode == "global"
    assert specs.services[4].spec.task.container.privileged and "privileged" not in specs.services[4].extras
    assert p.configs["prometheus_conf"].file == f"{D}/prometheus/prometheus.yml"


def test_traefik_labels_from_dot_env_and_external_network() -> None:
    loaded = load_case(CASES["traefik"])
    p = loaded.project
    labels = p.services["traefik"].deploy.labels  # type: ignore[union-attr]
    assert labels["traefik.http.routers.dashboard.rule"] == "Host(`traefik.example.test`)"
    assert labels["traefik.http.middlewares.admin-auth.basicauth.users"] == "admin:$$apr1$$x"
    assert p.services["traefik"].command[5] == "--certificatesresolvers.le.acme.email=ops@example.test"  # type: ignore
    nets = to_specs(p, "proxy").networks
    assert [(n.name, n.external) for n in nets] == [("traefik-public", True)]


def test_traefik_without_its_dot_env_fails_with_the_reason() -> None:
    case = CASES["traefik"]
    with pytest.raises(ComposeError) as e:
        load([Source("traefik.yml", (CORPUS / "traefik.yml").read_text(), D)], files=MemoryFiles())
    assert str(e.value).splitlines() == [
        "traefik.yml:15:9: services.traefik.command[5]: required variable ACME_EMAIL is missing a value: "
        "set ACME_EMAIL in .env",
        "traefik.yml:41:11: services.traefik.deploy.labels[1]: required variable DOMAIN is missing a value: "
        "Variable DOMAIN not set",
    ]
    assert case.files == ["traefik.yml"]


def test_wordpress_env_file_secrets_and_health() -> None:
    p = load_case(CASES["wordpress"]).project
    wp = p.services["wordpress"]
    assert wp.environment["WORDPRESS_TABLE_PREFIX"] == "wp_" and wp.environment["WORDPRESS_DB_HOST"] == "db"
    assert wp.secrets[0].mode == 0o400
    assert p.services["db"].healthcheck.test[1].startswith("mariadb-admin ping")  # type: ignore[union-attr,index]
    assert "$(cat /run/secrets/db_root_password)" in p.services["db"].healthcheck.test[1]  # type: ignore
    assert p.networks["back"].internal


def test_elk_ulimits_and_inline_config() -> None:
    specs = to_specs(load_case(CASES["elk"]).project, "elk")
    es = specs.services[0]
    assert [(u.name, u.soft, u.hard) for u in es.spec.task.container.ulimits if u.name == "memlock"] == [
        ("memlock", -1, -1)]
    assert "ES_JAVA_OPTS=-Xms512m -Xmx512m" in es.spec.task.container.env
    settings = [c for c in specs.configs if c.key == "logstash_settings"][0]
    assert settings.data is not None and settings.data.startswith(b"http.host")


def test_minio_merge_keys() -> None:
    p = load_case(CASES["minio"]).project
    for i in range(1, 5):
        s = p.services[f"minio{i}"]
        assert s.hostname == f"minio{i}" and s.environment["MINIO_ROOT_USER"] == "minioadmin"
        assert s.command == ("server", "--console-address", ":9001", "http://minio{1...4}/data{1...2}")


def test_redis_sentinel_dnsrr_and_sysctls() -> None:
    specs = to_specs(load_case(CASES["redis-sentinel"]).project, "redis")
    primary, replica, sentinel = specs.services
    assert primary.spec.task.networks[0].aliases == ("primary", "redis-primary")
    assert replica.spec.task.container.sysctls == {"net.core.somaxconn": "1024"} and not replica.extras
    assert replica.spec.task.placement.max_replicas == 1
    assert sentinel.spec.endpoint_spec.mode == "dnsrr"


def test_ci_runner_secret_from_the_environment() -> None:
    loaded = load_case(CASES["ci-runner"])
    specs = to_specs(loaded.project, "ci", environment=loaded.environment)
    assert specs.secrets[0].data == b"shared"
    agent = specs.services[1]
    assert agent.spec.task.container.privileged and agent.spec.task.container.init
    assert agent.spec.task.container.stop_grace_period == 300.0


def test_jobs() -> None:
    specs = to_specs(load_case(CASES["jobs"]).project, "jobs")
    migrate, api, backup, warm = specs.services
    assert (migrate.spec.mode, migrate.spec.replicas) == ("replicated-job", 1)
    assert (backup.spec.mode, backup.spec.replicas) == ("replicated-job", 3)
    assert warm.spec.mode == "global-job"
    assert api.depends_on == {"migrate": "service_completed_successfully"}
    assert api.spec.task.container.read_only and api.spec.task.container.cap_drop == ("ALL",)
    assert api.spec.task.container.mounts[0].type == "tmpfs"


def test_shop_two_files() -> None:
    loaded = load_case(CASES["shop"])
    cfg = to_config(loaded.project)
    assert cfg["services"]["web"]["image"] == "registry.local:5000/shop/web:2.0.1"
    assert cfg["services"]["web"]["environment"] == {"LOG_LEVEL": "info", "DB_HOST": "db"}
    assert [p["published"] for p in cfg["services"]["web"]["ports"]] == [443]
    assert "ports" not in cfg["services"]["api"] and "volumes" not in cfg["services"]["api"]
    assert cfg["secrets"] == {"db_password": {"name": "shop_db_password_v3", "external": True}}
