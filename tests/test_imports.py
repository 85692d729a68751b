"""The import structure of ``yolo_dero.mcu`` and ``yolo_dero.memory``: acyclic stacks of modules.

* every module imports on its own (a fresh interpreter per module, so no import order hides a cycle);
* no function body imports a project module (``yolo_dero``, ``classification``, or a relative import): project
  imports sit at module level, where the dependency graph is visible; functions may still import optional
  third-party packages (litert-torch, tflite-micro, ai-edge-litert, cv2, matplotlib) on first use;
* the graph of module-level imports between the package's modules has no cycle, and no module imports from the
  package ``__init__`` (which itself only re-exports);
* ``yolo_dero.memory`` (the generic analyzer) imports torch, numpy, the standard library and ``yolo_dero.nn``
  only: never ``classification``, ``yolo_dero.ultra``, ``yolo_dero.catalog`` or Ultralytics, not even
  transitively; only its command line (``__main__``) loads models through ``yolo_dero.catalog``.
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


def _tree(name: str, pkg_dir: Path = PKG_DIR) -> ast.Module:
    return ast.parse((pkg_dir / f"{name}.py").read_text(), filename=f"{name}.py")


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


def _sibling_imports(name: str, package: str = PACKAGE, pkg_dir: Path = PKG_DIR,
                     modules: list[str] = MODULES) -> set[str]:
    """Modules of the package that ``name`` imports at module level ('' = the package ``__init__`` itself)."""
    deps = set()
    for node in _tree(name, pkg_dir).body:
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # ``from . import x``: x is a module of the package, or a name of __init__
                    deps |= {a.name if a.name in modules else "" for a in node.names}
            elif node.level == 0 and (node.module or "").startswith(package + "."):
                deps.add(node.module[len(package) + 1:].split(".")[0])
        elif isinstance(node, ast.Import):
            deps |= {a.name[len(package) + 1:].split(".")[0] for a in node.names if a.name.startswith(package + ".")}
    return deps


def _topological_order(graph: dict[str, set[str]]) -> list[str]:
    """Modules, each after the ones it imports; fails on a cycle."""
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
    return order


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
    order = _topological_order(graph)
    # the layers of docs/deployment.md: tflite at the bottom, the CLI on top
    assert graph["tflite"] == set()
    assert graph["runtime"] <= {"tflite"}
    assert order.index("reports") > max(order.index(m) for m in ("export", "arena", "offline_plan"))
    assert "__main__" not in set().union(*graph.values())


def test_the_check_sees_a_function_local_import():
    src = "import os\n\ndef f():\n    from .tflite import require\n    import cv2\n    return require, cv2\n"
    assert len(_function_local_project_imports(ast.parse(src))) == 1


# ------------------------------------------------------------------------------------------------ yolo_dero.memory

MEM_PACKAGE = "yolo_dero.memory"
MEM_DIR = ROOT / "yolo_dero" / "memory"
MEM_MODULES = sorted(p.stem for p in MEM_DIR.glob("*.py"))
#: what the analyzer may never import, directly or through another module (the model catalogue and above)
UPWARD = ("classification", "ultralytics", "yolo_dero.ultra", "yolo_dero.catalog")
#: top-level packages the analyzer's modules may name in an import (besides the standard library); matplotlib
#: only inside a function (plot.py), as an optional package
ALLOWED_THIRD_PARTY = {"torch", "numpy", "matplotlib"}


def _mem_tree(name: str) -> ast.Module:
    return _tree(name, MEM_DIR)


def _imported_modules(tree: ast.Module) -> list[str]:
    """Absolute names of every module ``tree`` imports anywhere (relative imports resolved in MEM_PACKAGE)."""
    pkg = MEM_PACKAGE.split(".")  # every module of the package (its __init__ too) resolves ``.`` to the package
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(pkg[:len(pkg) - node.level + 1]) if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            out += [mod] if node.module else [f"{mod}.{a.name}" for a in node.names]
    return out


def test_memory_modules_listed():
    assert {"__init__", "__main__", "trace", "intervals", "lowering", "engines", "analyzer", "plot"} <= set(MEM_MODULES)
    assert "loading" not in MEM_MODULES  # the model catalogue lives in yolo_dero/catalog.py


@pytest.mark.parametrize("name", MEM_MODULES)
def test_memory_module_imports_on_its_own_and_nothing_upward(name):
    mod = MEM_PACKAGE if name == "__init__" else f"{MEM_PACKAGE}.{name}"
    code = (f"import importlib, sys; importlib.import_module({mod!r}); "
            f"print(sorted(m for m in sys.modules if any(m == u or m.startswith(u + '.') for u in {UPWARD!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = eval(r.stdout.strip().splitlines()[-1])  # noqa: S307 - our own print of a list of strings
    if name == "__main__":  # the command line loads models by name, YAML or .pt through the catalogue
        assert "yolo_dero.catalog" in loaded and "yolo_dero.ultra" not in loaded and "ultralytics" not in loaded
    else:
        assert loaded == [], f"{mod} imports {loaded}"


@pytest.mark.parametrize("name", MEM_MODULES)
def test_memory_no_function_local_project_imports(name):
    assert _function_local_project_imports(_mem_tree(name)) == []


@pytest.mark.parametrize("name", MEM_MODULES)
def test_memory_imports_only_torch_and_the_unit(name):
    allowed_project = ("yolo_dero.memory", "yolo_dero.nn") + (("yolo_dero.catalog", "yolo_dero.fileutil")
                                                              if name == "__main__" else ())
    bad = []
    for mod in _imported_modules(_mem_tree(name)):
        top = mod.split(".")[0]
        if top in PROJECT_PACKAGES:
            if not any(mod == a or mod.startswith(a + ".") for a in allowed_project):
                bad.append(mod)
        elif top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY and top != "__future__":
            bad.append(mod)
    assert bad == [], f"yolo_dero/memory/{name}.py imports {bad}"


def test_memory_import_graph_is_a_stack():
    graph = {m: _sibling_imports(m, MEM_PACKAGE, MEM_DIR, MEM_MODULES) for m in MEM_MODULES if m != "__init__"}
    assert not any("" in deps for deps in graph.values()), {m: d for m, d in graph.items() if "" in d}
    _topological_order(graph)
    # docs/memory_model.md: trace and intervals at the bottom, then lowering, engines, analyzer, plot, the CLI
    assert graph["trace"] == set() and graph["intervals"] == set()
    assert graph["lowering"] <= {"trace"}
    assert graph["engines"] <= {"trace", "intervals", "lowering"}
    assert graph["analyzer"] <= {"trace", "lowering", "engines"}
    assert graph["plot"] <= {"analyzer"}
    assert "__main__" not in set().union(*graph.values())


def test_the_memory_check_sees_an_upward_import():
    src = "from ..catalog import load_model\nfrom ..ultra import DeroDetectionModel\nimport ultralytics\n"
    mods = _imported_modules(ast.parse(src))
    assert mods == ["yolo_dero.catalog", "yolo_dero.ultra", "ultralytics"]


def test_offline_planner_shares_the_placement_core():
    from yolo_dero.mcu import offline_plan
    from yolo_dero.memory import intervals

    assert offline_plan.place_intervals is intervals.place and offline_plan.interval_profile is intervals.live_profile
