"""`orch stack` end to end on the multi-host fleet: a stack file written
here (a front end published on port 8080 through the routing mesh that
calls a back end by its short service name, the back end serving a
secret) is deployed and answers; `--dry-run` shows nothing to change, then
the exact diff of a changed secret (exit 1), which deploys as a new
secret version the back end rolls onto; `stack rm` leaves nothing:
services, networks, secrets, configs, and their containers and network
namespaces on every host."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.registry import RegistryEnv, SeededRegistry
from tests.harness.fleet import Fleet, fleet_fixture
from tests.harness.fleet_cluster import OrchFleet, services_cluster

pytestmark = [pytest.mark.root, pytest.mark.multihost]

fleet = fleet_fixture(("m1", "w1", "w2", "reg"), scope="module")

# The back end serves its secret; the front end answers GET /cgi-bin/back
# with what it gets from `back:8000` (by the short name, through its VIP).
# httpd is PID 1 and ignores SIGTERM: a short grace period keeps stops quick.
BACK = ("busybox mkdir -p /tmp/www && busybox cat /run/secrets/token > /tmp/www/index.html && "
        "exec busybox httpd -f -p 8000 -h /tmp/www")
CGI = textwrap.dedent("""\
    #!/bin/sh
    echo "Content-Type: text/plain"
    echo ""
    printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 back 8000 | busybox tail -n 1
    """)
FRONT = ("busybox mkdir -p /tmp/www/cgi-bin && printf '%s' \"$$CGI\" > /tmp/www/cgi-bin/back && "
         "busybox chmod 755 /tmp/www/cgi-bin/back && exec busybox httpd -f -p 8000 -h /tmp/www")

STACK = """\
services:
  front:
    image: {img}
    command: ["sh", "-c", {front}]
    environment:
      CGI: {cgi}
    ports: ["8080:8000"]
    stop_grace_period: 1s
    deploy: {{replicas: 2}}
  back:
    image: {img}
    command: ["sh", "-c", {back}]
    secrets: [token]
    stop_grace_period: 1s
    deploy:
      update_config: {{order: start-first, monitor: 1s}}
secrets:
  token: {{file: ./token.txt}}
"""


@pytest.fixture(scope="module")
def of(fleet: Fleet, registry_env: RegistryEnv, open_registry: SeededRegistry,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrchFleet, str]]:
    with services_cluster(fleet, registry_env.storage, tmp_path_factory.mktemp("fleet-reg")) as cluster:
        yield cluster


def http_get(o: OrchFleet, url: str) -> str:
    """One GET from the fleet's registry host (in the underlay, running no task)."""
    code = ("import sys, urllib.request\n"
            "try: print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode().strip())\n"
            "except Exception as e: print('FAIL', e)\n")
    return str(o.fleet["reg"].run([sys.executable, "-c", code, url], timeout=20).stdout.strip())


def wait_body(o: OrchFleet, url: str, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (got := http_get(o, url)) != want:
        assert time.monotonic() < deadline, f"GET {url}: {got!r}, not {want!r}"
        time.sleep(0.3)


def until(f: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_stack_deploy_change_and_remove(of: tuple[OrchFleet, str], tmp_path: Path) -> None:
    o, reg = of
    m1 = o.fleet["m1"]
    img = f"{reg}/library/busybox-multi:latest"
    stack_file = tmp_path / "stack.yml"
    stack_file.write_text(STACK.format(img=img, front=json.dumps(FRONT), back=json.dumps(BACK),
                                       cgi=json.dumps(CGI)))
    (tmp_path / "token.txt").write_text("token-one\n")
    f = str(stack_file)

    t0 = time.monotonic()
    r = o.orch(m1, "stack", "deploy", "--timeout", "60", "-c", f, "web", timeout=120, check=False)
    assert r.returncode == 0, (r.stdout + r.stderr + o.orch(m1, "stack", "ps", "-a", "web", check=False).stdout
                               + "".join(o.fleet[h].log_tail(20) for h in ("m1", "w1", "w2")))
    deploy_s = time.monotonic() - t0
    assert "stack web: deployed version 1" in r.stdout
    assert "web_front: 2/2 running: converged" in r.stderr and "web_back: 1/1 running: converged" in r.stderr

    # The front end on every node's 8080 (the routing mesh), calling the back end by name.
    for h in ("m1", "w1", "w2"):
        wait_body(o, f"http://{o.fleet[h].addr}:8080/cgi-bin/back", "token-one")

    # Nothing to change: exit 0.
    r = o.orch(m1, "stack", "deploy", "--dry-run", "-c", f, "web", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == "stack web: version 1: nothing to change"
    assert r.stdout.splitlines()[-1] == "0 to create, 0 to update, 0 to delete, 4 unchanged."

    # A new secret: the exact diff, exit 1; then applied with the version the plan showed.
    old = json.loads(o.orch(m1, "secret", "ls", "--format", "json").stdout)
    (old_secret,) = [s["spec"]["name"] for s in old]
    (tmp_path / "token.txt").write_text("token-two\n")
    r = o.orch(m1, "stack", "diff", "-c", f, "web", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    new_secret = lines[2].split("(")[1].split(")")[0]
    assert new_secret.startswith("web_token-") and new_secret != old_secret
    assert lines[:2] == [
        "stack web: version 1; to apply exactly this plan: orch stack deploy --check-version 1 ...",
        "= network web_default: unchanged"]
    assert lines[2] == (f"~ secret web_token ({new_secret}): update [new content: new version {new_secret}; the "
                        f"services using it are updated; old version {old_secret} removed once nothing uses it "
                        "(used by the rollback spec of web_back, 1 task(s) not yet stopped)]")
    assert lines[3].startswith('    data (digest): "') and lines[3].endswith(f'" -> "{new_secret[-8:]}"')
    assert lines[4:] == [
        "= service web_front: unchanged",
        "~ service web_back: update, 1 task replaced",
        f'    task.container.secrets[0].secret_name: "{old_secret}" -> "{new_secret}"',
        "0 to create, 2 to update, 0 to delete, 2 unchanged.",
    ]
    t1 = time.monotonic()
    o.orch(m1, "stack", "deploy", "--check-version", "1", "-c", f, "web", timeout=120)
    update_s = time.monotonic() - t1
    wait_body(o, f"http://{o.fleet['w1'].addr}:8080/cgi-bin/back", "token-two")
    r = o.orch(m1, "stack", "diff", "-c", f, "web", check=False)
    assert r.returncode == 0, r.stdout

    # What the stack made, to look for after `stack rm`.
    services = json.loads(o.orch(m1, "stack", "services", "--format", "json", "web").stdout)
    assert sorted(s["spec"]["name"] for s in services) == ["web_back", "web_front"]
    tasks = json.loads(o.orch(m1, "stack", "ps", "--all", "--format", "json", "web").stdout)
    nets = [n for n in json.loads(o.orch(m1, "network", "ls", "--format", "json").stdout)
            if n["spec"]["name"].startswith("web_")]
    assert [n["spec"]["name"] for n in nets] == ["web_default"]

    t2 = time.monotonic()
    r = o.orch(m1, "stack", "rm", "web", timeout=120)
    rm_s = time.monotonic() - t2
    assert "stack web removed" in r.stderr
    assert json.loads(o.orch(m1, "stack", "ls", "--format", "json").stdout) == []
    for kind in ("service", "secret", "config"):
        assert json.loads(o.orch(m1, kind, "ls", "--format", "json").stdout) == [], kind
    assert [n["spec"]["name"] for n in json.loads(o.orch(m1, "network", "ls", "--format", "json").stdout)] == [
        "ingress"]

    # On every host: no container of the stack's tasks, no namespace of its tasks or network.
    def leftovers() -> list[str]:
        out = []
        for h in (o.fleet["m1"], o.fleet["w1"], o.fleet["w2"]):
            for c in json.loads(o.orch(h, "container", "ls", "--all", "--format", "json").stdout):
                if c["name"].startswith("web_"):
                    out.append(f"{h.name}: container {c['name']}")
            names = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
            for t in tasks:
                if f"{h.name_prefix}task-{t['id']}" in names:
                    out.append(f"{h.name}: task namespace {t['id']}")
            for n in nets:
                if f"{h.name_prefix}ov-{n['id']}" in names:
                    out.append(f"{h.name}: network sandbox {n['spec']['name']}")
        return out

    until(lambda: not leftovers(), "the stack's containers and namespaces gone on every host", timeout=30)
    print(f"\nstack web: deploy (2 services, 3 tasks, converged) {deploy_s:.1f} s; secret change rolled "
          f"{update_s:.1f} s; rm (tasks gone) {rm_s:.1f} s")
