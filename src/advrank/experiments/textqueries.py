"""Text queries for a loaded target: the query set a command names (``--queries text:FILE``
or ``prompts:TEMPLATE``) read against the gallery's class names and embedded by the target's
text tower; its text-to-image retrieval quality; CA+ / CA- with it under the §4 protocol."""

from __future__ import annotations

from typing import Any

from advrank.attacks.base import AttackKind, get_attack
from advrank.attacks.base import check_text_queries as check_kind
from advrank.attacks.queryset import QuerySet, embed_text_queries, query_retrieval
from advrank.data.texts import class_labels, parse_query_spec, read_text_queries
from advrank.models.dual import text_encoder
from advrank.registry import ATTACKS


def check_text_queries(spec: str | None, attacks: list[str] | None = None) -> None:
    """Refuse, before any work, a query set spec that cannot be read, or attack kinds whose
    queries cannot be texts (those that perturb the query: QA+, QA-, ES, ...)."""
    if spec is None:
        return
    parse_query_spec(spec)
    for name in attacks or ():
        check_kind(ATTACKS.get(name))


def load_text_queries(target, spec: str) -> QuerySet:
    """The query set ``spec`` of ``target``: class tags resolved against its gallery's class
    names, embedded by its text tower on the gallery's device (a single-tower model is one
    error line)."""
    text_encoder(target.model, target.source)
    gallery = target.gallery
    texts = read_text_queries(spec, class_labels(gallery.dataset, gallery.labels))
    return embed_text_queries(target.model, texts, gallery.device)


def text_kind(kind: AttackKind | str, queries: QuerySet, **options: Any) -> AttackKind:
    """``kind`` (a name with its options, or a kind) with ``queries`` as its query set."""
    return get_attack(kind, **options).for_queries(queries)


def text_retrieval(target, queries: QuerySet, ks=(1, 2, 4, 8)) -> dict[str, Any]:
    """Text-to-image Recall@K and mAP (%) of the labelled texts on the target's gallery."""
    return {**query_retrieval(queries, target.gallery, ks), **queries.info}
