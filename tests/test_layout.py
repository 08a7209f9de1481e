"""The package's layout rules, checked on its source (docs: README "Layout").

* no import cycle between the package's modules, counting imports inside
  functions too (a lazy import still runs the other module);
* nothing outside `audfer_jax/cli/` imports `audfer_jax.cli`, and only
  `cli/` parses flags (argparse, absl flags);
* no function longer than 80 lines (from `def` to its last line).
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "audfer_jax")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, str]:
    """`{dotted module name: file}` for every .py file of the package."""
    out = {}
    root = os.path.dirname(PACKAGE)
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(open(path).read(), path) for name, path in MODULES.items()}


def _imported(module: str, tree: ast.AST) -> set[str]:
    """The package modules that `module` imports (anywhere in its body)."""
    package = module if MODULES[module].endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import sub` depends on the submodule `sub`; on the
            # package itself only for names that `pkg/__init__.py` defines.
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [n for n in subs if n in MODULES] or [base]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


GRAPH = {m: _imported(m, t) for m, t in TREES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_imports():
    """The graph is read right: known edges are there (else the rules test nothing)."""
    assert "audfer_jax.losses" in GRAPH["audfer_jax.steps"]
    assert "audfer_jax.train" in GRAPH["audfer_jax.cli.train"]      # a lazy import
    assert "audfer_jax.models.base" in GRAPH["audfer_jax.models.former_dfer"]


def test_no_import_cycle():
    assert _cycles() == []


def test_only_cli_imports_cli():
    outside = {m: sorted(d for d in deps if d == "audfer_jax.cli" or
                         d.startswith("audfer_jax.cli."))
               for m, deps in GRAPH.items()
               if m != "audfer_jax.cli" and not m.startswith("audfer_jax.cli.")
               and m != "audfer_jax.__main__"}
    assert {m: d for m, d in outside.items() if d} == {}


# What parsing flags takes. (`argparse` alone may be imported elsewhere:
# models/convert.py rebuilds the `argparse.Namespace` pickled in the original
# checkpoints, which parses nothing.)
FLAG_PARSERS = ("argparse.ArgumentParser", "absl.flags", "ml_collections.config_flags")


def _uses(tree: ast.AST) -> set[str]:
    """Dotted names a module imports or reads as attributes (`argparse.ArgumentParser`)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(f"{node.value.id}.{node.attr}")
    return names


@pytest.mark.parametrize("parser", FLAG_PARSERS)
def test_only_cli_parses_flags(parser):
    users = sorted(m for m, tree in TREES.items() if not m.startswith("audfer_jax.cli")
                   and any(n == parser or n.startswith(parser + ".") for n in _uses(tree)))
    assert users == []


def test_the_flag_check_sees_parsers():
    assert "argparse.ArgumentParser" in _uses(TREES["audfer_jax.cli.errors"])


def test_functions_are_short():
    long = []
    for module, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {length} lines")
    assert long == []
