"""Network allocation on the leader: subnets and VXLAN ids for networks,
addresses for tasks, virtual IPs for services (`allocator.py`), over the
pools in `ipam.py`."""

from .allocator import Allocator, Pending
from .ipam import AllocationError

__all__ = ["AllocationError", "Allocator", "Pending"]
