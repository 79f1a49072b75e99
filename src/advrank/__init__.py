"""advrank: attack, measure and harden deep ranking models against adversarial perturbations.

Implements Zhou et al., "Adversarial Ranking Attack and Defense", ECCV 2020: the candidate and
query attacks (CA+/CA-/QA+/QA-) as batched L-inf PGD, the paper's evaluation protocol,
embedding-shift adversarial training, transfer and universal perturbations; and the
follow-up suite of robrank (T-PAMI 2024): TMA, ES, LTM, GTM and GTT attacks, the ERS score and
the ACT defense.

The names a user needs are importable from here (loaded on first use)::

    from advrank import load_target, run_attack
    target = load_target("mnist.pt", device="auto")
    result = run_attack(target.model, target.gallery, "CA+", eps=0.3, k=1, num_attacks=100)

    from advrank import TargetSpec, run_audit   # any model on any picture folder
    target = load_target(TargetSpec(model="timm:resnet50", weights="my.safetensors",
                                    data="imagefolder:photos/"))
    run_audit(target, "audit/")                 # audit/report.html, audit/report.json
"""

from __future__ import annotations

import importlib

from advrank.errors import AdvrankError

__version__ = "0.2.0"


def _exports(text: str) -> dict[str, str]:
    """``{name: module}`` of lines ``module: name name ...`` (``#`` lines are headings)."""
    rows = (line.split(":") for line in text.splitlines() if line and not line.startswith("#"))
    return {name: module.strip() for module, names in rows for name in names.split()}


#: the names a user imports from here, under the module that defines them (imported on first
#: use, so that ``import advrank`` stays light)
_API = _exports("""
# parts and their registries
advrank.registry:               registry load_plugin
advrank.models:                 create_model
advrank.data:                   load_dataset
advrank.core.distances:         get_distance
advrank.attacks:                get_attack
advrank.defenses:               make_defense
# models and data
advrank.models.sources:         load_source_model SourceOptions
advrank.models.checkpoint:      load_checkpoint model_from_checkpoint save_checkpoint
advrank.data:                   TensorImageDataset
advrank.core.gallery:           Gallery
advrank.core.meta:              ModelMeta
advrank.core.target:            SearchTarget
advrank.core.metrics:           retrieval_metrics
# text queries (models with a text tower)
advrank.models.dual:            DualEncoder
advrank.data.texts:             read_text_queries TextQueries
advrank.attacks.queryset:       embed_text_queries QuerySet query_retrieval
advrank.experiments.textqueries: load_text_queries
# attacks
advrank.attacks:                LinfThreatModel RankingAttack AttackKind Selection
advrank.core.execution:         ExecutionPolicy
# training and defenses
advrank.training:               TrainConfig train evaluate_model
advrank.defenses:               Defense
# experiments
advrank.experiments.target:     load_target TargetSpec Loader
advrank.experiments.protocol:   run_attack
advrank.experiments.audit:      run_audit AuditConfig AuditJob
advrank.experiments.grid:       run_grid
advrank.experiments.transfer:   transfer_attack transfer_matrix
advrank.experiments.universal:  universal_attack
advrank.experiments.curves:     defense_curves
advrank.experiments.robustness: run_robustness ers
advrank.core.runtime:           resolve_device
""")

__all__ = ["AdvrankError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(_API[name])
        return module if name == "registry" else getattr(module, name)
    raise AttributeError(f"module 'advrank' has no attribute {name!r}")
