"""The daemon's config file (/etc/orch/daemon.yaml) and how it meets the flags.

Its keys are the `orch daemon` flags without their dashes (daemon.options
OPTIONS is the one table of both), e.g.

    data-dir: /var/lib/orch
    listen-addr: 0.0.0.0:4242
    insecure-registry: [reg.local:5000, 10.0.0.0/8]
    log-level: debug

A flag given on the command line wins over the file; the file wins over the
defaults. Unknown keys, keys given twice and values of the wrong type are
ConfigErrors naming file:line; values the options refuse later (a bad
address, a bad registry) are reported at the line that set them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .options import BY_KEY, OPTIONS, Option

DEFAULT_PATH = "/etc/orch/daemon.yaml"


class ConfigError(ValueError):
    """A problem in the config file at `path`:`line` (1-based; 0 for the file as a whole)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass
class Config:
    """The values a config file sets (by option dest) and the line of each."""

    path: str
    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def where(self, dest: str) -> str:
        """`path:line: key` of the entry that set `dest`."""
        return f"{self.path}:{self.lines[dest]}: {_key_of(dest)}"


def _key_of(dest: str) -> str:
    return next(o.key for o in OPTIONS if o.dest == dest)


def _suggest(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(BY_KEY), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check(opt: Option, value: Any) -> Any:
    """The value as the option takes it, or ValueError saying what is wrong."""
    if value is None and opt.default is None:
        return None
    k = opt.kind
    if k == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if k == "int" or k == "float":
        kind = "an integer" if k == "int" else "a number"
        ok = isinstance(value, int) if k == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ValueError(f"must be {kind}, got {type(value).__name__} {value!r}")
        if opt.minimum is not None and not value >= opt.minimum:
            raise ValueError(f"must be at least {opt.minimum:g}, got {value!r}")
        return float(value) if k == "float" else value
    if k == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"must be a list of strings, got {value!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {type(value).__name__} {value!r} (quote it)")
    if k == "choice" and value not in opt.choices:
        raise ValueError(f"must be one of {', '.join(opt.choices)}, got {value!r}")
    return value


def parse_config(text: str, path: str) -> Config:
    """Parse and check a config file's text (pure; `path` only names it in errors)."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            raise ConfigError(path, mark.line + 1 if mark else 0, f"not valid YAML: {e.problem or e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(path, 0, f"not valid YAML: {e}") from None
        cfg = Config(path)
        if root is None or (isinstance(root, yaml.ScalarNode) and root.tag.endswith(":null")):
            return cfg  # an empty file sets nothing
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError(path, root.start_mark.line + 1,
                              "must be a mapping of option: value (e.g. `data-dir: /var/lib/orch`)")
        seen: dict[str, int] = {}
        for knode, vnode in root.value:
            line = knode.start_mark.line + 1
            if not isinstance(knode, yaml.ScalarNode):
                raise ConfigError(path, line, "keys must be option names")
            key = str(knode.value)
            opt = BY_KEY.get(key) or BY_KEY.get(key.replace("_", "-"))
            if opt is None:
                raise ConfigError(path, line, f"unknown option {key!r}{_suggest(key)}; the options are those of "
                                              "`orch daemon --help` without the dashes")
            if opt.key in seen:
                raise ConfigError(path, line, f"{opt.key} is set twice (also at line {seen[opt.key]})")
            seen[opt.key] = line
            try:
                value = loader.construct_object(vnode, deep=True)
            except yaml.YAMLError as e:
                raise ConfigError(path, line, f"{opt.key}: {e}") from None
            try:
                cfg.values[opt.dest] = _check(opt, value)
            except ValueError as e:
                raise ConfigError(path, vnode.start_mark.line + 1, f"{opt.key}: {e}") from None
            cfg.lines[opt.dest] = vnode.start_mark.line + 1
        return cfg
    finally:
        loader.dispose()


def load_config(path: str, *, required: bool) -> Config | None:
    """Read the config file; None when it is missing and not `required`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(path, 0, "no such file") from None
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, 0, f"cannot read it: {e}") from None
    return parse_config(text, path)


def merge(flags: dict[str, Any], given: set[str], cfg: Config | None) -> dict[str, Any]:
    """Every option's value: a flag given on the command line (dest in `given`),
    else the config file's, else the flag's default (in `flags`)."""
    out = dict(flags)
    if cfg is not None:
        for dest, value in cfg.values.items():
            if dest not in given:
                out[dest] = value
    return out



def effective_socket(path: Any, text: str | None) -> str:
    """The daemon's socket per this config (its text, else the file at `path`),
    or the default when it sets none or cannot be read."""
    try:
        cfg = parse_config(text, str(path)) if text is not None else load_config(str(path), required=False)
    except ConfigError:
        cfg = None
    if cfg is not None and cfg.values.get("socket_path"):
        return str(cfg.values["socket_path"])
    return str(BY_KEY["socket"].default)
