"""The package's layout rules, checked on the source itself so they stay true: no function over
60 lines and no file over 450, no import cycle between modules (lazy imports inside functions
included), and the layers point one way: ``core/`` (the lowest layer) imports nothing from
``data/`` or above, ``reports/`` renders what it is given and never imports ``experiments/``
(nor the CLI), and no library module imports the CLI. A model's metadata is read into a
:class:`~advrank.core.meta.ModelMeta` once, where a checkpoint is read: nowhere else looks
keys up in a ``meta`` dict."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "advrank"
MAX_LINES = 60
MAX_FILE_LINES = 450
#: the modules ``core/`` may import besides its own
BELOW_CORE = ("advrank.errors", "advrank.registry")
#: where a checkpoint's metadata mapping is read (and turned into a ModelMeta)
META_READERS = ("models/checkpoint.py",)


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The advrank modules ``name`` imports anywhere (``from pkg import mod`` counts as the
    module when ``mod`` is one)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in MODULES and m != name and m != "advrank"}


GRAPH = {name: _imports(name, tree) for name, tree in MODULES.items()}


def test_no_function_is_longer_than_60_lines():
    long = [f"{name}.{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for name, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert not long, long


def _cycle_from(start: str) -> list[str] | None:
    """A path of imports from ``start`` back to itself, if there is one (depth-first)."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle():
    # a package's __init__ re-exporting its modules is not a cycle of logic
    cycles = [c for name in GRAPH for c in [_cycle_from(name)] if c and not any(
                  a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:],
                                                                                 strict=False))]
    assert not cycles, cycles[0]


def test_layers_point_one_way():
    upward = [(name, target) for name, targets in GRAPH.items() for target in targets
              if (name.startswith("advrank.reports") and
                  target.startswith(("advrank.experiments", "advrank.cli")))
              or (not name.startswith("advrank.cli") and name != "advrank.__main__"
                  and target.startswith("advrank.cli"))]
    assert not upward, upward


def test_the_rules_see_what_they_check():
    # the checks above would pass vacuously if the walk found nothing
    assert len(MODULES) > 50 and "advrank.experiments.runner" in MODULES
    assert "advrank.experiments.store" in GRAPH["advrank.experiments.runner"]
    assert _cycle_from("advrank.experiments.runner") is None


def test_no_file_is_longer_than_450_lines():
    long = [f"{path.relative_to(SRC)} ({n} lines)" for path in sorted(PACKAGE.rglob("*.py"))
            for n in [len(path.read_text().splitlines())] if n > MAX_FILE_LINES]
    assert not long, long


def _every_import(tree: ast.Module) -> set[str]:
    """Every module an AST imports, advrank's top package included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_imports_nothing_above_it():
    upward = [(name, target) for name, tree in MODULES.items()
              if name.startswith("advrank.core") for target in _every_import(tree)
              if target.split(".")[0] == "advrank" and not target.startswith("advrank.core")
              and target not in BELOW_CORE]
    assert not upward, upward


def test_model_metadata_is_read_as_model_meta():
    found = [f"{path.relative_to(PACKAGE)}:{i}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.relative_to(PACKAGE).as_posix() not in META_READERS
             for i, line in enumerate(path.read_text().splitlines(), 1) if 'meta["' in line]
    assert not found, found
    readers = [(PACKAGE / p).read_text() for p in META_READERS]
    assert all('meta["' in text and "ModelMeta" in text for text in readers)
