"""The stack planner on a real store: a deploy request and what exists ->
plan entries (create, update with field-level diffs, delete, unchanged)
and one transaction that applies them; secret versions, prune, refusals,
removal and the reaper's pass. No I/O: the store is fed transactions as
Raft would feed it."""

from __future__ import annotations

import pytest

from api.objects import (
    Network,
    NetworkSpec,
    Service,
    ServiceSpec,
    StackResourceKind,
    TaskSpec,
    ContainerSpec,
)
from api.stacks import IMAGE_LABEL, LOGICAL_LABEL, NAMESPACE_LABEL, PlanAction, ResolveImage
from manager.stacks.plan import (
    InvalidStack,
    MissingObject,
    StackConflict,
    images_to_resolve,
    plan_remove,
    reap,
)
from manager.store import Create
from tests.manager.stackutil import PIN, Cluster, changes, entries, request

APP = """
services:
  web:
    image: busybox{pin}
    command: [httpd]
    ports: ["8080:80"]
    secrets: [db_password]
    configs: [app]
    environment: {{MODE: one}}
  api:
    image: busybox{pin}
    networks: [back, default]
    secrets: [db_password]
    deploy: {{replicas: 2}}
networks:
  back: {{driver: overlay, ipam: {{config: [{{subnet: 10.99.0.0/24}}]}}}}
secrets:
  db_password: {{file: ./pw.txt}}
configs:
  app: {{content: hello}}
"""


def app(pin: str = PIN, **edits: str) -> str:
    text = APP.format(pin=pin)
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


FILES = {"pw.txt": b"s3cret"}


def test_first_deploy_makes_everything_in_one_transaction() -> None:
    c = Cluster()
    p = c.deploy(request(app(), files=FILES))
    assert entries(p) == [
        ("network", "s_back", "create"), ("network", "s_default", "create"),
        ("secret", "s_db_password", "create"), ("config", "s_app", "create"),
        ("service", "s_web", "create"), ("service", "s_api", "create")]
    assert p.version == 0 and p.changed
    assert [e.tasks_started for e in p.entries if e.kind == "service"] == [1, 2]
    # One transaction: every object, then the stack.
    assert c.index == 2  # the ingress network, then the deploy
    assert c.names("networks") == ["ingress", "s_back", "s_default"]
    (secret,) = c.view.list("secrets")
    assert secret.spec.name.startswith("s_db_password-") and len(secret.spec.name) == len("s_db_password-") + 8
    assert secret.spec.labels[LOGICAL_LABEL] == "s_db_password" and secret.spec.data != b"s3cret"  # sealed
    (config,) = c.view.list("configs")
    assert config.spec.name == "s_app-2cf24dba" and config.spec.data == b"hello"  # sha256("hello")[:8]
    # References by name became ids, of objects made in the same transaction.
    web, api = c.get("services", "s_web"), c.get("services", "s_api")
    back, default = c.get("networks", "s_back"), c.get("networks", "s_default")
    assert [(a.target, a.aliases) for a in api.spec.task.networks] == [(back.id, ("api",)), (default.id, ("api",))]
    assert [(a.target, a.aliases) for a in web.spec.task.networks] == [(default.id, ("web",))]
    assert [(r.secret_id, r.secret_name, r.target) for r in web.spec.task.container.secrets] == [
        (secret.id, secret.spec.name, "/run/secrets/db_password")]
    assert web.spec.task.container.configs[0].config_id == config.id
    assert web.spec.labels[NAMESPACE_LABEL] == "s" and web.spec.labels[IMAGE_LABEL] == "busybox" + PIN
    assert [(p.target_port, p.published_port) for p in web.spec.endpoint_spec.ports] == [(80, 8080)]
    st = c.get("stacks", "s")
    assert st.version == 1 and "httpd" in st.spec.compose
    assert sorted((r.kind.value, r.name) for r in st.resources) == sorted([
        ("network", "s_back"), ("network", "s_default"), ("secret", secret.spec.name),
        ("config", "s_app-2cf24dba"), ("service", "s_web"), ("service", "s_api")])
    # The same files again: nothing changes but the stack's version.
    again = c.deploy(request(app(), files=FILES))
    assert {e.action for e in again.entries} == {PlanAction.UNCHANGED} and not again.changed
    assert again.version == 1 and c.get("stacks", "s").version == 2
    assert [op.table for op in again.ops] == ["stacks"]


def test_an_update_shows_each_changed_field_and_the_tasks_it_replaces() -> None:
    c = Cluster()
    c.deploy(request(app(), files=FILES))
    c.run_tasks("s_web")
    c.run_tasks("s_api")
    req = request(app(**{"{MODE: one}": "{MODE: two, EXTRA: x}", "replicas: 2": "replicas: 3",
                         "command: [httpd]": "command: [httpd, -f]"}), files=FILES)
    p = c.plan(req)
    assert entries(p) == [
        ("network", "s_back", "unchanged"), ("network", "s_default", "unchanged"),
        ("secret", "s_db_password", "unchanged"), ("config", "s_app", "unchanged"),
        ("service", "s_web", "update"), ("service", "s_api", "update")]
    assert changes(p, "s_web") == [
        ("task.container.args", ["httpd"], ["httpd", "-f"]),
        ("task.container.env", ["MODE=one"], ["EXTRA=x", "MODE=two"])]
    web = next(e for e in p.entries if e.name == "s_web")
    assert (web.tasks_replaced, web.tasks_started, web.tasks_stopped) == (1, 0, 0)
    assert changes(p, "s_api") == [("replicas", 2, 3)]
    api = next(e for e in p.entries if e.name == "s_api")
    assert (api.tasks_replaced, api.tasks_started, api.tasks_stopped) == (0, 1, 0)
    # Planning wrote nothing; applying rolls web only (a new spec version).
    before = c.index
    c.apply(p.ops)
    assert c.index == before + 1
    web_svc, api_svc = c.get("services", "s_web"), c.get("services", "s_api")
    assert web_svc.spec_version == 2 and web_svc.previous_spec is not None
    assert web_svc.update_status.state == "updating"
    assert api_svc.spec_version == 1 and api_svc.spec.replicas == 3


def test_a_moved_tag_shows_its_new_digest_and_resolve_modes() -> None:
    c = Cluster()
    req = request(app(pin=""), files=FILES)
    one, two = "docker.io/library/busybox:latest@sha256:" + "1" * 64, "docker.io/library/busybox:latest@sha256:" + "2" * 64
    assert images_to_resolve(req, "s", c.view) == {"busybox"}
    c.deploy(req, images={"busybox": one})
    assert c.get("services", "s_web").spec.task.container.image == one
    # changed: only images written differently; never: none; always: all.
    assert images_to_resolve(request(app(pin=""), files=FILES, resolve_image="changed"), "s", c.view) == set()
    assert images_to_resolve(request(app(pin=":1.36"), files=FILES, resolve_image="changed"), "s", c.view) == {
        "busybox:1.36"}
    assert images_to_resolve(request(app(pin=""), files=FILES, resolve_image="never"), "s", c.view) == set()
    p = c.plan(req, images={"busybox": two})
    web = next(e for e in p.entries if e.name == "s_web")
    assert web.action == PlanAction.UPDATE and web.new_digest == "sha256:" + "2" * 64
    assert changes(p, "s_web") == [("task.container.image", one, two)]
    assert web.tasks_replaced == 0  # no tasks run yet
    # Not resolved (never, or the registry did not answer): the digest it runs stays.
    p = c.plan(request(app(pin=""), files=FILES, resolve_image=ResolveImage.NEVER))
    assert not p.changed


def test_changed_secret_content_makes_a_new_version_and_switches_the_services() -> None:
    c = Cluster()
    c.deploy(request(app(), files=FILES))
    v1 = c.get("services", "s_web").spec.task.container.secrets[0]
    c.run_tasks("s_web")
    c.run_tasks("s_api")
    p = c.deploy(request(app(), files={"pw.txt": b"new"}))
    sec = next(e for e in p.entries if e.kind == "secret")
    assert sec.action == PlanAction.UPDATE and sec.object != v1.secret_name
    assert [ch.path for ch in sec.changes] == ["data (digest)"]
    assert f"old version {v1.secret_name} removed once nothing uses it" in sec.note
    for name in ("s_web", "s_api"):
        s = c.get("services", name)
        (ref,) = s.spec.task.container.secrets
        assert ref.secret_name == sec.object and ref.secret_id == sec.id and ref.target == "/run/secrets/db_password"
        assert s.spec_version == 2  # they roll to it
        assert changes(p, name)[-1] == ("task.container.secrets[0].secret_name", v1.secret_name, sec.object)
    # The old version stays while a task mounts it or a rollback would return to it.
    assert c.names("secrets") == sorted([v1.secret_name, sec.object])
    assert [g.name for g in c.get("stacks", "s").garbage] == [v1.secret_name]
    c.stop_tasks()
    assert reap(c.view) == []  # the services' rollback specs still use it
    # A third content: the first version is used by nothing now and goes in the same transaction.
    p3 = c.deploy(request(app(), files={"pw.txt": b"newer"}))
    sec3 = next(e for e in p3.entries if e.kind == "secret")
    assert f"old version {v1.secret_name} removed" in sec3.note
    assert v1.secret_name not in c.names("secrets") and len(c.names("secrets")) == 2
    assert [g.name for g in c.get("stacks", "s").garbage] == [sec.object]
    # Back to an earlier content: its version (still there) is used again, no new one.
    p4 = c.deploy(request(app(), files={"pw.txt": b"new"}))
    assert next(e for e in p4.entries if e.kind == "secret").object == sec.object
    assert [g.name for g in c.get("stacks", "s").garbage] == [sec3.object]  # web's and api's rollback spec


def test_prune_removes_what_the_file_no_longer_names() -> None:
    c = Cluster()
    c.deploy(request(app(), files=FILES))
    c.run_tasks("s_api")
    api_id = c.get("services", "s_api").id
    small = """
    services:
      web:
        image: busybox{pin}
        command: [httpd]
        ports: ["8080:80"]
        configs: [app]
        environment: {{MODE: one}}
    configs:
      app: {{content: hello}}
    """.format(pin=PIN)
    # Without --prune: kept, listed as unchanged.
    p = c.plan(request(small))
    kept = {e.name: e for e in p.entries if e.note.startswith("no longer in the file: kept")}
    assert set(kept) == {"s_back", "s_db_password", "s_api"} and all(e.action == "unchanged" for e in kept.values())
    web = next(e for e in p.entries if e.name == "s_web")
    assert changes(p, "s_web") == [("task.container.secrets", [
        {"gid": "0", "mode": 292, "secret_name": c.get("services", "s_web").spec.task.container.secrets[0].secret_name,
         "target": "/run/secrets/db_password", "uid": "0"}], [])] and web.action == "update"
    # With --prune: api goes now (its 2 tasks stop), back waits for them, the secret goes
    # once web's rollback spec no longer needs it.
    p = c.deploy(request(small, prune=True))
    gone = {e.name: e for e in p.entries if e.action == PlanAction.DELETE}
    assert set(gone) == {"s_back", "s_db_password", "s_api"}
    assert gone["s_api"].tasks_stopped == 2
    assert "removed once nothing uses it (used by 2 task(s) not yet stopped)" in gone["s_back"].note
    assert c.get("services", "s_api") is None and c.get("networks", "s_back") is not None
    assert {g.name for g in c.get("stacks", "s").garbage} >= {"s_back"}
    # The same again: nothing new to do (what waits is the reaper's).
    again = c.plan(request(small, prune=True))
    assert not again.changed, [(e.name, e.action, e.note) for e in again.entries]
    c.stop_tasks(api_id)
    ops = reap(c.view)
    assert [(op.table, getattr(op, "id", None)) for op in ops] == [("networks", c.get("networks", "s_back").id),
                                                                   ("stacks", None)]
    c.apply(ops)
    assert [g.kind for g in c.get("stacks", "s").garbage] == ["secret"]  # web's rollback spec still has it
    assert c.get("networks", "s_back") is None


def test_refusals_name_the_object_and_write_nothing() -> None:
    c = Cluster()
    # External objects must exist.
    ext = """
    services:
      a: {image: x, networks: [outside], secrets: [token]}
    networks:
      outside: {external: true}
    secrets:
      token: {external: true}
    """
    with pytest.raises(MissingObject, match=r"networks.outside: external network outside does not exist"):
        c.plan(request(ext))
    c.apply([Create("networks", Network(id="n-out", spec=NetworkSpec(name="outside")))])
    with pytest.raises(MissingObject, match=r"secrets.token: external secret token does not exist"):
        c.plan(request(ext))
    # A name taken by an object of no stack.
    c.apply([Create("services", Service(id="other", spec=ServiceSpec(
        name="s_web", task=TaskSpec(container=ContainerSpec(image="x")))))])
    with pytest.raises(StackConflict, match=r"services.web: a service named s_web exists and is not part of a stack"):
        c.plan(request(app(), files=FILES))
    c2 = Cluster()
    c2.deploy(request(app(), files=FILES))
    # A published port held elsewhere, or twice in the stack.
    c2.apply([Create("services", Service(id="o2", spec=ServiceSpec(
        name="other", task=TaskSpec(container=ContainerSpec(image="x")),
        endpoint_spec={"ports": [{"target_port": 1, "published_port": 9090}]})))])
    with pytest.raises(StackConflict, match=r'services.api: ports\[0\]: published port 9090/tcp is already used by '
                                            r'service "other"'):
        c2.plan(request(app(**{"deploy: {replicas: 2}": "deploy: {replicas: 2}\n    ports: [\"9090:80\"]"}), files=FILES))
    with pytest.raises(StackConflict, match=r"services.api: ports\[0\]: published port 8080/tcp is already used by "
                                            r"service web of this stack"):
        c2.plan(request(app(**{"deploy: {replicas: 2}": "deploy: {replicas: 2}\n    ports: [\"8080:81\"]"}), files=FILES))
    # The stack's version, as a plan showed it.
    with pytest.raises(StackConflict, match=r"stack s is at version 1, not 0"):
        c2.plan(request(app(), files=FILES, check_version=0))
    assert not c2.plan(request(app(), files=FILES, check_version=1)).changed
    # A subnet change of a network in use.
    c2.run_tasks("s_api")
    with pytest.raises(StackConflict, match=r"networks.back: ipam\[0\].subnet cannot change \(10.99.0.0/24 -> "
                                            r"10.98.0.0/24\) while network s_back is in use \(by 2 task\(s\) with an address"):
        c2.plan(request(app(**{"10.99.0.0/24": "10.98.0.0/24"}), files=FILES))
    # A bad constraint in the last service.
    bad = app(**{"replicas: 2}": "replicas: 2, placement: {constraints: [\"node.role=manager\"]}}"})
    with pytest.raises(InvalidStack, match=r"services.api: task.placement.constraints\[0\]"):
        c2.plan(request(bad, files=FILES))


def test_a_network_nobody_uses_is_replaced_and_labels_change_in_place() -> None:
    c = Cluster()
    text = """
    services:
      a: {image: x, networks: [back]}
    networks:
      back: {driver: overlay, attachable: false, ipam: {config: [{subnet: 10.99.0.0/24}]}}
    """
    c.deploy(request(text))
    old = c.get("networks", "s_back")
    p = c.deploy(request(text.replace("attachable: false", "attachable: true, labels: {tier: back}")))
    assert changes(p, "s_back") == [("labels.tier", None, "back"), ("attachable", False, True)]
    assert c.get("networks", "s_back").id == old.id
    p = c.deploy(request(text.replace("10.99.0.0/24", "10.98.0.0/24")))
    new = c.get("networks", "s_back")
    assert new.id != old.id and new.spec.ipam[0].subnet == "10.98.0.0/24"
    assert next(e for e in p.entries if e.name == "s_back").note.startswith("replaced")
    assert c.get("services", "s_a").spec.task.networks[0].target == new.id


def test_remove_waits_for_tasks_and_the_reaper_finishes() -> None:
    c = Cluster()
    c.deploy(request(app(), files=FILES))
    c.run_tasks("s_api")
    p = plan_remove("s", c.view)
    c.apply(p.ops)
    assert c.names("services") == []
    assert c.names("configs") == []  # nothing used it
    st = c.get("stacks", "s")
    assert st.removing and {g.kind for g in st.garbage} == {StackResourceKind.NETWORK, StackResourceKind.SECRET}
    assert reap(c.view) == []  # api's tasks still run
    c.stop_tasks()
    c.apply(reap(c.view))
    assert c.get("stacks", "s") is None
    assert c.names("networks") == ["ingress"] and c.names("secrets") == []
    with pytest.raises(MissingObject, match="no stack named s"):
        plan_remove("s", c.view)


def test_what_a_service_outside_the_stack_uses_is_neither_pruned_nor_removed() -> None:
    c = Cluster()
    c.deploy(request(app(), files=FILES))
    back = c.get("networks", "s_back")
    c.apply([Create("services", Service(id="o1", spec=ServiceSpec(
        name="other", task=TaskSpec(container=ContainerSpec(image="x"), networks=(back.id,)))))])
    only_web = app().split("  api:")[0] + app().split("deploy: {replicas: 2}\n")[1].replace(
        "networks:\n  back: {driver: overlay, ipam: {config: [{subnet: 10.99.0.0/24}]}}\n", "")
    index = c.index
    with pytest.raises(StackConflict, match=r"networks: network s_back is no longer in the file but service\(s\) "
                                            r"other outside stack s use it"):
        c.plan(request(only_web, files=FILES, prune=True))
    kept = next(e for e in c.plan(request(only_web, files=FILES)).entries if e.name == "s_back")
    assert kept.action == PlanAction.UNCHANGED and "kept (deploy with --prune to remove it)" in kept.note
    with pytest.raises(StackConflict, match=r"network s_back of stack s is used by service\(s\) other outside the "
                                            r"stack"):
        plan_remove("s", c.view)
    assert c.index == index
