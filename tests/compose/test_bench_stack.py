"""bench/stack_deploy.yml, the stack `make bench-stack` deploys on orch and on
Docker Swarm: what orch makes of it is what the benchmark says it measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.compose import ComposeError, load_paths, to_specs
from api.objects import EndpointMode

FILE = Path(__file__).resolve().parents[2] / "bench" / "stack_deploy.yml"


def test_ten_single_replica_services_on_one_network_one_host_mode_port() -> None:
    loaded = load_paths([str(FILE)], environ={"REGISTRY": "10.0.0.1:5000"})
    specs = to_specs(loaded.project, "bench", environment=loaded.environment, places=loaded.places)
    assert len(specs.services) == 10
    assert [n.name for n in specs.networks] == ["bench_net"]
    (net,) = specs.networks
    assert net.spec is not None and [c.subnet for c in net.spec.ipam] == ["10.95.0.0/24"]
    for s in specs.services:
        assert s.spec.replicas == 1, s.key
        assert s.spec.endpoint_spec.mode == EndpointMode.DNSRR, s.key  # no IPVS for Swarm's VIPs here
        assert s.spec.task.container.image == "10.0.0.1:5000/bench/httpd:latest"
        assert s.spec.task.container.stop_signal == "KILL"
        assert [a.target for a in s.spec.task.networks] == ["bench_net"]
    published = {s.key: [(p.published, p.target, p.mode) for p in s.ports] for s in specs.services if s.ports}
    assert published == {"web": [(8082, 8000, "host")]}


def test_the_registry_must_be_given() -> None:
    with pytest.raises(ComposeError, match="REGISTRY"):
        load_paths([str(FILE)], environ={})
