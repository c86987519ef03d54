"""The `orch` command: groups are defined in sibling modules and added here."""

from __future__ import annotations

import sys

import click

from .output import fail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-H", "--host", envvar="ORCH_HOST", help="Manager address HOST:PORT (default: the local daemon's unix socket).")
@click.option("--socket", envvar="ORCH_SOCKET", help="Path of the daemon's unix socket.")
@click.option("--tls-dir", envvar="ORCH_TLS_DIR",
              help="With -H: directory holding ca.crt, node.crt, node.key for mutual TLS to a manager.")
@click.pass_context
def cli(ctx: click.Context, host: str | None, socket: str | None, tls_dir: str | None) -> None:
    """orch: a multi-host container orchestrator."""
    from .client import Endpoint

    ctx.obj = Endpoint.from_env(host, socket, tls_dir)


def _register() -> None:
    from . import cluster, config, daemon, fleet, network, service, stack, swarm, system
    from .events import events as events_cmd

    cli.add_command(daemon.daemon)
    cli.add_command(system.system)
    cli.add_command(fleet.fleet)
    for c in swarm.COMMANDS + service.COMMANDS + stack.COMMANDS:
        cli.add_command(c)
    cli.add_command(cluster.cluster)
    cli.add_command(network.network)
    cli.add_command(config.config)
    cli.add_command(config.secret)
    cli.add_command(events_cmd)
    try:  # node-local engine commands (image, container), when present
        from . import engine

        for c in engine.COMMANDS:
            cli.add_command(c)
    except ImportError:
        pass


_register()


def main() -> None:
    from .client import APIError, ConnectError

    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except ConnectError as e:
        fail(str(e))
    except APIError as e:
        fail(f"{e} (HTTP {e.status})")


if __name__ == "__main__":
    main()
