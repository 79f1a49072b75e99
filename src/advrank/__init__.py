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

_API = {
    # parts and their registries
    "registry": "advrank.registry", "load_plugin": "advrank.registry",
    "create_model": "advrank.models", "load_dataset": "advrank.data",
    "get_distance": "advrank.core.distances", "get_attack": "advrank.attacks",
    "make_defense": "advrank.defenses",
    # models and data
    "load_source_model": "advrank.models.sources", "SourceOptions": "advrank.models.sources",
    "load_checkpoint": "advrank.models.checkpoint",
    "model_from_checkpoint": "advrank.models.checkpoint",
    "save_checkpoint": "advrank.models.checkpoint",
    "TensorImageDataset": "advrank.data", "Gallery": "advrank.core.gallery",
    "retrieval_metrics": "advrank.core.metrics",
    # attacks
    "LinfThreatModel": "advrank.attacks", "RankingAttack": "advrank.attacks",
    "AttackKind": "advrank.attacks", "Selection": "advrank.attacks",
    "ExecutionPolicy": "advrank.core.execution",
    # training and defenses
    "TrainConfig": "advrank.training", "train": "advrank.training",
    "evaluate_model": "advrank.training", "Defense": "advrank.defenses",
    # experiments
    "load_target": "advrank.experiments.target", "TargetSpec": "advrank.experiments.target",
    "run_attack": "advrank.experiments.protocol",
    "run_audit": "advrank.experiments.audit", "AuditConfig": "advrank.experiments.audit",
    "run_grid": "advrank.experiments.grid",
    "transfer_attack": "advrank.experiments.transfer",
    "transfer_matrix": "advrank.experiments.transfer",
    "universal_attack": "advrank.experiments.universal",
    "defense_curves": "advrank.experiments.curves",
    "run_robustness": "advrank.experiments.robustness", "ers": "advrank.experiments.robustness",
    "resolve_device": "advrank.core.runtime",
}

__all__ = ["AdvrankError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        module = importlib.import_module(_API[name])
        return module if name == "registry" else getattr(module, name)
    raise AttributeError(f"module 'advrank' has no attribute {name!r}")
