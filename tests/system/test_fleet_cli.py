"""`orch fleet up` refuses bad input before touching a host, and reports a
host it cannot reach with its step while the others go on (the whole run
on real hosts is tests/vm)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cli.fleet import wheelhouse_tar

ROOT = Path(__file__).resolve().parents[2]


def _orch(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _dist(tmp: Path) -> Path:
    d = tmp / "wheels"
    d.mkdir()
    (d / "orch-0.1.0-py3-none-any.whl").write_bytes(b"x")
    return d


def test_a_config_typo_is_refused_before_any_host(tmp_path: Path) -> None:
    bad = tmp_path / "d.yaml"
    bad.write_text("data-dir: /var/lib/orch\nlog-levl: debug\n")
    r = _orch(tmp_path, "fleet", "up", "--dist", str(_dist(tmp_path)), "--config", str(bad), "root@192.0.2.1")
    assert r.returncode == 1
    assert f"fleet up: nothing done: {bad}:2: unknown option 'log-levl' (did you mean 'log-level'?)" in \
        " ".join(r.stderr.split())
    assert "connect" not in r.stdout


def test_no_wheelhouse_says_make_dist(tmp_path: Path) -> None:
    r = _orch(tmp_path, "fleet", "up", "--dist", str(tmp_path / "nope"), "root@192.0.2.1")
    assert r.returncode == 1 and "run `make dist` first" in r.stderr


def test_unreachable_hosts_are_named_with_their_step(tmp_path: Path) -> None:
    r = _orch(tmp_path, "fleet", "up", "--dist", str(_dist(tmp_path)), "-o", "Port=1", "-o", "BatchMode=yes",
              "root@127.0.0.1", "root@127.0.0.2")
    assert r.returncode == 1
    for h in ("root@127.0.0.1", "root@127.0.0.2"):
        assert f"[{h}] FAILED at connect: cannot connect (is it up, and is the SSH key right?)" in r.stdout
    assert "No manager: nothing could join." in r.stdout


def test_the_wheelhouse_travels_as_one_tar(tmp_path: Path) -> None:
    import io
    import tarfile

    d = _dist(tmp_path)
    (d / "click-8.1-py3-none-any.whl").write_bytes(b"y")
    (d / "notes.txt").write_text("not sent")
    names = tarfile.open(fileobj=io.BytesIO(wheelhouse_tar(str(d), "runtime: runc\n"))).getnames()
    assert sorted(names) == ["daemon.yaml", "wheels/click-8.1-py3-none-any.whl", "wheels/orch-0.1.0-py3-none-any.whl"]
