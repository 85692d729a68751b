"""The import structure of ``yolo_dero.mcu``: an acyclic stack of modules.

* every module imports on its own (a fresh interpreter per module, so no import order hides a cycle);
* no function body imports a project module (``yolo_dero``, ``classification``, or a relative import): project
  imports sit at module level, where the dependency graph is visible; functions may still import optional
  third-party packages (litert-torch, tflite-micro, ai-edge-litert, cv2) on first use;
* the graph of module-level imports between the package's modules has no cycle, and no module imports from the
  package ``__init__`` (which itself only re-exports).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = "yolo_dero.mcu"
ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "yolo_dero" / "mcu"
MODULES = sorted(p.stem for p in PKG_DIR.glob("*.py"))
PROJECT_PACKAGES = ("yolo_dero", "classification")


def _tree(name: str) -> ast.Module:
    return ast.parse((PKG_DIR / f"{name}.py").read_text(), filename=f"{name}.py")


def _is_project_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] in PROJECT_PACKAGES
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in PROJECT_PACKAGES for a in node.names)
    return False


def _function_local_project_imports(tree: ast.Module) -> list[str]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for node in ast.walk(fn):
                if _is_project_import(node):
                    found.append(f"line {node.lineno} in {getattr(fn, 'name', '<lambda>')}: {ast.unparse(node)}")
    return found


def _sibling_imports(name: str) -> set[str]:
    """Modules of the package that ``name`` imports at module level ('' = the package ``__init__`` itself)."""
    deps = set()
    for node in _tree(name).body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # ``from . import x``: x is a module of the package, or a name of __init__
                    deps |= {a.name if a.name in MODULES else "" for a in node.names}
            elif node.level == 0 and (node.module or "").startswith(PACKAGE + "."):
                deps.add(node.module[len(PACKAGE) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            deps |= {a.name[len(PACKAGE) + 1:].split(".")[0] for a in node.names if a.name.startswith(PACKAGE + ".")}
    return deps


def test_modules_listed():
    assert {"__init__", "__main__", "tflite", "runtime", "export", "arena", "offline_plan", "fit",
            "reports"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_on_its_own(name):
    mod = PACKAGE if name == "__init__" else f"{PACKAGE}.{name}"
    r = subprocess.run([sys.executable, "-c", f"import importlib; importlib.import_module({mod!r})"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("name", MODULES)
def test_no_function_local_project_imports(name):
    assert _function_local_project_imports(_tree(name)) == []


def test_import_graph_is_acyclic():
    graph = {m: _sibling_imports(m) for m in MODULES if m != "__init__"}
    assert not any("" in deps for deps in graph.values()), \
        {m: d for m, d in graph.items() if "" in d}  # nothing imports names from the package __init__
    order, state = [], {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            visit(d, path + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    # the layers of docs/deployment.md: tflite at the bottom, the CLI on top
    assert graph["tflite"] == set()
    assert graph["runtime"] <= {"tflite"}
    assert order.index("reports") > max(order.index(m) for m in ("export", "arena", "offline_plan"))
    assert "__main__" not in set().union(*graph.values())


def test_the_check_sees_a_function_local_import():
    src = "import os\n\ndef f():\n    from .tflite import require\n    import cv2\n    return require, cv2\n"
    assert len(_function_local_project_imports(ast.parse(src))) == 1
