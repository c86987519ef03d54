"""Bad files: every problem of a file, each with file:line:col, key path
and a message that says what to do; and the warnings of fields Swarm
ignores or deprecates."""

from __future__ import annotations

import pytest

from api.compose.normalize import DEPRECATED, IGNORED, REJECTED, UNSUPPORTED

from .util import errors, warnings


@pytest.mark.parametrize("text, expected", [
    # unknown keys, with a hint when one is close
    ("services:\n  web:\n    imagee: nginx\n    image: nginx\n",
     ['stack.yml:3:5: services.web.imagee: unknown key "imagee"; did you mean "image"?']),
    ("services:\n  web:\n    image: nginx\n    deploy:\n      replica: 2\n",
     ['stack.yml:5:7: services.web.deploy.replica: unknown key "replica"; did you mean "replicas"?']),
    ("services:\n  web:\n    image: nginx\n    ports: [{target: 80, publish: 8080}]\n",
     ['stack.yml:4:26: services.web.ports[0].publish: unknown key "publish"; did you mean "published"?']),
    ("services:\n  web:\n    image: nginx\n    healthcheck: {test: [CMD, x], foo: 1}\n",
     ['stack.yml:4:35: services.web.healthcheck.foo: unknown key "foo" (known: test, interval, timeout, '
      'start_period, start_interval, retries, disable)']),
    ("service:\n  web:\n    image: nginx\n",
     ['stack.yml:1:1: service: unknown key "service"; did you mean "services"?',
      "stack.yml:1:1: services: a stack needs at least one service"]),
    # wrong types name the type expected
    ("services:\n  web:\n    image: nginx\n    deploy:\n      replicas: two\n",
     ['stack.yml:5:7: services.web.deploy.replicas: must be an integer (got "two")']),
    ("services:\n  web:\n    image: nginx\n    read_only: maybe\n",
     ['stack.yml:4:5: services.web.read_only: must be true or false (got "maybe")']),
    ("services:\n  web:\n    image: nginx\n    cap_add: NET_ADMIN\n",
     ['stack.yml:4:5: services.web.cap_add: must be a list (got "NET_ADMIN")']),
    ("services:\n  web:\n    image: nginx\n    deploy: [replicas]\n",
     ['stack.yml:4:5: services.web.deploy: must be an object (mapping) (got ["replicas"])']),
    ("services:\n  web:\n    image: nginx\n    stop_grace_period: soon\n",
     ['stack.yml:4:5: services.web.stop_grace_period: must be a duration such as 10s, 1m30s or 500ms '
      '(got "soon")']),
    ("services:\n  web:\n    image: nginx\n    deploy: {resources: {limits: {memory: lots}}}\n",
     ['stack.yml:4:35: services.web.deploy.resources.limits.memory: must be a size such as 512m, 64k or 1g '
      '(got "lots")']),
    ("services:\n  web:\n    image: nginx\n    deploy: {mode: daemon}\n",
     ["stack.yml:4:14: services.web.deploy.mode: must be one of 'replicated', 'global', 'replicated-job' "
      'or \'global-job\' (got "daemon")']),
    ("services:\n  web:\n    image: nginx\n    deploy: {mode: global, replicas: 2}\n",
     ["stack.yml:4:5: services.web.deploy: replicas cannot be set in global mode"]),
    ("services:\n  web:\n    user: nobody\n",
     ["stack.yml:2:3: services.web.image: is required"]),
    # refused fields
    ("services:\n  web:\n    image: nginx\n    mem_limit: 512m\n    volumes_from: [other]\n",
     ["stack.yml:4:5: services.web.mem_limit: not supported in a stack; use deploy.resources.limits.memory",
      "stack.yml:5:5: services.web.volumes_from: not supported in a stack; share a named volume instead"]),
    # depends_on
    ("services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n"
     "  c:\n    image: x\n    depends_on: [a]\n",
     ["stack.yml:4:18: services.a.depends_on.b: depends_on forms a cycle: a -> b -> c -> a"]),
    ("services:\n  a:\n    image: x\n    depends_on:\n      a: {condition: service_started}\n",
     ["stack.yml:5:7: services.a.depends_on.a: a service cannot depend on itself"]),
    ("services:\n  a:\n    image: x\n    depends_on: [dbb]\n  db:\n    image: x\n",
     ['stack.yml:4:18: services.a.depends_on.dbb: service dbb is not defined (did you mean "db"?)']),
    ("services:\n  a:\n    image: x\n    depends_on: {db: {condition: service_ready}}\n  db:\n    image: x\n",
     ["stack.yml:4:23: services.a.depends_on.db.condition: must be one of 'service_started', 'service_healthy' "
      'or \'service_completed_successfully\' (got "service_ready")']),
    # secrets and configs
    ("services:\n  web:\n    image: x\n    secrets: [db_pw]\nsecrets:\n  db_pw:\n    file: ./secrets/db.txt\n",
     ["stack.yml:7:5: secrets.db_pw.file: file /srv/app/secrets/db.txt does not exist"]),
    ("services:\n  web:\n    image: x\n    secrets: [db_pw]\n",
     ["stack.yml:4:15: services.web.secrets[0]: secret db_pw is not defined under the top-level secrets"]),
    ("services:\n  web:\n    image: x\nconfigs:\n  c: {file: a.conf, content: x}\n",
     ["stack.yml:5:3: configs.c: a config needs exactly one of file, environment, content or external "
      "(got file, content)",
      "stack.yml:5:7: configs.c.file: file /srv/app/a.conf does not exist"]),
    # ports
    ("services:\n  web:\n    image: x\n    ports:\n      - 127.0.0.1:8080:80\n",
     ['stack.yml:5:9: services.web.ports[0]: host address 127.0.0.1 is not supported: orch publishes a port on '
      'all of a node\'s addresses (write "8080:80")']),
    ("services:\n  web:\n    image: x\n    ports: ['[::1]:53:53/udp']\n",
     ['stack.yml:4:13: services.web.ports[0]: host address [::1] is not supported: orch publishes a port on '
      'all of a node\'s addresses (write "53:53/udp")']),
    ("services:\n  web:\n    image: x\n    ports: [{target: 80, published: 80, host_ip: 0.0.0.0}]\n",
     ["stack.yml:4:41: services.web.ports[0].host_ip: publishing on one host address is not supported: orch "
      "publishes a port on all of a node's addresses (remove host_ip)"]),
    ("services:\n  web:\n    image: x\n    ports: ['http:80', '70000', '80/sctp', '1-3:1-2']\n",
     ["stack.yml:4:13: services.web.ports[0]: published port 'http' is not a number or range such as 8080 or "
      "8000-8010 (in 'http:80')",
      "stack.yml:4:24: services.web.ports[1]: container port '70000' must be from 1 to 65535, a range low-high "
      "(in '70000')",
      "stack.yml:4:33: services.web.ports[2]: protocol 'sctp' is not supported (tcp or udp) in '80/sctp'",
      "stack.yml:4:44: services.web.ports[3]: the published and container port ranges of '1-3:1-2' must have "
      "the same length"]),
    # volumes
    ("services:\n  web:\n    image: x\n    volumes: ['data:/data:zz', 'gone:/g', 'rel:dir']\n",
     ["stack.yml:4:15: services.web.volumes[0]: 'data:/data:zz': unknown volume option 'zz' (known: ro, rw, "
      "nocopy)",
      "stack.yml:4:32: services.web.volumes[1]: volume gone is not defined under the top-level volumes",
      "stack.yml:4:43: services.web.volumes[2].target: must be an absolute path (got \"dir\")",
      "stack.yml:4:43: services.web.volumes[2]: volume rel is not defined under the top-level volumes"]),
    ("services:\n  web:\n    image: x\n    volumes: [{type: bind, target: /x}, {type: tmpfs, source: a, target: /t}]\n",
     ["stack.yml:4:15: services.web.volumes[0]: a bind mount needs a source (a host path)",
      "stack.yml:4:41: services.web.volumes[1]: a tmpfs mount has no source"]),
    # networks
    ("services:\n  web:\n    image: x\n    networks: [frontend]\nnetworks:\n  front:\n    driver: bridge\n",
     ["stack.yml:4:16: services.web.networks.frontend: network frontend is not defined under the top-level "
      'networks (did you mean "front"?)',
      "stack.yml:7:5: networks.front.driver: unknown network driver 'bridge': only 'overlay' is supported"]),
    ("services:\n  web:\n    image: x\nnetworks:\n  n:\n    ipam: {config: [{subnet: 10.0.0.0/24, gateway: "
     "10.1.0.1}]}\n",
     ["stack.yml:6:21: networks.n.ipam.config[0]: gateway 10.1.0.1 is outside subnet 10.0.0.0/24"]),
    ("services:\n  web:\n    image: x\nnetworks:\n  n:\n    external: true\n    attachable: true\n",
     ["stack.yml:5:3: networks.n: an external network is not created by the stack: attachable cannot be set "
      "with it"]),
    ("services:\n  web:\n    image: x\nvolumes:\n  v: {driver: rexray}\n",
     ["stack.yml:5:7: volumes.v.driver: unknown volume driver 'rexray': only 'local' is supported"]),
    # names
    ("services:\n  'my web':\n    image: x\n",
     ["stack.yml:2:3: services.my web: must match [a-zA-Z0-9][a-zA-Z0-9_.-]*: letters, digits, '_', '.', '-', "
      'starting with a letter or digit (got "my web")']),
    # YAML itself
    ("services:\n  web:\n    image: x\n    image: y\n",
     ["stack.yml:4:5: services.web.image: the key is given twice (first at line 3)"]),
    ("services:\n  web:\n    image: x\n   bad: indent\n",
     ["stack.yml:4:4: invalid YAML: while parsing a block mapping expected <block end>, but found "
      "'<block mapping start>'"]),
    ("- just\n- a list\n", ["stack.yml:1:1: a compose file must be a mapping (services:, networks:, ...)",
                            "stack.yml:1:1: services: a stack needs at least one service"]),
])
def test_bad_file(text: str, expected: list[str]) -> None:
    assert errors(text) == expected


def test_every_problem_of_a_file_is_reported_in_file_order() -> None:
    assert errors("""\
        services:
          web:
            image: nginx:${TAG:?set TAG}
            extends: base
            ports: ["127.0.0.1:80:80"]
            deploy:
              replicas: two
            depends_on: [api]
          api:
            image: api
            depends_on: [web]
            secrets: [key]
        secrets:
          key:
            file: key.txt
        """) == [
        "stack.yml:3:12: services.web.image: required variable TAG is missing a value: set TAG",
        "stack.yml:4:5: services.web.extends: not supported in a stack; merge several files with -c instead",
        "stack.yml:5:13: services.web.ports[0]: host address 127.0.0.1 is not supported: orch publishes a port on "
        'all of a node\'s addresses (write "80:80")',
        'stack.yml:7:7: services.web.deploy.replicas: must be an integer (got "two")',
        "stack.yml:8:18: services.web.depends_on.api: depends_on forms a cycle: web -> api -> web",
        "stack.yml:15:5: secrets.key.file: file /srv/app/key.txt does not exist",
    ]


@pytest.mark.parametrize("field", sorted(IGNORED))
def test_ignored_fields_warn_once_per_place(field: str) -> None:
    text = f"services:\n  a:\n    image: x\n    {field}: whatever\n  b:\n    image: x\n    {field}: again\n"
    assert warnings(text) == [f"stack.yml:4:5: services.a.{field}: ignored: {IGNORED[field]}",
                              f"stack.yml:7:5: services.b.{field}: ignored: {IGNORED[field]}"]


@pytest.mark.parametrize("field", sorted(DEPRECATED))
def test_deprecated_fields_warn(field: str) -> None:
    assert warnings(f"services:\n  a:\n    image: x\n    {field}: [80]\n") == [
        f"stack.yml:4:5: services.a.{field}: {DEPRECATED[field]}"]


@pytest.mark.parametrize("field", sorted(UNSUPPORTED))
def test_fields_orch_does_not_do_yet_warn(field: str) -> None:
    assert warnings(f"services:\n  a:\n    image: x\n    {field}: {{}}\n") == [
        f"stack.yml:4:5: services.a.{field}: ignored: {UNSUPPORTED[field]}"]


@pytest.mark.parametrize("field", sorted(REJECTED))
def test_rejected_fields_are_errors(field: str) -> None:
    assert errors(f"services:\n  a:\n    image: x\n    {field}: 1\n") == [
        f"stack.yml:4:5: services.a.{field}: {REJECTED[field]}"]


def test_fields_orch_supports_beyond_swarm_give_no_warning() -> None:
    assert warnings("services:\n  a:\n    image: x\n    privileged: true\n    devices: [/dev/fuse]\n"
                    "    security_opt: [seccomp=unconfined]\n    depends_on: [b]\n  b:\n    image: x\n") == []


def test_ignore_lists_match_the_issue() -> None:
    assert set(IGNORED) == {"build", "cgroupns_mode", "cgroup_parent", "domainname", "external_links", "ipc",
                            "links", "mac_address", "network_mode", "pid", "restart", "shm_size", "userns_mode"}
    assert set(DEPRECATED) == {"container_name", "expose"}
    assert set(REJECTED) == {"extends", "volume_driver", "volumes_from", "cpu_quota", "cpu_shares", "cpuset",
                             "mem_limit", "memswap_limit"}
