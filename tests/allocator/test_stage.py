"""The allocation stage inside real reconciliation passes on a real store:
networks get VNIs and subnets, services VIPs, tasks addresses before they are
scheduled; deletions release; a new leader's stage rebuilt from the store
agrees with the old one."""

from __future__ import annotations

from typing import Any

from api.objects import Network, NetworkSpec, TaskState
from manager.allocator.stage import TABLES, NetworkStage
from manager.orchestrator.reconcile import plan
from manager.store import Create, Delete, MemoryStore
from tests.orchestrator.test_reconcile import mknode, mkservice
from tests.store import Feeder


class Leader:
    """The loop's part: passes with the stage, commits, feeds watch events."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.feed = Feeder(self.store)
        self.stage = NetworkStage()
        self.watch = self.store.watch(TABLES)
        self.now = 10_000.0
        for n in ("n1", "n2"):
            self.tx(Create("nodes", mknode(n)))

    def tx(self, *ops: Any) -> None:
        r = self.feed.tx(*ops)
        assert r.ok, r.error
        self.stage.observe(self.watch.poll())

    def settle(self) -> None:
        for _ in range(10):
            p = plan(self.store.view(), self.now, allocator=self.stage)
            if not p.ops:
                return
            self.tx(*p.ops)
        raise AssertionError("did not settle")

    def tasks(self, sid: str) -> list[Any]:
        return [t for t in self.store.view().list("tasks") if t.service_id == sid]


def test_tasks_get_addresses_before_scheduling_and_everything_is_released() -> None:
    c = Leader()
    c.settle()
    initial = c.stage.counts()
    c.tx(Create("networks", Network(id="net1", spec=NetworkSpec(name="app"))))
    c.settle()
    n = c.store.view().get("networks", "net1")
    assert n.allocation is not None and n.allocation.subnet == "10.0.0.0/24" and n.allocation.vni >= 4096
    c.tx(Create("services", mkservice("web", 4, networks=("net1",))))
    c.settle()
    svc = c.store.view().get("services", "web")
    assert [v.network_id for v in svc.endpoint.virtual_ips] == ["net1"]
    ts = c.tasks("web")
    assert len(ts) == 4 and all(t.status.state == TaskState.ASSIGNED and t.node_id for t in ts)
    addrs = [t.networks[0].addresses[0] for t in ts] + [svc.endpoint.virtual_ips[0].addr]
    assert len(set(addrs)) == 5 and all(a.startswith("10.0.0.") and a.endswith("/24") for a in addrs)
    assert "10.0.0.1/24" not in addrs, "the gateway is the sandbox bridge's"

    # A new leader rebuilds the same state from the store.
    fresh = NetworkStage()
    plan(c.store.view(), c.now, allocator=fresh)
    assert fresh.counts() == c.stage.counts()

    c.tx(*[Delete("tasks", t.id) for t in ts], Delete("services", "web"))
    c.tx(Delete("networks", "net1"))
    c.settle()
    assert c.stage.counts() == initial


def test_tasks_wait_new_with_the_reason_until_their_network_exists() -> None:
    c = Leader()
    c.tx(Create("services", mkservice("api", 2, networks=("later",))))
    c.settle()
    ts = c.tasks("api")
    assert {t.status.state for t in ts} == {TaskState.NEW}
    assert {t.status.message for t in ts} == {"network later does not exist"}
    c.tx(Create("networks", Network(id="later", spec=NetworkSpec(name="later",
                                                                 ipam=[{"subnet": "192.168.9.0/29"}]))))
    c.settle()
    ts = c.tasks("api")
    assert {t.status.state for t in ts} == {TaskState.ASSIGNED}
    assert sorted(t.networks[0].addresses[0] for t in ts) in (
        ["192.168.9.3/29", "192.168.9.4/29"], ["192.168.9.2/29", "192.168.9.4/29"],
        ["192.168.9.2/29", "192.168.9.3/29"])


def test_full_network_keeps_tasks_new_and_a_failed_batch_resets() -> None:
    c = Leader()
    c.tx(Create("networks", Network(id="tiny", spec=NetworkSpec(name="tiny", ipam=[{"subnet": "10.9.0.0/30"}]))))
    c.settle()
    # /30: one usable address besides the gateway, taken by the service's VIP.
    c.tx(Create("services", mkservice("s", 1, networks=("tiny",))))
    c.settle()
    (t,) = c.tasks("s")
    assert t.status.state == TaskState.NEW and "no free address left in 10.9.0.0/30" in t.status.message
    # A pass whose writes are lost (another write won the race): reset, and the
    # next pass starts again from the store without leaking what it had given.
    before = c.stage.counts()
    c.stage.reset()
    plan(c.store.view(), c.now, allocator=c.stage)
    assert c.stage.counts() == before


def test_an_ended_task_gives_its_address_back_and_stays_in_the_history() -> None:
    from api.objects import TaskStatus, evolve
    from manager.store import Update

    c = Leader()
    c.tx(Create("networks", Network(id="n", spec=NetworkSpec(name="n", ipam=[{"subnet": "10.5.0.0/29"}]))))
    from api.objects import RestartPolicy

    c.tx(Create("services", mkservice("s", 1, networks=("n",), restart_policy=RestartPolicy(delay=0))))
    c.settle()
    (t,) = c.tasks("s")
    held = t.networks[0].addresses[0]
    before = c.stage.counts()
    c.tx(Update("tasks", evolve(t, status=TaskStatus(state=TaskState.FAILED, message="boom"))))
    c.settle()
    old = c.store.view().get("tasks", t.id)
    assert old is not None and old.networks == (), "the failed task keeps its place in the history, not its address"
    new = [x for x in c.tasks("s") if x.id != t.id]
    assert len(new) == 1, [(x.status.state, x.desired_state, x.status.message) for x in c.tasks("s")] and new[0].networks and new[0].status.state == TaskState.ASSIGNED
    assert c.stage.counts() == before, "one address in use, as before"
    fresh = NetworkStage()
    plan(c.store.view(), c.now, allocator=fresh)
    assert fresh.counts() == c.stage.counts()
    assert held  # (the replacement may or may not get the same one: next fit)
