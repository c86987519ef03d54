"""Where a compose file is wrong, and how that is told.

Every problem the stack parser finds is a `Diagnostic`: the place in a file
(`file:line:col`, 1-based), the key path inside the compose model
(`services.web.deploy.replicas`), and a message. Errors are collected, not
raised one at a time, so a user sees every problem of a file at once; they
end up in one `ComposeError`. Warnings are diagnostics too, returned beside
the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import field_path

__all__ = ["Place", "Diagnostic", "ComposeError", "Report", "Path", "path_str"]

Path = tuple[str | int, ...]
"""A key path in the compose model: ("services", "web", "ports", 0)."""


def path_str(path: Path) -> str:
    """("services", "web", "ports", 0) -> "services.web.ports[0]"."""
    return field_path(path)


@dataclass(frozen=True, order=True)
class Place:
    """A position in a file; line and col count from 1."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One error or warning: `file:line:col: path: message` (the place is
    None for objects that were not read from a file)."""

    place: Place | None
    path: str
    message: str

    def __str__(self) -> str:
        head = [str(self.place)] if self.place is not None else []
        if self.path:
            head.append(self.path)
        return ": ".join([*head, self.message])


class ComposeError(ValueError):
    """A compose file (or several) could not be turned into a stack.
    `problems` lists every error found, in file order."""

    def __init__(self, problems: Iterable[Diagnostic]) -> None:
        self.problems: tuple[Diagnostic, ...] = tuple(problems)
        n = len(self.problems)
        lines = [str(p) for p in self.problems]
        super().__init__("\n".join(lines) if n else "invalid compose file")

    def messages(self) -> list[str]:
        return [str(p) for p in self.problems]


@dataclass
class Report:
    """Collects errors and warnings while a load runs."""

    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)

    def error(self, place: Place | None, path: Path | str, message: str) -> None:
        self.errors.append(Diagnostic(place, path if isinstance(path, str) else path_str(path), message))

    def warn(self, place: Place | None, path: Path | str, message: str) -> None:
        d = Diagnostic(place, path if isinstance(path, str) else path_str(path), message)
        if d not in self.warnings:
            self.warnings.append(d)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ComposeError(sorted_problems(self.errors))


def sorted_problems(problems: Sequence[Diagnostic]) -> list[Diagnostic]:
    """File order (files in the order they were first named), then line and
    column; diagnostics without a place last; stable otherwise."""
    files: dict[str, int] = {}
    for p in problems:
        if p.place is not None:
            files.setdefault(p.place.file, len(files))

    def key(p: Diagnostic) -> tuple[int, int, int, int]:
        if p.place is None:
            return (1, 0, 0, 0)
        return (0, files[p.place.file], p.place.line, p.place.col)

    return sorted(problems, key=key)
