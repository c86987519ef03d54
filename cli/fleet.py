"""`orch fleet up/down HOST...`: turn a list of SSH hosts into a cluster, and back.

From the operator's machine, with the system's `ssh` (one multiplexed
connection per host, asyncio subprocesses, all hosts at once): check the
host's Debian packages (the list of daemon.hostdeps, before anything is
copied), copy the wheelhouse of `make dist`, install it into its own venv
(/opt/orch), `orch system install`, then `orch init` on the first manager and
`orch join` on the others with the tokens it gives. A host that fails is
reported with its step and output; the others go on. Hosts already in the
cluster are left alone, so running it again with more hosts adds them.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import os
import shlex
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import click

from .output import fail

VENV = "/opt/orch"
ORCH = f"{VENV}/bin/orch"
STAGE = "/var/tmp/orch-dist"
UNIT = "/etc/systemd/system/orch.service"
CONFIG_DIR = "/etc/orch"


class StepError(Exception):
    def __init__(self, step: str, output: str) -> None:
        super().__init__(f"{step}: {output}")
        self.step = step
        self.output = output


@dataclass
class SSH:
    """One host over the system's ssh client, multiplexed (ControlMaster)."""

    target: str  # [user@]addr
    control_dir: str
    identity: str | None = None
    options: tuple[str, ...] = ()
    sudo: bool = False

    @property
    def addr(self) -> str:
        return self.target.rpartition("@")[2]

    def argv(self, command: str) -> list[str]:
        a = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15",
             "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_dir}/%C", "-o", "ControlPersist=120"]
        if self.identity:
            a += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        for o in self.options:
            a += ["-o", o]
        return [*a, self.target, "--", command]

    async def run(self, command: str, *, stdin: bytes | None = None, timeout: float = 600.0,
                  root: bool = True) -> tuple[int, str]:
        """(exit code, stdout+stderr) of `command` in the host's shell; 255 = ssh itself failed."""
        if root and self.sudo:
            command = "sudo -n sh -c " + shlex.quote(command)
        p = await asyncio.create_subprocess_exec(
            *self.argv(command), stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            out, _ = await asyncio.wait_for(p.communicate(stdin), timeout)
        except TimeoutError:
            p.kill()
            await p.wait()
            return 124, f"timed out after {timeout:.0f} s"
        return p.returncode or 0, out.decode(errors="replace")

    async def step(self, step: str, command: str, **kw: Any) -> str:
        rc, out = await self.run(command, **kw)
        if rc != 0:
            raise StepError(step, out.strip() or f"exited with {rc}")
        return out

    async def close(self) -> None:
        p = await asyncio.create_subprocess_exec(
            "ssh", "-o", f"ControlPath={self.control_dir}/%C", "-O", "exit", self.target,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        await p.wait()


@dataclass
class HostRun:
    ssh: SSH
    state: str = "pending"  # member (already in the cluster), installed, joined, failed
    role: str = ""
    failed_step: str = ""
    output: str = ""
    times: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    node_id: str = ""  # once it joined (or made) the cluster


def _advertise(addr: str) -> str | None:
    try:
        return str(ipaddress.ip_address(addr.strip("[]")))
    except ValueError:
        return None  # a name: the daemon picks the address that routes to the manager


def wheelhouse_tar(path: str, config_text: str | None) -> bytes:
    """The wheels (and the daemon.yaml to install) as one tar to send."""
    names = sorted(n for n in os.listdir(path) if n.endswith(".whl"))
    if not any(n.startswith("orch-") for n in names):
        raise click.UsageError(f"{path} has no orch wheel: run `make dist` first (or give --dist DIR)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for n in names:
            tar.add(os.path.join(path, n), arcname=f"wheels/{n}")
        if config_text is not None:
            data = config_text.encode()
            ti = tarfile.TarInfo("daemon.yaml")
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


class Fleet:
    def __init__(self, hosts: list[SSH], *, echo: Any = click.echo) -> None:
        self.runs = [HostRun(h) for h in hosts]
        self.echo = echo
        self.t0 = time.monotonic()

    def say(self, r: HostRun, text: str) -> None:
        self.echo(f"[{r.ssh.target}] {text}")

    async def timed(self, r: HostRun, step: str, coro: Any) -> Any:
        t = time.monotonic()
        self.say(r, f"{step}...")
        try:
            out = await coro
        except StepError as e:
            r.state, r.failed_step, r.output = "failed", e.step, e.output
            out = e.output.strip()
            if len(out) > 2000:  # the first line says what failed, the end is the latest output
                out = out[:800] + "\n...\n" + out[-1200:]
            self.say(r, f"FAILED at {e.step}: {out}")
            raise
        r.times[step] = time.monotonic() - t
        self.say(r, f"{step} done ({r.times[step]:.1f} s)")
        return out

    # -- steps -----------------------------------------------------------------

    async def connect(self, r: HostRun) -> None:
        rc, out = await r.ssh.run("id -u", root=False, timeout=60)
        if rc != 0:
            why = "cannot connect (is it up, and is the SSH key right?)" if rc == 255 else "id -u failed"
            raise StepError("connect", f"{why}: {out.strip()}")
        r.ssh.sudo = out.strip().splitlines()[-1] != "0"

    async def status(self, r: HostRun) -> dict[str, Any] | None:
        rc, out = await r.ssh.run(f"test -x {ORCH} && {ORCH} system status --format json", timeout=120)
        if rc != 0:
            return None
        try:
            return json.loads(out[out.index("{"):])
        except ValueError:
            return None

    async def check(self, r: HostRun, runtime: str) -> None:
        from daemon.hostdeps import shell_check  # the one list of Debian packages

        rc, out = await r.ssh.run("sh -s", stdin=shell_check(runtime).encode(), timeout=120)
        if rc != 0:
            missing = [ln.split()[1] for ln in out.splitlines() if ln.startswith("MISSING ")]
            if missing:
                raise StepError("packages", f"the host lacks Debian packages orch needs: {', '.join(missing)} "
                                            f"(apt-get install {' '.join(dict.fromkeys(missing))}); "
                                            "nothing was installed\n" + out.strip())
            raise StepError("packages", out.strip())

    async def copy(self, r: HostRun, blob: bytes) -> None:
        await r.ssh.step("copy", f"rm -rf {STAGE} && mkdir -p {STAGE} && tar -C {STAGE} -xf -", stdin=blob)

    async def install(self, r: HostRun) -> None:
        # A venv left by an earlier run gets this orch (same version number, new build) in place of its own.
        # --no-compile: pip would byte-compile every module of every wheel (minutes under emulation);
        # Python compiles what the daemon imports, once.
        await r.ssh.step("install", f"if test -x {VENV}/bin/pip; then {VENV}/bin/pip uninstall -q -y orch; "
                                    f"else python3 -m venv {VENV}; fi && "
                                    f"{VENV}/bin/pip install -q --no-compile --disable-pip-version-check --no-index "
                                    f"--find-links {STAGE}/wheels orch")

    async def system_install(self, r: HostRun, with_config: bool) -> None:
        cfg = f" --config {STAGE}/daemon.yaml" if with_config else ""
        await r.ssh.step("system install", f"{ORCH} system install{cfg}")

    async def prepare(self, r: HostRun, blob: bytes, with_config: bool, runtime: str) -> None:
        try:
            await self.timed(r, "connect", self.connect(r))
            st = await self.status(r)
            d = (st or {}).get("daemon") or {}
            if d.get("cluster"):
                r.state, r.info = "member", d["cluster"]
                r.role = d["cluster"].get("role", "")
                self.say(r, f"already a {r.role} of the cluster: left as it is")
                return
            await self.timed(r, "packages", self.check(r, runtime))
        except StepError:
            return
        # A host with nothing of orch on it is left that way when a step fails (an earlier install is not
        # touched: it may be an upgrade that the operator wants to look at).
        rc, _ = await r.ssh.run(f"test -e {VENV} || test -e {UNIT} || test -e {CONFIG_DIR}", timeout=60)
        fresh = rc == 1
        try:
            await self.timed(r, "copy", self.copy(r, blob))
            await self.timed(r, "install", self.install(r))
            await self.timed(r, "system install", self.system_install(r, with_config))
            r.state = "installed"
        except StepError:
            if fresh:
                await self.roll_back(r)

    async def roll_back(self, r: HostRun) -> None:
        rc, out = await r.ssh.run(f"if test -x {ORCH}; then {ORCH} system uninstall --purge; fi; "
                                  f"rm -rf {VENV} {STAGE}", timeout=300)
        if rc == 0:
            self.say(r, "rolled back: nothing of orch is left on it")
        else:
            self.say(r, f"could not roll back ({out.strip()[-1000:]}): run `orch fleet down {r.ssh.target}`")

    async def init(self, r: HostRun) -> None:
        adv = _advertise(r.ssh.addr)
        await r.ssh.step("init", f"{ORCH} init" + (f" --advertise-addr {adv}" if adv else ""))
        r.state, r.role = "joined", "manager"
        await self._learn_node_id(r)

    async def join(self, r: HostRun, token: str, manager: str, role: str) -> None:
        adv = _advertise(r.ssh.addr)
        await r.ssh.step("join", f"{ORCH} join --token {shlex.quote(token)}"
                                 + (f" --advertise-addr {adv}" if adv else "") + f" {shlex.quote(manager)}")
        r.state, r.role = "joined", role
        await self._learn_node_id(r)

    async def _learn_node_id(self, r: HostRun) -> None:
        st = await self.status(r)
        r.node_id = str(((st or {}).get("daemon") or {}).get("cluster", {}).get("node_id") or "")

    async def up(self, blob: bytes, with_config: bool, runtime: str, managers: int) -> int:
        await asyncio.gather(*(self.prepare(r, blob, with_config, runtime) for r in self.runs))
        leader = next((r for r in self.runs if r.state == "member" and r.role == "manager"), None)
        fresh = [r for r in self.runs if r.state == "installed"]
        if leader is None and fresh:
            leader = fresh.pop(0)
            try:
                await self.timed(leader, "init", self.init(leader))
            except StepError:
                leader = None
        if leader is None:
            self.echo("No manager: nothing could join.")
            return self.summary(None)
        if fresh:
            rc, out = await leader.ssh.run(f"{ORCH} join-token -q worker && {ORCH} join-token -q manager && "
                                           f"{ORCH} system status --format json")
            if rc != 0:
                self.echo(f"[{leader.ssh.target}] cannot get the join tokens: {out.strip()}")
                return self.summary(leader)
            lines = out.strip().splitlines()
            worker_tok, manager_tok = lines[0].strip(), lines[1].strip()
            st = json.loads("\n".join(lines[2:]))
            addr = st["daemon"]["cluster"]["advertise_addr"]
            have = sum(1 for r in self.runs if r.role == "manager")
            # Managers join one at a time (each a Raft membership change); workers all at once.
            new_managers = fresh[:max(0, managers - have)]
            for r in new_managers:
                try:
                    await self.timed(r, "join", self.join(r, manager_tok, addr, "manager"))
                except StepError:
                    pass
            await asyncio.gather(*(self._join_quietly(r, worker_tok, addr) for r in fresh[len(new_managers):]))
        return self.summary(leader)

    async def _join_quietly(self, r: HostRun, token: str, addr: str) -> None:
        try:
            await self.timed(r, "join", self.join(r, token, addr, "worker"))
        except StepError:
            pass

    def summary(self, leader: HostRun | None) -> int:
        self.echo("")
        # Seconds per step (connect and the package check are in TOTAL); SERVICE is `orch system install`:
        # the unit written, the daemon started and answering.
        cols = {"copy": "COPY", "install": "INSTALL", "system install": "SERVICE", "init": "INIT", "join": "JOIN"}
        self.echo(f"{'HOST':<24} {'RESULT':<20} {'ROLE':<8} " + " ".join(f"{h:>8}" for h in cols.values())
                  + f" {'TOTAL':>8}")
        for r in self.runs:
            result = r.state if r.state != "failed" else f"failed at {r.failed_step}"
            times = " ".join(f"{r.times[c]:>7.1f}s" if c in r.times else f"{'-':>8}" for c in cols)
            total = sum(r.times.values())
            self.echo(f"{r.ssh.target:<24} {result:<20} {r.role or '-':<8} {times} {total:>7.1f}s")
        self.echo(f"wall time {time.monotonic() - self.t0:.1f} s")
        return 1 if any(r.state == "failed" for r in self.runs) else 0


READY_WAIT = 120.0
"""Seconds `fleet up` waits for the nodes it joined to be READY (a join
returns before the node's agent has its first session) before `node ls`."""


async def _node_ls(leader: HostRun, runs: list[HostRun], echo: Any, wait: float = READY_WAIT) -> None:
    joined = {r.node_id: r.ssh.target for r in runs if r.state == "joined" and r.node_id}
    deadline = time.monotonic() + wait
    said = False
    while joined:
        rc, out = await leader.ssh.run(f"{ORCH} node ls --format json", timeout=60)
        try:
            states = {n["id"]: n["status"]["state"] for n in json.loads(out[out.index("["):])} if rc == 0 else {}
        except (ValueError, KeyError, TypeError):
            states = {}
        waiting = sorted(t for i, t in joined.items() if states.get(i) != "ready")
        if not waiting:
            break
        if time.monotonic() > deadline:
            echo(f"not READY after {wait:.0f} s: {', '.join(waiting)} (see `orch node ls` and the host's "
                 "`journalctl -u orch`)")
            break
        if not said:
            echo(f"waiting for {len(waiting)} joined node(s) to report READY...")
            said = True
        await asyncio.sleep(1.0)
    rc, out = await leader.ssh.run(f"{ORCH} node ls")
    echo("")
    echo(out.rstrip() if rc == 0 else f"orch node ls failed on {leader.ssh.target}: {out.strip()}")


def _hosts(hosts: tuple[str, ...], identity: str | None, ssh_option: tuple[str, ...], control: str) -> list[SSH]:
    if len(set(hosts)) != len(hosts):
        raise click.UsageError("a host is given twice")
    return [SSH(h, control, identity, ssh_option) for h in hosts]


HOST_OPTIONS = [
    click.option("-i", "--identity", type=click.Path(dir_okay=False, exists=True), help="SSH private key."),
    click.option("-o", "--ssh-option", multiple=True, help="An ssh -o option (repeatable), e.g. Port=2222."),
]


def _with_host_options(f: Any) -> Any:
    for opt in reversed(HOST_OPTIONS):
        f = opt(f)
    return f


@click.group()
def fleet() -> None:
    """Install orch on hosts over SSH and make them a cluster."""


@fleet.command("up")
@click.argument("hosts", nargs=-1, required=True)
@click.option("--managers", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many of the hosts are managers (the first ones).")
@click.option("--dist", "dist", default="dist/wheels", show_default=True, type=click.Path(file_okay=False),
              help="The wheelhouse `make dist` made.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="A daemon.yaml installed on every host (checked here first).")
@_with_host_options
def up(hosts: tuple[str, ...], managers: int, dist: str, config_file: str | None, identity: str | None,
       ssh_option: tuple[str, ...]) -> None:
    """Install orch on HOSTS ([user@]addr) and join them into one cluster.

    The first host is the first manager (unless a host already manages the
    cluster); hosts already in the cluster are left alone."""
    from daemon.config import ConfigError, parse_config

    text = None
    runtime = "runc"
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            text = f.read()
        try:
            runtime = parse_config(text, config_file).values.get("runtime", runtime)
        except ConfigError as e:
            fail(f"fleet up: nothing done: {e}")
    if not os.path.isdir(dist):
        fail(f"fleet up: {dist} does not exist: run `make dist` first (or give --dist DIR)")
    blob = wheelhouse_tar(dist, text)
    with tempfile.TemporaryDirectory(prefix="orch-ssh-") as control:
        hs = _hosts(hosts, identity, ssh_option, control)
        fl = Fleet(hs)

        async def main() -> int:
            try:
                rc = await fl.up(blob, text is not None, runtime, managers)
                leader = next((r for r in fl.runs if r.role == "manager" and r.state != "failed"), None)
                if leader is not None:
                    await _node_ls(leader, fl.runs, click.echo)
                return rc
            finally:
                await asyncio.gather(*(h.close() for h in hs))

        rc = asyncio.run(main())
    raise SystemExit(rc)


@fleet.command("down")
@click.argument("hosts", nargs=-1, required=True)
@_with_host_options
def down(hosts: tuple[str, ...], identity: str | None, ssh_option: tuple[str, ...]) -> None:
    """Make HOSTS leave the cluster and remove orch from them (`orch system uninstall --purge`, the venv)."""
    with tempfile.TemporaryDirectory(prefix="orch-ssh-") as control:
        hs = _hosts(hosts, identity, ssh_option, control)
        fl = Fleet(hs)

        async def one(r: HostRun) -> None:
            try:
                await fl.timed(r, "connect", fl.connect(r))
                await fl.timed(r, "uninstall", r.ssh.step(
                    "uninstall", f"if test -x {ORCH}; then {ORCH} system uninstall --purge; fi && "
                                 f"rm -rf {VENV} {STAGE}"))
                r.state = "removed"
            except StepError:
                pass

        async def main() -> int:
            try:
                await asyncio.gather(*(one(r) for r in fl.runs))
                return fl.summary(None)
            finally:
                await asyncio.gather(*(h.close() for h in hs))

        rc = asyncio.run(main())
    raise SystemExit(rc)
