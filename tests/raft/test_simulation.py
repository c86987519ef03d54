"""Deterministic simulation of 3- and 5-node clusters over many seeds.

Each seed runs faults (crashes losing unsynced writes, partitions, drops,
duplicates, reordering), membership changes and leadership transfers, checks
the safety invariants after every step and the client history for
linearizability at the end. A failure prints the command that replays it.
"""

from __future__ import annotations

import os

import pytest

from tests.raft.sim import InvariantViolation, run_seed

DEFAULT_SEEDS = 300  # ~90 s on 2 cores; `make sim-many` runs 20,000
CHUNK = 50


def _run(seeds: range, nodes: int) -> None:
    failures = []
    for seed in seeds:
        try:
            run_seed(seed, nodes)
        except InvariantViolation as e:
            failures.append(str(e))
    if failures:
        pytest.fail(f"{len(failures)} seed(s) failed; first:\n{failures[0]}")


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("start", range(0, DEFAULT_SEEDS // 2, CHUNK))
def test_simulation_seeds(nodes: int, start: int) -> None:
    # 250 seeds each for 3 and 5 nodes: 500 in the default suite.
    _run(range(1000 * nodes + start, 1000 * nodes + start + CHUNK), nodes)


@pytest.mark.slow
def test_simulation_many_seeds() -> None:
    n = int(os.environ.get("ORCH_SIM_SEEDS", "20000"))
    for nodes in (3, 5):
        _run(range(100_000, 100_000 + n // 2), nodes)


def test_replay_is_deterministic() -> None:
    a = run_seed(4242, 5)
    b = run_seed(4242, 5)
    assert a.trace == b.trace and a.history == b.history
    assert len([o for o in a.history if o.known]) > 20, "the workload barely ran"
    assert len(a.leaders) >= 2, "no leader change happened"
