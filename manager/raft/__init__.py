"""Raft consensus in the shape of etcd-io/raft.

`core` is a pure state machine (no sockets, files or clock); `wal` and `snap`
own persistence; `driver` and `transport` are the asyncio shell around it.
"""
