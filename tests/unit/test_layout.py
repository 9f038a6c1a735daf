"""The architecture holds: no import cycles (function-level imports counted), one error
tree, folders and modules of a readable size, and a public surface that does not drift.
The layer rules themselves are import-linter contracts in pyproject.toml, run by
scripts/check before the tests."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import grimp

import timmy_magic
from timmy_magic.model.errors import TimmyError

PACKAGE = Path(timmy_magic.__file__).parent
MAX_LINES = 450
MAX_MODULES = 13  # "about 12": routing holds the router and its twelve policies and parts
INTERRUPTS = {"StreamInterrupted", "MapInterrupted", "EvalInterrupted"}
"""KeyboardInterrupts on purpose: a Run All stops there (see model/errors.py)."""


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "timmy_magic.")]


def test_no_import_cycles_counting_function_level_imports() -> None:
    graph = grimp.build_graph("timmy_magic", exclude_type_checking_imports=True)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert cycles == []


def test_every_public_exception_is_a_timmy_error() -> None:
    offenders = []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and obj.__module__ == name and not attr.startswith("_")):
                ok = issubclass(obj, TimmyError) or (
                    attr in INTERRUPTS and issubclass(obj, KeyboardInterrupt))
                if not ok:
                    offenders.append(f"{name}.{attr}")
    assert offenders == []


def test_no_module_over_the_limit_and_no_crowded_folder() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
    crowded = {str(d.relative_to(PACKAGE)): n for d in [PACKAGE, *PACKAGE.rglob("*/")]
               if d.is_dir() and d.name != "__pycache__"
               and (n := len([p for p in d.glob("*.py") if p.name != "__init__.py"]))
               > MAX_MODULES}
    assert crowded == {}


def test_module_docstrings_say_what_the_module_is_not_its_history() -> None:
    history = []
    for path in PACKAGE.rglob("*.py"):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if "issue " in doc.lower() or "(#" in doc or "red-team" in doc.lower():
            history.append(str(path.relative_to(PACKAGE)))
    assert history == []


PUBLIC = {
    "ChatRequest", "Config", "ConfigError", "Delta", "Done", "Evaluation", "MapResult",
    "Message", "evaluate", "judge",
    "NoProviderAvailable", "PinnedProviderFailed", "Result", "Router", "Status",
    "TimmyError", "Trying", "get_router", "last", "load_config", "load_ipython_extension",
    "map", "map_results", "panel", "unload_ipython_extension",
}


def test_the_public_surface_does_not_drift() -> None:
    assert set(timmy_magic.__all__) == PUBLIC - {"map"}
    for name in PUBLIC:
        assert getattr(timmy_magic, name) is not None, name
    star: dict[str, object] = {}
    exec("from timmy_magic import *", star)
    assert "map" not in star and "Router" in star  # the builtin map is not shadowed


OWNERS = {
    "shorten": "text/markup.py", "fence": "text/markup.py", "count": "text/markup.py",
    "short_count": "text/markup.py", "CHARS_PER_TOKEN": "model/tokens.py",
    "estimate_tokens": "model/tokens.py", "image_tokens": "model/tokens.py",
    "cut_middle": "context/items.py", "summarize": "context/summaries.py",
    "rich_frontend": "notebook/display/render.py", "UsageParser": "notebook/args.py",
}
"""Each small guarantee and the one module that defines it: a second definition (a
function or class of that name, even nested; a module constant; any argparse subclass)
is a copy that can drift."""


def _definitions(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef) and any(
                ast.unparse(base).endswith("ArgumentParser") for base in node.bases):
            names.add("UsageParser")  # an argparse that raises instead of exiting
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_each_small_guarantee_has_one_owner() -> None:
    where: dict[str, list[str]] = {name: [] for name in OWNERS}
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _definitions(ast.parse(path.read_text())):
            if name in where:
                where[name].append(str(path.relative_to(PACKAGE)))
    assert where == {name: [owner] for name, owner in OWNERS.items()}
