"""VM tests run only when asked (`make test-vm`, ORCH_VM_TESTS=1) on a
machine with qemu: each boots Debian VMs under emulation, minutes apiece."""

from __future__ import annotations

import os
import shutil

import pytest

REASON_ENV = "VM tests: set ORCH_VM_TESTS=1 (or run `make test-vm`); they boot qemu VMs and take ~10 minutes"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: tests on qemu VMs (make test-vm; ORCH_VM_TESTS=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = None
    if os.environ.get("ORCH_VM_TESTS") != "1":
        why = REASON_ENV
    elif shutil.which("qemu-system-x86_64") is None or shutil.which("mmdebstrap") is None:
        why = "VM tests: qemu-system-x86 and mmdebstrap are not installed (apt-get install qemu-system-x86 " \
              "qemu-utils mmdebstrap)"
    elif os.geteuid() != 0:
        why = "VM tests: need root (network namespaces, taps)"
    if why is None:
        return
    for item in items:
        if "vm" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=why))
