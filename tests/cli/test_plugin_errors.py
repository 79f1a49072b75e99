"""A broken plugin (its import raises, it registers something that is not a part, or a
name twice) is one error line for every command, and only a warning for --help and
--version, which always work; under torchrun the error line is rank 0's alone."""

from __future__ import annotations

import pytest

from advrank import cli as cli_module
from advrank.core import distributed

BROKEN = {
    "import raises": ("raise RuntimeError('boom at import')", "RuntimeError: boom at import"),
    "registers a number": ("from advrank.registry import ATTACKS\nATTACKS.register('X', 5)",
                           "must be a class or a factory"),
    "takes a built-in name": ("from advrank.registry import ATTACKS\n"
                              "ATTACKS.register('CA+', dict)", "'CA+' is already registered"),
    "bad name": ("from advrank.registry import DATASETS\nDATASETS.register(' x', dict)",
                 "name must be a non-empty string"),
}


@pytest.fixture(params=list(BROKEN))
def broken(request, tmp_path):
    code, message = BROKEN[request.param]
    path = tmp_path / "broken_plugin.py"
    path.write_text(code + "\n")
    return str(path), message


def test_a_broken_plugin_is_one_error_line(broken, cli, one_error_line):
    plugin, message = broken
    one_error_line(*cli(["--plugin", plugin, "audit", "--checkpoint", "x.pt", "--out", "o"]),
                   "cannot load plugin", message)


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_work_with_a_broken_plugin(flag, broken, cli):
    plugin, message = broken
    status, out, err = cli(["--plugin", plugin, flag])
    assert status == 0 and "Traceback" not in err
    assert ("usage: advrank" in out) if flag == "--help" else out.startswith("advrank ")
    assert err.startswith("advrank: warning: cannot load plugin") and message in err


def test_the_error_line_is_rank_0s_alone_and_printable(monkeypatch, capsys):
    monkeypatch.setitem(distributed._STATE, "rank", 1)
    assert cli_module._error("something went wrong") == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setitem(distributed._STATE, "rank", 0)
    assert cli_module._error("something\nwent wrong") == 2
    assert capsys.readouterr().err == "advrank: error: something\\nwent wrong\n"
    assert cli_module._error("no such file caf\udce9.jpg") == 2  # a non-UTF-8 name
    assert capsys.readouterr().err == "advrank: error: no such file caf\\udce9.jpg\n"
