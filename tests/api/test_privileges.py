"""Capabilities, devices, sysctls, ulimits: the value rules (`api.privileges`),
the service model's checks of them, their wire form, and the CLI flags that
produce them (create, and update's -add/-rm forms)."""

from __future__ import annotations

from typing import Any

import click
import pytest
from pydantic import ValidationError

from api.codec import from_dict, from_json, packb, to_dict, to_json, unpackb
from api.objects import ContainerSpec
from api.privileges import (
    UNLIMITED, PrivilegeError, capability, check_sysctl, parse_device, parse_sysctl, parse_ulimit,
)
from cli import privflags


def test_capability_names() -> None:
    assert capability("net_admin") == capability("CAP_NET_ADMIN") == "CAP_NET_ADMIN"
    assert capability("all") == "ALL"
    with pytest.raises(PrivilegeError, match=r"unknown capability 'NET_ADMN' \(did you mean NET_ADMIN\?\)"):
        capability("NET_ADMN")
    with pytest.raises(PrivilegeError, match="unknown capability 'FOO'"):
        capability("FOO")


@pytest.mark.parametrize("text, expected", [
    ("/dev/fuse", ("/dev/fuse", "/dev/fuse", "rwm")),
    ("/dev/sda:/dev/xvda", ("/dev/sda", "/dev/xvda", "rwm")),
    ("/dev/sda:/dev/xvda:r", ("/dev/sda", "/dev/xvda", "r")),
    ("/dev/fuse:rw", ("/dev/fuse", "/dev/fuse", "rw")),
])
def test_device_specs(text: str, expected: tuple[str, str, str]) -> None:
    assert tuple(parse_device(text)) == expected


@pytest.mark.parametrize("text, message", [
    ("dev/fuse", "device path on the host must be absolute"),
    ("/dev/fuse:fuse:rw", "device path in the container must be absolute"),
    ("/dev/fuse:/dev/fuse:rwx", "distinct letters of rwm"),
    ("/dev/fuse:/dev/fuse:rr", "distinct letters of rwm"),
    ("/dev/../etc/shadow", "may not contain '..'"),
    ("/a:/b:r:x", "expected HOST"),
    ("", "expected HOST"),
])
def test_bad_device_specs(text: str, message: str) -> None:
    with pytest.raises(PrivilegeError, match=message):
        parse_device(text)


def test_sysctls_must_be_namespaced() -> None:
    for ok in ("net.ipv4.ip_forward", "net.core.somaxconn", "kernel.shmmax", "fs.mqueue.msg_max", "kernel.sem",
               "kernel.domainname"):
        check_sysctl(ok)
    assert parse_sysctl("net.ipv4.ping_group_range=0 1") == ("net.ipv4.ping_group_range", "0 1")
    with pytest.raises(PrivilegeError, match="kernel.pid_max is not allowed: only namespaced ones"):
        check_sysctl("kernel.pid_max")
    with pytest.raises(PrivilegeError, match="vm.swappiness is not allowed"):
        check_sysctl("vm.swappiness")
    with pytest.raises(PrivilegeError, match="shares the host's network namespace"):
        check_sysctl("net.ipv4.ip_forward", host_network=True)
    with pytest.raises(PrivilegeError, match="expected NAME=VALUE"):
        parse_sysctl("net.ipv4.ip_forward")
    with pytest.raises(PrivilegeError, match="not a sysctl name"):
        parse_sysctl("net/ipv4/ip_forward=1")


def test_ulimits() -> None:
    assert parse_ulimit("nofile=1024:4096") == ("nofile", 1024, 4096)
    assert parse_ulimit("NOFILE=1024") == ("nofile", 1024, 1024)
    assert parse_ulimit("memlock=unlimited") == ("memlock", UNLIMITED, UNLIMITED)
    assert parse_ulimit("core=0:-1") == ("core", 0, UNLIMITED)
    with pytest.raises(PrivilegeError, match=r"ulimit nofile: soft limit \(4096\) exceeds the hard limit \(1024\)"):
        parse_ulimit("nofile=4096:1024")
    with pytest.raises(PrivilegeError, match=r"soft limit \(unlimited\) exceeds the hard limit \(10\)"):
        parse_ulimit("nofile=unlimited:10")
    with pytest.raises(PrivilegeError, match="unknown ulimit 'files'"):
        parse_ulimit("files=10")
    with pytest.raises(PrivilegeError, match="soft limit 'ten' is not a number"):
        parse_ulimit("nofile=ten")
    with pytest.raises(PrivilegeError, match="expected NAME=SOFT"):
        parse_ulimit("nofile")


def spec(**kw: Any) -> ContainerSpec:
    return ContainerSpec(image="busybox", **kw)


@pytest.mark.parametrize("fields, loc, message", [
    ({"cap_add": ["NET_ADMIN", "FOO"]}, "cap_add", "item 1: unknown capability 'FOO'"),
    ({"cap_drop": ["chwon"]}, "cap_drop", "did you mean CHOWN?"),
    ({"devices": [{"host": "fuse"}]}, "devices.0", "device path on the host must be absolute"),
    ({"devices": [{"host": "/dev/fuse", "permissions": "x"}]}, "devices.0", "letters of rwm"),
    ({"sysctls": {"kernel.pid_max": "1"}}, "sysctls", "kernel.pid_max is not allowed"),
    ({"ulimits": [{"name": "nofile", "soft": 9, "hard": 8}]}, "ulimits.0", "soft limit (9) exceeds"),
    ({"ulimits": [{"name": "nofile", "soft": 1, "hard": 1}, {"name": "nofile", "soft": 2, "hard": 2}]},
     "ulimits", "ulimit nofile is given twice"),
])
def test_the_service_model_rejects_bad_values_naming_the_field(fields: dict[str, Any], loc: str,
                                                                message: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    err = info.value.errors()[0]
    assert ".".join(map(str, err["loc"])) == loc and message in err["msg"]


def test_privileges_travel_on_the_wire() -> None:
    c = spec(cap_add=["NET_ADMIN"], cap_drop=["ALL"], privileged=True, init=True,
             devices=[{"host": "/dev/fuse", "container": "/dev/f", "permissions": "rw"}],
             sysctls={"net.core.somaxconn": "1024"}, ulimits=[{"name": "nofile", "soft": 10, "hard": -1}])
    assert unpackb(ContainerSpec, packb(c)) == c
    assert from_dict(ContainerSpec, to_dict(c)) == c
    assert from_json(ContainerSpec, to_json(c)) == c
    assert c.devices[0].text() == "/dev/fuse:/dev/f:rw"
    # Defaults: nothing beyond Docker's default set.
    d = spec()
    assert (d.privileged, d.init, d.devices, dict(d.sysctls), d.ulimits) == (False, False, (), {}, ())


def test_create_flags() -> None:
    c: dict[str, Any] = {}
    privflags.apply_create(c, {"cap_add": ("net_admin",), "cap_drop": ("MKNOD",), "devices": ("/dev/fuse",),
                               "privileged": True, "sysctls": ("net.core.somaxconn=512",),
                               "ulimits": ("nofile=100:200",), "init": True})
    assert c == {"cap_add": ["net_admin"], "cap_drop": ["MKNOD"],
                 "devices": [{"host": "/dev/fuse", "container": "/dev/fuse", "permissions": "rwm"}],
                 "privileged": True, "sysctls": {"net.core.somaxconn": "512"},
                 "ulimits": [{"name": "nofile", "soft": 100, "hard": 200}], "init": True}
    assert spec(**c).privileged  # the model takes what the flags make
    with pytest.raises(click.BadParameter, match="unknown capability") as info:
        privflags.apply_create({}, {"cap_add": ("bogus",)})
    assert info.value.param_hint == "--cap-add"
    with pytest.raises(click.BadParameter) as info:
        privflags.apply_create({}, {"ulimits": ("nofile=2:1",)})
    assert info.value.param_hint == "--ulimit"


def test_update_flags_add_and_remove() -> None:
    c: dict[str, Any] = {
        "cap_add": ["NET_ADMIN", "SYS_TIME"], "cap_drop": ["MKNOD"],
        "devices": [{"host": "/dev/fuse", "container": "/dev/fuse", "permissions": "rwm"}],
        "sysctls": {"net.core.somaxconn": "512", "kernel.shmmax": "1"},
        "ulimits": [{"name": "nofile", "soft": 1, "hard": 2}, {"name": "nproc", "soft": 5, "hard": 5}],
    }
    privflags.apply_update(c, {"cap_add": ("mknod",), "cap_drop": ("CAP_SYS_TIME",),
                               "device_add": ("/dev/net/tun:/dev/tun",), "device_rm": ("/dev/fuse",),
                               "privileged": None, "sysctl_add": ("net.core.somaxconn=1024",),
                               "sysctl_rm": ("kernel.shmmax",), "ulimit_add": ("nofile=10:20",),
                               "ulimit_rm": ("nproc",), "init": True})
    # Adding takes a capability off the drop list and the other way round.
    assert c["cap_add"] == ["NET_ADMIN", "mknod"] and c["cap_drop"] == ["CAP_SYS_TIME"]
    assert c["devices"] == [{"host": "/dev/net/tun", "container": "/dev/tun", "permissions": "rwm"}]
    assert c["sysctls"] == {"net.core.somaxconn": "1024"}
    assert c["ulimits"] == [{"name": "nofile", "soft": 10, "hard": 20}]
    assert c["init"] is True and "privileged" not in c
    privflags.apply_update(c, {"privileged": False, "init": False})
    assert c["privileged"] is False and c["init"] is False
    with pytest.raises(click.BadParameter) as info:
        privflags.apply_update(c, {"sysctl_add": ("kernel.pid_max=5",)})
    assert info.value.param_hint == "--sysctl-add"


def test_inspect_pretty_says_privileged_plainly() -> None:
    assert privflags.pretty_lines({}) == ["Privileged:     no"]
    lines = privflags.pretty_lines({"privileged": True, "cap_add": ["NET_ADMIN"], "init": True,
                                    "devices": [{"host": "/dev/fuse", "container": "", "permissions": "rw"}],
                                    "ulimits": [{"name": "nofile", "soft": 1, "hard": -1}]})
    assert lines[0].startswith("Privileged:     YES")
    assert "Devices:        /dev/fuse -> /dev/fuse (rw)" in lines
    assert "Ulimits:        nofile=1:unlimited" in lines and "Init:           yes" in lines
