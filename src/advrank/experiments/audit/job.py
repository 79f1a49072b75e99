"""The audit as a command declares it (:class:`AuditJob`): what to load, where to write and
with which settings, and the one sequence that checks everything before any work and runs it
(:meth:`AuditJob.run`), so the command only parses, declares and runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from advrank.attacks.base import check_fits_all
from advrank.errors import AdvrankError
from advrank.experiments.audit.catalog import CatalogLink
from advrank.experiments.audit.experiment import run_audit
from advrank.experiments.audit.settings import AuditConfig
from advrank.experiments.store import claim
from advrank.experiments.target import Loader, TargetSpec


@dataclass
class AuditJob:
    """One audit of the model ``spec`` into the folder ``out``: its ``config``, how models are
    loaded (``loader``), the ``index`` spec measured beside exact search (cached in the
    spec's own ``cache_dir`` when it names one), a transfer source checkpoint
    (``transfer_from``), ``force`` (see :func:`run_audit`) and ``token``, the bearer token of
    the catalog's writes (``config.catalog``; held here, never recorded nor shown). The
    collection's embeddings are cached in ``out/cache`` unless the spec names another
    folder."""

    spec: TargetSpec
    out: str | Path
    config: AuditConfig = field(default_factory=AuditConfig)
    loader: Loader = field(default_factory=Loader)
    index: str | None = None
    transfer_from: str | None = None
    force: bool = False
    token: str | None = field(default=None, repr=False)

    def run(self) -> dict[str, Any]:
        """Check the settings and the model options, then claim the folder (a second writer
        is refused having written nothing), load the model (T and k checked against the
        collection before it is embedded) and the transfer source, and run the audit, whose
        store joins the lock held here. Returns :func:`run_audit`'s summary."""
        config = self.config
        kinds = config.validate()
        spec = replace(self.spec, cache_dir=self.spec.cache_dir or
                       str(Path(self.out) / "cache")).validate()
        if self.transfer_from is not None and not Path(self.transfer_from).is_file():
            raise AdvrankError(f"--transfer-from: no checkpoint file {self.transfer_from}")
        link = None
        if config.catalog:  # the service answers and takes uploads, before any work
            link = CatalogLink(str(config.oracle), self.token)
            link.check()
        try:
            return self._run(spec, kinds, link)
        finally:
            if link is not None:
                link.close()

    def _run(self, spec: TargetSpec, kinds, link: CatalogLink | None) -> dict[str, Any]:
        config, k = self.config, self.config.k

        def fits(n: int) -> None:  # before the collection is embedded
            config.check_gallery(n)
            check_fits_all(list(kinds.values()), [k], config.attacks_for(n), n)
            if link is not None:
                link.check_size(n)

        with claim(self.out):  # the folder is ours before anything is written there (and
            # removed again, if this run made it, when a check refuses the run)
            target = self.loader.load(spec, check=fits, needs_text=config.queries is not None)
            source = None if self.transfer_from is None else \
                self.loader.load(self.transfer_from)
            record = target.record(config.seed)
            if self.token:  # the command line, with --token's value hidden
                record["command"] = record["command"].replace(self.token.strip(), "<token>")
            return run_audit(target, self.out, config, record,
                             progress=bool(self.loader.progress), log=self.loader.log,
                             force=self.force, source=source,
                             index=self.loader.index(target, self.index, self.spec.cache_dir),
                             link=link)
