"""VXLAN overlay networks built with netlink (pyroute2): the node side.

Desired state as data (model), a pure reconciler (plan), kernel I/O
(netlink, nft), and the asyncio facade the agent calls (manager):

    from overlay_net import NetworkDataplane, NodeState, Network, Endpoint, Peer
    dp = NetworkDataplane("orch-", "192.168.1.11")
    done = await dp.apply(NodeState(prefix="orch-", underlay_addr="192.168.1.11", networks=..., ...))
"""

from typing import TYPE_CHECKING, Any

from .model import Egress, Endpoint, Network, NodeState, ObservedState, Peer, Problem, StateError

if TYPE_CHECKING:
    from .manager import ApplyError, Failure, NetworkDataplane, teardown
    from .netlink import DataplaneError, NetnsGone
    from .plan import Action

# The kernel side (pyroute2, about 11 MB) loads on first use: a node that
# runs no task on a network never pays for it.
_LAZY = {"ApplyError": "manager", "Failure": "manager", "NetworkDataplane": "manager", "teardown": "manager",
         "DataplaneError": "netlink", "NetnsGone": "netlink", "Action": "plan"}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'overlay_net' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{mod}", __name__), name)

__all__ = [
    "Action", "ApplyError", "DataplaneError", "Egress", "Endpoint", "Failure", "NetnsGone", "Network",
    "NetworkDataplane", "NodeState", "ObservedState", "Peer", "Problem", "StateError", "teardown",
]
