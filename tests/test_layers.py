"""The package layering of ARCHITECTURE.md, kept by a test over the import
graph: every .py file of ours is parsed (imports inside functions count,
and so do `importlib.import_module("...")` / `__import__("...")` with a
literal name), and each import of one of our top-level packages must be
allowed for the package that makes it. "Deferred" below means inside a
function body or under `if TYPE_CHECKING:`, i.e. not when the module loads.

    api          -> nothing of ours
    pki          -> api
    scheduler    -> api
    overlay_net  -> api
    agent        -> api, pki, overlay_net
    manager      -> api, pki, scheduler
    daemon       -> api, pki, scheduler, overlay_net, agent; manager
                    deferred only (the one composition root: it loads the
                    manager when the node becomes one, so a worker never
                    does); never cli, tests or bench
    cli          -> api; daemon deferred only (the `orch daemon` command
                    imports it when it runs, so no other command loads it);
                    nothing else of ours (its mutual-TLS client is plain `ssl`)
    tests, bench -> anything

A second check runs: a node that stays a worker never imports the manager.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = frozenset({"api", "pki", "scheduler", "overlay_net", "agent", "manager", "daemon", "cli", "tests", "bench"})

# package -> (allowed anywhere, allowed only deferred)
RULES: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "api": (frozenset(), frozenset()),
    "pki": (frozenset({"api"}), frozenset()),
    "scheduler": (frozenset({"api"}), frozenset()),
    "overlay_net": (frozenset({"api"}), frozenset()),
    "agent": (frozenset({"api", "pki", "overlay_net"}), frozenset()),
    "manager": (frozenset({"api", "pki", "scheduler"}), frozenset()),
    "daemon": (frozenset({"api", "pki", "scheduler", "overlay_net", "agent"}), frozenset({"manager"})),
    "cli": (frozenset({"api"}), frozenset({"daemon"})),
    "tests": (OURS, frozenset()),
    "bench": (OURS, frozenset()),
}


@dataclass(frozen=True)
class Import:
    file: Path
    line: int
    module: str  # absolute dotted name
    deferred: bool  # inside a function or under `if TYPE_CHECKING:`


def _module_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, level: int, module: str | None, root: Path = ROOT) -> str:
    """The absolute name of `from <level dots><module> import ...` in `path`."""
    if level == 0:
        return module or ""
    package = _module_of(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, module] if module else base)


def imports_of(path: Path, root: Path = ROOT) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[Import] = []

    def type_checking(node: ast.AST) -> bool:
        t = node.test if isinstance(node, ast.If) else None
        return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
            isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if type_checking(child):  # its else branch, if any, runs: visit that as it is
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), deferred)
                continue
            if isinstance(child, ast.Import):
                out.extend(Import(path, child.lineno, a.name, deferred) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(path, child.level, child.module, root)
                if child.module is None:  # from . import x: x may be a module
                    out.extend(Import(path, child.lineno, f"{base}.{a.name}", deferred) for a in child.names)
                else:
                    out.append(Import(path, child.lineno, base, deferred))
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and ((isinstance(child.func, ast.Attribute) and child.func.attr == "import_module")
                       or (isinstance(child.func, ast.Name) and child.func.id in ("import_module", "__import__")))):
                out.append(Import(path, child.lineno, child.args[0].value, deferred))
            visit(child, inside)

    visit(tree, False)
    return out


def our_files() -> list[Path]:
    files = []
    for top in sorted(OURS):
        d = ROOT / top
        if d.is_dir():
            files.extend(p for p in sorted(d.rglob("*.py")) if "__pycache__" not in p.parts)
    return files


def violations(files: list[Path], root: Path = ROOT) -> list[str]:
    found = []
    for path in files:
        owner = path.relative_to(root).parts[0]
        anywhere, lazily = RULES[owner]
        for imp in imports_of(path, root):
            target = imp.module.split(".")[0]
            if target not in OURS or target == owner or target in anywhere:
                continue
            if target in lazily and imp.deferred:
                continue
            where = "only deferred (in a function or under TYPE_CHECKING)" if target in lazily else "not at all"
            allowed = ", ".join(sorted(anywhere)) or "nothing of ours"
            found.append(f"{path.relative_to(root)}:{imp.line}: {owner} imports {imp.module} "
                         f"({owner} may import {allowed}; {target} {where})")
    return found


def test_every_package_has_a_rule() -> None:
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert tops <= set(RULES), f"packages without a layering rule: {sorted(tops - set(RULES))}"


def test_imports_follow_the_layers() -> None:
    files = our_files()
    assert len(files) > 100  # the walk found the tree
    found = violations(files)
    assert not found, "imports against the layering (tests/test_layers.py):\n" + "\n".join(found)


def test_the_check_names_file_line_and_import(tmp_path: Path) -> None:
    # A tree of two files that break the rules, one at the top and one lazily.
    (tmp_path / "agent" / "sub").mkdir(parents=True)
    bad = tmp_path / "agent" / "sub" / "probe.py"
    bad.write_text(textwrap.dedent("""\
        from api import codec
        from pki import RootCA
        from ..node import x


        def f():
            from manager.process import ManagerProcess
            return ManagerProcess
        """))
    cli = tmp_path / "cli" / "cmd.py"
    cli.parent.mkdir()
    cli.write_text("from daemon import node\n\n\ndef g():\n    from daemon import main\n")
    composer = tmp_path / "daemon" / "x.py"
    composer.parent.mkdir()
    composer.write_text("from typing import TYPE_CHECKING\n\nimport manager.store\n\nif TYPE_CHECKING:\n"
                        "    from manager.process import ManagerProcess\nelse:\n    from manager import tx\n")
    assert violations([bad, cli, composer], tmp_path) == [
        "agent/sub/probe.py:7: agent imports manager.process "
        "(agent may import api, overlay_net, pki; manager not at all)",
        "cli/cmd.py:1: cli imports daemon (cli may import api; daemon only deferred (in a function or "
        "under TYPE_CHECKING))",
        "daemon/x.py:3: daemon imports manager.store (daemon may import agent, api, overlay_net, pki, scheduler; "
        "manager only deferred (in a function or under TYPE_CHECKING))",
        "daemon/x.py:8: daemon imports manager (daemon may import agent, api, overlay_net, pki, scheduler; "
        "manager only deferred (in a function or under TYPE_CHECKING))",
    ]


def test_relative_and_lazy_imports_are_resolved() -> None:
    assert _resolve(ROOT / "daemon" / "node.py", 1, "localapi") == "daemon.localapi"
    assert _resolve(ROOT / "manager" / "controlapi" / "server.py", 2, "tx") == "manager.tx"
    assert _resolve(ROOT / "agent" / "__init__.py", 1, None) == "agent"
    cli_daemon = [i for i in imports_of(ROOT / "cli" / "daemon.py") if i.module.startswith("daemon")]
    assert cli_daemon and all(i.deferred for i in cli_daemon)
    settings = {i.module: i.deferred for i in imports_of(ROOT / "daemon" / "settings.py")}
    assert settings["manager.raft.driver"] is True  # under TYPE_CHECKING and inside a method


# -- at run time -----------------------------------------------------------------

_LOADED = "import json, sys; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'manager')))"


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def test_the_daemon_and_cli_import_without_the_manager() -> None:
    r = _python("import cli.main, daemon.main, daemon.node, daemon.options, daemon.membership, daemon.localapi\n"
                + _LOADED)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="the engine needs root")
def test_a_worker_daemon_never_loads_the_manager(tmp_path: Path) -> None:
    """Start a daemon that is in no cluster, use its socket (engine,
    membership and control paths), and look at what it imported."""
    from tests.fixtures.cgroups import remove_cgroup_parent

    cgroup = f"orch-test-{uuid.uuid4().hex[:8]}"
    code = textwrap.dedent(f"""\
        import asyncio, json, sys
        import aiohttp
        from daemon.node import NodeDaemon
        from daemon.options import build_options

        async def main():
            opts = build_options(
                data_dir={str(tmp_path / "data")!r}, node_id=None, listen_addr="127.0.0.1:4242", initial_cluster="",
                as_manager=False, socket_path={str(tmp_path / "s.sock")!r}, tick_ms=100, election_ticks=10,
                snapshot_every=10_000, keep_entries=5_000, insecure=(), registry_auth_file=None, runtime="runc",
                cgroup_parent={cgroup!r}, hostname=None, heartbeat_period=5.0)
            d = NodeDaemon(opts)
            await d.start()
            answers = {{}}
            try:
                conn = aiohttp.UnixConnector(path=opts.socket_path)
                async with aiohttp.ClientSession(connector=conn) as s:
                    for method, path in (("GET", "/v1/info"), ("GET", "/v1/images"), ("GET", "/v1/services"),
                                         ("GET", "/v1/nodes"), ("GET", "/v1/services/x/logs"),
                                         ("GET", "/v1/swarm/init")):
                        async with s.request(method, "http://local" + path) as r:
                            answers[method + " " + path] = [r.status, await r.json()]
            finally:
                await d.stop()
            answers["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] == "manager")
            print(json.dumps(answers))

        asyncio.run(main())
        """)
    try:
        r = _python(code, timeout=120)
    finally:
        remove_cgroup_parent(cgroup)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["GET /v1/info"] == [200, {"cluster": None}]
    assert out["GET /v1/images"] == [200, []]
    for path in ("/v1/services", "/v1/nodes", "/v1/services/x/logs"):
        status, body = out["GET " + path]
        assert status == 503 and body["error"]["code"] == "not_manager", (path, body)
        assert "not a manager" in body["error"]["message"]
    assert out["GET /v1/swarm/init"][0] == 405  # a path of the socket's own, wrong method
    assert not (tmp_path / "s.sock").exists()
