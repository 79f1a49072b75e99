"""The package's layout rules, checked on the source itself so they stay true: no function over
60 lines, no import cycle between modules (lazy imports inside functions included), and the
layers point one way: ``reports/`` renders what it is given and never imports ``experiments/``
(nor the CLI), and no library module imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "advrank"
MAX_LINES = 60


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
