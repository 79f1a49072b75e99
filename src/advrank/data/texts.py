"""Text query sets: what a shopper types into a text-to-image search.

Two forms, named by one string (``--queries``):

* ``text:FILE``: one query per line (UTF-8; blank lines skipped), optionally followed by a tab
  and the class it should find (a class name of the collection, or its integer label);
* ``prompts:TEMPLATE``: one query per class of the collection, ``TEMPLATE`` with ``{}``
  replaced by the class name (``prompts:a photo of a {}``); several templates separated by
  ``|`` give one query per class and template.

A :class:`TextQueries` holds the texts and their labels (the gallery's label ids, -1 for a
text without one); it is plain data, embedded by a model with a text tower elsewhere.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from advrank.errors import AdvrankError

#: the most queries a set may hold
MAX_QUERIES = 100_000
#: the longest query (characters)
MAX_QUERY_CHARS = 1_000
FORMS = ("text", "prompts")
UNLABELLED = -1


@dataclass(frozen=True)
class TextQueries:
    """Texts ``[Q]`` with their class labels ``[Q]`` (:data:`UNLABELLED` where none is
    given) and the spec they were read from."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def labelled(self) -> int:
        """How many texts name a class."""
        return sum(label != UNLABELLED for label in self.labels)

    def fingerprint(self) -> str:
        """SHA-256 of the texts and their labels (what identifies the set in results)."""
        h = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            h.update(f"{label}\t{text}\n".encode())
        return h.hexdigest()

    def describe(self) -> dict:
        return {"text_queries": self.source, "query_texts": len(self),
                "labelled_texts": self.labelled, "text_queries_sha": self.fingerprint()[:16]}


def parse_query_spec(spec: str) -> tuple[str, str]:
    """``"text:q.txt"`` -> ``("text", "q.txt")``, checked before any work: a known form, an
    existing file, templates with exactly one ``{}`` each."""
    if not isinstance(spec, str):
        raise AdvrankError(f"a query set must be a string (text:FILE or prompts:TEMPLATE), got "
                           f"{type(spec).__name__}")
    form, sep, arg = spec.partition(":")
    if not sep or form not in FORMS or not arg:
        raise AdvrankError(f"unknown query set {spec!r}; use text:FILE (one query per line, "
                           "a class after a tab) or prompts:TEMPLATE (e.g. "
                           "'prompts:a photo of a {}')")
    if form == "text":
        path = Path(arg)
        if not path.is_file():
            raise AdvrankError(f"query file {arg} does not exist or is not a file")
    else:
        for template in arg.split("|"):
            _check_template(template)
    return form, arg


def _check_template(template: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise AdvrankError(f"prompt template {template!r} is not a template: {exc}") from None
    if fields != [""] or not template.replace("{}", "").strip():
        raise AdvrankError(f"prompt template {template!r} must hold one {{}} (where the class "
                           "name goes) and some words, e.g. 'a photo of a {}'")


def _label_of(tag: str, classes: Mapping[str, int], where: str) -> int:
    if tag in classes:
        return classes[tag]
    folded = {name.casefold(): label for name, label in classes.items()}
    if tag.casefold() in folded:
        return folded[tag.casefold()]
    if tag.lstrip("-").isdigit() and int(tag) in set(classes.values()):
        return int(tag)
    known = ", ".join(list(classes)[:8]) + (" ..." if len(classes) > 8 else "")
    raise AdvrankError(f"{where}: class {tag!r} is not a class of the collection ({known})")


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AdvrankError(f"cannot read query file {path}: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdvrankError(f"query file {path} is not UTF-8 text (byte {exc.start})") from None
    return text.splitlines()


def _from_file(path: Path, classes: Mapping[str, int]) -> tuple[list[str], list[int]]:
    texts: list[str] = []
    labels: list[int] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(_read_lines(path), 1):
        where = f"{path}, line {number}"
        query, tab, tag = line.partition("\t")
        query, tag = query.strip(), tag.strip()
        if not query:
            if tag:
                raise AdvrankError(f"{where}: a class without a query text")
            continue
        if len(query) > MAX_QUERY_CHARS:
            raise AdvrankError(f"{where}: the query has {len(query)} characters, more than "
                               f"{MAX_QUERY_CHARS}")
        if query in seen:
            raise AdvrankError(f"{where}: the query {query[:60]!r} is there already (line "
                               f"{seen[query]}); a query set lists each text once")
        seen[query] = number
        texts.append(query)
        labels.append(_label_of(tag, classes, where) if tab and tag else UNLABELLED)
        if len(texts) > MAX_QUERIES:
            raise AdvrankError(f"{path} holds more than {MAX_QUERIES} queries")
    if not texts:
        raise AdvrankError(f"query file {path} holds no query")
    return texts, labels


def _from_prompts(templates: str, classes: Mapping[str, int]) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    for template in templates.split("|"):
        for name, label in sorted(classes.items(), key=lambda item: item[1]):
            texts.append(template.replace("{}", name))
            labels.append(label)
    if len(set(texts)) != len(texts):
        raise AdvrankError(f"the prompts {templates!r} repeat a text (two classes of one name, "
                           "or a template given twice)")
    return texts, labels


def read_text_queries(spec: str, classes: Mapping[str, int]) -> TextQueries:
    """The query set ``spec`` names, its class tags resolved against ``classes`` (the
    collection's ``{class name: label}``)."""
    form, arg = parse_query_spec(spec)
    if not classes:
        raise AdvrankError("the collection names no class to match queries against")
    if form == "text":
        texts, labels = _from_file(Path(arg), classes)
    else:
        texts, labels = _from_prompts(arg, classes)
    return TextQueries(tuple(texts), tuple(labels), spec)


def class_labels(dataset, labels) -> dict[str, int]:
    """``{class name: label}`` of the labels ``[N]`` a collection holds (names from the
    dataset's ``label_name``: folder names, Fashion-MNIST's names, the digit itself)."""
    return {dataset.label_name(int(label)): int(label)
            for label in sorted(set(labels.tolist()))}
