"""A stand-in for `systemctl` in tests of `orch system install/uninstall`.

systemd is a boundary we do not own and does not run in the test machine;
this script does what orch asks of it for one unit: it records every call
(state dir / calls), keeps enabled/active state in files, and on start runs
the unit's ExecStart line as a process of its own session (what systemd
would run), stopping it with SIGTERM on stop. Installed on PATH as
`systemctl` by tests only; state dir and root from FAKE_SYSTEMD_STATE and
ORCH_SYSTEM_ROOT.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE = Path(os.environ["FAKE_SYSTEMD_STATE"])
ROOT = Path(os.environ.get("ORCH_SYSTEM_ROOT", "/"))
UNIT = ROOT / "etc/systemd/system/orch.service"


def _pid() -> int | None:
    try:
        pid = int((STATE / "pid").read_text())
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ")[-1].startswith("Z"):
                return None
        return pid
    except (OSError, ValueError):
        return None


def _start() -> None:
    lines = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart=")]
    argv = shlex.split(lines[0].partition("=")[2])
    log = open(STATE / "daemon.log", "ab")
    p = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    (STATE / "pid").write_text(str(p.pid))


def _stop() -> None:
    pid = _pid()
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if _pid() is None:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def main(args: list[str]) -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls", "a") as f:
        f.write(" ".join(args) + "\n")
    cmd, rest = args[0], args[1:]
    if cmd == "daemon-reload":
        return 0
    if cmd == "is-enabled":
        on = (STATE / "enabled").exists()
        print("enabled" if on else "disabled")
        return 0 if on else 1
    if cmd == "is-active":
        on = _pid() is not None
        print("active" if on else "inactive")
        return 0 if on else 3
    if cmd == "enable":
        if not UNIT.exists():
            print("Failed to enable unit: Unit file orch.service does not exist.", file=sys.stderr)
            return 1
        (STATE / "enabled").touch()
        return 0
    if cmd == "disable":
        (STATE / "enabled").unlink(missing_ok=True)
        if "--now" in rest:
            _stop()
        return 0
    if cmd == "start":
        if _pid() is None:
            _start()
        return 0
    if cmd == "stop":
        _stop()
        return 0
    if cmd == "restart":
        _stop()
        _start()
        return 0
    if cmd == "status":
        try:
            print((STATE / "daemon.log").read_text()[-2000:])
        except OSError:
            pass
        return 0 if _pid() else 3
    print(f"fake systemctl: unknown command {cmd}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
