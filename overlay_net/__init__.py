"""VXLAN overlay networks built with netlink (pyroute2)."""
