"""CPU architecture names, in the two spellings orch meets: the kernel's
(`uname -m`: x86_64, aarch64) and the Go/OCI one of image indexes, node
descriptions and placement platforms (GOARCH: amd64, arm64).

One table for every package: the agent describes its host and picks image
manifests with it, the runtime names seccomp architectures with it, the
orchestrator compares placement platforms with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# uname -m (and the GOARCH names some systems report as uname -m) ->
# (GOARCH, variant) as OCI platforms write them.
PLATFORM_OF_MACHINE: Mapping[str, tuple[str, str]] = MappingProxyType({
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
    "mips64": ("mips64", ""),
    "loongarch64": ("loong64", ""),
})

# Either spelling -> GOARCH.
OCI_ARCH: Mapping[str, str] = MappingProxyType({m: p[0] for m, p in PLATFORM_OF_MACHINE.items()})


def _machine_names() -> dict[str, str]:
    # GOARCH -> uname -m where one kernel name has it (amd64, arm64, loong64);
    # 386 and arm stand for several (i386/i686, armv6l/armv7l) and map to none.
    names: dict[str, set[str]] = {}
    for machine, (goarch, _) in PLATFORM_OF_MACHINE.items():
        if machine != goarch:
            names.setdefault(goarch, set()).add(machine)
    return {goarch: next(iter(ms)) for goarch, ms in names.items() if len(ms) == 1}


# Either spelling -> uname -m, where that is unambiguous.
MACHINE_ARCH: Mapping[str, str] = MappingProxyType(_machine_names())


def oci_arch(name: str) -> str:
    """The GOARCH name of `name` (either spelling); unknown names unchanged."""
    return OCI_ARCH.get(name, name)


def oci_platform(machine: str) -> tuple[str, str]:
    """(GOARCH, variant) of a `uname -m` name; unknown names unchanged, no variant."""
    return PLATFORM_OF_MACHINE.get(machine, (machine, ""))


def machine_arch(name: str) -> str:
    """The `uname -m` name of `name` (either spelling); unknown or ambiguous names unchanged."""
    return MACHINE_ARCH.get(name, name)
