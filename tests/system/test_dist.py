"""`make dist` makes a wheelhouse that installs offline into its own venv on
Debian's Python (PEP 668: never into the system's), and the installed
`orch` runs: its CLI, `orch daemon`'s options and the package check."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"


def _has_venv() -> bool:
    if not os.path.exists(DEBIAN_PYTHON):
        return False
    return subprocess.run([DEBIAN_PYTHON, "-c", "import ensurepip"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_venv(), reason="needs Debian's python3 with python3-venv (.ci/install-system-deps)")
def test_make_dist_installs_offline_into_a_venv(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run(["make", "-s", "dist", f"DIST={tmp_path / 'dist'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    built = time.monotonic() - t0
    wheels = sorted(p.name for p in (tmp_path / "dist" / "wheels").iterdir())
    assert any(w.startswith("orch-") and w.endswith("-py3-none-any.whl") for w in wheels), wheels
    assert any(w.startswith("cryptography-") for w in wheels) and any(w.startswith("aiohttp-") for w in wheels)

    venv = tmp_path / "opt-orch"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # only what is in the wheelhouse: no index at all
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links",
                        str(tmp_path / "dist" / "wheels"), "orch"], capture_output=True, text=True, timeout=300,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    orch = venv / "bin" / "orch"
    r = subprocess.run([str(orch), "daemon", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and "--config FILE" in r.stdout and "--network-prefix" in r.stdout, r.stderr
    # The installed code is the venv's, not this checkout's.
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import daemon, sys; print(daemon.__file__)"],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.stdout.startswith(str(venv)), r.stdout + r.stderr
    r = subprocess.run([str(orch), "daemon", "--runtime", "nope-runtime", "--data-dir", str(tmp_path / "d")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "apt-get install nope-runtime" in " ".join(r.stderr.split()), r.stderr
    print(f"make dist: {built:.1f}s, {len(wheels)} wheels")
