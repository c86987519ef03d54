"""A property of the stack planner, over random stacks and random
sequences of deploys: once a plan is applied, planning the same request
again finds nothing to change (plan(existing=apply(plan)) is empty); and
with --prune the stack owns exactly the services the request names."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.stacks import NAMESPACE_LABEL
from tests.manager.stackutil import PIN, Cluster, request

KEYS = ["a", "b", "c", "d"]


@st.composite
def stacks(draw: Any) -> tuple[dict[str, Any], dict[str, bytes], bool]:
    networks = {}
    for n in draw(st.lists(st.sampled_from(["n1", "n2"]), unique=True)):
        net: dict[str, Any] = {"driver": "overlay"}
        if draw(st.booleans()):
            net["attachable"] = True
        if draw(st.booleans()):
            net["labels"] = {"tier": draw(st.sampled_from(["front", "back"]))}
        subnet = draw(st.sampled_from([None, "10.90.0.0/24", "10.91.0.0/24"]))
        if subnet:
            net["ipam"] = {"config": [{"subnet": subnet}]}
        networks[n] = net
    secrets = draw(st.lists(st.sampled_from(["s1", "s2"]), unique=True))
    configs = draw(st.lists(st.sampled_from(["c1"]), unique=True))
    files = {f"{s}.txt": draw(st.sampled_from([b"one", b"two", b"three"])) for s in secrets}
    services = {}
    for i, key in enumerate(draw(st.lists(st.sampled_from(KEYS), min_size=1, unique=True))):
        svc: dict[str, Any] = {"image": draw(st.sampled_from(["x", "y"])) + PIN,
                               "deploy": {"replicas": draw(st.integers(0, 3))}}
        env = draw(st.dictionaries(st.sampled_from(["A", "B"]), st.sampled_from(["1", "2"])))
        if env:
            svc["environment"] = env
        nets = draw(st.lists(st.sampled_from(sorted(networks)), unique=True)) if networks else []
        if nets:
            svc["networks"] = nets
        if secrets:
            svc["secrets"] = draw(st.lists(st.sampled_from(secrets), unique=True))
        if configs and draw(st.booleans()):
            svc["configs"] = configs
        if draw(st.booleans()):
            svc["ports"] = [f"{8000 + KEYS.index(key)}:80"]
        if draw(st.booleans()):
            svc["deploy"]["update_config"] = {"parallelism": draw(st.integers(0, 2))}
        services[key] = svc
    doc: dict[str, Any] = {"services": services}
    if networks:
        doc["networks"] = networks
    if secrets:
        doc["secrets"] = {s: {"file": f"./{s}.txt"} for s in secrets}
    if configs:
        doc["configs"] = {"c1": {"content": draw(st.sampled_from(["x=1", "x=2"]))}}
    return doc, files, draw(st.booleans())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(stacks(), min_size=1, max_size=4))
def test_a_plan_applied_leaves_nothing_to_change(deploys: list[tuple[dict[str, Any], dict[str, bytes], bool]]) -> None:
    c = Cluster()
    for doc, files, prune in deploys:
        text = yaml.safe_dump(doc)
        req = request(text, files=files, prune=prune)
        c.deploy(req)
        again = c.plan(req)
        assert not again.changed, [(e.kind, e.name, e.action, e.changes, e.note) for e in again.entries
                                   if e.action != "unchanged"]
        assert again.version == c.get("stacks", "s").version
        if prune:
            owned = sorted(s.spec.name for s in c.view.find("services", "label", (NAMESPACE_LABEL, "s")))
            assert owned == sorted(f"s_{k}" for k in doc["services"])
            nets = sorted(n.spec.name for n in c.view.find("networks", "label", (NAMESPACE_LABEL, "s")))
            garbage = {g.name for g in c.get("stacks", "s").garbage}
            assert set(nets) - garbage == {r.name for r in req.networks}
