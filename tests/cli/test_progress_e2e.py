"""Progress against a real cluster (`orch daemon` processes on loopback, a
real registry): a service whose image cannot be pulled says why while the
CLI waits without a terminal, exits non-zero at its deadline, and `service
ps` shows the rejected tasks of its slot with their error."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.fixtures.registry import SeededRegistry
from tests.harness.loopcluster import REPO, LoopCluster, leftovers

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def cluster(open_registry: SeededRegistry) -> Iterator[LoopCluster]:
    c = LoopCluster(2, registry=open_registry.addr, heartbeat=0.5)
    with c:
        yield c
    assert leftovers(str(c.base)) == []


def test_unpullable_image_says_why_and_fails_at_the_deadline(cluster: LoopCluster,
                                                             open_registry: SeededRegistry) -> None:
    m = cluster.nodes[0]
    image = open_registry.ref("library/no-such-image:latest")
    argv = [sys.executable, "-m", "cli.main", "--socket", str(m.sock), "service", "create", "--name", "nopull",
            "--replicas", "1", "--restart-delay", "300ms", "--timeout", "5", image, "true"]
    start = time.monotonic()
    # stderr is a pipe, not a terminal: plain lines, one per change, as they happen.
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stderr is not None and p.stdout is not None
    lines: list[tuple[float, str]] = []
    for line in p.stderr:
        lines.append((time.monotonic() - start, line.rstrip("\n")))
    code = p.wait(30)
    elapsed = time.monotonic() - start
    out = p.stdout.read()
    p.stdout.close()
    p.stderr.close()
    text = "\n".join(s for _, s in lines)
    assert code == 1, text
    assert len(out.split()) == 1  # the service id
    assert not any(not c.isprintable() for c in text.replace("\n", "")), repr(text)
    # The rejection and its reason, as soon as the first task was rejected (a
    # status round: the agent's report, then one poll), long before the deadline.
    first = next(i for i, (_, s) in enumerate(lines) if s.startswith("nopull.1: ") and "rejected" in s)
    seen_at, rejected = lines[first]
    placed_at = next(t for t, s in lines if s.startswith("nopull.1: "))
    assert "no-such-image not found" in rejected, text
    assert seen_at - placed_at < 2.0 and seen_at < 4.0, text
    # At the deadline: exit 1, and a summary naming the service and its slot's error.
    assert 5.0 <= elapsed < 12.0, (elapsed, text)
    assert "error: service nopull did not converge in 5 s" in text
    summary = text.split("error: service nopull did not converge in 5 s", 1)[1]
    assert "nopull.1: " in summary and "no-such-image" in summary
    print(f"\nprogress: rejection shown {seen_at:.2f} s after start ({seen_at - placed_at:.2f} s after the "
          f"slot's first line), exit {code} after {elapsed:.1f} s (timeout 5 s), {len(lines)} lines")

    # service ps: the slot's current task, then its rejected ones, each with its error.
    ps = m.orch("service", "ps", "nopull").stdout.splitlines()
    print(text + "\n" + "\n".join(ps))
    assert ps[0].split()[:2] == ["ID", "NAME"]
    history = [line for line in ps[1:] if " \\_ nopull.1 " in line]
    assert len(history) >= 2 and all("Rejected" in h and "no-such-image" in h for h in history), ps
    assert " nopull.1 " in ps[1] and "\\_" not in ps[1]
    shut = m.orch("service", "ps", "--filter", "desired-state=shutdown", "-q", "--no-trunc", "nopull").stdout.split()
    assert len(shut) >= 2 and all(len(i) > 12 for i in shut)
    current = m.orch("service", "ps", "--filter", "desired-state=running", "nopull").stdout.splitlines()
    assert len(current) == 2 and "\\_" not in current[1]
    r = m.orch("service", "ps", "--filter", "colour=red", "nopull", check=False)
    assert r.returncode == 2 and "unknown key 'colour'" in r.stderr
    m.orch("service", "rm", "nopull")
