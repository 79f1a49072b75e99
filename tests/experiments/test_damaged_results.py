"""Result files of the resumable jobs (grid, curves, transfer-matrix, audit, robustness) that
were damaged or forged between runs: rerunning the command refuses them with one
``advrank: error:`` line and leaves them as they were, instead of a traceback or a table
built on bad cells."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from advrank.models import create_model
from advrank.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("damaged-results") / "m.pt"
    save_checkpoint(path, create_model("c2f1", (1, 8, 8), 8, [0.3], [0.38]),
                    {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 8,
                     "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]})
    return path


JOBS = {
    "grid": (lambda ck, out: ["grid", "--checkpoint", ck, "--out", out, "--attacks", "CA+",
                              "--ks", "1", "--eps-values", "0,0.01", "--num-attacks", "3"],
             "results.json"),
    "curves": (lambda ck, out: ["curves", "--checkpoint", ck, "--out", out, "--eps-values", "0",
                                "--num-attacks", "3"], "curves.json"),
    "transfer-matrix": (lambda ck, out: ["transfer-matrix", "--checkpoint", f"a={ck}", "--out",
                                         out, "--attacks", "CA+", "--steps", "1",
                                         "--num-attacks", "3"], "transfer.json"),
    "audit": (lambda ck, out: ["audit", "--checkpoint", ck, "--out", out, "--attacks", "CA+",
                               "--eps", "0.01", "--steps", "1", "--num-attacks", "3",
                               "--examples", "0"], "report.json"),
    "robustness": (lambda ck, out: ["robustness", "--checkpoint", ck, "--out", out, "--profile",
                                    "rob28", "--num-attacks", "3", "--bootstrap", "20"],
                   "results.json"),
}


def _first(d: dict) -> str:
    return next(k for k in d["cells"] if k != "retrieval")  # an audit's first is retrieval


def _set_figure(d: dict, value) -> None:
    cell = d["cells"][_first(d)]
    cell = next(iter(cell.values())) if "rank_after" not in cell and "CA+_after" not in cell \
        else cell
    cell["rank_after" if "rank_after" in cell else "CA+_after"] = value


#: damage applied to a finished run's parsed file (None: the raw text replaces it)
DAMAGE: dict[str, Callable[[dict], object]] = {
    "cell-not-a-mapping": lambda d: d["cells"].__setitem__(_first(d), 5),
    "cell-empty": lambda d: d["cells"].__setitem__(_first(d), {}),
    "figure-a-string": lambda d: _set_figure(d, "12.5"),
    "figure-null": lambda d: _set_figure(d, None),
    "figure-a-list": lambda d: _set_figure(d, [1]),
    "figure-out-of-range": lambda d: _set_figure(d, -55.0),
    "cell-under-a-foreign-key": lambda d: d["cells"].__setitem__("CA+|9|9",
                                                                 d["cells"][_first(d)]),
    "cells-a-list": lambda d: d.__setitem__("cells", []),
    "config-a-list": lambda d: d.__setitem__("config", []),
    "another-kind-of-file": lambda d: d.__setitem__("format", "advrank-something-else"),
    "other-settings": lambda d: d["config"].__setitem__("seed", 99),
    "top-level-list": lambda d: [d],
    "nan-token": lambda d: "NaN",
    "not-json": lambda d: "{\"cells\": ",
    "deeply-nested": lambda d: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_damaged_result_file_is_refused_and_kept(job, checkpoint, tmp_path, cli,
                                                 one_error_line):
    make_argv, filename = JOBS[job]
    out = tmp_path / "out"
    argv = [*make_argv(checkpoint, out), "--device", "cpu", "--quiet"]
    status, _, err = cli(argv)
    assert status == 0, err
    good = json.loads((out / filename).read_text())
    assert cli(argv)[0] == 0  # the same command again: everything reused
    for name, damage in DAMAGE.items():
        content = json.loads(json.dumps(good))
        changed = damage(content)
        text = changed if isinstance(changed, str) else json.dumps(
            changed if isinstance(changed, list) else content)
        (out / filename).write_text(text)
        line = one_error_line(*cli(argv))
        assert str(out / filename) in line, (name, line)
        assert (out / filename).read_text() == text, name  # left as it was
    (out / filename).write_text(json.dumps(good))
    assert cli(argv)[0] == 0
