"""The audit's time model (:class:`TimeModel`): the estimate printed before the attacks, the
same estimate corrected as cells finish, the progress bar's time left (:class:`EstimateBar`),
and the record of estimated against actual time that report.json keeps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from advrank.experiments.audit.plan import LONG_AUDIT_SECONDS, CellPlan

#: seconds of prior weight in each correction ratio, so that one tiny cell (a few hundredths
#: of a second estimated, half a second of fixed costs) cannot multiply the rest by 50
PRIOR_SECONDS = 2.0
#: how often the bar's time left is redrawn while a long cell gives no progress of its own
REFRESH_SECONDS = 2.0


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class TimeModel:
    """The cells left (:class:`CellPlan`), each priced from its probe, and the corrections
    learnt as they finish: a cell's expected time is its estimate times the actual/estimated
    ratio of the finished cells of its group (of all finished cells while its group has none).
    Times count from the moment the estimate is made (after the probes)."""

    def __init__(self, cells: Iterable[CellPlan], probes: dict[str, Any]):
        self.cells = {c.key: c for c in cells}
        self.probes = probes
        self.estimated = sum(c.seconds for c in self.cells.values())
        self.actual: dict[str, float] = {}
        self.current: str | None = None
        self.started = self.t0 = time.monotonic()
        self._lock = threading.Lock()  # the bar's redraw thread reads what the cells write

    @property
    def attacks(self) -> int:
        return sum(c.attacks for c in self.cells.values())

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def ratio(self, group: str) -> float:
        """Actual / estimated time of the finished cells of ``group`` (or of all), damped by
        :data:`PRIOR_SECONDS`; 1 before any cell finished."""
        done = [k for k in self.actual if self.cells[k].group == group] or list(self.actual)
        est = sum(self.cells[k].seconds for k in done)
        act = sum(self.actual[k] for k in done)
        return (act + PRIOR_SECONDS) / (est + PRIOR_SECONDS)

    def begin(self, key: str) -> None:
        if key in self.cells:
            with self._lock:
                self.current, self.started = key, time.monotonic()

    def finish(self, key: str, seconds: float | None = None) -> None:
        if key in self.cells:
            with self._lock:
                self.actual[key] = time.monotonic() - self.started if seconds is None \
                    else seconds
                self.current = None

    def left(self) -> float:
        """Seconds expected until the last cell finishes (the running cell's elapsed time
        taken off its own)."""
        with self._lock:
            return self._left()

    def _left(self) -> float:
        total = 0.0
        for key, cell in self.cells.items():
            if key in self.actual:
                continue
            expected = cell.seconds * self.ratio(cell.group)
            if key == self.current:
                expected = max(0.0, expected - (time.monotonic() - self.started))
            total += expected
        return total

    def record(self) -> dict[str, Any]:
        """What report.json keeps beside the figures: the estimate printed, the time the
        cells took, their ratio, the probes and each cell's estimate and actual time."""
        actual = self.elapsed()
        return {"estimated_seconds": self.estimated, "actual_seconds": actual,
                "ratio": actual / self.estimated if self.estimated > 0 else None,
                "probe_seconds": self.probes.get("seconds", 0.0),
                "probes": {k: v for k, v in self.probes.items() if k != "seconds"},
                "cells": [{"key": c.key, "group": c.group, "estimated": c.seconds,
                           "actual": self.actual.get(c.key)} for c in self.cells.values()]}


def estimate_message(model: TimeModel, advice: str | None = None) -> str:
    """The line an audit prints before its attacks start (and, when the estimate passes
    :data:`LONG_AUDIT_SECONDS`, a warning with ``advice``, the way to a shorter run)."""
    if not model.cells:
        return "audit: no attack left to run"
    groups: dict[str, int] = {}
    for cell in model.cells.values():
        groups[cell.group] = groups.get(cell.group, 0) + 1
    named = {"panels": "the example panels", "retrieval": "Recall@K and mAP"}
    what = ", ".join(named.get(g) or f"{n} {g} cell{'s' if n > 1 else ''}"
                     for g, n in groups.items())
    text = (f"audit: estimated time about {format_duration(model.estimated)} for {what} "
            f"(priced from probes of each kind of cell, {model.probes.get('seconds', 0):.0f} s)")
    if model.estimated > LONG_AUDIT_SECONDS:
        text += "\naudit: warning: this is a long run" + (f"; {advice}" if advice else "") + \
            " (Ctrl-C writes a partial report; rerunning resumes)"
    return text


class EstimateBar:
    """One progress bar over the audit, drawn from the :class:`TimeModel`: its share is the
    time spent over the time spent and left, its text the attacks done and the time left
    (redrawn every :data:`REFRESH_SECONDS` while a long cell runs). ``update(n)`` counts n
    attacks done, as the protocol's own bars do."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {postfix}"

    def __init__(self, model: TimeModel, enabled: bool | None):
        from advrank.core.runtime import progress_bar

        self.model, self.done = model, 0
        self.bar = progress_bar(total=1000, desc="audit", enabled=enabled)
        self.bar.bar_format = self.FORMAT
        self._stop = threading.Event()
        self._thread = None
        if not self.bar.disable:
            self.refresh()
            self._thread = threading.Thread(target=self._redraw, daemon=True)
            self._thread.start()

    def _redraw(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self.refresh()

    def text(self) -> tuple[float, str]:
        """``(share done, "12/40 attacks, 1:02 so far, about 3 min left")``."""
        spent, left = self.model.elapsed(), self.model.left()
        share = spent / (spent + left) if spent + left > 0 else 1.0
        minutes, seconds = divmod(int(spent), 60)
        return share, (f"{self.done}/{self.model.attacks} attacks, {minutes}:{seconds:02d} so "
                       f"far, about {format_duration(left)} left")

    def refresh(self) -> None:
        if self.bar.disable:
            return
        share, text = self.text()
        self.bar.n = min(1000, int(1000 * share))
        self.bar.set_postfix_str(text, refresh=False)
        self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.done += int(n)
        self.refresh()

    def external_write_mode(self):
        return self.bar.external_write_mode()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def __enter__(self) -> EstimateBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
