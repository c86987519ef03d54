"""Running the node daemon as a process (what `orch daemon` does once its
flags are options): garbage-collector tuning, the event loop, and the one
place that turns a failure to run into a DaemonError the command prints.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys

from .node import NodeDaemon, NodeOptions


class DaemonError(Exception):
    """The daemon cannot run: the host refused something (a path, a port) or
    this node's state is damaged; the message says what and where."""


def run(opts: NodeOptions) -> None:
    """Run the daemon until SIGINT or SIGTERM (what `orch daemon` does)."""
    # The daemon's heap is mostly long-lived store objects; collecting young
    # garbage less often removes most of the collector's pauses under load.
    gc.set_threshold(50_000, 20, 100)
    try:
        # uvloop (faster Raft and HTTP) unless ORCH_EVENT_LOOP=asyncio; the
        # engine spawns its children from threads, so the loop does not matter there.
        try:
            if os.environ.get("ORCH_EVENT_LOOP") == "asyncio":
                raise ImportError
            import uvloop
        except ImportError:
            asyncio.run(NodeDaemon(opts).run_forever())
        else:
            uvloop.run(NodeDaemon(opts).run_forever())
    except OSError as e:
        raise DaemonError(str(e)) from e
    except Exception as e:
        # Damaged state is never repaired silently: say what and where, stop.
        if _damaged_state(e):
            raise DaemonError(str(e)) from e
        raise


def _damaged_state(e: Exception) -> bool:
    """A damaged Raft log or snapshot. Only a manager keeps those, and a
    node that never ran one never loaded their code: no need to load it here."""
    if "manager.raft.wal" not in sys.modules and "manager.raft.snap" not in sys.modules:
        return False
    from manager.raft.snap import SnapshotError
    from manager.raft.wal import WALError

    return isinstance(e, (WALError, SnapshotError))
