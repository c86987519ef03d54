"""Published ports in the object model: validation with field paths, which
allocated port serves which spec port, what a service claims, and the
ingress network's rules."""

from __future__ import annotations

import pytest

from api import codec
from api.errors import ValidationError
from api.objects import (
    DYNAMIC_PORT_MAX,
    DYNAMIC_PORT_MIN,
    INGRESS_ATTACHMENT,
    ContainerSpec,
    Endpoint,
    EndpointSpec,
    NetworkSpec,
    PortConfig,
    PortProtocol,
    PublishMode,
    Service,
    ServiceSpec,
    Task,
    TaskSpec,
    held_ports,
    port_claims,
    port_conflict,
    trim_endpoint,
)


def errors(cls: type, data: dict) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as ei:
        codec.from_json(cls, data)
    return ei.value.errors


def port(target: int, published: int = 0, proto: str = "tcp", mode: str = "ingress", name: str = "") -> PortConfig:
    return PortConfig(target_port=target, published_port=published, protocol=PortProtocol(proto),
                      publish_mode=PublishMode(mode), name=name)


def svc(id: str, *ports: PortConfig, allocated: tuple[PortConfig, ...] = ()) -> Service:
    return Service(id=id, spec=ServiceSpec(name=id, task=TaskSpec(container=ContainerSpec(image="x")),
                                           endpoint_spec=EndpointSpec(ports=ports)),
                   endpoint=Endpoint(ports=allocated))


def test_port_defaults_and_json_form() -> None:
    p = codec.from_json(PortConfig, {"target_port": 80})
    assert (p.protocol, p.published_port, p.publish_mode, p.name) == ("tcp", 0, "ingress", "")
    assert p.label == "0/tcp"
    assert codec.from_json(PortConfig, {"target_port": 53, "published_port": 5353, "protocol": "udp",
                                        "publish_mode": "host"}).label == "5353/udp"
    assert (DYNAMIC_PORT_MIN, DYNAMIC_PORT_MAX) == (30000, 32767)


@pytest.mark.parametrize("data,path", [
    ({"target_port": 0}, "target_port"),
    ({"target_port": 65536}, "target_port"),
    ({"target_port": 80, "published_port": -1}, "published_port"),
    ({"target_port": 80, "published_port": 70000}, "published_port"),
    ({"target_port": 80, "protocol": "sctp"}, "protocol"),
    ({"target_port": 80, "publish_mode": "mesh"}, "publish_mode"),
    ({"published_port": 80}, "target_port"),
])
def test_bad_ports_name_the_field(data: dict, path: str) -> None:
    assert [p for p, _ in errors(PortConfig, data)] == [path]


def test_a_published_port_and_protocol_may_be_given_once() -> None:
    [(path, msg)] = errors(ServiceSpec, {
        "name": "web", "task": {"container": {"image": "x"}},
        "endpoint_spec": {"ports": [{"target_port": 80, "published_port": 8080},
                                    {"target_port": 81, "published_port": 8080, "publish_mode": "host"}]}})
    assert path == "endpoint_spec.ports"
    assert "ports[1]: published port 8080/tcp is given twice (also ports[0])" in msg
    # The same number over another protocol, and dynamic ports, may repeat.
    ok = EndpointSpec(ports=[port(80, 8080), port(80, 8080, "udp"), port(81), port(81)])
    assert len(ok.ports) == 4


def test_any_published_port_puts_the_tasks_on_ingress() -> None:
    assert EndpointSpec(ports=[port(80, 8080), port(81, 8081, mode="host")]).needs_ingress
    # Host mode too: the node learns its tasks' host ports from their ingress entries.
    assert EndpointSpec(ports=[port(81, 8081, mode="host")]).needs_ingress
    assert not EndpointSpec().needs_ingress


def test_an_ingress_network_is_never_attachable() -> None:
    assert NetworkSpec(name="ingress", ingress=True).ingress
    [(path, msg)] = errors(NetworkSpec, {"name": "mesh", "ingress": True, "attachable": True})
    assert "cannot be attachable" in msg and path == "ingress"


def test_a_task_accepts_the_ingress_attachment() -> None:
    t = Task(id="t1", node_id="n1", attachment=INGRESS_ATTACHMENT, spec=TaskSpec(container=ContainerSpec(image="none")))
    assert codec.from_json(Task, codec.to_json(t)).attachment == "@ingress"


def test_allocated_ports_serve_the_spec_ports_they_match() -> None:
    spec = EndpointSpec(ports=[port(80), port(81, 8081), port(80)])
    have = Endpoint(ports=(port(80, 30005), port(81, 8081), port(80, 30001), port(9, 30009)))
    # Fixed by equality, dynamic by (target, protocol, mode) in order; 30009 serves nothing.
    assert held_ports(spec, have) == [port(80, 30005), port(81, 8081), port(80, 30001)]
    # A port now fixed in the spec is not taken by a dynamic one.
    spec2 = EndpointSpec(ports=[port(80), port(81, 30005)])
    assert held_ports(spec2, have) == [port(80, 30001), None]
    # Mode and protocol are part of what a dynamic port is.
    assert held_ports(EndpointSpec(ports=[port(80, mode="host"), port(80, proto="udp")]), have) == [None, None]


def test_claims_follow_the_spec_and_trim_drops_what_it_no_longer_asks_for() -> None:
    s = svc("web", port(80, 8080), port(81), port(82, 9000, mode="host"),
            allocated=(port(80, 8080), port(81, 30000), port(83, 30001)))
    assert port_claims(s.spec.endpoint_spec, s.endpoint) == (
        ("tcp", 8080, "ingress"), ("tcp", 30000, "ingress"), ("tcp", 9000, "host"))
    trimmed = trim_endpoint(s.spec.endpoint_spec, s.endpoint)
    assert trimmed.ports == (port(80, 8080), port(81, 30000))
    assert trim_endpoint(EndpointSpec(ports=[port(80, 8080)]), trimmed).ports == (port(80, 8080),)


def test_port_conflict_ingress_excludes_host_ports_share() -> None:
    web = svc("web", port(80, 8080))
    h1 = svc("h1", port(80, 9000, mode="host"))
    h2 = svc("h2", port(80, 9000, mode="host"))
    assert port_conflict(h2, [web, h1]) is None  # host with host: the scheduler spreads them
    clash = port_conflict(svc("api", port(81, 8080)), [h1, web])
    assert clash is not None and clash[:2] == ("tcp", 8080) and clash[2].id == "web" and clash[3] == "ingress"
    clash = port_conflict(svc("x", port(80, 9000)), [h1, h2])
    assert clash is not None and clash[2].id == "h1" and clash[3] == "host"
    # A dynamic port counts once allocated; another protocol is another port.
    dyn = svc("dyn", port(80), allocated=(port(80, 30000),))
    assert port_conflict(svc("y", port(1, 30000)), [dyn]) is not None
    assert port_conflict(svc("y", port(1, 30000, "udp")), [dyn]) is None
    assert port_conflict(web, [web]) is None  # itself
