"""Property-based tests of every subcommand's parser and run (hypothesis), in-process.

Each test draws command lines for one subcommand, option by option: a valid value, a
missing one, or a hostile one (NaN, inf, 0, negatives, huge, fractions, text, empty strings,
newlines, bad paths, files that are folders and folders that are files). Whatever the draw,
the command must end in exactly one of two ways:

* exit status 0, and with ``--json`` one line of strict JSON on stdout (no NaN/Infinity),
  every JSON file written strict too, no "nan"/"inf" in text output;
* exit status 2, nothing on stdout, no traceback, and stderr ending in exactly one
  ``advrank: error: ...`` line (the only line under ``--quiet``).

Valid draws run for real on the embedded ``digits`` data with tiny untrained checkpoints, so
the values that would make a run long (PGD steps, epochs, T) are drawn from small valid
values or from invalid ones. Examples are derandomized, so CI sees the same >= 1,000 cases
on every run. ``--download`` is never drawn (it would reach for the network), nor ``--help``.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint

CASES = 100  # examples per subcommand: 11 tests x 100 = 1,100 cases
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------------------ the world


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Files the command lines refer to (by token, resolved per example). The commands run
    in a scratch working directory, so that nothing can land in the repository."""
    root = tmp_path_factory.mktemp("fuzz")
    cwd = os.getcwd()
    os.chdir(root)
    meta = {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 8,
            "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]}
    paths = {}
    for name, seed in (("CKPT", 0), ("CKPT2", 1)):
        torch.manual_seed(seed)
        paths[name] = root / f"{name.lower()}.pt"
        save_checkpoint(paths[name], create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]), meta)
    paths["TEXT"] = root / "notes.txt"
    paths["TEXT"].write_text("not a checkpoint\n")
    paths["EMPTY"] = root / "empty.pt"
    paths["EMPTY"].write_bytes(b"")
    paths["DIR"] = root / "a-folder"
    paths["DIR"].mkdir()
    paths["BAD_RESULTS"] = root / "bad-results"  # a folder whose result files are foreign
    paths["BAD_RESULTS"].mkdir()
    for name in ("results.json", "curves.json", "transfer.json"):
        (paths["BAD_RESULTS"] / name).write_text('[1, 2, {"cells": NaN}]')
    paths["DATA"] = root / "no-data"  # --data-root: MNIST & co. are missing there
    paths["DATA"].mkdir()
    paths["UNDER_FILE"] = paths["TEXT"] / "sub"
    paths["NO_SUCH"] = root / "missing" / "nothing.pt"
    paths["PROC"] = Path("/proc/self/advrank-fuzz")  # cannot be created, even by root
    paths["LONG"] = root / ("x" * 300)  # longer than a file name may be
    paths["NEWLINE"] = root / "two\nlines"
    paths["DEVNULL"] = Path("/dev/null")
    paths["EMPTY_STRING"] = ""
    yield {"root": root, "paths": paths, "fresh": itertools.count()}
    os.chdir(cwd)


def resolve(world: dict, token: str) -> str:
    """A path token as a concrete path; FRESH is a new path on every use."""
    if token == "FRESH":
        return str(world["root"] / f"out-{next(world['fresh'])}")
    if token == "FRESH_CKPT":
        return str(world["root"] / f"out-{next(world['fresh'])}.pt")
    if token.startswith("PAIR:"):  # NAME=PATH for transfer-matrix
        name, _, path = token[5:].partition("=")
        return f"{name}={resolve(world, path)}"
    return str(world["paths"].get(token, token))


# ----------------------------------------------------------------------------- strategies

JUNK = ["", " ", "abc", "nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "1e999",
        "-1e999", "1/0", "0/0", "nan/1", "1/nan", "3/x", "1" + "0" * 400 + "/3", "1e", "0x10",
        "1,,", "½", "None", "True", "[1]", "1\n2", "ü", "-", "--", "=", "4.9e-324", "1e308",
        "9" * 400, "-0", "1.5", "1e3", "2**8"]
#: hostile numbers: junk, any float text (NaN, inf, huge, tiny), huge integers, fractions
ANY_NUMBER = st.one_of(st.sampled_from(JUNK), st.floats().map(repr),
                       st.integers(-10**30, 10**30).map(str), st.fractions().map(str),
                       st.sampled_from(["1_0", " 2 ", "+1", "8/255"]))
#: hostile integers that are never valid for an option capped at 10**9 (nothing long runs)
BAD_INTEGER = st.one_of(st.sampled_from([*JUNK, "0", "-1", "-5", str(2**63), str(10**30)]),
                        st.integers(-10**6, -1).map(str), st.integers(10**9 + 1, 10**40).map(str))


@dataclass(frozen=True)
class Option:
    """One option of a command: what a valid command line holds for it (``good``: a list of
    argv words, maybe empty) and what a hostile one may hold (``bad``)."""

    good: st.SearchStrategy[list[str]]
    bad: st.SearchStrategy[list[str]]


def option(flag: str, good: list[str] | st.SearchStrategy[str],
           bad: list[str] | st.SearchStrategy[str], required: bool = False,
           always: bool = False) -> Option:
    """A valued option; an optional one may be omitted, a required one omitted is bad.
    ``always``: never omitted (its default would make a valid run long)."""
    good = st.sampled_from(good) if isinstance(good, list) else good
    bad = st.sampled_from(bad) if isinstance(bad, list) else bad
    given, hostile = good.map(lambda v: [flag, v]), bad.map(lambda v: [flag, v])
    if always:
        return Option(given, hostile)
    if required:
        return Option(given, st.one_of(hostile, st.just([])))
    return Option(st.one_of(st.just([]), given), hostile)


def number(flag: str, *good: str, required: bool = False) -> Option:
    return option(flag, list(good), ANY_NUMBER, required)


def integer(flag: str, *good: int, required: bool = False, always: bool = False) -> Option:
    return option(flag, [str(v) for v in good], BAD_INTEGER, required, always)


def flag(name: str) -> Option:
    return Option(st.sampled_from([[], [name]]), st.sampled_from([[f"{name}=1"], [name, "x"]]))


def listed(item: list[str], bad: st.SearchStrategy[str]) -> tuple[st.SearchStrategy[str], ...]:
    """(good, bad) comma-separated values; repeats are good (they are merged)."""
    good = st.lists(st.sampled_from(item), min_size=1, max_size=3).map(",".join)
    hostile = st.lists(st.one_of(st.sampled_from(item), bad), min_size=0, max_size=3).map(
        ",".join)
    return good, hostile


GOOD_EPS = ["0", "0.01", "0.1", "8/255", "0.3", "1"]
GOOD_ATTACKS = ["CA+", "CA-", "QA+", "QA-", "CA−", "qa+"]
BAD_NAMES = st.sampled_from(["ca", "XX", "", "QA", "CA+ ", "ＣＡ+"])
BAD_PATHS = ["TEXT", "EMPTY", "DIR", "NO_SUCH", "DEVNULL", "EMPTY_STRING", "LONG", "NEWLINE",
             "/dev/zero"]
BAD_OUT_DIRS = ["TEXT", "BAD_RESULTS", "UNDER_FILE", "PROC", "LONG", "NEWLINE", "DEVNULL",
                "EMPTY_STRING"]


def checkpoint(flag_name: str = "--checkpoint", good: str = "CKPT") -> Option:
    return option(flag_name, [good], BAD_PATHS, required=True)


def common(data: bool = True) -> list[Option]:
    options = [option("--device", ["cpu"], ["tpu", "", "cuda:x", "meta", "cuda:99"]),
               integer("--seed", 0, 1, 7, 2**63 - 1),
               option("--plugin", st.nothing(), ["no_such_module_xyz", "missing.py", "TEXT"]),
               flag("--json"), flag("--quiet")]
    if data:
        options.append(option("--data-root", ["DATA"], ["TEXT", "NO_SUCH", "EMPTY_STRING"]))
    return options


def sizes(multiple: bool = False) -> list[Option]:
    """--k (valid for every attack), or --w / --m / several of them (hostile: valid only for
    the matching attack kind, or refused as given twice)."""
    names = ("--ks", "--w", "--m") if multiple else ("--k", "--w", "--m")
    good, bad = (listed(["1", "2"], BAD_INTEGER) if multiple else
                 (st.sampled_from(["1", "2"]), BAD_INTEGER))
    either = st.one_of(good, bad)
    hostile = st.lists(st.tuples(st.sampled_from(names), either), min_size=1, max_size=3).map(
        lambda pairs: [w for pair in pairs for w in pair])
    return [Option(st.one_of(st.just([]), good.map(lambda v: [names[0], v])), hostile)]


def kind_options() -> list[Option]:
    """The QA hyper-parameters: hostile for CA attacks, so only drawn as hostile."""
    return [option("--xi", st.nothing(), st.one_of(st.sampled_from(["0", "1", "100"]),
                                                   ANY_NUMBER)),
            option("--G", st.nothing(), st.one_of(st.sampled_from(["0", "1", "5", "10000"]),
                                                  BAD_INTEGER)),
            option("--sp-reduction", st.nothing(), ["mean", "sum", "max", "", "MEAN"])]


def threat() -> list[Option]:
    return [integer("--steps", 0, 1, 2, always=True),
            number("--step-size", "0.01", "1/255", "1"), flag("--random-start")]


EPS = number("--eps", *GOOD_EPS, required=True)
# grid and curves have no --steps: the paper's eta (10 to 30 steps) runs; keep eps small
GOOD_EPS_LIST, BAD_EPS_LIST = listed(["0", "0.01", "1/255"], ANY_NUMBER)
GOOD_ATTACK_LIST, BAD_ATTACK_LIST = listed(GOOD_ATTACKS, BAD_NAMES)

COMMANDS: dict[str, list[Option]] = {
    "train": [
        option("--dataset", ["digits"], ["mnist", "sop", "cifar", "digits:x", ""], True),
        option("--arch", ["c2f1", "lenet"], ["vgg", "", "resnet"]),
        option("--metric", ["cosine", "euclidean"], ["l1"]),
        option("--loss", ["triplet", "contrastive"], ["arcface"]),
        number("--margin", "0.2", "1"), integer("--epochs", 1, always=True),
        integer("--batch-size", 4, 32, 1_000_000), number("--lr", "0.001", "0.01"),
        integer("--embed-dim", 4, 8, always=True),
        option("--out", ["FRESH_CKPT"], ["CKPT2", "TEXT", "DIR", "UNDER_FILE", "PROC", "LONG",
                                         "NEWLINE", "EMPTY_STRING"], True),
        flag("--resume"), flag("--force"),
        option("--init", st.nothing(), ["CKPT", *BAD_PATHS]),
        option("--weights", st.nothing(), ["CKPT", "TEXT", "EMPTY", "NO_SUCH", "DIR"]),
        # c2f1/lenet publish no weights: every --pretrained is refused, none reaches a network
        option("--pretrained", st.nothing(), ["DEFAULT", "IMAGENET1K_V1", "", "EMPTY"]),
        option("--defense", ["est", "madry"], ["trades"]), number("--defense-eps", *GOOD_EPS),
        integer("--defense-steps", 1, 2, always=True),
        number("--defense-step-size", "0.01", "1"), *common()],
    "evaluate": [
        checkpoint(), option("--ks", *listed(["1", "2", "8", "718", "719", "1000000"],
                                             BAD_INTEGER)), flag("--nmi"), *common()],
    "export": [
        checkpoint(), option("--out", ["FRESH_CKPT"], ["CKPT", "TEXT", "DIR", "UNDER_FILE",
                                                        "PROC", "LONG", "DEVNULL",
                                                        "EMPTY_STRING"], True),
        flag("--json"), option("--plugin", st.nothing(), ["no_such_module_xyz"])],
    "attack": [
        checkpoint(), option("--attack", GOOD_ATTACKS, BAD_NAMES, True), EPS, *threat(),
        *sizes(), integer("--num-attacks", 1, 5, 719, 720, always=True),
        integer("--batch-size", 1, 3, 1_000_000), *kind_options(), *common()],
    "grid": [
        checkpoint(), option("--out", ["FRESH", "DIR"], BAD_OUT_DIRS, True),
        integer("--num-attacks", 1, 3, 720, always=True),
        option("--eps-values", GOOD_EPS_LIST, BAD_EPS_LIST, True), *sizes(multiple=True),
        option("--attacks", GOOD_ATTACK_LIST, BAD_ATTACK_LIST, True),
        integer("--batch-size", 1, 2, 1_000_000), *kind_options(),
        option("--paper", ["auto", "none", "mnist"], ["cifar", ""]), *common()],
    "curves": [
        checkpoint(), option("--checkpoint", st.nothing(), ["CKPT2", *BAD_PATHS]),
        option("--out", ["FRESH"], BAD_OUT_DIRS, True),
        integer("--num-attacks", 1, 2, 720, always=True),
        Option(st.lists(GOOD_EPS_LIST, min_size=1, max_size=2).map(  # nargs="+"
            lambda words: ["--eps-values", *words]),
            st.lists(BAD_EPS_LIST, max_size=2).map(lambda words: ["--eps-values", *words])),
        integer("--k", 1, 2, 720), integer("--batch-size", 2, 1_000_000), *common()],
    "transfer": [
        checkpoint("--source"), checkpoint("--target", "CKPT2"),
        option("--attack", GOOD_ATTACKS, BAD_NAMES, True), EPS, *threat(), *sizes(),
        integer("--num-attacks", 1, 4, 720, always=True),
        integer("--batch-size", 1, 2, 1_000_000), *kind_options(),
        option("--select-on", ["source", "target"], ["both", ""]), *common()],
    "transfer-matrix": [
        option("--checkpoint", ["PAIR:A=CKPT"], ["PAIR:A=TEXT", "PAIR:=CKPT", "CKPT",
                                                 "PAIR:A=NO_SUCH", "PAIR:A="], True),
        option("--checkpoint", ["PAIR:B=CKPT2"], ["PAIR:A=CKPT2", "PAIR:B=DIR"]),
        option("--out", ["FRESH"], BAD_OUT_DIRS, True),
        option("--attacks", GOOD_ATTACK_LIST, BAD_ATTACK_LIST, True),
        number("--eps", *GOOD_EPS), *threat(), *sizes(),
        integer("--num-attacks", 1, 3, 720, always=True),
        integer("--batch-size", 1, 1_000_000), *kind_options(),
        option("--select-on", ["source", "target"], [""]), *common()],
    "universal": [
        checkpoint(), option("--attack", GOOD_ATTACKS, BAD_NAMES, True), EPS, *sizes(),
        number("--fraction", "0.01", "0.05"), number("--xi", "0", "1"),
        integer("--steps", 0, 1, 2, always=True), number("--step-size", "0.01"),
        option("--mode", ["own", "shared"], ["both"]), integer("--chunk-size", 1, 7, 10**6),
        option("--out", ["FRESH"], BAD_OUT_DIRS), *common()],
    # a valid demo takes minutes: its draws always hold a bad value (all its bad values are
    # invalid), and --out is never left to the default folder
    "demo": [
        option("--out", ["TEXT"], ["UNDER_FILE", "PROC", "LONG", "DEVNULL", "EMPTY_STRING"],
               True),
        integer("--epochs", 1), integer("--num-attacks", 1), integer("--defense-epochs", 1),
        integer("--defense-steps", 1), *common(data=False)],
}


@st.composite
def command_line(draw, name: str, min_bad: int = 0) -> list[str]:
    """``name`` and its options in a drawn order, at most two of them hostile."""
    options = COMMANDS[name]
    bad = draw(st.sets(st.integers(0, len(options) - 1), min_size=min_bad, max_size=2))
    groups = [draw(o.bad if i in bad else o.good) for i, o in enumerate(options)]
    return [name, *itertools.chain.from_iterable(draw(st.permutations(groups)))]


WORDS = ["train", "evaluate", "attack", "grid", "curves", "transfer", "universal", "export",
         "--checkpoint", "--attack", "--eps", "--out", "--k", "--json", "--quiet", "CKPT", "CA+",
         "0.1", "-1", "nan", "--", "-", "=", "--eps=0.1", "--json=1", "-k", "--no-such", "",
         "--plugin"]
JUNK_ARGV = st.lists(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), max_size=8).filter(
    lambda argv: not any(a in ("-h", "--help", "--version") or a.startswith("--h")
                         or a.startswith("--v") for a in argv))


# ------------------------------------------------------------------------------ properties


def _no_constant(name: str):
    raise ValueError(f"non-finite constant {name} in JSON output")


def strict_loads(text: str):
    """json.loads that refuses NaN, Infinity and numbers that overflow to infinity."""
    def finite_float(s: str) -> float:
        value = float(s)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"number {s} overflows")
        return value

    return json.loads(text, parse_constant=_no_constant, parse_float=finite_float)


#: the refusals seen (message stems), shown when a fuzz test fails for want of variety
REASONS: Counter = Counter()
NON_FINITE_TEXT = re.compile(r"\b(nan|inf|infinity)\b", re.IGNORECASE)


def check_run(world: dict, argv: list[str], cli) -> int:
    """Run ``argv`` and assert the promised outcome; returns the exit status."""
    argv = [resolve(world, a) for a in argv]
    if "--plugin" in argv:  # keep plugin values harmless: never an importable module
        argv = [a if i == 0 or argv[i - 1] != "--plugin" or a.endswith((".py", "_xyz"))
                else "no_such_module_xyz" for i, a in enumerate(argv)]
    status, out, err = cli(argv)
    assert status in (0, 2), (argv, status, err[-2000:])
    assert "Traceback" not in err, (argv, err[-3000:])
    if status == 2:
        lines = err.strip().splitlines()
        assert out == "", (argv, out)
        assert lines and lines[-1].startswith("advrank: error: "), (argv, err[-2000:])
        assert sum(line.startswith("advrank: error:") for line in lines) == 1, (argv, err)
        if "--quiet" in argv:
            assert len(lines) == 1, (argv, err)
        REASONS[re.sub(r"'.*|\d.*|/.*", "", lines[-1])[16:70]] += 1  # drop values and paths
        return status
    if "--json" in argv:
        lines = out.strip().splitlines()
        assert len(lines) == 1, (argv, out[:2000])
        assert isinstance(strict_loads(lines[0]), dict)
    else:
        assert out.strip() and not NON_FINITE_TEXT.search(out), (argv, out[:2000])
    for i, a in enumerate(argv[:-1]):  # every JSON file a successful run wrote is strict
        if a == "--out" and Path(argv[i + 1]).is_dir() and argv[i + 1] != str(
                world["paths"]["BAD_RESULTS"]):
            for path in Path(argv[i + 1]).glob("*.json"):
                strict_loads(path.read_text())
    return status


def fuzz(world, cli, strategy, min_ok: int = 3, min_refused: int = 20) -> Counter:
    """Run ``CASES`` drawn command lines; both outcomes must have been exercised."""
    outcomes: Counter = Counter()

    @FUZZ
    @given(argv=strategy)
    def run(argv):
        outcomes[check_run(world, argv, cli)] += 1

    REASONS.clear()
    run()
    assert outcomes[2] >= min_refused, (outcomes, REASONS.most_common(12))
    assert outcomes[0] >= min_ok, (outcomes, REASONS.most_common(12))
    return outcomes


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_fuzz_command(world, cli, name):
    fuzz(world, cli, command_line(name), min_ok=0 if name == "demo" else 3)


def test_fuzz_junk_argv(world, cli):
    fuzz(world, cli, JUNK_ARGV, min_ok=0)
