"""The wire schema: strict parsing of what an endpoint answers, and the checks that need the
request's context (k, the id bound, the named ids)."""

from __future__ import annotations

import pytest

from advrank.errors import AdvrankError
from advrank.oracles.wire import (
    InfoAnswer,
    RanksAnswer,
    SearchAnswer,
    check_ranks,
    check_search,
    parse,
)

W = "http://h/search"


@pytest.mark.parametrize("body, field", [
    ('{"ids": ["1", 2]}', "ids.0"),
    ('{"ids": [1.0]}', "ids.0"),
    ('{"ids": [true]}', "ids.0"),
    ('{"ids": [1], "scores": ["0.5"]}', "scores.0"),
    ('{"ids": [1], "scores": [NaN]}', "scores.0"),
    ('{"ids": null}', "ids"),
    ('{"scores": [1.0]}', "ids"),
    ('[1, 2]', "the answer"),
    ('not json', "the answer"),
])
def test_a_search_answer_of_the_wrong_types_is_one_error_naming_the_field(body, field):
    with pytest.raises(AdvrankError) as err:
        parse(SearchAnswer, body, W)
    assert W in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


def test_a_valid_answer_parses_and_ints_are_accepted_as_scores():
    a = parse(SearchAnswer, '{"ids": [3, 1], "scores": [0, 0.5], "extra": 1}', W)
    assert a.ids == [3, 1] and a.scores == [0.0, 0.5]
    assert check_search(a, 2, 4, True, W) is a


@pytest.mark.parametrize("body, k, bound, scores, words", [
    ('{"ids": [1, 2, 3]}', 2, 10, False, "3 ids to a top-2"),
    ('{"ids": [1, 10]}', 5, 10, False, "id 10, outside"),
    ('{"ids": [-1]}', 5, 10, False, "id -1"),
    ('{"ids": [4, 4]}', 5, 10, False, "twice"),
    ('{"ids": [4, 5], "scores": null}', 5, 10, True, "0 scores for 2 ids"),
    ('{"ids": [4, 5], "scores": [0.5, 0.1]}', 5, 10, True, "nearest first"),
])
def test_an_answer_that_contradicts_its_request_is_refused(body, k, bound, scores, words):
    with pytest.raises(AdvrankError, match=words):
        check_search(parse(SearchAnswer, body, W), k, bound, scores, W)


@pytest.mark.parametrize("ranks, named, words", [
    ([0], [1, 2], "1 ranks for 2"),
    ([0, 10], [1, 2], "rank 10"),
    ([0, 1], [1, 1], "contradict"),
    ([3, 3], [1, 2], "contradict"),
])
def test_ranks_are_checked_against_the_named_ids(ranks, named, words):
    with pytest.raises(AdvrankError, match=words):
        check_ranks(RanksAnswer(ranks=ranks), named, 10, W)
    assert check_ranks(RanksAnswer(ranks=[2, None, 2]), [5, 6, 5], 10, W).ranks[0] == 2


def test_info_fields_are_typed():
    good = '{"api": 2, "gallery_size": 10, "id_bound": 10, "max_k": 10}'
    assert parse(InfoAnswer, good, W).scores is False
    with pytest.raises(AdvrankError, match="max_k"):
        parse(InfoAnswer, good.replace('"max_k": 10', '"max_k": null'), W)
    with pytest.raises(AdvrankError, match="gallery_size"):
        parse(InfoAnswer, good.replace('"gallery_size": 10', '"gallery_size": "10"'), W)
