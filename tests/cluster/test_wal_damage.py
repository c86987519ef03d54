"""A manager whose WAL is damaged before its tail refuses to start, naming
the file and the offset, instead of silently dropping committed entries."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time

from tests.harness.managers import ManagerCluster


def test_bit_flip_in_wal_stops_the_daemon_with_file_and_offset() -> None:
    with ManagerCluster(1) as cl:
        n = cl.leader(timeout=15)
        for i in range(30):
            r = subprocess.run(
                [sys.executable, "-m", "cli.main", "--host", n.addr, "config", "create", f"c{i}", "-"],
                input="x" * 100, capture_output=True, text=True, timeout=30,
            )
            assert r.returncode == 0, r.stderr
        n.kill(signal.SIGTERM)
        segs = sorted(glob.glob(os.path.join(n.data_dir, "manager", "raft", "wal", "*.wal")))
        assert segs
        seg = segs[-1]
        size = os.path.getsize(seg)
        with open(seg, "r+b") as f:
            f.seek(size // 3)
            b = f.read(1)
            f.seek(size // 3)
            f.write(bytes([b[0] ^ 0x40]))
        before = open(seg, "rb").read()
        n.start()
        deadline = time.monotonic() + 20
        while n.alive and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not n.alive, "daemon kept running on a damaged WAL"
        assert n.proc is not None and n.proc.returncode == 1
        out = n.log_tail(20)
        assert seg in out and "offset" in out, out
        assert open(seg, "rb").read() == before, "a refused open must leave the WAL as it was"
