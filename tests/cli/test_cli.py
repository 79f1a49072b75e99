"""The ``advrank`` command: train / evaluate output, help, and error handling."""

from __future__ import annotations

import json

import pytest

from advrank.cli import main

TRAIN = ["train", "--dataset", "digits", "--arch", "c2f1", "--embed-dim", "16", "--epochs", "1",
         "--device", "cpu", "--quiet"]


def _one_json_line(text):
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return json.loads(lines[0])


def _assert_one_error_line(capsys, *fragments):
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("advrank: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err and out == ""


@pytest.fixture
def untrained_ckpt(tmp_path, untrained_checkpoint):
    return untrained_checkpoint(tmp_path / "untrained.pt", metric="euclidean")


def test_train_then_evaluate_json(tmp_path, capsys):
    out = tmp_path / "digits.pt"
    assert main([*TRAIN, "--out", str(out), "--json"]) == 0
    stdout, stderr = capsys.readouterr()
    trained = _one_json_line(stdout)
    assert trained["checkpoint"] == str(out) and out.is_file()
    assert trained["epochs"] == 1 and len(trained["history"]) == 1
    assert 50.0 < trained["recall@1"] <= 100.0  # percent
    assert trained["train_seconds"] >= 0
    assert "epoch 1/1" not in stderr  # --quiet

    assert main(["evaluate", "--checkpoint", str(out), "--json", "--device", "cpu"]) == 0
    evaluated = _one_json_line(capsys.readouterr().out)
    assert evaluated["dataset"] == "digits" and evaluated["arch"] == "c2f1"
    assert evaluated["metric"] == "cosine" and evaluated["gallery_size"] == 719
    assert evaluated["recall@1"] == pytest.approx(trained["recall@1"])
    assert evaluated["recall@1"] <= evaluated["recall@2"] <= evaluated["recall@8"] <= 100.0
    assert 0.0 < evaluated["map"] <= 100.0  # percent, like recall


def test_evaluate_text_and_ks(untrained_ckpt, capsys):
    assert main(["evaluate", "--checkpoint", str(untrained_ckpt), "--ks", "1,5", "--json"]) == 0
    result = _one_json_line(capsys.readouterr().out)
    assert {k for k in result if k.startswith("recall@")} == {"recall@1", "recall@5"}
    assert result["metric"] == "euclidean"
    assert main(["evaluate", "--checkpoint", str(untrained_ckpt)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("digits/c2f1/euclidean: recall@1 ") and "mAP" in text


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out and "usage: advrank" in out


def test_missing_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["evaluate", "--checkpoint", str(missing)]) == 2
    _assert_one_error_line(capsys, str(missing), "does not exist")


def test_corrupt_checkpoint_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage" * 50)
    assert main(["evaluate", "--checkpoint", str(bad), "--json"]) == 2
    _assert_one_error_line(capsys, str(bad), "not a readable advrank checkpoint")


def test_resume_mismatch_is_one_line_exit_2(untrained_ckpt, capsys):
    # the file says euclidean / no training history; resuming it as cosine is refused
    assert main([*TRAIN, "--out", str(untrained_ckpt), "--resume"]) == 2
    _assert_one_error_line(capsys, "holds another run", "metric")


@pytest.mark.parametrize("bad", [["--arch", "vgg"], ["--dataset", "cifar"], ["--metric", "l1"]])
def test_unknown_choices_rejected_by_argparse(tmp_path, capsys, bad):
    args = {"--dataset": "digits", "--arch": "c2f1", "--metric": "cosine"}
    args[bad[0]] = bad[1]
    argv = ["train", "--out", str(tmp_path / "x.pt"), *[x for kv in args.items() for x in kv]]
    assert main(argv) == 2
    _assert_one_error_line(capsys, "unknown", bad[1])
    assert not (tmp_path / "x.pt").exists()


def test_missing_subcommand_exit_2(capsys):
    assert main([]) == 2
    _assert_one_error_line(capsys, "COMMAND")


def test_precision_and_memory_budget_options(untrained_ckpt, capsys):
    args = ["attack", "--checkpoint", str(untrained_ckpt), "--attack", "CA+", "--eps", "0.1",
            "--num-attacks", "6", "--steps", "2", "--device", "cpu", "--json", "--quiet"]
    assert main([*args, "--precision", "bf16", "--memory-budget", "64MiB"]) == 0
    out = _one_json_line(capsys.readouterr().out)
    assert out["precision"] == "bf16" and out["num_attacks"] == 6
    assert main([*args, "--precision", "fp16"]) == 2
    _assert_one_error_line(capsys, "--precision", "fp16")
    assert main([*args, "--memory-budget", "lots"]) == 2
    _assert_one_error_line(capsys, "--memory-budget", "4GiB")
    assert main([*args, "--memory-budget", "10KiB"]) == 2
    _assert_one_error_line(capsys, "at least 1 MiB")
    assert main([*args, "--memory-budget", "1000TiB"]) == 2  # more than the machine has
    _assert_one_error_line(capsys, "memory budget", "exceeds")


def test_python_dash_m_advrank_is_the_command():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "advrank", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("advrank ")


def test_unicode_minus_and_repeated_values_everywhere(untrained_ckpt, tmp_path, cli):
    """CA− (Unicode minus) is CA- in every command; a value repeated in a list (also spelled
    differently: 0.1 and 1/10, CA+ and ca+) is one cell, run once."""
    common = ["--num-attacks", "2", "--device", "cpu", "--quiet", "--json"]
    for argv in (["attack", "--checkpoint", untrained_ckpt, "--attack", "CA−", "--eps", "0.1",
                  "--steps", "1"],
                 ["transfer", "--source", untrained_ckpt, "--target", untrained_ckpt,
                  "--attack", "CA−", "--eps", "0.1", "--steps", "1"]):
        status, out, err = cli([*argv, *common])
        assert status == 0, err
        assert json.loads(out)["attack"] == "CA-"
    status, out, err = cli(["grid", "--checkpoint", untrained_ckpt, "--out", tmp_path / "g",
                            "--attacks", "CA−,CA-,ca+,CA+", "--eps-values", "0.1,1/10,0.1",
                            "--ks", "1,1", *common])
    assert status == 0, err
    cells = json.loads((tmp_path / "g" / "results.json").read_text())["cells"]
    assert sorted(cells) == ["CA+|0.1|1", "CA-|0.1|1"]
    assert len(json.loads(out)["cells"]) == 2


def test_the_command_table_matches_the_declared_commands():
    """``advrank --help`` is drawn from COMMAND_TABLE without importing any command: each
    entry must be the command its module declares, with the same one-line help."""
    import importlib

    from advrank.cli import COMMAND_MODULES, COMMAND_TABLE
    from advrank.cli.parsing import _paragraphs

    declared = [(c.name, module, _paragraphs(c.options.__doc__)[0]) for module in
                COMMAND_MODULES for c in importlib.import_module(module).COMMANDS]
    assert sorted(declared) == sorted(COMMAND_TABLE)


def test_help_and_a_mistyped_command_import_no_torch():
    """What makes ``advrank --help`` take well under a second: no command module and no
    torch are imported for it (nor for a mistyped command)."""
    import subprocess
    import sys

    code = ("import sys\nfrom advrank.cli import main\nfor argv in (['--help'], ['--version'], "
            "['atack']):\n    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('torch' in sys.modules, 'advrank.cli.audit' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr
    assert "did you mean attack?" in out.stderr


@pytest.mark.parametrize("argv,words", [
    (["atack", "--eps", "0.3"], ["unknown command 'atack'; did you mean attack?"]),
    (["transfer-matrx"], ["did you mean transfer-matrix or transfer?"]),
    (["zzz"], ["unknown command 'zzz' (commands: train, "]),
    (["audit", "--checkpoint", "x.pt", "--out", "o", "--epss", "0.3"],
     ["unrecognized option --epss; did you mean --eps?"]),
    (["attack", "--checkpoint", "x.pt", "--atack", "CA+", "--eps", "0.3"],
     ["unrecognized option --atack; did you mean --attack?"]),
    (["evaluate", "--checkpoint", "x.pt", "--frobnicate=3"], ["unrecognized option --frobnicate"]),
])
def test_unknown_commands_and_options_are_named_with_the_nearest(argv, words, capsys, tmp_path):
    assert main(argv) == 2
    _assert_one_error_line(capsys, *words)
    assert not (tmp_path / "o").exists()


def test_abbreviated_options_still_work(untrained_ckpt, capsys):
    assert main(["evaluate", "--checkpoint", str(untrained_ckpt), "--dev", "cpu", "--js"]) == 0
    assert json.loads(capsys.readouterr().out)["recall@1"] >= 0


@pytest.mark.parametrize("command", [
    ["grid", "--k", "800", "--num-attacks", "5"],
    ["curves", "--num-attacks", "5000"],
    ["audit", "--num-attacks", "5000"],
])
def test_a_refused_run_leaves_no_empty_output_folder(command, untrained_ckpt, tmp_path, capsys):
    """Options that do not fit the collection are refused after the folder was made: the
    folders the run made are removed again (a folder that existed before stays)."""
    name, *rest = command
    out = tmp_path / "new" / "out"
    assert main([name, "--checkpoint", str(untrained_ckpt), "--out", str(out), *rest,
                 "--device", "cpu", "--quiet"]) == 2
    _assert_one_error_line(capsys, "gallery")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    assert main([name, "--checkpoint", str(untrained_ckpt), "--out", str(tmp_path / "kept"),
                 *rest, "--device", "cpu", "--quiet"]) == 2
    capsys.readouterr()
    assert (tmp_path / "kept").is_dir()
