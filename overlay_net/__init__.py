"""VXLAN overlay networks built with netlink (pyroute2): the node side.

Desired state as data (model), a pure reconciler (plan), kernel I/O
(netlink, nft), and the asyncio facade the agent calls (manager):

    from overlay_net import NetworkDataplane, NodeState, Network, Endpoint, Peer
    dp = NetworkDataplane("orch-", "192.168.1.11")
    done = await dp.apply(NodeState(prefix="orch-", underlay_addr="192.168.1.11", networks=..., ...))
"""

from .manager import ApplyError, Failure, NetworkDataplane, teardown
from .model import Egress, Endpoint, Network, NodeState, ObservedState, Peer, Problem, StateError
from .netlink import DataplaneError, NetnsGone
from .plan import Action

__all__ = [
    "Action", "ApplyError", "DataplaneError", "Egress", "Endpoint", "Failure", "NetnsGone", "Network",
    "NetworkDataplane", "NodeState", "ObservedState", "Peer", "Problem", "StateError", "teardown",
]
