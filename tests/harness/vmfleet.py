"""A fleet of real VMs: Debian 12 guests under qemu, each with its own kernel.

- Image: built from Debian packages with mmdebstrap (minbase, systemd,
  Debian's cloud kernel, openssh, and the packages orch needs per
  daemon.hostdeps), put straight into an ext4 image with `mke2fs -d` (no loop
  device), converted to qcow2; kernel and initrd copied out and booted with
  -kernel/-initrd. Cached under ORCH_VM_CACHE by a hash of the recipe.
- VMs: one qcow2 overlay per VM on that base (backing file by absolute
  path); hostname, address and the run's SSH public key on the kernel
  command line, applied by a unit baked into the image (one image, no DHCP;
  SSH host keys made at first boot, so each VM has its own).
- Network: a network namespace made per run holding a bridge, the taps and
  the qemu processes; the bridge address exists only there and guests have
  no default route, so nothing a VM sends leaves the machine. Commands reach
  the VMs with `ip netns exec NS ssh`, multiplexed.
- Accelerator: KVM where the CPU has vmx/svm, TCG (software) otherwise.
- Teardown (always): qemu processes by pid, the namespace (bridge, taps go
  with it), overlays and the run directory.

    python -m tests.harness.vmfleet up [-n 3]    # state in .vmfleet/ (make vm-up)
    python -m tests.harness.vmfleet down         # (make vm-down)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ORCH_VM_CACHE", "/var/tmp/orch-vm-cache"))
STATE = Path(os.environ.get("ORCH_VM_STATE", str(REPO / ".vmfleet")))
SUBNET = "10.77.0"
MIRROR = os.environ.get("ORCH_VM_MIRROR", "http://deb.debian.org/debian")

GUEST_PACKAGES = [
    "systemd-sysv", "udev", "dbus", "linux-image-cloud-amd64", "initramfs-tools", "kmod", "iproute2",
    "iputils-ping", "procps", "openssh-server", "qemu-guest-agent", "python3", "python3-venv", "runc", "conmon",
    "nftables", "libnftables1", "util-linux", "ca-certificates", "busybox-static", "e2fsprogs",
    # The second OCI runtime, for the engine's limit checks on pure cgroup v2 (crun refuses this host's hybrid v1).
    "crun",
]

VM_SETUP = r"""#!/bin/sh
# Per-VM settings from the kernel command line (vm.ip=, vm.sshkey=): one image for all VMs.
for kv in $(cat /proc/cmdline); do
  case "$kv" in vm.ip=*) IP="${kv#vm.ip=}";; vm.sshkey=*) KEY="${kv#vm.sshkey=}";; esac
done
mkdir -p /root/.ssh && chmod 700 /root/.ssh
[ -n "$KEY" ] && echo "ssh-ed25519 $KEY vmfleet" > /root/.ssh/authorized_keys
# Own host key per VM, made at first boot; ed25519 only (RSA takes a minute under emulation).
test -e /etc/ssh/ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key
ip link set lo up
# udev announcing the NIC is slow under emulation: poll for it.
i=0; while ! ip link show eth0 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 1200 ] && exit 1; sleep 0.1; done
ip link set eth0 up
[ -n "$IP" ] && ip addr replace "$IP" dev eth0
exit 0
"""

VM_SETUP_UNIT = """[Unit]
Description=vmfleet: address and SSH key from the kernel command line
DefaultDependencies=no
After=local-fs.target systemd-udevd.service
Before=network.target network-online.target ssh.service
Wants=network.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/vm-setup

[Install]
WantedBy=multi-user.target network-online.target
"""


def recipe_hash() -> str:
    h = hashlib.sha256()
    for part in (*GUEST_PACKAGES, VM_SETUP, VM_SETUP_UNIT, MIRROR, "v3"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("check", True)
    return subprocess.run(argv, text=True, **kw)  # type: ignore[call-overload]


def tools_missing() -> list[str]:
    need = {"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils", "mmdebstrap": "mmdebstrap",
            "mke2fs": "e2fsprogs", "ssh": "openssh-client", "ssh-keygen": "openssh-client", "ip": "iproute2"}
    return sorted({pkg for exe, pkg in need.items() if shutil.which(exe) is None})


def accelerator() -> str:
    """kvm where the CPU offers vmx/svm (and /dev/kvm), tcg otherwise (here /dev/kvm is PVM and unusable)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if os.path.exists("/dev/kvm") and (" vmx" in flags or " svm" in flags):
        return "kvm"
    return "tcg"


# -- image ----------------------------------------------------------------------


@dataclass
class Image:
    dir: Path

    @property
    def disk(self) -> Path:
        return self.dir / "base.qcow2"

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    def ready(self) -> bool:
        return all(p.exists() for p in (self.disk, self.kernel, self.initrd))


def build_image(log: object = print) -> tuple[Image, float]:
    """The cached image, built if missing; (image, seconds spent building)."""
    img = Image(CACHE / recipe_hash())
    if img.ready():
        return img, 0.0
    t0 = time.monotonic()
    work = CACHE / f"build-{uuid.uuid4().hex[:8]}"
    root = work / "root"
    work.mkdir(parents=True)
    try:
        setup = work / "vm-setup"
        setup.write_text(VM_SETUP)
        unit = work / "vm-setup.service"
        unit.write_text(VM_SETUP_UNIT)
        hooks = [
            # initramfs-tools reads extra modules from here (not /etc): the root disk needs virtio.
            'mkdir -p "$1/usr/share/initramfs-tools/modules.d" && '
            'printf "virtio_pci\\nvirtio_blk\\nvirtio_net\\next4\\n" > "$1/usr/share/initramfs-tools/modules.d/vmfleet"',
            f'install -m 755 {shlex.quote(str(setup))} "$1/usr/local/sbin/vm-setup"',
            f'install -m 644 {shlex.quote(str(unit))} "$1/etc/systemd/system/vm-setup.service"',
            'chroot "$1" systemctl enable vm-setup.service',
            'chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service '
            'systemd-networkd-wait-online.service',
            'echo "/dev/vda / ext4 rw,relatime 0 1" > "$1/etc/fstab"',
            'rm -f "$1"/etc/ssh/ssh_host_* "$1/etc/hostname" && : > "$1/etc/machine-id"',
            'printf "127.0.0.1 localhost\\n" > "$1/etc/hosts"',
            'mkdir -p "$1/etc/systemd/journald.conf.d" && '
            'printf "[Journal]\\nStorage=volatile\\n" > "$1/etc/systemd/journald.conf.d/vmfleet.conf"',
            'printf "UseDNS no\\nPermitRootLogin prohibit-password\\nHostKey /etc/ssh/ssh_host_ed25519_key\\n" > "$1/etc/ssh/sshd_config.d/vmfleet.conf"',
            'chroot "$1" update-initramfs -u -k all',
            f'cp -L "$1/vmlinuz" {shlex.quote(str(work / "vmlinuz"))} && '
            f'cp -L "$1/initrd.img" {shlex.quote(str(work / "initrd.img"))}',
        ]
        argv = ["mmdebstrap", "--variant=minbase", "--include=" + ",".join(GUEST_PACKAGES),
                "--aptopt=Acquire::Check-Valid-Until \"false\"",
                "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*"]
        for hk in hooks:
            argv.append("--customize-hook=" + hk)
        argv += ["bookworm", str(root), f"deb {MIRROR} bookworm main",
                 f"deb {MIRROR} bookworm-updates main",
                 f"deb {MIRROR.replace('/debian', '/debian-security')} bookworm-security main"]
        log(f"image: mmdebstrap ({len(GUEST_PACKAGES)} packages)...")
        _run(argv, stdout=subprocess.DEVNULL, stderr=open(work / "mmdebstrap.log", "w"))
        raw = work / "disk.raw"
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "root", "-d", str(root), str(raw), "4G"])
        _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "base.qcow2")])
        raw.unlink()
        shutil.rmtree(root)
        if img.dir.exists():
            shutil.rmtree(img.dir)
        work.rename(img.dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return img, time.monotonic() - t0


# -- VMs --------------------------------------------------------------------------


@dataclass
class VM:
    name: str
    ip: str
    index: int
    pid: int = 0

    @property
    def target(self) -> str:
        return f"root@{self.ip}"


@dataclass
class Fleet:
    run_dir: str
    netns: str
    vms: list[VM] = field(default_factory=list)
    image: str = ""
    accel: str = "tcg"

    @property
    def key(self) -> str:
        return os.path.join(self.run_dir, "id_ed25519")

    def ssh_options(self) -> list[str]:
        return ["StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null", "LogLevel=ERROR",
                f"ControlPath={self.run_dir}/ssh-%C", "ControlMaster=auto", "ControlPersist=300"]

    def ssh_argv(self, vm: VM, command: str) -> list[str]:
        argv = ["ip", "netns", "exec", self.netns, "ssh", "-i", self.key, "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=10"]
        for o in self.ssh_options():
            argv += ["-o", o]
        return [*argv, vm.target, "--", command]

    def ssh(self, vm: VM, command: str, *, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(self.ssh_argv(vm, command), capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{vm.name}: {command!r} exited with {cp.returncode}: {cp.stdout}{cp.stderr}")
        return cp

    def in_netns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def save(self) -> None:
        Path(self.run_dir, "fleet.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: Path) -> Fleet:
        d = json.loads((run_dir / "fleet.json").read_text())
        d["vms"] = [VM(**v) for v in d["vms"]]
        return cls(**d)

    # -- lifecycle ------------------------------------------------------------

    def start_vm(self, vm: VM, img: Image, memory: int = 1024) -> None:
        rd = Path(self.run_dir)
        overlay = rd / f"{vm.name}.qcow2"
        if not overlay.exists():
            _run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(img.disk.resolve()),
                  str(overlay)])
        tap = f"tap{vm.index}"
        if subprocess.run(["ip", "-n", self.netns, "link", "show", tap], capture_output=True).returncode != 0:
            _run(["ip", "-n", self.netns, "tuntap", "add", tap, "mode", "tap"])
            _run(["ip", "-n", self.netns, "link", "set", tap, "master", "br0", "up"])
        pub = Path(self.key + ".pub").read_text().split()[1]
        append = (f"root=/dev/vda rw console=ttyS0 net.ifnames=0 quiet systemd.hostname={vm.name} "
                  f"vm.ip={vm.ip}/24 vm.sshkey={pub} systemd.show_status=0")
        accel = "kvm" if self.accel == "kvm" else "tcg,tb-size=256"
        mac = f"52:54:00:77:00:{vm.index:02x}"
        argv = ["qemu-system-x86_64", "-name", vm.name, "-machine", "q35", "-accel", accel,
                "-cpu", "host" if self.accel == "kvm" else "max", "-smp", "1", "-m", str(memory),
                "-kernel", str(img.kernel), "-initrd", str(img.initrd), "-append", append,
                "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
                "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
                "-device", "virtio-rng-pci",
                "-display", "none", "-monitor", "none", "-serial", f"file:{rd / (vm.name + '.console')}",
                "-qmp", f"unix:{rd / (vm.name + '.qmp')},server,nowait",
                "-daemonize", "-pidfile", str(rd / f"{vm.name}.pid")]
        _run(self.in_netns(argv), capture_output=True)
        vm.pid = int((rd / f"{vm.name}.pid").read_text())
        self.save()

    def qmp(self, vm: VM, command: str) -> dict[str, object]:
        """One QMP command to the VM's qemu; its answer (the first line that is not an event)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(os.path.join(self.run_dir, f"{vm.name}.qmp"))
            f = s.makefile("rw")
            f.readline()  # the greeting
            f.write('{"execute":"qmp_capabilities"}\n' + json.dumps({"execute": command}) + "\n")
            f.flush()
            answers = 0
            for line in f:
                msg = json.loads(line)
                if "event" in msg:
                    continue
                answers += 1
                if answers == 2:
                    return dict(msg)
            raise OSError(f"{vm.name}: qemu closed QMP before answering {command!r}")

    def qmp_status(self, vm: VM) -> str:
        """The guest's run state from QMP ("running", "internal-error", ...); qemu does not
        exit when the guest stops on an emulation error."""
        try:
            return str(self.qmp(vm, "query-status")["return"]["status"])  # type: ignore[index]
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown"

    def wait_ssh(self, vm: VM, timeout: float = 300) -> float:
        t0 = time.monotonic()
        while True:
            cp = subprocess.run(self.ssh_argv(vm, "true"), capture_output=True, text=True, timeout=60)
            if cp.returncode == 0:
                return time.monotonic() - t0
            if not _alive(vm.pid):
                raise RuntimeError(f"{vm.name}: qemu exited; console:\n{self.console(vm)[-3000:]}")
            st = self.qmp_status(vm)
            if st in ("internal-error", "guest-panicked", "shutdown"):
                raise RuntimeError(f"{vm.name}: guest stopped ({st}); console:\n{self.console(vm)[-3000:]}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{vm.name}: no ssh after {timeout:.0f} s; console:\n{self.console(vm)[-3000:]}")
            time.sleep(1)

    def console(self, vm: VM) -> str:
        try:
            return Path(self.run_dir, f"{vm.name}.console").read_text(errors="replace")
        except OSError:
            return ""

    def stop_vm(self, vm: VM) -> None:
        """Power off (qemu killed): what a VM that dies looks like."""
        _kill(vm.pid)
        vm.pid = 0
        self.save()

    def power_off(self, vm: VM, timeout: float = 10) -> None:
        """Pull the plug: QMP `quit` (qemu ends at once, the guest is not told; no
        shutdown, no goodbye on the network), then wait for qemu to be gone; killed
        by pid if it does not answer or linger."""
        try:
            self.qmp(vm, "quit")
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + timeout
        while _alive(vm.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stop_vm(vm)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        return state not in "ZX"
    except (OSError, IndexError):
        return False


def _kill(pid: int) -> None:
    if not _alive(pid):
        return
    try:
        # Only a qemu of ours: check the command line before signalling the pid.
        if b"qemu-system" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


def up(n: int = 3, run_dir: Path | None = None, log: object = print, memory: int = 1024) -> Fleet:
    """Build (or reuse) the image, boot `n` VMs and wait until each answers ssh.
    On any failure everything made is torn down before the error is raised."""
    missing = tools_missing()
    if missing:
        raise RuntimeError(f"the VM harness needs: apt-get install {' '.join(missing)}")
    img, build_s = build_image(log)
    if build_s:
        log(f"image: built in {build_s:.1f} s ({img.disk.stat().st_size >> 20} MiB qcow2)")
    rid = uuid.uuid4().hex[:6]
    rd = run_dir or Path(f"/var/tmp/orch-vmfleet-{rid}")
    rd.mkdir(parents=True, exist_ok=False)
    fl = Fleet(str(rd), f"orchvm-{rid}", image=str(img.dir), accel=accelerator())
    fl.vms = [VM(f"vm{i}", f"{SUBNET}.{10 + i}", i) for i in range(1, n + 1)]
    fl.save()
    try:
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", fl.key])
        _run(["ip", "netns", "add", fl.netns])
        _run(["ip", "-n", fl.netns, "link", "set", "lo", "up"])
        _run(["ip", "-n", fl.netns, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", fl.netns, "addr", "add", f"{SUBNET}.1/24", "dev", "br0"])
        _run(["ip", "-n", fl.netns, "link", "set", "br0", "up"])
        t0 = time.monotonic()
        for vm in fl.vms:
            fl.start_vm(vm, img, memory)
        log(f"vms: {n} qemu ({fl.accel}) started; waiting for ssh...")
        for vm in fl.vms:
            fl.wait_ssh(vm)
            log(f"vms: {vm.name} ({vm.ip}) answers ssh {time.monotonic() - t0:.1f} s after start")
        return fl
    except BaseException:
        down(fl)
        raise


def down(fl: Fleet) -> None:
    """Tear everything of this run down: qemu by pid, the namespace (bridge and taps), files."""
    for vm in fl.vms:
        _kill(vm.pid)
    for f in Path(fl.run_dir).glob("*.pid"):  # also a qemu whose pid was not recorded yet
        try:
            _kill(int(f.read_text()))
        except ValueError:
            pass
    for f in Path(fl.run_dir).glob("ssh-*"):
        subprocess.run(["ssh", "-o", f"ControlPath={f}", "-O", "exit", "x"], capture_output=True)
    subprocess.run(["ip", "netns", "delete", fl.netns], capture_output=True)
    shutil.rmtree(fl.run_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.harness.vmfleet")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="boot VMs (state in .vmfleet/)")
    u.add_argument("-n", type=int, default=3)
    u.add_argument("--memory", type=int, default=1024, help="MiB per VM")
    sub.add_parser("down", help="tear the VMs down")
    sub.add_parser("image", help="build the image only")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("the VM harness needs root (network namespaces, taps)")
    if a.cmd == "image":
        img, s = build_image()
        print(f"{img.dir} ({'built in %.1f s' % s if s else 'cached'})")
        return
    if a.cmd == "down":
        if not (STATE / "fleet.json").exists():
            print("no VM fleet is up (.vmfleet/fleet.json missing)")
            return
        down(Fleet.load(STATE))
        print("VMs stopped; namespace, taps and overlays removed")
        return
    if (STATE / "fleet.json").exists():
        sys.exit(f"a VM fleet is already up ({STATE}); `make vm-down` first")
    fl = up(a.n, STATE, memory=a.memory)
    ns = fl.netns
    print(f"\n{len(fl.vms)} VMs up, reachable from network namespace {ns} only:")
    for vm in fl.vms:
        print(f"  {vm.name}  {vm.ip}   ip netns exec {ns} ssh -i {fl.key} -o StrictHostKeyChecking=no {vm.target}")
    print(f"\nmake dist && ip netns exec {ns} orch fleet up -i {fl.key} -o StrictHostKeyChecking=no "
          f"-o UserKnownHostsFile=/dev/null " + " ".join(vm.target for vm in fl.vms))
    print("make vm-down   # stops them and removes everything")


if __name__ == "__main__":
    main()
