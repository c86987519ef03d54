"""`orch system install/status/uninstall`: orch as a systemd service on this host.

The steps are `daemon.install`'s (loaded when a command runs); this module
gives them the local daemon's socket client and prints what each step did.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

import click

from .client import Endpoint, request
from .output import FORMAT_OPTION, fail, print_json

# Tests install into a temporary directory (a fake systemctl on PATH) and run
# a checkout's orch: never set on a host.
ROOT_ENV = "ORCH_SYSTEM_ROOT"
BIN_ENV = "ORCH_SYSTEM_BIN"


def _root() -> str:
    return os.environ.get(ROOT_ENV, "/")


def _orch_bin() -> str:
    """The `orch` of the environment this command runs from (its venv's bin)."""
    if os.environ.get(BIN_ENV):
        return os.environ[BIN_ENV]
    here = os.path.join(os.path.dirname(sys.executable), "orch")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("orch")
    if found:
        return os.path.abspath(found)
    fail("cannot find the orch executable next to this Python; run `orch system install` with the orch "
         "of its virtual environment (e.g. /opt/orch/bin/orch)")


def _probe(socket_path: str) -> Any:
    ep = Endpoint(socket=socket_path)

    def probe(method: str, path: str, body: Any, timeout: float) -> Any:
        return request(ep, method, path, body, timeout=timeout)

    return probe


def _print_report(rep: Any) -> None:
    for s in rep.steps:
        mark = "changed  " if s.changed else "unchanged"
        click.echo(f"  {mark} {s.name}: {s.detail}")
    click.echo("Done." if rep.changed else "Nothing to change.")


@click.group()
def system() -> None:
    """Install orch as a system service on this host (systemd)."""


@system.command("install")
@click.option("--join", "join", nargs=2, metavar="TOKEN MANAGER", default=None,
              help="Join the cluster of MANAGER (HOST[:PORT]) with TOKEN once the daemon runs.")
@click.option("--advertise-addr", help="With --join: HOST[:PORT] the others reach this node at.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="A daemon.yaml to install as /etc/orch/daemon.yaml (default: keep the one there, "
                   "or write one with every option at its default).")
@click.option("--wait", type=float, default=180.0, show_default=True, help="Seconds to wait for the daemon.")
def install(join: tuple[str, str] | None, advertise_addr: str | None, config_file: str | None, wait: float) -> None:
    """Write the systemd unit and the config, enable and start orch; join when asked.

    Running it again changes nothing unless the config or this orch changed."""
    from daemon.config import effective_socket
    from daemon.install import InstallError, Layout
    from daemon.install import install as do_install

    if advertise_addr and not join:
        fail("--advertise-addr goes with --join (on the first manager: `orch init --advertise-addr ADDR`)")
    layout = Layout(_root())
    text = None
    if config_file:
        with open(config_file, encoding="utf-8") as f:
            text = f.read()
    try:
        rep = do_install(layout, _orch_bin(), config_text=text, config_name=config_file or "",
                         probe=_probe(effective_socket(layout.config, text)), wait=wait, join=join,
                         advertise_addr=advertise_addr)
    except InstallError as e:
        fail(f"system install: {e}")
    _print_report(rep)


@system.command("status")
@FORMAT_OPTION
def status(fmt: str) -> None:
    """Show whether orch is installed, enabled and running here, and its cluster."""
    from daemon.config import effective_socket
    from daemon.install import Layout
    from daemon.install import status as do_status

    layout = Layout(_root())
    st = do_status(layout, _probe(effective_socket(layout.config, None)))
    if fmt == "json":
        print_json(st)
        return
    click.echo(f"unit:     {st['unit'] or 'not installed'}")
    click.echo(f"config:   {st['config'] or 'none'}" + (f" ({st['config_error']})" if "config_error" in st else ""))
    if "active" in st:
        click.echo(f"service:  {st['active']} ({st['enabled']})")
    d = st.get("daemon")
    if d is None:
        click.echo(f"daemon:   not answering ({st.get('daemon_error', '')})")
    elif not d.get("cluster"):
        click.echo("daemon:   running, in no cluster")
    else:
        c = d["cluster"]
        click.echo(f"daemon:   running, {c.get('role')} of a cluster, node {c.get('node_id')} "
                   f"at {c.get('advertise_addr')}")


@system.command("uninstall")
@click.option("--purge", is_flag=True, help="Also leave the cluster and remove the data, containers, "
                                            "networks and cgroups: the host is left as before install.")
def uninstall(purge: bool) -> None:
    """Stop and disable orch, remove its unit and config."""
    from daemon.config import effective_socket
    from daemon.install import InstallError, Layout
    from daemon.install import uninstall as do_uninstall

    layout = Layout(_root())
    try:
        rep = do_uninstall(layout, purge=purge, probe=_probe(effective_socket(layout.config, None)))
    except InstallError as e:
        fail(f"system uninstall: {e}")
    _print_report(rep)
