"""`ServiceSpec.depends_on`: its forms, its codec round trip, and the graph
check (`depends_on_problems`) the control API and the stack deploy share."""

from __future__ import annotations

from typing import Any

import pytest

from api import codec
from api.errors import ValidationError
from api.objects import (
    DependsCondition,
    DependsOnProblem,
    Service,
    ServiceDependency,
    ServiceSpec,
    depends_on_problems,
)


def spec(name: str, *deps: Any) -> ServiceSpec:
    return ServiceSpec(name=name, task={"container": {"image": "busybox"}}, depends_on=list(deps))


def test_forms_and_default_condition() -> None:
    long = spec("web", {"service": "db", "condition": "service_healthy"}, "cache")
    assert long.depends_on == (ServiceDependency(service="db", condition=DependsCondition.SERVICE_HEALTHY),
                               ServiceDependency(service="cache", condition=DependsCondition.SERVICE_STARTED))
    as_map = ServiceSpec(name="web", task={"container": {"image": "busybox"}},
                         depends_on={"db": "service_healthy", "cache": "service_started"})
    assert as_map == long
    assert spec("web").depends_on == ()


def test_codec_round_trips() -> None:
    svc = Service(id="s1", spec=spec("web", {"service": "job", "condition": "service_completed_successfully"}))
    as_json = codec.to_json(svc)
    assert as_json["spec"]["depends_on"] == [{"service": "job", "condition": "service_completed_successfully"}]
    assert codec.from_json(Service, as_json) == svc
    assert codec.unpackb(Service, codec.packb(svc)) == svc


@pytest.mark.parametrize(("deps", "path", "message"), [
    ([{"service": "db", "condition": "service_ready"}], "spec.depends_on[0].condition", "must be one of"),
    ([{"service": "bad name"}], "spec.depends_on[0].service", "must"),
    (["db", {"service": "db", "condition": "service_healthy"}], "spec.depends_on",
     'depends_on[1].service: service "db" is given twice (also depends_on[0])'),
])
def test_bad_entries_name_the_field(deps: list[Any], path: str, message: str) -> None:
    body = {"id": "s1", "spec": {"name": "web", "task": {"container": {"image": "x"}}, "depends_on": deps}}
    with pytest.raises(ValidationError) as e:
        codec.from_json(Service, body)
    ((p, m),) = e.value.errors
    assert p == path and message in m


def test_self_and_unknown_names() -> None:
    specs = {"web": spec("web", "web", "dbb")}
    assert depends_on_problems(specs, {"db": spec("db")}) == [
        DependsOnProblem("web", "depends_on[0].service", "a service cannot depend on itself"),
        DependsOnProblem("web", "depends_on[1].service", 'no service named "dbb" (did you mean "db"?)'),
    ]


def test_names_created_in_the_same_transaction_are_known() -> None:
    specs = {"front": spec("front", "back"), "back": spec("back", "db"), "db": spec("db")}
    assert depends_on_problems(specs, {}) == []


def test_a_cycle_is_named_once_from_its_first_service() -> None:
    specs = {"a": spec("a", "x", "b"), "b": spec("b", "c"), "c": spec("c", "a"), "x": spec("x")}
    assert depends_on_problems(specs, {}) == [
        DependsOnProblem("a", "depends_on[1].service", "depends_on forms a cycle: a -> b -> c -> a")]


def test_cycles_through_stored_services_count() -> None:
    stored = {"y": spec("y", "z"), "z": spec("z", "x")}
    assert depends_on_problems({"x": spec("x", "y")}, stored) == [
        DependsOnProblem("x", "depends_on[0].service", "depends_on forms a cycle: x -> y -> z -> x")]
    # An update replaces the stored spec: z no longer depending on x breaks the cycle.
    assert depends_on_problems({"z": spec("z")}, {**stored, "x": spec("x", "y")}) == []
    # A cycle among stored services only is not the new service's problem.
    assert depends_on_problems({"n": spec("n", "y")}, {"y": spec("y", "z"), "z": spec("z", "y")}) == []


def test_a_long_chain_is_fine() -> None:
    specs = {f"s{i}": spec(f"s{i}", f"s{i + 1}") for i in range(3000)}
    specs["s3000"] = spec("s3000")
    assert depends_on_problems(specs, {}) == []
    specs["s3000"] = spec("s3000", "s0")
    (p,) = depends_on_problems(specs, {})
    assert p.service == "s0" and p.message.endswith("s2999 -> s3000 -> s0")
