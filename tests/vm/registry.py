"""A registry the VMs pull from: seeded with the standard test images on
loopback, then served read-only from inside the VM fleet's namespace (the
VMs have no route anywhere else)."""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path

import yaml

from tests.fixtures.oci_build import seed
from tests.fixtures.registry import REGISTRY_BIN, RegistryProcess

PORT = 5000


def seed_storage(workdir: Path) -> Path:
    storage = workdir / "storage"
    reg = RegistryProcess(workdir / "seed", storage).start()
    try:
        seed(reg.pusher())
    finally:
        reg.stop()
    return storage


def serve_in_netns(netns: str, addr: str, storage: Path, workdir: Path) -> subprocess.Popen[bytes]:
    cfg = {"version": 0.1, "log": {"level": "warn"},
           "storage": {"filesystem": {"rootdirectory": str(storage)},
                       "maintenance": {"uploadpurging": {"enabled": False}, "readonly": {"enabled": True}}},
           "http": {"addr": f"{addr}:{PORT}", "secret": secrets.token_hex(16)}}
    path = workdir / "netns-registry.yml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(workdir / "netns-registry.log", "ab")
    p = subprocess.Popen(["ip", "netns", "exec", netns, REGISTRY_BIN, "serve", str(path)], stdout=log,
                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        r = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c",
                            f"import urllib.request;urllib.request.urlopen('http://{addr}:{PORT}/v2/',timeout=1)"],
                           capture_output=True)
        if r.returncode == 0:
            return p
        time.sleep(0.2)
    p.kill()
    raise RuntimeError(f"registry in {netns} did not come up: {(workdir / 'netns-registry.log').read_text()}")
