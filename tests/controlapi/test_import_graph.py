"""The control API's import graph, read from the source with `ast`:
server.py assembles the handler modules and none of them imports it back,
the package has no import cycle, and no module reaches for another's
private names."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PKG = "manager.controlapi"
HANDLER_MODULES = {"cluster", "configs", "join", "networks", "nodes", "openapi", "secrets", "services", "stacks"}


def module_path(name: str) -> Path | None:
    base = REPO.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def imports_of(name: str) -> dict[str, set[str]]:
    """Modules `name` imports (anywhere in it, function bodies included),
    each with the names it takes from them."""
    path = module_path(name)
    assert path is not None, name
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                out.setdefault(a.name, set())
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.setdefault(target, set()).update(a.name for a in node.names)
            for a in node.names:  # `from . import nodes` imports a module
                if module_path(f"{target}.{a.name}") is not None:
                    out.setdefault(f"{target}.{a.name}", set())
    return out


def package_modules() -> set[str]:
    return {f"{PKG}.{p.stem}" for p in REPO.joinpath(*PKG.split(".")).glob("*.py") if p.stem != "__init__"}


def test_server_assembles_handler_modules_that_never_import_it() -> None:
    server = f"{PKG}.server"
    assembled = {m.rpartition(".")[2] for m in imports_of(server) if m.startswith(PKG + ".")}
    assert HANDLER_MODULES <= assembled, f"server.py does not import {HANDLER_MODULES - assembled}"
    for h in sorted(HANDLER_MODULES):
        imported = imports_of(f"{PKG}.{h}")
        assert server not in imported, f"{h}.py imports server.py"
        assert not any(m.startswith("manager.process") or m.startswith("agent.") for m in imported), h


def test_control_api_package_has_no_import_cycle() -> None:
    mods = package_modules() | {"manager.membership", "manager.clusterinfo"}
    graph = {m: {d for d in imports_of(m) if d in mods and d != m} for m in mods}
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> None:
        assert m not in path, "import cycle: " + " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        for d in sorted(graph[m]):
            visit(d, path + [m])
        done.add(m)

    for m in sorted(mods):
        visit(m, [])


def test_no_private_names_are_imported_across_modules() -> None:
    # The node daemon's module is agent.node or, once moved, daemon.node.
    users = ("manager.membership", "manager.clusterinfo", "manager.process", "agent.node", "daemon.node")
    mods = package_modules() | {m for m in users if module_path(m) is not None}
    assert "manager.process" in mods
    for m in sorted(mods):
        for target, names in imports_of(m).items():
            private = sorted(n for n in names if n.startswith("_") and not n.startswith("__"))
            assert not private, f"{m} imports {private} from {target}"
