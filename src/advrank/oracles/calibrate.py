"""Verify an endpoint before trusting it (issue 29): calibration queries compare what the
endpoint answers with itself and with the local copy of the model, before any attack.

The calibration queries are the run's clean query pictures ``[N, C, H, W]`` (the first
``repeats`` of them sent twice). Three named figures, each in [0, 1] with a stated
tolerance (:class:`Tolerance`, "at least"):

* ``determinism``: the fraction of repeated pictures whose second top-k list equals the
  first (a search that answers the same picture differently cannot be measured);
* ``overlap@k``: the mean ``|endpoint top-k ∩ local top-k| / k`` over the N pictures, where
  the local copy ranks what the endpoint's model is given (:meth:`Oracle.seen`: the upload
  pipeline, the 8-bit encoding, the pipeline the service declares) -- another model, another
  gallery or another index shows here (needs the local copy);
* ``id_mapping``: of the pictures that are gallery members (``ids`` given) and rank their own
  id first on the local copy (all of them without one), the fraction whose own id is the
  endpoint's top-1 -- a gallery served with its ids in another order shows here.

A figure below its tolerance is one :class:`AdvrankError` naming the figures and values,
unless the caller says the endpoint is expected to differ (``differs``): then the figures
are returned, marked, for a report to say that figures come from the endpoint alone. The
calibration queries are counted apart from any attack's budget (:attr:`Calibration.queries`,
what the endpoint was sent) and recorded with the figures (:meth:`Calibration.describe`).

For the "endpoint" view of a run (figures read from the endpoint itself), the lists compared
here are kept: :attr:`Calibration.endpoint` and :attr:`Calibration.local` (``[N, k]`` ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from advrank.core.checks import check_int, check_number
from advrank.errors import AdvrankError
from advrank.oracles.base import Oracle

DEFAULT_K = 10


@dataclass(frozen=True)
class Tolerance:
    """The least value each calibration figure may take (fractions in [0, 1]):
    ``determinism`` (exact repeats; an index or batching that is not deterministic loses a
    few), ``overlap`` (top-k agreement with the local copy: an approximate index such as HNSW
    keeps well above 0.8), ``id_mapping`` (own id at top-1)."""

    determinism: float = 0.95
    overlap: float = 0.8
    id_mapping: float = 0.9

    def __post_init__(self):
        for name in ("determinism", "overlap", "id_mapping"):
            check_number(getattr(self, name), f"calibration tolerance {name}", low=0.0,
                         high=1.0)


@dataclass
class Calibration:
    """What calibration measured: ``figures`` (name -> value in [0, 1]; a figure that could
    not be measured is absent), the ``tolerance`` applied, ``failed`` (names below it),
    ``k``, the number of pictures ``n`` and of ``repeats``, ``queries`` sent to the
    endpoint, whether the endpoint was declared to differ (``differs``), and the top-k lists
    ``endpoint [n, k]`` and ``local [n, k]`` (None without a local copy; -1 pads)."""

    figures: dict[str, float]
    tolerance: Tolerance
    failed: list[str]
    k: int
    n: int
    repeats: int
    queries: int
    differs: bool = False
    endpoint: torch.Tensor | None = field(default=None, repr=False)
    local: torch.Tensor | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        return not self.failed

    def describe(self) -> dict[str, Any]:
        """What a result records (no tensors)."""
        return {"figures": dict(self.figures), "tolerance": {
                    "determinism": self.tolerance.determinism,
                    f"overlap@{self.k}": self.tolerance.overlap,
                    "id_mapping": self.tolerance.id_mapping},
                "failed": list(self.failed), "passed": self.passed, "k": self.k,
                "pictures": self.n, "repeats": self.repeats, "queries": self.queries,
                "endpoint_differs": self.differs}


def top_lists(oracle: Oracle, images: torch.Tensor, k: int) -> torch.Tensor:
    """``[N, k]`` ids: ``oracle``'s top-k lists for ``images [N, C, H, W]`` as it uploads
    them, outside any attack's budget (sent once each; counted in ``oracle.queries``)."""
    if images.shape[0] == 0:
        return torch.zeros(0, k, dtype=torch.long)
    answer = oracle.exchange(oracle.upload(images), k, None, None)
    if answer.lost.any():  # with no ledger a request is never refused: lost is a bug
        raise AdvrankError("a calibration query was lost")
    return answer.ids[:, :k].long().cpu()


def overlap_at_k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[N]``: ``|a_i ∩ b_i| / |b_i|`` of two ``[N, k]`` id lists (-1 pads, not counted;
    an empty ``b_i`` counts 1)."""
    common = ((a[:, :, None] == b[:, None, :]) & (b[:, None, :] >= 0)).any(1).sum(1)
    size = (b >= 0).sum(1)
    return torch.where(size > 0, common.float() / size.clamp_min(1), 1.0)


def _figures(endpoint: torch.Tensor, again: torch.Tensor, local: torch.Tensor | None,
             ids: torch.Tensor | None, k: int) -> dict[str, float]:
    out: dict[str, float] = {}
    if again.shape[0]:
        out["determinism"] = (endpoint[: again.shape[0]] == again).all(1).float().mean().item()
    if local is not None:
        out[f"overlap@{k}"] = overlap_at_k(endpoint, local).mean().item()
    if ids is not None:
        own = ids.long().cpu()
        members = torch.ones_like(own, dtype=torch.bool) if local is None else local[:, 0] == own
        if members.any():
            out["id_mapping"] = (endpoint[members, 0] == own[members]).float().mean().item()
    return out


def calibrate(oracle: Oracle, images: torch.Tensor, target=None, ids: torch.Tensor | None = None,
              k: int = DEFAULT_K, repeats: int | None = None,
              tolerance: Tolerance | None = None, differs: bool = False) -> Calibration:
    """Calibration of ``oracle`` on ``images [N, C, H, W]`` (the run's clean queries, in
    [0, 1]), against the local copy ``target`` (its model and gallery; None: the endpoint
    alone), ``ids [N]``: the pictures' gallery ids when they are members (None: not known).
    ``k``: the depth compared (at most what the endpoint serves); ``repeats``: pictures sent
    twice (default: a quarter of N, at least 2, at most N). Raises one :class:`AdvrankError`
    naming each figure below ``tolerance`` unless ``differs``. See the module docstring."""
    tolerance = tolerance or Tolerance()
    n = check_int(int(images.shape[0]), "calibration pictures", low=1)
    k = min(check_int(k, "calibration k", low=1), oracle.max_depth)
    repeats = min(n, max(2, n // 4)) if repeats is None else \
        check_int(repeats, "calibration repeats", low=0, high=n)
    if ids is not None and tuple(ids.shape) != (n,):
        raise AdvrankError(f"calibration ids must be [{n}], got {list(ids.shape)}")
    before = oracle.queries
    endpoint = top_lists(oracle, images, k)
    again = top_lists(oracle, images[:repeats], k)
    local = None
    if target is not None:
        from advrank.oracles.local import LocalOracle

        copy = LocalOracle.from_spec("", target, oracle.feedback)
        local = copy.exchange(oracle.seen(images), k, None, None).ids[:, :k].long().cpu()
    figures = _figures(endpoint, again, local, ids, k)
    least = {"determinism": tolerance.determinism, f"overlap@{k}": tolerance.overlap,
             "id_mapping": tolerance.id_mapping}
    failed = [name for name, value in figures.items() if value < least[name]]
    out = Calibration(figures, tolerance, failed, k, n, repeats, oracle.queries - before,
                      differs, endpoint, local)
    if failed and not differs:
        where = getattr(oracle, "url", oracle.name)
        said = ", ".join(f"{name} = {figures[name]:.2f} (at least {least[name]:.2f})"
                         for name in failed)
        raise AdvrankError(f"the endpoint {where} disagrees with "
                           f"{'the local copy' if local is not None else 'itself'} on "
                           f"{n} calibration queries: {said}; if it is expected to differ, "
                           "add --endpoint-differs")
    return out
