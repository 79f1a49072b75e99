"""``advrank attack``'s query-only options are checked before any work: each mistake is one
error line (no checkpoint is read: these fail at parsing, validation or, for a service that
does not answer, the oracle's preflight)."""

from __future__ import annotations

import pytest

BASE = ["attack", "--checkpoint", "missing.pt", "--attack", "QA+", "--eps", "0.3"]


@pytest.mark.parametrize("extra,fragment", [
    (["--oracle", "local", "--query-budget", "0"], "--query-budget"),
    (["--oracle", "local", "--query-budget", "-4"], "--query-budget"),
    (["--oracle", "local", "--query-budget", "nan"], "--query-budget"),
    (["--oracle", "local", "--feedback", "topk"], "--feedback"),
    (["--oracle", "local", "--feedback", "topk:0"], "--feedback"),
    (["--oracle", "local", "--feedback", "best:3"], "--feedback"),
    (["--oracle", "local", "--optimizer", "adam"], "unknown optimizer"),
    (["--oracle", "gopher://x"], "unknown oracle"),
    (["--oracle", "http://"], "names no host"),
    (["--feedback", "full"], "add --oracle"),
    (["--query-budget", "10"], "add --oracle"),
    (["--oracle", "local", "--steps", "5"], "white-box PGD"),
    (["--oracle", "local", "--index", "flat"], "white-box PGD"),
    (["--oracle", "local", "--precision", "bf16"], "white-box PGD"),
    (["--oracle", "local", "--pipeline", "jpeg:75", "--through-pipeline"],
     "--through-pipeline applies to white-box PGD"),
    (["--oracle", "local", "--pipeline", "jpeg:101"], "--pipeline"),
    (["--oracle", "http://127.0.0.1:1"], "cannot reach the search service"),
])
def test_bad_query_options_give_one_error_line(cli, one_error_line, extra, fragment):
    one_error_line(*cli([*BASE, *extra]), fragment)


def test_a_kind_without_a_query_form_is_refused_before_loading(cli, one_error_line):
    argv = [*BASE, "--oracle", "local"]
    argv[argv.index("QA+")] = "CA+"
    one_error_line(*cli(argv), "no query-only form")
