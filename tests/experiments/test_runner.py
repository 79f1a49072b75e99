"""The one experiment runner: a declaration's cells are computed once into a folder (a rerun
resumes), or in memory when the command has no folder (nothing written, nothing resumed)."""

from __future__ import annotations

import json

import pytest

from advrank.errors import AdvrankError
from advrank.experiments.runner import Cell, Experiment, run
from advrank.experiments.store import Store


class Squares(Experiment):
    """Cells ``n -> n * n``; counts the cells it computes and publishes their sum."""

    name, filename, format = "squares", "squares.json", "advrank-test-squares"

    def __init__(self, values, table: bool = False):
        self.values, self.table, self.computed = list(values), table, []

    def identity(self):
        return {"values": self.values}

    def cells(self, store: Store):
        return [Cell(str(n), lambda n=n: self._square(n)) for n in self.values]

    def _square(self, n: int) -> dict:
        self.computed.append(n)
        return {"square": n * n}

    def publish(self, store: Store, computed: list[str]):
        if self.table:
            store.write_text("squares.md", "done")
        return {"sum": sum(cell["square"] for cell in store.cells.values()),
                "computed": computed}


def test_a_folder_run_is_resumed_and_an_in_memory_run_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = Squares([1, 2, 3])
    assert run(first, tmp_path / "out") == {"sum": 14, "computed": ["1", "2", "3"]}
    stored = json.loads((tmp_path / "out" / "squares.json").read_text())
    assert stored["cells"] == {"1": {"square": 1}, "2": {"square": 4}, "3": {"square": 9}}
    again = Squares([1, 2, 3])
    assert run(again, tmp_path / "out")["computed"] == [] and again.computed == []

    memory = Squares([2, 5])
    assert run(memory, None) == {"sum": 29, "computed": ["2", "5"]}
    assert memory.computed == [2, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing else written
    twice = Squares([2, 5])
    assert run(twice, None)["computed"] == ["2", "5"]  # in memory: nothing to resume


def test_an_in_memory_run_refuses_to_publish_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdvrankError, match="squares.md needs an output folder"):
        run(Squares([1], table=True), None)
    assert list(tmp_path.iterdir()) == []
    assert run(Squares([1], table=True), tmp_path / "out")["sum"] == 1
    assert (tmp_path / "out" / "squares.md").read_text() == "done"
