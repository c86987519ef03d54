"""A fleet of N simulated hosts on one machine, for multi-host tests.

This module owns the fleet's underlay network, the processes the harness
starts on each host, network partitions, and the teardown of all of it.

Layout of one fleet (run id R, hosts a, b, ...):

    netns orch-R-_ul       bridge br0 with one port v-<host> per host
    netns orch-R-<host>    lo up, eth0 = the other end of v-<host>,
                           address <subnet>.<i>/24

The bridge lives in a namespace of its own, not in the root namespace: with
br_netfilter loaded, bridged frames traverse the iptables FORWARD chain of the
bridge's namespace, and dockerd sets the root namespace's FORWARD policy to
DROP. In a fresh namespace that chain is empty with policy ACCEPT, so nothing
anyone does to the root namespace's firewall reaches the fleet, the fleet
never adds a rule there, and two fleets (even with the same subnet) cannot see
each other. No interface of a fleet ever exists in the root namespace: each
veth pair is created inside the bridge namespace with its peer placed
directly in the host's namespace.

Partitions are nftables rules of the `bridge` family in the bridge namespace
(table `orch_partition`, forward hook), matching bridge ports: a frame from
port v-a to port v-b is dropped. That cuts every kind of traffic between the
hosts (ARP, VXLAN, TCP to any address, also traffic of containers routed out
of a host), and the hosts' own firewalls, which the orchestrator may program,
are left alone.

Processes run in a host's network namespace only (`nsenter --net`; the mount
namespace is shared, so runc, /sys and the hosts' dirs behave as on a real
machine; `ip netns exec` would remount /sys, which breaks runc). Each one is
its own process group, so pause/kill reach its children too.

Teardown (context manager, pytest fixture, atexit as a last resort) kills the
process groups, then every process still in one of the fleet's namespaces or
in a host's cgroup parent (conmon double-forks out of the group, containers
live in cgroups), unmounts what is mounted under the hosts' dirs, removes the
cgroup parents and the namespaces (which removes links, bridge and partition
rules with them). Each fleet writes a state file under /run/orch-fleet and
holds an flock on it while its owner lives; `cleanup_stale()` tears down the
fleets whose lock is free, that is whose owning process is gone.

Names a host's daemon creates in machine-wide places (network namespaces,
cgroups, container ids) should start with `host.name_prefix`; teardown also
removes namespaces with that prefix.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from tests.fixtures.cgroups import remove_cgroup_parent

NETNS_DIR = "/run/netns"
STATE_DIR = "/run/orch-fleet"
CGROUP_ROOT = Path("/sys/fs/cgroup")
DEFAULT_SUBNET = "10.213.0.0/24"
BRIDGE = "br0"
HOST_IF = "eth0"
# Suffix of the bridge namespace: "_" cannot occur in a host name, so it
# never collides with a host's namespace.
BRIDGE_NS_SUFFIX = "_ul"
NFT_TABLE = "orch_partition"
# Host and run names go into interface names (v-<host> <= 15 chars) and
# namespace names; no "-" so that one name's prefix never matches another's.
_NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")
_MNT_DETACH = 2


class FleetError(Exception):
    """Setting up or using a fleet failed."""


class FleetCleanupError(FleetError):
    """Teardown could not remove everything; the message lists what is left."""


# -- small system helpers -----------------------------------------------------


def _ns_id(path: str) -> tuple[int, int] | None:
    """(device, inode) identifying the network namespace at path, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _pids_in_netns(ids: set[tuple[int, int]]) -> set[int]:
    """Live processes whose network namespace is one of ids (zombies have none)."""
    found: set[int] = set()
    if not ids:
        return found
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _ns_id(f"/proc/{entry.name}/ns/net") in ids:
            found.add(int(entry.name))
    return found


def _cgroup_dirs(parent: str) -> list[Path]:
    """The parent's directory in every hierarchy (v2 root, each v1 controller)."""
    dirs = [CGROUP_ROOT / parent]
    try:
        dirs += [d / parent for d in CGROUP_ROOT.iterdir() if d.is_dir()]
    except OSError:
        pass
    return [d for d in dirs if d.is_dir()]


def _write_quiet(path: Path, data: str) -> None:
    try:
        path.write_text(data)
    except OSError:
        pass


def _pids_in_cgroups(parents: Iterable[str]) -> set[int]:
    """Processes anywhere under the parents, after thawing them: a frozen
    process does not die of SIGKILL until it is thawed."""
    found: set[int] = set()
    for parent in parents:
        for top in _cgroup_dirs(parent):
            subs = [top] + [p for p in top.rglob("*") if p.is_dir()]
            for d in subs:
                if (d / "freezer.state").exists():
                    _write_quiet(d / "freezer.state", "THAWED")
                if (d / "cgroup.freeze").exists():
                    _write_quiet(d / "cgroup.freeze", "0")
                try:
                    text = (d / "cgroup.procs").read_text()
                except OSError:
                    continue
                found.update(int(x) for x in text.split())
    found.discard(os.getpid())
    return found


def _unescape_mount(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mounts_under(roots: Iterable[str]) -> list[str]:
    """Mount points at or below any of roots, deepest first."""
    rs = [os.path.realpath(r) for r in roots]
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape_mount(line.split()[4])
            if any(mp == r or mp.startswith(r + "/") for r in rs):
                out.append(mp)
    return sorted(out, key=lambda p: p.count("/"), reverse=True)


def _unmount_under(roots: Iterable[str]) -> list[str]:
    """Lazily unmount everything under roots (repeated: mounts may stack)."""
    libc = ctypes.CDLL(None, use_errno=True)
    roots = list(roots)
    for _ in range(20):
        mps = _mounts_under(roots)
        if not mps:
            return []
        for mp in mps:
            libc.umount2(mp.encode(), _MNT_DETACH)
    return [f"still mounted: {mp}" for mp in _mounts_under(roots)]


def _proc_state(pid: int) -> str:
    """The one-letter state of pid from /proc/PID/stat ('' if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    # comm may contain spaces and parentheses; the state follows the last ')'.
    return stat.rsplit(")", 1)[1].split()[0]


def _nsenter(netns_path: str, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={netns_path}", "--", *argv]


# -- the record of what a fleet made (also its state file) --------------------


@dataclass
class _RunRecord:
    """Everything teardown needs, so that another process can finish it."""

    run_id: str
    owner_pid: int
    base_dir: str
    owned_base: bool
    netns: list[str] = field(default_factory=list)
    name_prefixes: list[str] = field(default_factory=list)
    cgroup_parents: list[str] = field(default_factory=list)
    host_dirs: list[str] = field(default_factory=list)


def _destroy(rec: _RunRecord, deadline_s: float = 10.0) -> list[str]:
    """Remove everything rec names; return what could not be removed."""
    problems: list[str] = []
    deadline = time.monotonic() + deadline_s

    def our_netns() -> list[str]:
        names = set(rec.netns)
        try:
            for n in os.listdir(NETNS_DIR):
                if any(n.startswith(p) for p in rec.name_prefixes):
                    names.add(n)
        except FileNotFoundError:
            pass
        return sorted(n for n in names if os.path.exists(os.path.join(NETNS_DIR, n)))

    # 1. Kill every process still in our namespaces or cgroups, repeatedly:
    # a process may fork while we scan.
    while True:
        ids = {i for n in our_netns() if (i := _ns_id(os.path.join(NETNS_DIR, n)))}
        pids = _pids_in_netns(ids) | _pids_in_cgroups(rec.cgroup_parents)
        if not pids:
            break
        if time.monotonic() > deadline:
            problems.append(f"processes survive SIGKILL: {sorted(pids)}")
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)

    # 2. Mounts under the hosts' dirs (rootfs, tmpfs of a daemon), before
    # the dirs are removed.
    problems += _unmount_under(rec.host_dirs + ([rec.base_dir] if rec.owned_base else []))

    # 3. cgroup parents; a killed task leaves its cgroup a moment after it
    # dies, so rmdir may see EBUSY for a while.
    for parent in rec.cgroup_parents:
        while True:
            try:
                remove_cgroup_parent(parent)
                break
            except OSError as e:
                # EBUSY until killed tasks have left; ENOENT if a child
                # vanished under us. Either way: rescan until the deadline.
                if time.monotonic() > deadline:
                    problems.append(f"cgroup {parent}: {e}")
                    break
                time.sleep(0.05)

    # 4. Namespaces: removing the last reference destroys their links, the
    # bridge and the partition table with them.
    for n in our_netns():
        try:
            netns.remove(n)
        except OSError as e:
            problems.append(f"netns {n}: {e}")

    # 5. Files.
    if rec.owned_base and os.path.isdir(rec.base_dir):
        shutil.rmtree(rec.base_dir, ignore_errors=True)
        if os.path.exists(rec.base_dir):
            problems.append(f"dir {rec.base_dir} could not be removed")
    return problems


def _lock_state(path: str) -> int | None:
    """Open and exclusively flock path; None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _write_state(fd: int, rec: _RunRecord) -> None:
    data = json.dumps(asdict(rec), indent=1).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def cleanup_stale(state_dir: str = STATE_DIR) -> list[str]:
    """Tear down fleets whose owning process is gone (crashed test runs).

    A live owner holds an flock on its state file, so a free lock means the
    owner died (or closed with problems left over). Returns the run ids
    cleaned; what cannot be removed is reported as a warning and the state
    file kept for a later attempt."""
    cleaned: list[str] = []
    if not os.path.isdir(state_dir):
        return cleaned
    for name in sorted(os.listdir(state_dir)):
        if not name.endswith(".json"):
            continue
        path = os.path.join(state_dir, name)
        fd = _lock_state(path)
        if fd is None:
            continue  # owner alive
        try:
            raw = os.read(fd, 1 << 20)
            if not raw:
                # The owner died between creating and writing it: nothing
                # was made yet.
                os.unlink(path)
                continue
            try:
                rec = _RunRecord(**json.loads(raw))
            except (ValueError, TypeError) as e:
                warnings.warn(f"fleet state file {path} is unreadable ({e}); left in place")
                continue
            problems = _destroy(rec)
            if problems:
                warnings.warn(f"stale fleet {rec.run_id}: " + "; ".join(problems))
                continue
            os.unlink(path)
            cleaned.append(rec.run_id)
        finally:
            os.close(fd)
    return cleaned


# -- hosts --------------------------------------------------------------------


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Until no live (non-zombie) process other than pgid's own leader is in process group pgid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = False
        for e in os.scandir("/proc"):
            if not e.name.isdigit() or int(e.name) == pgid:
                continue
            try:
                fields = Path(f"/proc/{e.name}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                alive = True
                break
        if not alive:
            return
        time.sleep(0.01)


@dataclass(eq=False)
class Host:
    """One simulated host: a network namespace, a private dir, and at most one
    long-lived process (the daemon under test) started with `start`."""

    name: str
    index: int
    addr: str
    netns: str
    dir: str
    cgroup_parent: str
    name_prefix: str
    ifname: str = HOST_IF
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    # paths inside the host's private dir
    @property
    def netns_path(self) -> str:
        return os.path.join(NETNS_DIR, self.netns)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.dir, "data")

    @property
    def runc_root(self) -> str:
        return os.path.join(self.dir, "runc")

    @property
    def log_path(self) -> str:
        return os.path.join(self.dir, "host.log")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.dir, "orch.sock")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # -- the long-lived process ------------------------------------------------

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start argv in this host's network namespace, in a new process group,
        output appended to log_path. env entries are added to os.environ."""
        if not argv:
            raise ValueError(f"host {self.name}: start() needs a command")
        if self.alive():
            raise FleetError(f"host {self.name}: already running pid {self.pid}; stop it first")
        self._reap()
        if shutil.which(argv[0]) is None:
            # nsenter would only say so in the log; fail where the caller is.
            raise FileNotFoundError(f"host {self.name}: command not found: {argv[0]}")
        self.argv, self.env = list(argv), (dict(env) if env is not None else None)
        full_env = {**os.environ, **(env or {})}
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                _nsenter(self.netns_path, self.argv),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.dir, env=full_env,
            )
        return self.proc

    def _exited(self) -> bool:
        """Has the process ended? Peeks with WNOWAIT so the zombie keeps its
        pid (and process group id) reserved until we reap it: signalling the
        group is then never racing with pid reuse."""
        if self.proc is None or self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return info is not None

    def alive(self) -> bool:
        return not self._exited()

    def state(self) -> str:
        """The process's state letter from /proc (R, S, T, Z...), '' if none."""
        if self.proc is None or self.proc.returncode is not None:
            return ""
        return _proc_state(self.proc.pid)

    def _signal_group(self, sig: int) -> None:
        # Only while unreaped: a reaped leader's pgid may belong to someone else.
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            # SIGKILL is delivered asynchronously: until the leader is reaped its
            # pgid cannot be reused, so wait here for the rest of the group to die.
            _wait_group_gone(self.proc.pid, timeout)
        return self.proc.wait(timeout)

    def kill9(self) -> int | None:
        """SIGKILL the whole process group (a crash); returns the exit status."""
        self._signal_group(signal.SIGKILL)
        return self._reap()

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM the group (SIGCONT too, in case it is paused), SIGKILL what
        is left after timeout; returns the leader's exit status."""
        if self.proc is None:
            return None
        if not self._exited():
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)
            deadline = time.monotonic() + timeout
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.02)
        # Leader gone (or stuck): sweep stragglers of its group before reaping.
        self._signal_group(signal.SIGKILL)
        return self._reap()

    def restart(self, timeout: float = 5.0) -> subprocess.Popen[bytes]:
        """stop() if running, then start the same argv and env again."""
        if not self.argv:
            raise FleetError(f"host {self.name}: restart() before any start()")
        self.stop(timeout)
        return self.start(self.argv, self.env)

    def pause(self) -> None:
        """SIGSTOP the process group (a hung host: sockets stay open, no replies)."""
        if self._exited():
            raise FleetError(f"host {self.name}: nothing running to pause")
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    # -- one-shot commands ---------------------------------------------------

    def run(
        self,
        argv: list[str],
        timeout: float = 10.0,
        *,
        input: str | None = None,
        env: dict[str, str] | None = None,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv to completion in this host's network namespace; output
        captured as text. On timeout its whole process group is killed.

        Like subprocess.run, it waits for EOF on stdout/stderr: a command
        that leaves a daemon behind must redirect the daemon's output."""
        full_argv = _nsenter(self.netns_path, list(argv))
        p = subprocess.Popen(
            full_argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True, cwd=self.dir, env={**os.environ, **(env or {})},
        )
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                p.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                # A grandchild that left the group (setsid) still holds the
                # pipes; do not wait for it (teardown kills it).
                for pipe in (p.stdout, p.stderr):
                    if pipe is not None:
                        pipe.close()
                p.wait()
            raise
        cp = subprocess.CompletedProcess(list(argv), p.returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    def log_tail(self, n: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


# -- the fleet ----------------------------------------------------------------


class Fleet:
    """N hosts on one bridge. Use as a context manager (or via fleet_fixture);
    close() is also registered with atexit until it has run."""

    def __init__(
        self,
        run_id: str,
        hosts: Iterable[str] = (),
        *,
        subnet: str = DEFAULT_SUBNET,
        base_dir: str | None = None,
        state_dir: str = STATE_DIR,
    ) -> None:
        if not _NAME_RE.match(run_id):
            raise ValueError(f"Fleet run_id {run_id!r}: must match {_NAME_RE.pattern}")
        try:
            self.subnet = ipaddress.IPv4Network(subnet)
        except ValueError as e:
            raise ValueError(f"Fleet subnet {subnet!r}: {e}") from None
        if self.subnet.prefixlen > 29:
            raise ValueError(f"Fleet subnet {subnet!r}: too small for a fleet")
        self.run_id = run_id
        self.initial_hosts = list(hosts)
        for h in self.initial_hosts:
            self._check_host_name(h)
        self.hosts: dict[str, Host] = {}
        self.bridge_netns = f"orch-{run_id}-{BRIDGE_NS_SUFFIX}"
        self._base_dir_arg = base_dir
        self.state_dir = state_dir
        self.state_path = os.path.join(state_dir, f"{run_id}.json")
        self._state_fd: int | None = None
        self._rec: _RunRecord | None = None
        self._drops: set[tuple[str, str]] = set()
        self._closed = False

    def _check_host_name(self, name: str) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"Fleet {self.run_id}: host name {name!r} must match {_NAME_RE.pattern}")

    @property
    def base_dir(self) -> str:
        if self._rec is None:
            raise FleetError(f"Fleet {self.run_id}: not up")
        return self._rec.base_dir

    def __enter__(self) -> Fleet:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise KeyError(f"Fleet {self.run_id} has no host {name!r} (hosts: {sorted(self.hosts)})") from None

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self.hosts.values()))

    # -- set up --------------------------------------------------------------

    def up(self) -> None:
        """Create the bridge namespace and the initial hosts. On any failure
        what was made is torn down before the error propagates."""
        if self._rec is not None:
            raise FleetError(f"Fleet {self.run_id}: already up")
        os.makedirs(self.state_dir, exist_ok=True)
        fd = _lock_state(self.state_path)
        if fd is None:
            raise FleetError(f"Fleet run_id {self.run_id!r} is in use by a live process ({self.state_path})")
        if os.fstat(fd).st_size:
            # A dead owner left this run id behind: finish its teardown first.
            os.close(fd)
            cleanup_stale(self.state_dir)
            fd = _lock_state(self.state_path)
            if fd is None:
                raise FleetError(f"Fleet run_id {self.run_id!r} is in use by a live process ({self.state_path})")
            if os.fstat(fd).st_size:
                os.close(fd)
                raise FleetError(f"Fleet run_id {self.run_id!r}: leftovers of an earlier run could not be removed")
        self._state_fd = fd
        owned = self._base_dir_arg is None
        # Short paths: daemons put unix sockets (108-byte limit) in here.
        base = tempfile.mkdtemp(prefix=f"orch-{self.run_id}-") if owned else os.path.abspath(str(self._base_dir_arg))
        os.makedirs(base, exist_ok=True)
        self._rec = _RunRecord(run_id=self.run_id, owner_pid=os.getpid(), base_dir=base, owned_base=owned,
                               netns=[self.bridge_netns])
        # Written before anything exists, so a crash at any later point
        # leaves a record cleanup_stale can act on.
        _write_state(fd, self._rec)
        atexit.register(self._close_at_exit)
        try:
            if os.path.exists(os.path.join(NETNS_DIR, self.bridge_netns)):
                raise FleetError(f"netns {self.bridge_netns} already exists (not ours)")
            netns.create(self.bridge_netns)
            with IPRoute(netns=self.bridge_netns) as ipr:
                # STP off and forward delay 0: ports forward at once; no
                # multicast snooping, which could drop groups nobody queries.
                ipr.link("add", ifname=BRIDGE, kind="bridge", br_stp_state=0,
                         br_forward_delay=0, br_mcast_snooping=0)
                idx = ipr.link_lookup(ifname=BRIDGE)[0]
                ipr.link("set", index=idx, state="up")
            for h in self.initial_hosts:
                self.add_host(h)
        except BaseException:
            self.close()
            raise

    def add_host(self, name: str) -> Host:
        """Create one more host (also after up(), e.g. a node that joins later)."""
        if self._rec is None or self._closed:
            raise FleetError(f"Fleet {self.run_id}: add_host({name!r}) needs an up fleet")
        self._check_host_name(name)
        if name in self.hosts:
            raise FleetError(f"Fleet {self.run_id}: host {name!r} exists")
        index = len(self.hosts) + 1
        hosts_max = self.subnet.num_addresses - 2
        if index > hosts_max:
            raise FleetError(f"Fleet {self.run_id}: subnet {self.subnet} holds at most {hosts_max} hosts")
        addr = str(self.subnet.network_address + index)
        ns = f"orch-{self.run_id}-{name}"
        host = Host(
            name=name, index=index, addr=addr, netns=ns,
            dir=os.path.join(self._rec.base_dir, name),
            cgroup_parent=ns, name_prefix=f"{ns}-",
        )
        # Record first, create after: teardown must know of anything that exists.
        self._rec.netns.append(ns)
        self._rec.name_prefixes.append(host.name_prefix)
        self._rec.cgroup_parents.append(host.cgroup_parent)
        self._rec.host_dirs.append(host.dir)
        assert self._state_fd is not None
        _write_state(self._state_fd, self._rec)
        for d in (host.dir, host.data_dir, host.runc_root):
            os.makedirs(d, exist_ok=True)
        if os.path.exists(host.netns_path):
            raise FleetError(f"netns {ns} already exists (not ours)")
        netns.create(ns)
        port = f"v-{name}"
        with IPRoute(netns=self.bridge_netns) as ipr:
            ipr.link("add", ifname=port, kind="veth",
                     peer={"ifname": HOST_IF, "net_ns_fd": host.netns_path})
            pidx = ipr.link_lookup(ifname=port)[0]
            ipr.link("set", index=pidx, master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            eidx = ipr.link_lookup(ifname=HOST_IF)[0]
            ipr.addr("add", index=eidx, address=addr, prefixlen=self.subnet.prefixlen)
            ipr.link("set", index=eidx, state="up")
        self.hosts[name] = host
        return host

    # -- partitions ------------------------------------------------------------

    def _names(self, group: Iterable[Host | str]) -> set[str]:
        names = {g.name if isinstance(g, Host) else g for g in group}
        for n in names:
            self[n]  # KeyError naming the unknown host
        return names

    @property
    def partitions(self) -> frozenset[tuple[str, str]]:
        """(from, to) host pairs whose frames are dropped."""
        return frozenset(self._drops)

    def partition(self, group_a: Iterable[Host | str], group_b: Iterable[Host | str], *,
                  symmetric: bool = True) -> None:
        """Drop all traffic between the groups (only a->b if not symmetric).
        Adds to existing partitions; heal() removes them all."""
        a, b = self._names(group_a), self._names(group_b)
        if not a or not b:
            raise ValueError(f"Fleet {self.run_id}: partition needs two non-empty groups")
        if a & b:
            raise ValueError(f"Fleet {self.run_id}: hosts {sorted(a & b)} are on both sides of a partition")
        new = {(x, y) for x in a for y in b}
        if symmetric:
            new |= {(y, x) for x, y in new}
        self._apply(self._drops | new)

    def isolate(self, *hosts: Host | str) -> None:
        """Partition hosts from every other host."""
        inside = self._names(hosts)
        self.partition(inside, set(self.hosts) - inside)

    def heal(self) -> None:
        """Remove every partition."""
        self._apply(set())

    def _apply(self, drops: set[tuple[str, str]]) -> None:
        # One nft transaction replaces the whole table (creating it first so
        # the delete never fails), so the rule set is never half-applied.
        lines = [f"table bridge {NFT_TABLE} {{}}", f"delete table bridge {NFT_TABLE}"]
        if drops:
            rules = "\n".join(f'    iifname "v-{x}" oifname "v-{y}" drop' for x, y in sorted(drops))
            lines.append(
                f"table bridge {NFT_TABLE} {{\n  chain fwd_drop {{\n"
                f"    type filter hook forward priority 0; policy accept;\n{rules}\n  }}\n}}"
            )
        cp = subprocess.run(
            _nsenter(os.path.join(NETNS_DIR, self.bridge_netns), ["nft", "-f", "-"]),
            input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=10,
        )
        if cp.returncode != 0:
            raise FleetError(f"Fleet {self.run_id}: nft failed: {cp.stderr.strip()}")
        self._drops = set(drops)

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Tear everything down; idempotent. Raises FleetCleanupError listing
        what is left (the state file then stays for cleanup_stale)."""
        if self._closed or self._rec is None:
            self._closed = True
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        problems: list[str] = []
        for h in self.hosts.values():
            try:
                h.kill9()
            except (OSError, subprocess.TimeoutExpired) as e:
                problems.append(f"host {h.name} pid {h.pid}: {e}")
        problems += _destroy(self._rec)
        fd, self._state_fd = self._state_fd, None
        if not problems:
            try:
                os.unlink(self.state_path)
            except FileNotFoundError:
                pass
        if fd is not None:
            os.close(fd)
        if problems:
            raise FleetCleanupError(f"Fleet {self.run_id} teardown left: " + "; ".join(problems))

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception as e:  # noqa: BLE001  (interpreter exit: report, don't raise)
            print(f"orch fleet: {e}", file=sys.stderr)


# -- pytest --------------------------------------------------------------------


def fleet_fixture(
    hosts: Iterable[str] = ("a", "b", "c"), *, scope: str = "function", **fleet_kwargs: Any
) -> Callable[..., Any]:
    """A pytest fixture yielding an up Fleet with these hosts:

        from tests.harness.fleet import fleet_fixture
        fleet = fleet_fixture(("m1", "m2", "w1"))

        def test_x(fleet): ...

    Skips when not root. Before building it removes leftovers of crashed
    runs; after the test the hosts' logs are copied into a pytest temp dir
    (its path is printed) and the fleet is torn down."""
    import pytest

    names = list(hosts)

    @pytest.fixture(scope=scope)
    def _fleet(tmp_path_factory: Any) -> Iterator[Fleet]:
        if os.geteuid() != 0:
            pytest.skip("a fleet needs root (network namespaces, cgroups)")
        for tool in ("nsenter", "nft"):
            if shutil.which(tool) is None:
                pytest.skip(f"a fleet needs {tool}")
        cleanup_stale()
        f = Fleet("f" + secrets.token_hex(3), names, **fleet_kwargs)
        with f:
            try:
                yield f
            finally:
                keep = tmp_path_factory.mktemp(f"fleet-{f.run_id}")
                for h in f:
                    if os.path.exists(h.log_path):
                        shutil.copy(h.log_path, keep / f"{h.name}.log")
                print(f"fleet {f.run_id} logs: {keep}")

    return _fleet
