"""One vocabulary across the commands: the parser of every subcommand is walked and each shared
concept (eps, T, batch size, attack kinds, kind parameters, models) must have one spelling,
one dest, one type and one default rule; old spellings still work with a note."""

from __future__ import annotations

import argparse
import inspect

import pytest

from advrank.attacks.params import Param
from advrank.attacks.selection import DEFAULT_NUM_ATTACKS, num_attacks_for
from advrank.cli import build_parser, main
from advrank.cli.declare import kind_options
from advrank.cli.groups import BATCH_SIZE
from advrank.cli.values import eps_list, positive_int
from advrank.core.checks import format_eps
from advrank.errors import AdvrankError
from advrank.registry import ATTACKS

#: commands whose --batch-size is not attacks per PGD batch (train: images per training step)
OTHER_BATCH = {"train"}
#: commands with their own T (demo: a fixed small run on the embedded digits)
OTHER_T = {"demo"}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in p._actions if flag in a.option_strings), None)


def test_eps_is_one_spelling_with_one_type_everywhere():
    seen = []
    for name, p in _commands().items():
        eps = _option(p, "--eps")
        if eps is None:
            continue
        seen.append(name)
        assert eps.dest == "eps" and eps.type is eps_list, name
        old = _option(p, "--eps-values")
        if old is not None:  # the old spelling: same dest, hidden from --help
            assert old.dest == "eps" and old.help == argparse.SUPPRESS, name
            assert "--eps-values" not in p.format_help()
    assert {"attack", "grid", "audit", "curves", "transfer", "transfer-matrix",
            "universal"} <= set(seen)


def test_num_attacks_and_batch_size_share_one_default_rule():
    t_commands, b_commands = [], []
    for name, p in _commands().items():
        t = _option(p, "--num-attacks")
        if t is not None and name not in OTHER_T:
            t_commands.append(name)
            assert (t.dest, t.type, t.default) == ("num_attacks", positive_int, None), name
            assert f"min({DEFAULT_NUM_ATTACKS}, |X|)" in t.help, name
        b = _option(p, "--batch-size")
        if b is not None and name not in OTHER_BATCH:
            b_commands.append(name)
            assert (b.dest, b.default) == ("batch_size", BATCH_SIZE), name
    assert {"attack", "grid", "audit", "curves", "transfer", "transfer-matrix",
            "robustness"} <= set(t_commands)
    assert set(t_commands) - {"universal"} <= set(b_commands)


def test_attack_help_describes_every_kind_and_kind_parameters_are_generated():
    descriptions = {n: ATTACKS.get(n).description for n in ATTACKS.names()}
    params = {p.name: p for n in ATTACKS.names() for p in ATTACKS.get(n).parameters}
    assert {"xi", "g", "sp_reduction", "top_fraction", "start", "own_copy_positive",
            "target"} <= set(params)  # every built-in kind parameter reaches the CLI
    with_kinds = []
    for name, p in _commands().items():
        for flag in ("--attack", "--attacks"):
            action = _option(p, flag)
            if action is not None:
                text = " ".join(p.format_help().split())
                for kind, description in descriptions.items():
                    assert f"{kind}: {' '.join(description.split())}" in text, (name, kind)
        if _option(p, "--xi") is not None and name != "universal":
            with_kinds.append(name)
            for param in params.values():
                action = _option(p, param.flags[0])
                assert action is not None, (name, param.name)
                assert action.dest == f"kind_option_{param.name}" and action.default is None
    assert {"attack", "grid", "audit", "transfer", "transfer-matrix"} <= set(with_kinds)


def test_model_options_have_help():
    for name, p in _commands().items():
        for flag in ("--checkpoint", "--model", "--data", "--source", "--target"):
            action = _option(p, flag)
            if action is not None:
                assert action.help and action.help != argparse.SUPPRESS, (name, flag)


def test_old_eps_spelling_still_works_with_a_note(cli, tmp_path):
    parser = build_parser()
    old = parser.parse_args(["grid", "--out", "o", "--eps-values", "0", "2/255,0.1"])
    new = parser.parse_args(["grid", "--out", "o", "--eps", "0,2/255,0.1"])
    assert old.eps == new.eps == [0.0, 2 / 255, 0.1]
    argv = ["grid", "--out", str(tmp_path / "o"), "--eps-values", "0.1", "--checkpoint",
            str(tmp_path / "missing.pt"), "--device", "cpu"]
    status, out, err = cli(argv)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 2 and "--eps-values is deprecated" in lines[0]
    status, out, err = cli([*argv, "--quiet"])  # --quiet: the error line alone
    assert status == 2 and len(err.strip().splitlines()) == 1
    curves = parser.parse_args(["curves", "--checkpoint", "m.pt", "--out", "o",
                                "--eps-values", "0", "0.1"])
    assert curves.eps == [0.0, 0.1]


@pytest.mark.parametrize("argv,fragment", [
    (["attack", "--attack", "CA+", "--eps", "0.1,0.2", "--checkpoint", "m.pt"], "runs one eps"),
    (["audit", "--checkpoint", "m.pt", "--out", "o", "--eps", "8"], "write 8/255"),
    (["attack", "--attack", "CA-", "--eps", "0.1", "--top-fraction", "0"], "must be > 0"),
    (["attack", "--attack", "LTM", "--eps", "0.1", "--own-copy-positive", "maybe"],
     "true or false"),
    (["grid", "--out", "o", "--gtm-target", "far"], "nearest, robrank"),
    ([], "give a command: train,"),
])
def test_bad_words_are_one_line_errors(argv, fragment, cli, one_error_line):
    line = one_error_line(*cli(argv), fragment)
    assert "advrank: error: advrank:" not in line


def test_kind_parameters_reach_their_kind_and_are_refused_elsewhere(cli, one_error_line):
    parser = build_parser()
    args = parser.parse_args(["attack", "--attack", "ES", "--eps", "0.1", "--start", "nudge",
                              "--checkpoint", "m.pt"])
    assert kind_options(args)["start"] == "nudge"
    kind = ATTACKS.get("ES")(**kind_options(args))
    assert kind.options == {"start": "nudge"} and not kind.random_start
    one_error_line(*cli(["attack", "--attack", "CA+", "--eps", "0.1", "--start", "nudge",
                         "--checkpoint", "m.pt"]), "CA+ takes no start")


def test_param_declaration_feeds_the_constructor():
    qa = ATTACKS.get("QA-")
    assert list(inspect.signature(qa).parameters) == ["xi", "g", "sp_reduction",
                                                      "top_fraction"]
    assert qa(g=3, top_fraction=0.05).options["g"] == 3
    with pytest.raises(AdvrankError, match="QA- g must be an integer"):
        qa(g=2.5)
    with pytest.raises(AdvrankError, match="LTM own_copy_positive must be True or False"):
        ATTACKS.get("LTM")(own_copy_positive="yes")
    p = Param("n", int, 2, "a count", low=1)
    assert p.parse("3") == 3 and p.flags == ["--n"]
    with pytest.raises(AdvrankError, match="must be >= 1"):
        p.parse("0")
    with pytest.raises(AdvrankError, match="type must be one of"):
        Param("n", list, None, "no")


def test_one_t_rule_with_a_note_when_capped():
    notes = []
    assert num_attacks_for(None, 192, notes.append) == 192 and "T = 192" in notes[0]
    assert num_attacks_for(None, 5000, notes.append) == DEFAULT_NUM_ATTACKS and len(notes) == 1
    assert num_attacks_for(7, 192) == 7
    with pytest.raises(AdvrankError, match="200 attacks requested"):
        num_attacks_for(200, 192)


def test_eps_is_shown_as_a_fraction_of_255_where_exact():
    assert [format_eps(e) for e in (0, 0.3, 0.2, 2 / 255, 8 / 255, 77 / 255, 0.03, 1e-5)] == [
        "0", "0.3", "0.2", "2/255", "8/255", "77/255", "0.03", "1e-05"]


def test_train_without_arch_uses_the_default(monkeypatch, tmp_path):
    import advrank.training as training

    seen = {}

    def fake_train(config, out, **kwargs):
        seen["config"] = config
        raise AdvrankError("stopped before training")

    monkeypatch.setattr(training, "train", fake_train)
    assert main(["train", "--dataset", "digits", "--out", str(tmp_path / "m.pt"),
                 "--quiet"]) == 2
    assert seen["config"].arch is None  # the library's default (c2f1), not a refusal
