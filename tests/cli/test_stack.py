"""`orch stack` from the CLI: the plan as text, errors of the files with
their places before anything is sent, `stack config` offline, and against
a real manager process: deploy, diff's exit codes (0 nothing, 1 changes,
2 error), --dry-run, --check-version, ls/services/ps and rm."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.stack import plan_lines
from tests.harness.managers import ManagerCluster

PIN = "@sha256:" + "a" * 64


def test_a_plan_as_text() -> None:
    plan = {"stack": "app", "version": 3, "changed": True, "warnings": [], "entries": [
        {"kind": "network", "name": "app_back", "action": "unchanged", "changes": []},
        {"kind": "config", "name": "app_conf", "object": "app_conf-b49f425a", "action": "update",
         "changes": [{"path": "data (digest)", "old": "2cf24dba", "new": "b49f425a"}],
         "note": "new content: new version app_conf-b49f425a"},
        {"kind": "service", "name": "app_web", "action": "update", "tasks_replaced": 2, "tasks_started": 1,
         "new_digest": "sha256:77", "changes": [
             {"path": "replicas", "old": 2, "new": 3},
             {"path": "task.container.env", "old": ["A=1"], "new": None}]},
        {"kind": "service", "name": "app_db", "action": "create", "tasks_started": 1},
        {"kind": "service", "name": "app_old", "action": "delete", "tasks_stopped": 1, "note": "no longer in the file: removed"},
    ]}
    assert plan_lines(plan) == [
        "= network app_back: unchanged",
        "~ config app_conf (app_conf-b49f425a): update [new content: new version app_conf-b49f425a]",
        '    data (digest): "2cf24dba" -> "b49f425a"',
        "~ service app_web: update, 2 tasks replaced, 1 started",
        "    image tag now resolves to sha256:77",
        "    replicas: 2 -> 3",
        '    task.container.env: ["A=1"] -> (none)',
        "+ service app_db: create, 1 started",
        "- service app_old: delete, 1 stopped [no longer in the file: removed]",
        "1 to create, 2 to update, 1 to delete, 1 unchanged.",
    ]
    assert plan_lines(plan, unchanged=False)[0].startswith("~ config")


def orch(*args: str, host: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    pre = ["--host", host] if host else ["--host", "127.0.0.1:1"]
    return subprocess.run([sys.executable, "-m", "cli.main", *pre, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def write(d: Path, name: str, text: str) -> str:
    p = d / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def test_file_errors_and_warnings_are_told_with_their_places_before_anything_is_sent(tmp_path: Path) -> None:
    f = write(tmp_path, "stack.yml", """\
        services:
          web:
            image: busybox
            privileged: true
            links: [db]
            deploy: {replicas: two}
        """)
    # Nothing listens on the --host given: these fail before any request.
    for cmd, code in ((["stack", "config", "-c", f], 1), (["stack", "deploy", "-c", f, "app"], 1),
                      (["stack", "diff", "-c", f, "app"], 2), (["stack", "deploy", "--dry-run", "-c", f, "app"], 2)):
        r = orch(*cmd)
        assert r.returncode == code, (cmd, r.stderr)
        assert f"error: {f}:6:14: services.web.deploy.replicas: must be an integer (got \"two\")" in r.stderr, r.stderr
        assert "nothing was deployed" in r.stderr and "cannot reach" not in r.stderr
    ok = write(tmp_path, "ok.yml", """\
        services:
          web:
            image: busybox
            extra_hosts: ["db.local:10.0.0.5"]
            links: [db]
        """)
    r = orch("stack", "diff", "-c", ok, "app")
    assert r.returncode == 2 and "cannot reach the orch daemon" in r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: {ok}:5:5: services.web.links: ignored: not needed in a stack; services reach each other by name on their "
        "networks",
        f"warning: {ok}:4:5: services.web.extra_hosts: not applied: orch's services have no such setting yet; "
        "deployed without it",
    ], warnings


def test_stack_config_is_the_merged_interpolated_file(tmp_path: Path) -> None:
    base = write(tmp_path, "stack.yml", """\
        services:
          web:
            image: "busybox:${TAG:-1.36}"
            ports: ["8080:80"]
        """)
    over = write(tmp_path, "prod.yml", """\
        services:
          web:
            deploy: {replicas: 3}
        """)
    (tmp_path / ".env").write_text("TAG=1.37\n")
    r = orch("stack", "config", "-c", base, "-c", over)
    assert r.returncode == 0, r.stderr
    doc = yaml.safe_load(r.stdout)
    assert doc["services"]["web"] == {"image": "busybox:1.37", "deploy": {"replicas": 3}, "ports": [
        {"target": 80, "published": 8080, "protocol": "tcp", "mode": "ingress"}]}


# -- against a manager ----------------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[str]:
    with ManagerCluster(1) as cl:
        cl.leader(timeout=15)
        yield cl.nodes[0].addr


STACK = """\
    services:
      web:
        image: busybox{pin}
        command: [sleep, "1000"]
        configs: [app]
        environment: {{MODE: one}}
      api:
        image: busybox{pin}
        networks: [back]
        deploy: {{replicas: 2}}
    networks:
      back: {{}}
    configs:
      app: {{file: ./app.conf}}
    """


def test_deploy_diff_and_rm(manager: str, tmp_path: Path) -> None:
    f = write(tmp_path, "stack.yml", STACK.format(pin=PIN))
    (tmp_path / "app.conf").write_text("x=1\n")
    r = orch("stack", "diff", "-c", f, "app", host=manager)
    assert r.returncode == 1, r.stderr
    assert r.stdout.splitlines()[0] == ("stack app: version 0 (new); to apply exactly this plan: "
                                        "orch stack deploy --check-version 0 ...")
    assert "+ service app_api: create, 2 started" in r.stdout
    assert orch("stack", "ls", "--format", "json", host=manager).stdout.strip() == "[]"  # diff wrote nothing
    r = orch("stack", "deploy", "--detach", "-c", f, "app", host=manager)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "stack app: deployed version 1"
    r = orch("stack", "deploy", "--dry-run", "-c", f, "app", host=manager)
    assert r.returncode == 0 and "stack app: version 1: nothing to change" in r.stdout, r.stdout + r.stderr
    assert "5 unchanged." in r.stdout

    # A change: the exact diff, exit 1; --check-version with a stale version is refused.
    (tmp_path / "app.conf").write_text("x=2\n")
    f2 = write(tmp_path, "stack.yml", STACK.format(pin=PIN).replace("MODE: one", "MODE: two"))
    r = orch("stack", "diff", "--format", "json", "-c", f2, "app", host=manager)
    assert r.returncode == 1
    plan = json.loads(r.stdout)
    web = next(e for e in plan["entries"] if e["name"] == "app_web")
    conf = next(e for e in plan["entries"] if e["kind"] == "config")
    assert [(c["path"], c["old"], c["new"]) for c in web["changes"]] == [
        ("task.container.env[0]", "MODE=one", "MODE=two"),
        ("task.container.configs[0].config_name", f"app_app-{conf['changes'][0]['old']}", conf["object"])]
    r = orch("stack", "deploy", "--detach", "--check-version", "0", "-c", f2, "app", host=manager)
    assert r.returncode == 1 and "stack app is at version 1, not 0" in r.stderr
    r = orch("stack", "deploy", "--detach", "--check-version", "1", "-c", f2, "app", host=manager)
    assert r.returncode == 0, r.stderr
    assert "~ service app_web: update" in r.stdout and "= " not in r.stdout  # only what changed

    stacks = json.loads(orch("stack", "ls", "--format", "json", host=manager).stdout)
    assert [(s["spec"]["name"], s["version"], s["summary"]["services"]) for s in stacks] == [("app", 2, 2)]
    assert "app" in orch("stack", "ls", host=manager).stdout
    svcs = json.loads(orch("stack", "services", "--format", "json", "app", host=manager).stdout)
    assert sorted(s["spec"]["name"] for s in svcs) == ["app_api", "app_web"]
    tasks = json.loads(orch("stack", "ps", "--format", "json", "app", host=manager).stdout)
    assert {t["service_id"] for t in tasks} <= {s["id"] for s in svcs}
    r = orch("stack", "ps", "app", host=manager)
    assert r.returncode == 0 and "NAME" in r.stdout
    r = orch("stack", "services", "nope", host=manager)
    assert r.returncode == 1 and "no stack named nope" in r.stderr

    # A secret on a cluster without `orch init`: refused with the reason; an error is exit 2 for diff.
    s = write(tmp_path, "sec.yml", """\
        services:
          a: {image: x, secrets: [pw]}
        secrets:
          pw: {file: ./app.conf}
        """)
    r = orch("stack", "diff", "-c", s, "app", host=manager)
    assert r.returncode == 2 and "secrets need a cluster made with `orch init`" in r.stderr

    r = orch("stack", "rm", "app", host=manager)
    assert r.returncode == 0, r.stderr
    assert "removing service app_web" in r.stdout and "stack app removed" in r.stderr
    assert orch("stack", "ls", "--format", "json", host=manager).stdout.strip() == "[]"
    nets = json.loads(orch("network", "ls", "--format", "json", host=manager).stdout)
    assert nets == []
    r = orch("stack", "rm", "app", host=manager)
    assert r.returncode == 1 and "no stack named app" in r.stderr
