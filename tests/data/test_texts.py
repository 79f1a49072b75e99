"""Text query sets: ``text:FILE`` (a class after a tab, optional) and ``prompts:TEMPLATE``
from the collection's class names; every bad set is one error line."""

from __future__ import annotations

import pytest
import torch

from advrank.data import TensorImageDataset, load_dataset
from advrank.data.texts import (
    UNLABELLED,
    class_labels,
    parse_query_spec,
    read_text_queries,
)
from advrank.errors import AdvrankError

CLASSES = {"Sandal": 5, "Ankle boot": 9, "Bag": 8}


def test_a_query_file_with_and_without_classes(tmp_path):
    path = tmp_path / "q.txt"
    path.write_text("ankle boot\tAnkle boot\n\nsummer shoes\n  leather bag \tbag\nflip flops\t5\n")
    queries = read_text_queries(f"text:{path}", CLASSES)
    assert queries.texts == ("ankle boot", "summer shoes", "leather bag", "flip flops")
    assert queries.labels == (9, UNLABELLED, 8, 5)
    assert queries.labelled == 3 and len(queries) == 4
    assert queries.describe()["text_queries_sha"] == queries.fingerprint()[:16]
    path.write_text("ankle boot\tAnkle boot\nsummer shoes\nleather bag\tbag\nflip flops\t5\n")
    assert read_text_queries(f"text:{path}", CLASSES).fingerprint() == queries.fingerprint()


def test_prompts_give_one_text_per_class_and_template():
    queries = read_text_queries("prompts:a photo of a {}|{} for sale", CLASSES)
    assert queries.texts == ("a photo of a Sandal", "a photo of a Bag", "a photo of a Ankle boot",
                             "Sandal for sale", "Bag for sale", "Ankle boot for sale")
    assert queries.labels == (5, 8, 9, 5, 8, 9)


@pytest.mark.parametrize("content, fragment", [
    ("boot\tSneaker\n", "not a class"),
    ("boot\nboot\n", "there already"),
    ("\n\n", "holds no query"),
    ("\tSandal\n", "without a query"),
    ("x" * 1001 + "\n", "characters"),
])
def test_bad_query_files_are_one_error(tmp_path, content, fragment):
    path = tmp_path / "q.txt"
    path.write_text(content)
    with pytest.raises(AdvrankError, match=fragment):
        read_text_queries(f"text:{path}", CLASSES)


def test_a_file_that_is_not_utf8_is_one_error(tmp_path):
    path = tmp_path / "q.txt"
    path.write_bytes(b"caf\xe9\n")
    with pytest.raises(AdvrankError, match="not UTF-8"):
        read_text_queries(f"text:{path}", CLASSES)


@pytest.mark.parametrize("spec, fragment", [
    ("boots", "unknown query set"), ("text:", "unknown query set"),
    ("images:x", "unknown query set"), ("text:/no/such/file", "does not exist"),
    ("prompts:a photo", "one {}"), ("prompts:{} and {}", "one {}"), ("prompts:{}", "one {}"),
    ("prompts:a {name}", "one {}"), ("prompts:a {", "not a template"),
])
def test_bad_specs_are_refused_before_any_work(spec, fragment):
    with pytest.raises(AdvrankError, match=fragment):
        parse_query_spec(spec)


def test_class_names_come_from_the_collection(data_root):
    digits = load_dataset("digits", "test")
    assert list(class_labels(digits, digits.labels)) == [str(i) for i in range(10)]
    ds = TensorImageDataset(torch.zeros(4, 1, 2, 2), torch.tensor([0, 2, 2, 0]))
    ds.class_names = ["boot", "bag", "coat"]
    assert class_labels(ds, ds.labels) == {"boot": 0, "coat": 2}
    try:
        fashion = load_dataset("fashion", "test", data_root)
    except AdvrankError:
        pytest.skip(f"Fashion-MNIST is not in {data_root}")
    assert class_labels(fashion, fashion.labels)["Ankle boot"] == 9
