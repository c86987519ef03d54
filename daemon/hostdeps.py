"""The Debian packages a host needs to run orch: the one list of them.

`orch daemon` checks it when it starts (`missing()`), and `orch fleet up`
checks the same list on a host over SSH before copying anything there
(`shell_check()` renders it as a POSIX shell script), so both name the same
packages. Each need is looked for the way the code uses it (a binary on
PATH, a shared library, a file), not in dpkg's database, so a host that got
the tools some other way passes too.
"""

from __future__ import annotations

import ctypes.util
import os
import shlex
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Need:
    package: str  # the Debian package that provides it
    kind: str  # "binary" (on PATH), "library" (ctypes finds it), "file" (exists), "python" (python3 -m it works)
    name: str  # binary, library name (without lib/.so), file path, or python module
    why: str


# Binaries are looked for on PATH plus the sbin directories (a non-root PATH lacks them).
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

NEEDS: tuple[Need, ...] = (
    Need("python3", "binary", "python3", "orch runs on the system's Python 3.11"),
    Need("python3-venv", "python", "ensurepip", "orch is installed into its own virtual environment (PEP 668)"),
    Need("conmon", "binary", "conmon", "monitors every container"),
    Need("nftables", "binary", "nft", "published ports, virtual IPs, egress masquerade"),
    Need("libnftables1", "library", "nftables", "nftables rules written in each task's namespace"),
    Need("util-linux", "binary", "mount", "mounts container root filesystems"),
    Need("procps", "binary", "sysctl", "sets forwarding in network namespaces"),
    Need("ca-certificates", "file", "/etc/ssl/certs/ca-certificates.crt", "pulls from registries over TLS"),
)

# The OCI runtime is an option (--runtime); the package that provides each known one.
RUNTIME_PACKAGES = {"runc": "runc", "crun": "crun"}

# What only matters once orch is installed (a running daemon needs no venv module).
INSTALL_ONLY = frozenset({"python3-venv"})


def needs_for(runtime: str = "runc", *, installing: bool = False) -> list[Need]:
    """The needs of a host whose daemon runs with OCI runtime `runtime`."""
    out = [n for n in NEEDS if installing or n.package not in INSTALL_ONLY]
    name = os.path.basename(runtime)
    if os.sep in runtime:
        out.append(Need(RUNTIME_PACKAGES.get(name, name), "file", runtime, "the OCI runtime (--runtime)"))
    else:
        out.append(Need(RUNTIME_PACKAGES.get(name, name), "binary", runtime, "the OCI runtime (--runtime)"))
    return out


def _present(n: Need) -> bool:
    if n.kind == "binary":
        return shutil.which(n.name, path=os.environ.get("PATH", "") + os.pathsep + SEARCH_PATH) is not None
    if n.kind == "library":
        return ctypes.util.find_library(n.name) is not None
    if n.kind == "python":
        import importlib.util

        return importlib.util.find_spec(n.name) is not None
    return os.path.exists(n.name)


def missing(runtime: str = "runc", *, installing: bool = False) -> list[Need]:
    """The needs this host lacks (empty when it has everything)."""
    return [n for n in needs_for(runtime, installing=installing) if not _present(n)]


def describe(lacking: list[Need]) -> str:
    """One message naming what is missing and how to get it."""
    items = "; ".join(f"{n.package} ({_what(n)}: {n.why})" for n in lacking)
    pkgs = " ".join(dict.fromkeys(n.package for n in lacking))
    return f"this host lacks Debian packages orch needs: {items}. Install them with: apt-get install {pkgs}"


def _what(n: Need) -> str:
    return {"binary": f"no {n.name} on PATH", "library": f"no lib{n.name}.so",
            "python": f"python3 has no {n.name} module", "file": f"no {n.name}"}[n.kind]


def shell_check(runtime: str = "runc") -> str:
    """A POSIX shell script that prints one line `MISSING <package> <what>` per
    lacking need and exits 1 if any (0 otherwise): the same list, checked on
    a host where orch is not installed yet."""
    lines = [f"PATH=\"$PATH:{SEARCH_PATH}\"", "rc=0"]
    for n in needs_for(runtime, installing=True):
        if n.kind == "binary":
            test = f"command -v {shlex.quote(n.name)} >/dev/null 2>&1"
        elif n.kind == "library":
            lib = shlex.quote(f"lib{n.name}.so")
            test = f"ldconfig -p 2>/dev/null | grep -q {lib} || ls /usr/lib/*/{lib}* >/dev/null 2>&1"
        elif n.kind == "python":
            test = f"python3 -c 'import {n.name}' >/dev/null 2>&1"
        else:
            test = f"test -e {shlex.quote(n.name)}"
        msg = shlex.quote(f"MISSING {n.package} {_what(n)}")
        lines.append(f"if ! {{ {test}; }}; then echo {msg}; rc=1; fi")
    lines.append("exit $rc")
    return "\n".join(lines) + "\n"
