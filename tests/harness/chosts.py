"""A fleet of container hosts: the fast backend for the installer, systemd and
`orch fleet up` (the VM fleet, tests/harness/vmfleet.py, proves the same on
separate kernels).

- Image: the root filesystem of the VM fleet (vmfleet.GUEST_PACKAGES from
  Debian with mmdebstrap, imported from there, not copied) without what only
  a VM needs (its kernel, initramfs, guest agent), plus what a container
  host needs: units that would reach into the shared kernel masked (udev,
  sysctl, binfmt, module loading), an SSH host key made at first boot (each
  host its own). Cached as a tar under vmfleet.CACHE by a hash of the
  recipe; `docker import`ed into the run's dockerd (no image comes from the
  internet).
- dockerd: Debian's docker.io, started by the run with its own data root,
  exec root and socket, and with --iptables=false --ip-forward=false
  --bridge=none, so it leaves the host's firewall and forwarding alone; the
  run's containers are started and removed with testcontainers-python (the
  Ryuk reaper is off: its image would come from Docker Hub).
- Hosts: privileged containers running systemd as PID 1 (own mount, pid,
  uts, network and cgroup namespaces, own /etc and hostname), /run and
  /run/lock on tmpfs, /var/lib on a volume of its own (ext4 under the data
  root: orch's overlay mounts cannot sit on the container's overlay root).
  All on one Docker network the run makes, internal (no default route);
  the host side of its bridge is the only address they reach (a registry
  there serves the test images).
- Teardown (always): containers, volumes, the network, the image, dockerd
  (by pid) and its containerd, mounts under the data root, the run's cgroup
  parent (dockerd --cgroup-parent /orch-chosts-RID), the data and exec
  roots. A run killed before its teardown is swept by the next `up()` (its
  owner pid is gone): its dockerd, bridge, mounts, cgroups and files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import vmfleet

Log = Callable[[str], None]

# What only a VM needs: a container host runs on the machine's kernel.
VM_ONLY = frozenset({"linux-image-cloud-amd64", "initramfs-tools", "qemu-guest-agent"})
PACKAGES = [p for p in vmfleet.GUEST_PACKAGES if p not in VM_ONLY]

# Units that would act on the shared kernel or devices (sysctls, binfmt,
# modules, udev), or wait for things a container does not have.
MASKED = [
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-sysctl.service",
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "systemd-modules-load.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount", "systemd-remount-fs.service",
    "systemd-firstboot.service", "getty.target", "console-getty.service", "apt-daily.timer",
    "apt-daily-upgrade.timer", "e2scrub_reap.service", "systemd-networkd-wait-online.service",
    "systemd-hwdb-update.service", "systemd-random-seed.service",
]

HOST_SETUP_UNIT = """[Unit]
Description=chosts: an SSH host key of this host's own
Before=ssh.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key'

[Install]
WantedBy=multi-user.target
"""


def recipe_hash() -> str:
    h = hashlib.sha256(vmfleet.MIRROR.encode())
    for part in (*PACKAGES, *MASKED, HOST_SETUP_UNIT, "chosts-v1"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def rootfs_tar() -> Path:
    return vmfleet.CACHE / f"chost-{recipe_hash()}.tar"


def build_rootfs(log: Log = print) -> tuple[Path, float]:
    """The cached root filesystem tar, built with mmdebstrap if missing; (path, seconds spent building)."""
    out = rootfs_tar()
    if out.exists():
        return out, 0.0
    if shutil.which("mmdebstrap") is None:
        raise RuntimeError("the container-host image is built with mmdebstrap: apt-get install mmdebstrap")
    t0 = time.monotonic()
    work = vmfleet.CACHE / f"build-chost-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        unit = work / "chost-setup.service"
        unit.write_text(HOST_SETUP_UNIT)
        hooks = [
            f'install -m 644 {shlex.quote(str(unit))} "$1/etc/systemd/system/chost-setup.service"',
            'chroot "$1" systemctl enable chost-setup.service',
            'chroot "$1" systemctl mask ' + " ".join(MASKED),
            ': > "$1/etc/fstab"',
            'rm -f "$1"/etc/ssh/ssh_host_* "$1/etc/hostname" && : > "$1/etc/machine-id"',
            ('mkdir -p "$1/etc/systemd/journald.conf.d" && '
             'printf "[Journal]\\nStorage=volatile\\n" > "$1/etc/systemd/journald.conf.d/chosts.conf"'),
            ('printf "UseDNS no\\nPermitRootLogin prohibit-password\\nHostKey /etc/ssh/ssh_host_ed25519_key\\n"'
             ' > "$1/etc/ssh/sshd_config.d/chosts.conf"'),
            'rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*',
        ]
        tar = work / "root.tar"
        argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES),
                "--aptopt=Acquire::Check-Valid-Until \"false\"",
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*"]
        argv += ["--customize-hook=" + hk for hk in hooks]
        argv += ["bookworm", str(tar), f"deb {vmfleet.MIRROR} bookworm main",
                 f"deb {vmfleet.MIRROR} bookworm-updates main",
                 f"deb {vmfleet.MIRROR.replace('/debian', '/debian-security')} bookworm-security main"]
        log(f"image: mmdebstrap ({len(PACKAGES)} packages) into a tar...")
        with open(work / "mmdebstrap.log", "w") as errlog:
            cp = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=errlog, check=False)
        if cp.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed ({cp.returncode}): "
                               f"{(work / 'mmdebstrap.log').read_text()[-3000:]}")
        os.replace(tar, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out, time.monotonic() - t0


# -- dockerd ----------------------------------------------------------------------

# Capability names by number (linux/capability.h), to read a bounding set.
CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
        "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
        "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
        "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
        "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
        "CHECKPOINT_RESTORE"]


def caps_lacking() -> list[str]:
    """Capabilities the kernel knows that this process's bounding set lacks (a sandboxed machine)."""
    bnd = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bnd = int(line.split()[1], 16)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [f"CAP_{CAPS[i]}" if i < len(CAPS) else f"cap {i}" for i in range(last + 1) if not bnd >> i & 1]


# dockerd 20.10 gives a privileged container every capability the kernel
# knows, which runc cannot grant when the bounding set lacks some (here
# CAP_SYS_RESOURCE): this runtime drops those from the spec, then is runc.
RUNC_WRAPPER = """#!/usr/bin/python3
import json, os, sys
LACKING = set({lacking!r})
args = sys.argv[1:]
spec = None
for flag in ("--bundle", "-b", "--process", "-p"):
    if flag in args[:-1]:
        v = args[args.index(flag) + 1]
        spec = os.path.join(v, "config.json") if flag in ("--bundle", "-b") else v
if spec and os.path.exists(spec):
    with open(spec) as f:
        d = json.load(f)
    caps = (d.get("process", d) or {{}}).get("capabilities") or {{}}
    for k, v in caps.items():
        caps[k] = [c for c in v if c not in LACKING]
    with open(spec, "w") as f:
        json.dump(d, f)
os.execv({runc!r}, [{runc!r}, *args])
"""


def tools_missing() -> list[str]:
    need = {"dockerd": "docker.io", "containerd": "containerd", "runc": "runc", "mmdebstrap": "mmdebstrap",
            "ssh": "openssh-client", "ssh-keygen": "openssh-client", "ip": "iproute2"}
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return sorted({pkg for exe, pkg in need.items() if shutil.which(exe, path=path) is None})


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] not in "ZX"
    except (OSError, IndexError):
        return False


def _mounts_under(root: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == root or mp.startswith(root.rstrip("/") + "/"):
                out.append(mp)
    return sorted(out, key=lambda p: p.count("/"), reverse=True)


@dataclass
class Dockerd:
    """A dockerd of the run's own: data root on disk, exec root and socket under /run."""

    data_root: Path
    exec_root: Path
    pid: int = 0

    @property
    def cgroup_parent(self) -> str:
        """The cgroup its containers go under (/sys/fs/cgroup/*/orch-chosts-RID): the run's own."""
        return self.exec_root.name

    @property
    def sock(self) -> str:
        return str(self.exec_root / "docker.sock")

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"

    def start(self, log: Log) -> None:
        self.data_root.mkdir(parents=True)
        self.exec_root.mkdir(parents=True)
        cfg = self.data_root / "daemon.json"
        conf: dict[str, Any] = {}  # not /etc/docker/daemon.json: the machine's settings do not apply
        lacking = caps_lacking()
        if lacking:
            runc = shutil.which("runc", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "/usr/sbin/runc"
            wrapper = self.data_root / "runc-bounded"
            wrapper.write_text(RUNC_WRAPPER.format(lacking=sorted(lacking), runc=runc))
            wrapper.chmod(0o755)
            conf = {"runtimes": {"runc-bounded": {"path": str(wrapper)}}, "default-runtime": "runc-bounded"}
            log(f"dockerd: the bounding set lacks {', '.join(lacking)}: privileged containers run without it")
        cfg.write_text(json.dumps(conf) + "\n")
        argv = [shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin") or "dockerd",
                "--config-file", str(cfg), "--data-root", str(self.data_root / "data"),
                "--exec-root", str(self.exec_root), "--host", self.url,
                "--pidfile", str(self.exec_root / "dockerd.pid"), "--cgroup-parent", f"/{self.cgroup_parent}",
                "--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false",
                "--bridge=none", "--userland-proxy=false", "--storage-driver=overlay2", "--log-level=warn"]
        with open(self.data_root / "dockerd.log", "ab") as logf:
            p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        self.pid = p.pid
        t0 = time.monotonic()
        import docker

        while True:
            if p.poll() is not None:
                raise RuntimeError(f"dockerd exited ({p.returncode}): {self.log()[-3000:]}")
            try:
                docker.DockerClient(base_url=self.url, timeout=5).ping()
                break
            except Exception:  # noqa: BLE001  (not answering yet)
                if time.monotonic() - t0 > 60:
                    raise RuntimeError(f"dockerd did not answer on {self.sock} in 60 s: {self.log()[-3000:]}")
                time.sleep(0.2)
        log(f"dockerd: pid {self.pid}, answering {time.monotonic() - t0:.1f} s after start ({self.sock})")

    def log(self) -> str:
        try:
            return (self.data_root / "dockerd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """dockerd by pid (it stops the containerd it started), then its mounts, cgroups and directories."""
        if self.pid and _alive(self.pid) and b"dockerd" in Path(f"/proc/{self.pid}/cmdline").read_bytes():
            os.kill(self.pid, signal.SIGTERM)
            for _ in range(300):
                if not _alive(self.pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(self.pid, signal.SIGKILL)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        for root in (self.exec_root, self.data_root):
            for mp in _mounts_under(str(root)):
                subprocess.run(["umount", "-l", mp], capture_output=True, check=False)
        # The run's cgroup parent, in every hierarchy.
        for d in _cgroups(self.cgroup_parent):
            for sub in sorted(Path(d).rglob("*"), key=lambda s: len(s.parts), reverse=True):
                if sub.is_dir():
                    _rmdir_quietly(sub)
            _rmdir_quietly(Path(d))
        shutil.rmtree(self.exec_root, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)


def _cgroups(name: str) -> list[str]:
    base = Path("/sys/fs/cgroup")
    dirs = [base / name, *(d / name for d in base.iterdir() if d.is_dir())] if base.is_dir() else []
    return [str(d) for d in dirs if d.is_dir()]


def _rmdir_quietly(d: Path) -> None:
    for _ in range(30):
        try:
            d.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)


# -- hosts ------------------------------------------------------------------------


@dataclass
class Host:
    name: str
    ip: str
    container: Any = None  # testcontainers DockerContainer
    volume: str = ""

    @property
    def target(self) -> str:
        return f"root@{self.ip}"


@dataclass
class Fleet:
    rid: str
    dockerd: Dockerd
    run_dir: Path
    image: str = ""
    subnet: str = ""  # the first three octets
    network: Any = None  # docker.models.networks.Network
    bridge: str = ""
    hosts: list[Host] = field(default_factory=list)
    log: Log = print
    env_before: dict[str, str | None] = field(default_factory=dict)
    ryuk_before: bool | None = None

    @property
    def gateway(self) -> str:
        return f"{self.subnet}.1"

    @property
    def key(self) -> str:
        return str(self.run_dir / "id_ed25519")

    def client(self) -> Any:
        import docker

        return docker.DockerClient(base_url=self.dockerd.url, timeout=120)

    def ssh_options(self) -> list[str]:
        return ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
                f"ControlPath={self.run_dir}/ssh-%C", "ControlMaster=auto", "ControlPersist=300"]

    def ssh(self, h: Host, command: str, *, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", "-i", self.key, "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        for o in self.ssh_options():
            argv += ["-o", o]
        cp = subprocess.run([*argv, h.target, "--", command], capture_output=True, text=True, timeout=timeout,
                            check=False)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{h.name}: {command!r} exited with {cp.returncode}: {cp.stdout}{cp.stderr}")
        return cp

    def close_ssh(self, h: Host) -> None:
        subprocess.run(["ssh", "-o", f"ControlPath={self.run_dir}/ssh-%C", "-O", "exit", h.target],
                       capture_output=True, check=False)

    def add_host(self, name: str) -> Host:
        """Start a container host and wait until it answers ssh with systemd up."""
        from docker.types import EndpointConfig
        from testcontainers.core.container import DockerContainer

        h = Host(name, f"{self.subnet}.{10 + len(self.hosts) + 1}", volume=f"orchch-{self.rid}-{name}-varlib")
        self.hosts.append(h)
        self.client().volumes.create(h.volume, labels={"orch.chosts": self.rid})
        c = (DockerContainer(self.image)
             .with_name(f"orchch-{self.rid}-{name}")
             .with_command("/sbin/init")
             .with_env("container", "docker")
             .with_tmpfs_mount("/run").with_tmpfs_mount("/run/lock").with_tmpfs_mount("/tmp")
             .with_volume_mapping(h.volume, "/var/lib", "rw")
             .with_kwargs(privileged=True, hostname=name, cgroupns="private", stop_signal="SIGRTMIN+3",
                          labels={"orch.chosts": self.rid}, network=self.network.name,
                          networking_config={self.network.name: EndpointConfig("1.41", ipv4_address=h.ip)}))
        h.container = c
        c.start()
        self._no_default_route(h)
        pub = Path(self.key + ".pub").read_text().strip()
        put_key = (f"mkdir -p -m 700 /root/.ssh && echo {shlex.quote(pub)} > /root/.ssh/authorized_keys && "
                   "chmod 600 /root/.ssh/authorized_keys")
        r = c.exec(["sh", "-c", put_key])
        if r.exit_code != 0:
            raise RuntimeError(f"{name}: cannot put the SSH key in: {r.output.decode(errors='replace')}")
        self.wait_up(h)
        return h

    def wait_up(self, h: Host, timeout: float = 120) -> float:
        """Seconds until `h` answers ssh and systemd has finished starting (running or degraded)."""
        t0 = time.monotonic()
        last = ""
        while time.monotonic() - t0 < timeout:
            cp = self.ssh(h, "systemctl is-system-running --wait", timeout=60, check=False)
            last = (cp.stdout + cp.stderr).strip()
            if last in ("running", "degraded"):
                if last == "degraded":
                    failed = self.ssh(h, "systemctl --failed --no-legend --plain", check=False).stdout.strip()
                    self.log(f"{h.name}: systemd degraded: {failed}")
                return time.monotonic() - t0
            time.sleep(0.5)
        raise TimeoutError(f"{h.name}: not up after {timeout:.0f} s (last: {last}); "
                           f"logs: {self.logs(h)[-3000:]}")

    def logs(self, h: Host) -> str:
        try:
            out, err = h.container.get_logs()
            return (out + err).decode(errors="replace")
        except Exception as e:  # noqa: BLE001
            return f"(no logs: {e})"

    def restart(self, h: Host, stop_timeout: int = 30) -> tuple[float, int]:
        """docker stop + start: systemd shuts the host down (SIGRTMIN+3; killed after `stop_timeout`)
        and boots again. (seconds the stop took, the exit code: 137 when docker had to kill it)."""
        self.close_ssh(h)
        c = h.container.get_wrapped_container()
        t0 = time.monotonic()
        c.stop(timeout=stop_timeout)
        took = time.monotonic() - t0
        c.reload()
        code = int(c.attrs["State"]["ExitCode"])
        c.start()
        self._no_default_route(h)
        return took, code

    def _no_default_route(self, h: Host) -> None:
        """Docker gives the host a default route via the bridge even on an internal network: removed,
        so nothing a host sends is forwarded off the machine (the hosts and the registry are on-link)."""
        r = h.container.exec(["sh", "-c", "ip route del default 2>/dev/null; ip -4 route show default"])
        if r.exit_code != 0 or r.output.strip():
            raise RuntimeError(f"{h.name}: cannot remove its default route: {r.output.decode(errors='replace')}")

    def remove_host(self, h: Host) -> None:
        if h.container is not None and h.container._container is not None:
            try:
                h.container.stop()
            except Exception as e:  # noqa: BLE001  (teardown goes on)
                self.log(f"{h.name}: remove: {e}")
        try:
            self.client().volumes.get(h.volume).remove(force=True)
        except Exception as e:  # noqa: BLE001  (teardown goes on)
            self.log(f"{h.name}: volume: {e}")


def _pick_subnet() -> str:
    """10.78.N: not on any link or route of the machine (N from the run id)."""
    used = "".join(subprocess.run(["ip", "-4", "-o", *what], capture_output=True, text=True, check=False).stdout
                   for what in (["route", "show", "table", "all"], ["addr"]))
    for _ in range(256):
        n = int.from_bytes(os.urandom(1), "big")
        if f"10.78.{n}." not in used and "10.78.0.0/16" not in used:
            return f"10.78.{n}"
    raise RuntimeError("no free 10.78.N.0/24 subnet")


def up(n: int, log: Log = print) -> Fleet:
    """Build (or reuse) the image, start a dockerd, a network and `n` hosts.
    On any failure everything made is torn down before the error is raised."""
    missing = tools_missing()
    if missing:
        raise RuntimeError(f"the container-host fleet needs: apt-get install {' '.join(missing)}")
    tar, build_s = build_rootfs(log)
    if build_s:
        log(f"image: root filesystem built in {build_s:.1f} s ({tar.stat().st_size >> 20} MiB tar)")
    sweep_stale(log)
    rid = uuid.uuid4().hex[:6]
    fl = Fleet(rid, Dockerd(Path(f"/var/tmp/orch-chosts-{rid}"), Path(f"/run/orch-chosts-{rid}")),
               Path(f"/var/tmp/orch-chosts-{rid}/run"), log=log)
    try:
        fl.dockerd.start(log)
        fl.run_dir.mkdir()
        (fl.dockerd.data_root / "owner.pid").write_text(f"{os.getpid()}\n")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", fl.key], check=True)
        # testcontainers finds the engine through DOCKER_HOST; its reaper (Ryuk) would need Docker Hub.
        from testcontainers.core.config import testcontainers_config

        fl.env_before = {"DOCKER_HOST": os.environ.get("DOCKER_HOST")}
        fl.ryuk_before = testcontainers_config._ryuk_disabled
        os.environ["DOCKER_HOST"] = fl.dockerd.url
        testcontainers_config.ryuk_disabled = True
        cl = fl.client()
        t0 = time.monotonic()
        fl.image = f"orch-chost:{recipe_hash()}"
        with open(tar, "rb") as f:
            cl.api.import_image_from_data(f, repository="orch-chost", tag=recipe_hash(),
                                          changes=['CMD ["/sbin/init"]', "ENV container=docker"])
        cl.images.get(fl.image)
        log(f"image: docker import {time.monotonic() - t0:.1f} s")
        from docker.types import IPAMConfig, IPAMPool

        fl.subnet = _pick_subnet()
        fl.bridge = f"orchch{rid}"
        fl.network = cl.networks.create(
            f"orchch-{rid}", driver="bridge", internal=True, labels={"orch.chosts": rid},
            options={"com.docker.network.bridge.name": fl.bridge},
            ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=f"{fl.subnet}.0/24", gateway=fl.gateway)]))
        if fl.gateway not in subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", fl.bridge],
                                            capture_output=True, text=True, check=False).stdout:
            # An internal network may leave the bridge without the gateway address: the run's registry needs it.
            subprocess.run(["ip", "addr", "add", f"{fl.gateway}/24", "dev", fl.bridge], check=True)
        t0 = time.monotonic()
        for i in range(1, n + 1):
            fl.add_host(f"host{i}")
        log(f"hosts: {n} up (systemd running, ssh answering) in {time.monotonic() - t0:.1f} s")
        return fl
    except BaseException:
        down(fl)
        raise


def sweep_stale(log: Log = print) -> None:
    """What runs killed before their teardown left (their owner process is gone): their dockerd (which
    stops its containers), bridge, mounts and directories."""
    for data_root in Path("/var/tmp").glob("orch-chosts-*"):
        rid = data_root.name.removeprefix("orch-chosts-")
        try:
            owner = int((data_root / "owner.pid").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _alive(owner):
            continue
        if not owner and time.time() - data_root.stat().st_mtime < 600:
            continue  # a run starting right now (it writes owner.pid once its dockerd answers)
        d = Dockerd(data_root, Path(f"/run/orch-chosts-{rid}"))
        try:
            d.pid = int((d.exec_root / "dockerd.pid").read_text())
        except (OSError, ValueError):
            d.pid = 0
        log(f"sweep: run {rid} (owner gone): dockerd {d.pid or '-'}, its bridge and files removed")
        d.stop()
        if os.path.exists(f"/sys/class/net/orchch{rid}"):
            subprocess.run(["ip", "link", "delete", f"orchch{rid}"], capture_output=True, check=False)


def down(fl: Fleet) -> None:
    """Remove everything the run made: hosts, volumes, network, image, dockerd and its files.
    Every step is tried; what failed is logged and the rest still done."""

    def attempt(what: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (teardown goes on)
            fl.log(f"teardown: {what}: {e}")

    if fl.dockerd.pid and _alive(fl.dockerd.pid):
        for h in fl.hosts:
            fl.close_ssh(h)
        cl = fl.client()
        for c in cl.containers.list(all=True, filters={"label": f"orch.chosts={fl.rid}"}):
            attempt(f"container {c.name}", lambda c=c: c.remove(force=True, v=True))
        for v in cl.volumes.list(filters={"label": f"orch.chosts={fl.rid}"}):
            attempt(f"volume {v.name}", lambda v=v: v.remove(force=True))
        if fl.network is not None:
            attempt("network", fl.network.remove)
        for img in cl.images.list(name="orch-chost"):
            attempt("image", lambda img=img: cl.images.remove(img.id, force=True))
        cl.close()
    attempt("dockerd", fl.dockerd.stop)
    if fl.bridge and os.path.exists(f"/sys/class/net/{fl.bridge}"):
        subprocess.run(["ip", "link", "delete", fl.bridge], capture_output=True, check=False)
    for k, v in fl.env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if fl.env_before:
        from testcontainers.core.config import testcontainers_config

        testcontainers_config._ryuk_disabled = fl.ryuk_before


# -- registry ---------------------------------------------------------------------

REGISTRY_PORT = 5000


def serve_registry(addr: str, storage: Path, workdir: Path) -> subprocess.Popen[bytes]:
    """The Distribution registry, read-only on `storage`, listening on addr:5000 (the bridge's address)."""
    import secrets
    import urllib.request

    import yaml

    from tests.fixtures.registry import REGISTRY_BIN

    cfg = {"version": 0.1, "log": {"level": "warn"},
           "storage": {"filesystem": {"rootdirectory": str(storage)},
                       "maintenance": {"uploadpurging": {"enabled": False}, "readonly": {"enabled": True}}},
           "http": {"addr": f"{addr}:{REGISTRY_PORT}", "secret": secrets.token_hex(16)}}
    path = workdir / "chosts-registry.yml"
    path.write_text(yaml.safe_dump(cfg))
    with open(workdir / "chosts-registry.log", "ab") as logf:
        p = subprocess.Popen([REGISTRY_BIN, "serve", str(path)], stdout=logf, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://{addr}:{REGISTRY_PORT}/v2/", timeout=1)
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    p.wait()
    raise RuntimeError(f"registry on {addr} did not come up: {(workdir / 'chosts-registry.log').read_text()}")
