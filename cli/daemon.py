"""`orch daemon`: run this host's node daemon (engine; manager when asked).

Only the command; its flags are made from `daemon.options.OPTIONS` (the
one table they share with /etc/orch/daemon.yaml) when the command is used,
so no other command loads the daemon's code. `daemon.config` merges the
file under the flags, `daemon.options` makes the options, `daemon.hostdeps`
checks the host's packages and `daemon.main` runs them.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from .output import fail

DEFAULT_CONFIG = "/etc/orch/daemon.yaml"


def _params() -> list[click.Parameter]:
    from daemon.options import OPTIONS  # deferred: only `orch daemon` loads the daemon

    params: list[click.Parameter] = [click.Option(
        ["--config", "config_path"], default=None, metavar="FILE",
        help=f"YAML file of options (keys: these flags without dashes); flags given here win. "
             f"Default: {DEFAULT_CONFIG} when it exists.")]
    for o in OPTIONS:
        kw: dict[str, Any] = {"help": o.help, "default": o.default, "show_default": o.default not in (None, (), "")}
        if o.kind == "bool":
            kw.update(is_flag=True)
        elif o.kind == "list":
            kw.update(multiple=True)
        elif o.kind == "int":
            kw.update(type=click.IntRange(min=None if o.minimum is None else int(o.minimum)))
        elif o.kind == "float":
            kw.update(type=click.FloatRange(min=o.minimum))
        elif o.kind == "choice":
            kw.update(type=click.Choice(list(o.choices)))
        params.append(click.Option([o.flag, o.dest], **kw))
    return params


class _LazyCommand(click.Command):
    """A command whose parameters are built on first use."""

    def __init__(self, *args: Any, load: Any, **kwargs: Any) -> None:
        self._load = load
        self._lazy: list[click.Parameter] | None = None
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        if self._lazy is None:
            self._lazy = self._load()
        return self._lazy

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        if value:
            self._lazy = list(value)


def _run(**values: Any) -> None:
    """Run the orch daemon on this host."""
    # Imported here: every other command of the CLI runs without the daemon's code.
    import os

    from daemon.config import ConfigError, load_config, merge
    from daemon.hostdeps import describe, missing
    from daemon.main import DaemonError, run
    from daemon.options import BY_DEST, OptionsError, build_kwargs, build_options

    ctx = click.get_current_context()
    config_path = values.pop("config_path")
    given = {d for d in values if ctx.get_parameter_source(d) == click.core.ParameterSource.COMMANDLINE}
    try:
        cfg = load_config(config_path or DEFAULT_CONFIG, required=config_path is not None)
    except ConfigError as e:
        fail(f"config: {e}")
    merged = merge(values, given, cfg)
    logging.basicConfig(
        level=merged["log_level"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        opts = build_options(**build_kwargs(merged))
    except OptionsError as e:
        dest = next((o.dest for o in BY_DEST.values() if o.flag == e.param), None)
        if cfg is not None and dest is not None and dest in cfg.lines and dest not in given:
            fail(f"config: {cfg.where(dest)}: {e}")
        if e.param:
            raise click.BadParameter(str(e), param_hint=e.param) from None
        fail(str(e))
    if not os.environ.get("ORCH_SKIP_HOST_CHECK"):
        lacking = missing(opts.runtime)
        if lacking:
            fail(describe(lacking))
    try:
        run(opts)
    except DaemonError as e:
        fail(f"daemon: {e}")


daemon = _LazyCommand("daemon", callback=_run, load=_params, help="Run the orch daemon on this host.",
                      short_help="Run the orch daemon on this host.")
