"""The ingress sandbox tasks reach their nodes through the dispatcher's
assignment diff as it is: once allocated and assigned, a node's set holds
its own sandbox task, the ingress network, and the endpoint table with every
node's sandbox and every task of a publishing service; a removed sandbox
leaves it."""

from __future__ import annotations

from api.objects import INGRESS_ATTACHMENT, EndpointSpec, PortConfig, evolve
from api.session import EndpointUpdate, NetworkUpdate, TaskRemove, TaskUpdate
from manager.dispatcher.assignments import NodeAssignments, dependencies, in_set
from manager.store import Create, Delete, Update
from tests.allocator.test_ports import Mesh
from tests.orchestrator.test_reconcile import mkservice


def test_a_node_is_sent_its_sandbox_the_ingress_network_and_its_peers() -> None:
    c = Mesh()
    for i, nid in enumerate(("n1", "n2"), start=1):
        n = c.store.view().get("nodes", nid)
        c.tx(Update("nodes", evolve(n, status__addr=f"192.168.0.{i}")))
    s = mkservice("web", 2)
    c.tx(Create("services", evolve(s, spec__endpoint_spec=EndpointSpec(
        ports=[PortConfig(target_port=80, published_port=8080)]))))
    c.settle()
    boxes = {t.node_id: t for t in c.sandboxes()}
    box = boxes["n1"]
    assert in_set(box) and ("networks", c.ingress.id) in dependencies(box)

    a = NodeAssignments("n1")
    full = a.full(c.store.view(), lambda x: x).changes
    nets = [ch.network.id for ch in full if isinstance(ch, NetworkUpdate)]
    assert nets == [c.ingress.id]
    sent = {ch.task.id for ch in full if isinstance(ch, TaskUpdate)}
    assert box.id in sent and boxes["n2"].id not in sent
    (upd,) = [ch for ch in full if isinstance(ch, TaskUpdate) and ch.task.id == box.id]
    assert upd.task.attachment == INGRESS_ATTACHMENT and upd.service_name == ""
    eps = {ch.endpoint.task_id: ch.endpoint for ch in full if isinstance(ch, EndpointUpdate)}
    web = c.tasks("web")
    assert set(eps) == {boxes["n1"].id, boxes["n2"].id} | {t.id for t in web}
    assert eps[boxes["n2"].id].node_addr == "192.168.0.2"
    assert eps[boxes["n2"].id].address == boxes["n2"].networks[0].addresses[0]

    # The sandbox goes with its node: the node is told to drop it.
    c.tx(Delete("nodes", "n1"))
    c.settle()
    ch = a.changes(c.store.view(), lambda x: x, tasks=[box.id])
    assert ch is not None and TaskRemove(id=box.id) in ch.changes
