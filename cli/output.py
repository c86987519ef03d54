"""Output helpers for the CLI: rich tables, `--format json`, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

FORMAT_OPTION = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def fail(msg: str, code: int = 1) -> NoReturn:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(msg)}", highlight=False)
    sys.exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def print_table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, Callable[[dict[str, Any]], Any]]],
) -> None:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for name, _ in columns:
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(*[escape(str(f(r))) for _, f in columns])  # cells are data, never markup
    # Piped output keeps one row per line, whatever the width.
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 512).print(table)
