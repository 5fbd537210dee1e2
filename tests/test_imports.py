"""The package's import structure: one-way imports, no cycles, no borrowed private names.

The graph is read from the source (``ast``): every ``import`` a module runs,
at module level or inside a function, except those under ``TYPE_CHECKING``
(which never run). Then every module is imported on its own in a fresh
interpreter state, which fails on a cycle that Python cannot resolve.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PACKAGE = SRC / "modelkeep"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, level: int, target: str | None, is_package: bool) -> str:
    """The absolute module named by a (possibly relative) import in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def _imports(module: str) -> list[tuple[str, list[str]]]:
    """``(imported module, names imported from it)`` for every import that runs (parsed once a session)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, []) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                target = _resolve(module, child.level, child.module, is_package)
                names = [alias.name for alias in child.names]
                submodules = [n for n in names if f"{target}.{n}" in MODULES]
                found.extend((f"{target}.{n}", []) for n in submodules)
                found.append((target, [n for n in names if n not in submodules]))
            visit(child)

    visit(tree)
    return [(target, names) for target, names in found if target.split(".")[0] == "modelkeep"]


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m) if t in MODULES and t != m} for m in MODULES}


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    borrowed = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, names in _imports(module)
        if target != module
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert borrowed == []


def test_the_graph_sees_real_imports() -> None:
    """The checks above would pass on an empty graph: make sure they read the real one."""
    graph = _graph()
    assert "modelkeep.layout" in graph["modelkeep.registry"]
    assert "modelkeep.storage" in graph["modelkeep.registry"]
    assert "modelkeep.maintenance" in graph["modelkeep.registry"]  # imported inside a method
    assert "modelkeep.registry" not in graph["modelkeep.maintenance"]  # only for type checking


#: Imports each module named on stdin in a child forked from this interpreter, which has imported
#: nothing but the standard library's ``json``, ``os``, ``sys`` and ``traceback`` (no modelkeep
#: module, no third-party package): each child starts in a fresh interpreter state as
#: ``python -c "import <module>"`` would, without paying an interpreter start per module (~0.3 s
#: each). Prints ``{module: [exit code, output]}`` as JSON.
_IMPORT_EACH = """
import json, os, sys, traceback
results = {}
for module in json.load(sys.stdin):
    read, write = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.dup2(write, 1)
        os.dup2(write, 2)
        code = 0
        try:
            __import__(module)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        output = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    results[module] = [os.waitstatus_to_exitcode(status), output]
json.dump(results, sys.stdout)
"""

#: Every module but ``modelkeep.__main__`` (that one runs the CLI).
IMPORTABLE = sorted(m for m in MODULES if m != "modelkeep.__main__")


@pytest.fixture(scope="module")
def imported_on_their_own() -> dict[str, list[object]]:
    """``{module: [exit code, output]}`` of importing each of :data:`IMPORTABLE` on its own."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH], input=json.dumps(IMPORTABLE), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    results: dict[str, list[object]] = json.loads(result.stdout)
    return results


@pytest.mark.parametrize("module", IMPORTABLE)
def test_every_module_imports_on_its_own(module: str, imported_on_their_own: dict[str, list[object]]) -> None:
    code, output = imported_on_their_own[module]
    assert code == 0, output


def test_a_module_that_cannot_import_on_its_own_fails() -> None:
    """The forked import above reports a module that fails, with its traceback, and starts each
    module without modelkeep already imported (else a cycle would go unseen)."""
    modules = ["modelkeep.no_such_module", "json"]
    fresh = "assert not [m for m in sys.modules if m.split('.')[0] in ('modelkeep', 'numpy')], 'not fresh'"
    script = _IMPORT_EACH.replace("__import__(module)", f"{fresh}; __import__(module)")
    result = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps(modules), capture_output=True, text=True, timeout=120
    )
    results = json.loads(result.stdout)
    assert results["modelkeep.no_such_module"][0] == 1
    assert "ModuleNotFoundError" in results["modelkeep.no_such_module"][1]
    assert results["json"] == [0, ""]
