"""One calling pattern for every experiment (grid, audit, robustness, curves, a transfer and
the transfer matrix, universal perturbations).

An experiment is a declaration (:class:`Experiment`): the settings that define it
(``identity``, compared with a folder's earlier run) and what it records beside them
(``record``); its cells, each a key and how to compute its value (:class:`Cell`); what a stored
cell must hold (``check_cell``); and how it publishes (``publish``: the tables, plots and the
summary it returns). :func:`run` owns the rest, once for all of them: the results folder and its
lock (:class:`~advrank.experiments.store.Store`), resuming (cells already stored are not
computed again), one progress line per cell, an atomic write after every cell, one writer
under torchrun (rank 0; every process computes the same cells, so collective steps stay in
step) and the final publication. A command without an output folder (``advrank transfer``)
runs the same declaration in memory.

Experiments take :class:`~advrank.experiments.target.Target` s, or specs
:func:`~advrank.experiments.target.load_target` turns into them (a checkpoint, or an outside
model on any collection), so every command that measures a model accepts both forms.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from advrank.core import distributed
from advrank.experiments.store import Store

Log = Callable[[str], None]


@dataclass
class Cell:
    """One unit of work: its ``key`` in the store and ``compute()``, which returns the value
    stored under it (a JSON-able dict). ``label`` names it in progress lines."""

    key: str
    compute: Callable[[], Any]
    label: str = ""


class Experiment:
    """What an experiment declares; :func:`run` does the rest. Subclasses set ``name`` (the
    progress prefix), ``filename`` and ``format`` (the store file and its kind) and override
    :meth:`identity`, :meth:`cells` and :meth:`publish`; the other hooks are optional."""

    name = "experiment"
    filename = "results.json"
    format = "advrank-experiment"
    #: identity values of files written before a setting existed
    implied: dict[str, Any] = {}
    #: files the experiment publishes beside its store file: one found without the store file
    #: is someone else's, refused unless ``force`` (which overwrites it and starts over)
    outputs: tuple[str, ...] = ()
    force: bool = False

    def identity(self) -> dict[str, Any]:
        """The settings that must match a folder's earlier run (refused otherwise)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """Provenance stored beside the identity, never compared."""
        return {}

    def check_cell(self, key: str, cell: Any) -> str | None:
        """Why a stored cell cannot be reused (None if it can)."""
        return None

    def prepare(self, store: Store) -> None:
        """Checks of the stored cells as a whole (e.g. the attack options they were made
        with), once the folder is open and before any cell runs."""

    def cells(self, store: Store) -> Iterable[Cell]:
        """Every cell of the run, in order; a sized collection is announced with its count of
        cells to run, a generator (e.g. one that loads models as it goes) is not."""
        raise NotImplementedError

    def announce(self, todo: int, done: int) -> str:
        return f"{self.name}: {todo} cells to run ({done} already done)"

    def running(self, store: Store) -> contextlib.AbstractContextManager:
        """A context around the cells and the publication, entered once the folder is open
        (e.g. an estimate of the work left and one progress bar over it)."""
        return contextlib.nullcontext()

    def finished(self, store: Store, cell: Cell, value: Any, seconds: float, log: Log) -> None:
        """After each computed cell is stored: a progress line (and, for experiments whose
        tables are read while they run, a rewrite of them)."""
        log(f"  {cell.label or cell.key} ({seconds:.0f}s)")

    def publish(self, store: Store, computed: list[str]) -> Any:
        """The final tables and the result returned (``computed``: the keys this run made)."""
        raise NotImplementedError


def progress_log(progress: bool | None) -> Log:
    """Progress lines on stderr (rank 0 alone under torchrun), or nothing."""
    if not progress or not distributed.is_main():
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr)


def run(experiment: Experiment, out_dir: str | Path | None, log: Log | None = None) -> Any:
    """Run (or resume) ``experiment`` into ``out_dir``; returns what it publishes.

    The folder is locked for the whole run; a folder holding a run made with other settings,
    or a damaged cell, is refused before any work. Each cell not yet stored is computed and
    written at once, so a killed run loses at most the cell in progress. Without a folder
    (``out_dir`` None: a command with no ``--out``) the cells are computed in memory, the same
    hooks run, and nothing is resumed or written.
    """
    log = log or progress_log(False)
    with Store(out_dir, experiment.filename, experiment.format, experiment.identity(),
               experiment.record(), implied=experiment.implied,
               check_cell=experiment.check_cell, outputs=experiment.outputs,
               force=experiment.force) as store:
        experiment.prepare(store)
        cells = experiment.cells(store)
        if isinstance(cells, Sized):
            todo = sum(cell.key not in store for cell in cells)
            if todo:
                log(experiment.announce(todo, len(store.cells)))
        computed: list[str] = []
        with experiment.running(store):
            for cell in cells:
                if cell.key in store:
                    continue  # finished by an earlier (interrupted) run
                t0 = time.time()
                value = cell.compute()
                store.put(cell.key, value)
                computed.append(cell.key)
                experiment.finished(store, cell, value, time.time() - t0, log)
            return experiment.publish(store, computed)
