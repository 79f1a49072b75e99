"""The one store every long job writes through: a results folder with a JSON file of cells.

* **Identity**: the settings that define the run are stored with it; rerunning into the same
  folder with other settings is refused instead of mixing two runs' cells.
* **Lock**: one writer per folder; a second process is refused at once (``flock``, released
  when the process ends, even by SIGKILL).
* **Atomic cells**: each finished cell rewrites the file atomically, so a killed run loses at
  most the cell in progress, and rerunning the same command resumes.
* **Strict JSON**: no NaN or Infinity ever reaches the file (or is read back from one).
* **Checked cells**: each experiment says what a stored cell must hold (``check_cell``); a
  damaged or forged file is refused, and left as it is, instead of being built upon.
* **One writer under torchrun**: rank 0 alone locks, reads and writes; the other processes get
  its cells (and its refusal, if any) by broadcast and write nothing.
* **Lock first**: a command that embeds a collection first takes the folder (:func:`claim`),
  then checks its options against the collection, then embeds; the store it opens later in
  the same process reuses that lock. A refused second writer has written nothing.
* **Foreign files**: the files a store writes (``outputs``) that exist without its results
  file are someone else's; they are refused unless ``force`` (which also starts over).

The file holds ``{"format", "config": {identity + provenance}, "cells": {key: value}}`` and
whatever the experiment adds for its readers (``extra``).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from advrank.core import distributed
from advrank.core.checks import check_path
from advrank.core.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    exclusive,
    read_json,
)
from advrank.errors import AdvrankError

LOCK_NAME = ".advrank.lock"
#: real paths of the folders this process holds (see :func:`claim`)
_HELD: set[str] = set()


@contextlib.contextmanager
def claim(out_dir: str | Path) -> Iterator[Path]:
    """Hold ``out_dir``'s lock for the ``with`` block (rank 0 alone under torchrun), before
    anything is written there; a :class:`Store` on the same folder inside the block uses it.
    A second process is refused here, having written nothing."""
    folder = check_path(out_dir, "output folder")
    if not distributed.is_main():
        yield folder
        return
    check_writable_dir(folder)
    real = os.path.realpath(folder)
    if real in _HELD:
        yield folder
        return
    with exclusive(folder / LOCK_NAME, f"output folder {folder}"):
        _HELD.add(real)
        try:
            yield folder
        finally:
            _HELD.discard(real)


#: the possible values of the attack figures (ranks and recalls are percentages; the curves
#: name a paper attack's rank by the attack); cosine allows float32 rounding
FIGURE_RANGES = {"rank": (0.0, 100.0), "recall@1": (0.0, 100.0), "retain@4": (0.0, 100.0),
                 "cosine": (-1.001, 1.001), "shift": (0.0, math.inf),
                 **{a: (0.0, 100.0) for a in ("CA+", "CA-", "QA+", "QA-")}}


def range_problem(cell: dict, ranges: dict[str, tuple[float, float]] = FIGURE_RANGES
                  ) -> str | None:
    """Why a cell's figures lie outside their possible range (None if they do not):
    ``ranges`` maps a figure's name (``rank`` for ``rank_before``, ``rank_after``, ``rank_max``)
    to its ``(low, high)``; call it on a cell that passed :func:`figures_problem`."""
    for key, value in cell.items():
        name = key.rpartition("_")[0]
        if name in ranges and key.endswith(("_before", "_after", "_max")) and \
                not ranges[name][0] <= value <= ranges[name][1]:
            low, high = ranges[name]
            return f"{key} = {value!r} lies outside [{low:g}, {high:g}]"
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def figures_problem(cell: Any, required: tuple[str, ...] = ("rank_before", "rank_after")
                    ) -> str | None:
    """Why ``cell`` is not a mapping of result figures (None if it is): the ``required``
    figures and every ``*_before``, ``*_after``, ``*_se`` and ``*_max`` must be finite numbers,
    within their range where it is known (:data:`FIGURE_RANGES`: a rank of -55% is refused)."""
    if not isinstance(cell, dict):
        return f"a {type(cell).__name__}, not a mapping"
    for key in required:
        if key not in cell:
            return f"no {key}"
    for key, value in cell.items():
        if key.endswith(("_before", "_after", "_se", "_max")) and not is_number(value):
            return f"{key} is {repr(value)[:40]}, not a finite number"
    return range_problem(cell)


class Store:
    """A results folder (use as a context manager; see the module docstring).

    ``identity``: the settings that must match an existing file (compared key by key;
    ``implied`` gives the value a key had in files written before it existed). ``record``:
    provenance stored beside them (command, commit, hardware...), never compared. With
    ``out_dir`` None the store has no folder: its cells live in memory (nothing is locked,
    resumed or written), for a run whose command has no output folder.
    """

    def __init__(self, out_dir: str | Path | None, filename: str, kind: str,
                 identity: dict[str, Any],
                 record: dict[str, Any] | None = None, implied: dict[str, Any] | None = None,
                 check_cell: Callable[[str, Any], str | None] | None = None,
                 outputs: tuple[str, ...] = (), force: bool = False):
        self.check_cell, self.outputs, self.force = check_cell, tuple(outputs), force
        self.dir = None if out_dir is None else check_path(out_dir, "output folder")
        self.path = None if self.dir is None else self.dir / filename
        self.kind, self.identity = kind, dict(identity)
        self.record, self.implied = dict(record or {}), dict(implied or {})
        self.cells: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self._lock: contextlib.AbstractContextManager | None = None

    @property
    def writer(self) -> bool:
        """Whether this process writes the folder (rank 0 of a run that has one)."""
        return self.dir is not None and distributed.is_main()

    def __enter__(self) -> Store:
        if self.dir is None:
            return self
        error = None
        if self.writer:
            try:
                self._lock = claim(self.dir)
                self._lock.__enter__()
                self._load()
            except AdvrankError as exc:
                error = str(exc)
        error, self.cells = distributed.broadcast_object((error, self.cells))
        if error is not None:
            self.__exit__(None, None, None)
            raise AdvrankError(error)
        return self

    def __exit__(self, *exc) -> None:
        if self._lock is not None:
            self._lock.__exit__(*exc)
            self._lock = None

    def _load(self) -> None:
        if self.force:
            return
        if not self.path.exists():
            foreign = [name for name in self.outputs if (self.dir / name).exists()]
            if foreign:
                raise AdvrankError(f"{self.dir / foreign[0]} exists but {self.path.name} does "
                                   "not: it is not this run's; use another output folder, or "
                                   "--force to overwrite it")
            return
        old = read_json(self.path, f"{self.kind} results")
        if not isinstance(old, dict) or not isinstance(old.get("config"), dict) or \
                not isinstance(old.get("cells"), dict) or old.get("format", self.kind) != self.kind:
            raise AdvrankError(f"{self.path} is not an advrank {self.kind} results file; use "
                               "another output folder or remove it")
        for key, value in self.identity.items():
            found = old["config"].get(key, self.implied.get(key))
            if found != value:
                raise AdvrankError(f"{self.path} holds a run made with other settings "
                                   f"({key}={found!r}, this run {value!r}); use another output "
                                   "folder or remove it")
        for key, cell in old["cells"].items():
            problem = self.check_cell(key, cell) if self.check_cell else None
            if problem:
                raise AdvrankError(f"{self.path} holds a damaged cell {key!r} ({problem}); "
                                   "remove the file or use another output folder")
        self.cells = old["cells"]

    def __contains__(self, key: str) -> bool:
        return key in self.cells

    def get(self, key: str, default: Any = None) -> Any:
        return self.cells.get(key, default)

    def put(self, key: str, value: Any) -> None:
        """Store one finished cell and rewrite the file atomically."""
        self.cells[key] = value
        self.flush()

    def content(self) -> dict[str, Any]:
        return {"format": self.kind, "config": {**self.identity, **self.record},
                "cells": self.cells, **self.extra}

    def flush(self) -> None:
        if self.writer:
            atomic_write_json(self.path, self.content())

    def _file(self, name: str) -> Path:
        if self.dir is None:  # a publish hook of an experiment that needs a folder
            raise AdvrankError(f"{name} needs an output folder; this {self.kind} run has none")
        return self.dir / name

    def write_text(self, name: str, text: str) -> Path:
        if self.writer:
            atomic_write_text(self._file(name), text)
        return self._file(name)

    def write_bytes(self, name: str, data: bytes) -> Path:
        if self.writer:
            atomic_write_bytes(self._file(name), data)
        return self._file(name)

    def write_json(self, name: str, obj: Any) -> Path:
        if self.writer:
            atomic_write_json(self._file(name), obj)
        return self._file(name)
