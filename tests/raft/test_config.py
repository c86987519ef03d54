"""Raft settings are checked when made: each bad field gets its own error."""

from __future__ import annotations

import re
from typing import Any

import pytest

from manager.raft.core import Config, ConfigError, RawNode
from manager.raft.driver import RaftSettings
from manager.raft.storage import MemoryStorage


def test_defaults_are_valid() -> None:
    c = Config(id=1)
    assert (c.election_tick, c.heartbeat_tick, c.max_uncommitted_entries_size) == (10, 1, 0)
    s = RaftSettings()
    assert (s.tick_interval, s.keep_snapshots, s.keep_entries) == (0.1, 3, 5_000)
    # The edges of every range are accepted.
    Config(id=7, election_tick=2, heartbeat_tick=1, applied=0, max_size_per_msg=1, max_inflight_msgs=1,
           max_uncommitted_entries_size=0, snapshot_chunk_size=1, seed=0)
    RaftSettings(tick_interval=0.001, election_tick=2, heartbeat_tick=1, snapshot_every=1, keep_entries=0,
                 max_inflight_msgs=1, max_size_per_msg=1, snapshot_chunk_size=1, segment_size=1, keep_snapshots=2,
                 proposal_timeout=1, learner_catchup_lag=0)


CONFIG_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"id": 0}, "id must be non-zero (0 means no node)"),
    ({"id": -2}, "id must be > 0, got -2"),
    ({"id": "1"}, "id must be an integer, got '1'"),
    ({"heartbeat_tick": 0}, "heartbeat_tick must be > 0, got 0"),
    ({"election_tick": 0, "heartbeat_tick": 0}, "heartbeat_tick must be > 0, got 0"),
    ({"election_tick": 3, "heartbeat_tick": 5}, "election_tick (3) must be greater than heartbeat_tick (5)"),
    ({"election_tick": 1}, "election_tick (1) must be greater than heartbeat_tick (1)"),
    ({"election_tick": 10.0}, "election_tick must be an integer, got 10.0"),
    ({"applied": -1}, "applied must be >= 0, got -1"),
    ({"max_size_per_msg": 0}, "max_size_per_msg must be > 0, got 0"),
    ({"max_inflight_msgs": 0}, "max_inflight_msgs must be > 0, got 0"),
    ({"max_uncommitted_entries_size": -1}, "max_uncommitted_entries_size must be >= 0 (0 = no limit), got -1"),
    ({"snapshot_chunk_size": 0}, "snapshot_chunk_size must be > 0, got 0"),
    ({"pre_vote": 1}, "pre_vote must be true or false, got 1"),
    ({"check_quorum": None}, "check_quorum must be true or false, got None"),
    ({"disable_proposal_forwarding": "no"}, "disable_proposal_forwarding must be true or false, got 'no'"),
    ({"seed": 1.5}, "seed must be an integer or None, got 1.5"),
    ({"max_inflight_msgs": True}, "max_inflight_msgs must be an integer, got True"),
]


@pytest.mark.parametrize("kw, message", CONFIG_ERRORS, ids=[m.split(" ")[0] + str(i) for i, (_, m) in
                                                           enumerate(CONFIG_ERRORS)])
def test_config_errors(kw: dict[str, Any], message: str) -> None:
    kw = {"id": 1, **kw}
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        Config(**kw)


def test_config_is_checked_again_by_the_core() -> None:
    """A Config is mutable: the core checks it again when it starts."""
    c = Config(id=1)
    c.heartbeat_tick = 20
    with pytest.raises(ConfigError, match=r"^election_tick \(10\) must be greater than heartbeat_tick \(20\)$"):
        RawNode(c, MemoryStorage())


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        Config(id=0)


SETTINGS_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"tick_interval": 0}, "tick_interval must be a finite number of seconds > 0, got 0"),
    ({"tick_interval": -0.1}, "tick_interval must be a finite number of seconds > 0, got -0.1"),
    ({"tick_interval": float("inf")}, "tick_interval must be a finite number of seconds > 0, got inf"),
    ({"tick_interval": float("nan")}, "tick_interval must be a finite number of seconds > 0, got nan"),
    ({"tick_interval": "0.1"}, "tick_interval must be a number of seconds, got '0.1'"),
    ({"heartbeat_tick": 0}, "heartbeat_tick must be > 0, got 0"),
    ({"election_tick": 3, "heartbeat_tick": 5}, "election_tick (3) must be greater than heartbeat_tick (5)"),
    ({"snapshot_every": 0}, "snapshot_every must be > 0, got 0"),
    ({"keep_entries": -1}, "keep_entries must be >= 0, got -1"),
    ({"max_inflight_msgs": 0}, "max_inflight_msgs must be > 0, got 0"),
    ({"max_size_per_msg": 0}, "max_size_per_msg must be > 0, got 0"),
    ({"snapshot_chunk_size": 0}, "snapshot_chunk_size must be > 0, got 0"),
    ({"segment_size": 0}, "segment_size must be > 0, got 0"),
    ({"keep_snapshots": 1}, "keep_snapshots must be at least 2, got 1"),
    ({"proposal_timeout": 0.0}, "proposal_timeout must be a finite number of seconds > 0, got 0.0"),
    ({"proposal_timeout": True}, "proposal_timeout must be a number of seconds, got True"),
    ({"learner_catchup_lag": -5}, "learner_catchup_lag must be >= 0, got -5"),
    ({"segment_size": 1.5}, "segment_size must be an integer, got 1.5"),
]


@pytest.mark.parametrize("kw, message", SETTINGS_ERRORS, ids=[m.split(" ")[0] + str(i) for i, (_, m) in
                                                               enumerate(SETTINGS_ERRORS)])
def test_settings_errors(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        RaftSettings(**kw)
