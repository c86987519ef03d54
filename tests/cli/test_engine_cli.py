"""The node-local engine from the CLI: `orch daemon` (engine only) and
`orch image pull/ls/inspect/rm/prune` against a real registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.cgroups import remove_cgroup_parent
from tests.fixtures.registry import SeededRegistry

pytestmark = pytest.mark.root


@pytest.fixture
def daemon(tmp_path: Path, open_registry: SeededRegistry) -> Iterator[Path]:
    sock = tmp_path / "orch.sock"
    cgroup_parent = f"orch-test-{uuid.uuid4().hex[:8]}"
    log = open(tmp_path / "daemon.log", "wb")
    p = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "daemon", "--data-dir", str(tmp_path / "data"),
         "--socket", str(sock), "--insecure-registry", open_registry.addr,
         "--cgroup-parent", cgroup_parent],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            assert p.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, "daemon socket did not appear"
            time.sleep(0.05)
        yield sock
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()
        remove_cgroup_parent(cgroup_parent)
    assert not sock.exists(), "daemon left its socket behind"


def orch(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=120)


def test_image_pull_ls_inspect_rm(daemon: Path, open_registry: SeededRegistry) -> None:
    assert oct(os.stat(daemon).st_mode & 0o777) == "0o600"
    ref = open_registry.ref("library/busybox-multi:latest")
    r = orch(daemon, "image", "pull", ref)
    assert r.returncode == 0, r.stderr
    assert "sha256:" in r.stdout
    r = orch(daemon, "image", "ls", "--format", "json")
    images = json.loads(r.stdout)
    assert len(images) == 1 and ref in images[0]["names"]
    r = orch(daemon, "image", "ls")
    assert "busybox-multi" in r.stdout
    r = orch(daemon, "image", "inspect", ref)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)[0]["config"]
    assert cfg.get("User") == "app"
    r = orch(daemon, "image", "rm", ref)
    assert r.returncode == 0 and "Untagged" in r.stdout, r.stderr
    assert json.loads(orch(daemon, "image", "ls", "--format", "json").stdout) == []
    r = orch(daemon, "image", "prune")
    assert r.returncode == 0 and "removed" in r.stdout


def test_image_errors_are_clear(daemon: Path, open_registry: SeededRegistry) -> None:
    r = orch(daemon, "image", "pull", open_registry.ref("library/busybox-multi:nope"))
    assert r.returncode != 0 and "nope" in r.stderr, r.stderr
    r = orch(daemon, "image", "pull", "127.0.0.1:1/x/y:z")
    assert r.returncode != 0 and "127.0.0.1:1" in r.stderr, r.stderr
    r = orch(daemon, "image", "inspect", "no-such-image")
    assert r.returncode != 0 and "no-such-image" in r.stderr, r.stderr
    assert json.loads(orch(daemon, "image", "ls", "--format", "json").stdout) == []


def test_container_run_logs_exec_stop_rm(daemon: Path, open_registry: SeededRegistry) -> None:
    ref = open_registry.ref("library/busybox-multi:latest")
    # Foreground run: output and exit code come back (image pulled on demand).
    r = orch(daemon, "container", "run", "--name", "once", ref, "sh", "-c", "echo hi from $(id -un); exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout.strip() == "hi from app"
    r = orch(daemon, "container", "run", "-d", "--name", "web", "-m", "64m", "--pids-limit", "40", ref,
             "sh", "-c", "echo started; sleep 300")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    time.sleep(0.5)
    r = orch(daemon, "container", "logs", "web")
    assert r.stdout.strip() == "started", r.stderr
    r = orch(daemon, "container", "exec", "web", "sh", "-c", "cat /etc/removed-later; id -u")
    assert r.returncode == 0 and r.stdout.strip().endswith("1000"), (r.stdout, r.stderr)
    assert "No such file" in r.stdout  # the whiteout in the image's second layer
    r = orch(daemon, "container", "ls", "--format", "json")
    assert [c["name"] for c in json.loads(r.stdout)] == ["web"]
    r = orch(daemon, "container", "rm", "web")
    assert r.returncode != 0 and "running" in r.stderr
    r = orch(daemon, "container", "stop", "-t", "2", "web")
    assert r.returncode == 0, r.stderr
    r = orch(daemon, "container", "rm", "web", "once")
    assert r.returncode == 0, r.stderr
    assert json.loads(orch(daemon, "container", "ls", "-a", "--format", "json").stdout) == []
    r = orch(daemon, "container", "inspect", cid)
    assert r.returncode != 0 and "no container" in r.stderr
    r = orch(daemon, "container", "run", ref, "no-such-command")
    assert r.returncode != 0 and "no-such-command" in r.stderr, r.stderr
    with open("/proc/mounts") as f:
        assert str(daemon.parent) not in f.read(), "a container rootfs is still mounted"
