"""The one store policy of audit and robustness folders: the folder is claimed before anything
is written (a refused second writer leaves it byte-identical, without embedding), every
"does it fit" check runs before embedding, a user's own files are overwritten only with
--force, and a robustness cell whose items disagree with its figure is refused."""

from __future__ import annotations

import json
import textwrap

import pytest

from advrank.core.io import exclusive
from advrank.experiments.store import LOCK_NAME

FACTORY = '''
from torch import nn

def build():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(16, 6))
    net.data_config = {"input_size": (3, 16, 16), "crop_pct": 1.0}
    return net
'''
FAST = {"audit": ["--attacks", "CA+", "--eps", "0.01", "--steps", "1", "--num-attacks", "2",
                  "--examples", "0"],
        "robustness": ["--profile", "rob28", "--num-attacks", "2", "--bootstrap", "20"]}
OUTPUT = {"audit": ("report.json", "report.html"), "robustness": ("results.json",
                                                                   "robustness.md")}


@pytest.fixture
def run(tmp_path, image_folder, cli):
    """``run(command, out, *extra)``: the command on a tiny python: model over the shared
    folder of 60 pictures; (status, stdout, stderr)."""
    model = tmp_path / "tiny.py"
    model.write_text(textwrap.dedent(FACTORY))

    def go(command: str, out, *extra: str):
        return cli([command, "--model", f"python:{model}:build", "--data",
                    f"imagefolder:{image_folder}", "--out", out, "--device", "cpu", "--quiet",
                    *FAST[command], *extra])

    return go


def snapshot(folder) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("command", ["audit", "robustness"])
def test_a_refused_second_writer_leaves_the_folder_byte_identical(command, run, tmp_path,
                                                                  one_error_line):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the first run's folder")
    with exclusive(out / LOCK_NAME, f"output folder {out}"):  # another run holds it
        before = snapshot(out)
        one_error_line(*run(command, out), "is being written by")
        assert snapshot(out) == before  # no cache, no results, nothing embedded into it


@pytest.mark.parametrize("command, extra, message", [
    ("audit", ["--num-attacks", "500"], "500 attacks requested but the gallery has only 60"),
    ("audit", ["--k", "60"], "k = 60 needs a gallery of more than 60"),
    ("robustness", ["--num-attacks", "500"], "500"),
    ("audit", ["--cache-dir", "{file}"], "exists and is not a folder"),
])
def test_what_does_not_fit_is_refused_before_embedding(command, extra, message, run, tmp_path,
                                                       one_error_line):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "out"
    one_error_line(*run(command, out, *[e.format(file=tmp_path / "a-file") for e in extra]),
                   message)
    assert not (out / "cache").exists() and not (out / OUTPUT[command][0]).exists()
    assert (tmp_path / "a-file").read_text() == "x"


@pytest.mark.parametrize("command", ["audit", "robustness"])
def test_a_users_own_file_is_overwritten_only_with_force(command, run, tmp_path,
                                                         one_error_line):
    results, page = OUTPUT[command]
    out = tmp_path / "out"
    out.mkdir()
    (out / page).write_text("my own notes")
    one_error_line(*run(command, out), f"{out / page} exists", "--force")
    assert (out / page).read_text() == "my own notes" and not (out / results).exists()
    status, _, err = run(command, out, "--force")
    assert status == 0, err
    assert (out / page).read_text() != "my own notes" and (out / results).exists()
    status, _, err = run(command, out)  # its own files now: resumed, no --force needed
    assert status == 0, err


def test_robustness_items_that_disagree_with_the_figure_are_refused(run, tmp_path,
                                                                    one_error_line):
    out = tmp_path / "out"
    status, _, err = run("robustness", out)
    assert status == 0, err
    good = json.loads((out / "results.json").read_text())
    for damage in ({"rank": [0.0, 0.0]}, {"rank": [150.0, -50.0]}, {"rank": [1.0]}):
        bad = json.loads(json.dumps(good))
        bad["cells"]["CA+"]["items"] = damage
        bad["cells"]["CA+"]["rank_after"] = 50.0
        text = json.dumps(bad)
        (out / "results.json").write_text(text)
        line = one_error_line(*run("robustness", out))
        assert "damaged cell 'CA+'" in line and (out / "results.json").read_text() == text
