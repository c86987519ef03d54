"""Container-host tests run in the default suite; they are skipped (with
the reason) only where the machine cannot run them: not root, or Debian's
docker.io / mmdebstrap not installed (.ci/install-system-deps installs both)."""

from __future__ import annotations

import os

import pytest

from tests.harness import chosts


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = None
    if os.geteuid() != 0:
        why = "container hosts: need root (a dockerd of the run's own, privileged containers)"
    elif missing := chosts.tools_missing():
        why = (f"container hosts: apt-get install {' '.join(missing)} (Debian's docker.io: the tests start "
               "their own dockerd; .ci/install-system-deps installs it)")
    if why is None:
        return
    for item in items:
        if "chosts" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))
