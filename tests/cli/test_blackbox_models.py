"""``transfer``, ``transfer-matrix``, ``universal`` and ``curves`` take outside models the way
every measuring command does: ``--model timm:resnet10t --data imagefolder:DIR`` (random
weights, a generated folder), several of them with ``NAME=`` labels."""

from __future__ import annotations

import json

import pytest

from advrank.cli import main

SMALL = ["--device", "cpu", "--quiet", "--json"]
FAST = ["--num-attacks", "4", "--steps", "2", "--batch-size", "4"]


def _json(capsys) -> dict:
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, (out, err)
    return json.loads(lines[0])


@pytest.fixture
def data(image_folder) -> list[str]:
    return ["--data", f"imagefolder:{image_folder}", "--input-size", "32"]


def test_transfer_between_two_outside_models(data, capsys):
    assert main(["transfer", "--model", "source=timm:resnet10t", "--model",
                 "target=timm:resnet10t", "--embed-dim", "target=8", *data, "--attack", "CA+",
                 "--eps", "8/255", *FAST, *SMALL]) == 0
    out = _json(capsys)
    assert out["source_checkpoint"] == out["target_checkpoint"] == "timm:resnet10t"
    assert out["num_attacks"] == 4 and out["data"].startswith("imagefolder:")
    # the target has its own projection head, so it ranks differently from the source
    assert 0 <= out["rank_after"] <= 100 and 0 <= out["source"]["rank_after"] <= 100
    assert out["source"]["rank_after"] < out["source"]["rank_before"]


def test_transfer_matrix_of_outside_models(data, capsys, tmp_path):
    assert main(["transfer-matrix", "--model", "a=timm:resnet10t", "--model",
                 "b=timm:resnet10t", "--embed-dim", "b=8", *data, "--attacks", "CA+",
                 "--eps", "8/255", *FAST, "--out", str(tmp_path), *SMALL]) == 0
    out = _json(capsys)
    assert list(out["models"]) == ["a", "b"] and out["complete"] is True
    assert out["models"]["a"]["sha256"] != out["models"]["b"]["sha256"]
    assert set(out["results"]["CA+"]["a"]) == {"a", "b"}
    assert "| From \\ To | a | b |" in (tmp_path / "transfer.md").read_text()


def test_universal_on_an_outside_model(data, capsys, tmp_path):
    assert main(["universal", "--model", "timm:resnet10t", *data, "--attack", "QA+",
                 "--eps", "8/255", "--fraction", "0.1", "--steps", "2", "--out", str(tmp_path),
                 *SMALL]) == 0
    out = _json(capsys)
    assert out["attack"] == "I-QA+" and out["set_size"] == 6 and out["arch"] == "timm:resnet10t"
    assert out["perturbation_linf"] <= 8 / 255 + 1e-6
    assert (tmp_path / out["png"].split("/")[-1]).is_file()


def test_curves_of_outside_models_with_labels(data, capsys, tmp_path):
    assert main(["curves", "--model", "plain=timm:resnet10t", "--model", "head=timm:resnet10t",
                 "--embed-dim", "head=8", *data, "--eps-values", "8/255",
                 "--num-attacks", "4", "--out", str(tmp_path), *SMALL]) == 0
    out = _json(capsys)
    assert [m["label"] for m in out["checkpoints"]] == ["plain", "head"]
    assert (out["computed"], out["reused"]) == (2, 0) and len(out["points"]) == 2
    assert out["points"][0]["fingerprint"] != out["points"][1]["fingerprint"]
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, fragment", [
    (["transfer", "--model", "source=timm:resnet10t", "--attack", "CA+", "--eps", "0.1"],
     "--source PATH and --target PATH"),
    (["transfer-matrix", "--model", "timm:resnet10t", "--out", "{tmp}"], "NAME=SOURCE"),
    (["transfer-matrix", "--model", "a=timm:resnet10t", "--model", "a=timm:resnet10t",
      "--out", "{tmp}"], "distinct"),
    (["curves", "--model", "a=timm:resnet10t", "--weights", "b=w.pt", "--out", "{tmp}"],
     "no model is named b"),
    (["curves", "--checkpoint", "m.pt", "--metric", "cosine", "--out", "{tmp}"],
     "applies to --model"),
    (["curves", "--model", "a=timm:resnet10t", "--metric", "a=cosine", "--metric", "a=l2",
      "--out", "{tmp}"], "given twice"),
])
def test_labelled_model_options_are_checked_before_work(argv, fragment, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main([*argv, "--data", "imagefolder:nowhere", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("advrank: error:") and fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_universal_into_a_folder_resumes_and_refuses_other_settings(data, capsys, tmp_path):
    argv = ["universal", "--model", "timm:resnet10t", *data, "--attack", "CA+", "--eps",
            "8/255", "--fraction", "0.05", "--steps", "1", "--out", str(tmp_path), *SMALL]
    assert main(argv) == 0
    first = _json(capsys)
    stored = json.loads((tmp_path / "universal.json").read_text())
    assert list(stored["cells"]) == ["universal-I-CA+-eps0.0313725-shared"]
    pt = tmp_path / "universal-I-CA+-eps0.0313725-shared.pt"
    stamp = pt.stat().st_mtime_ns
    assert main(argv) == 0  # the stored cell and its r are reused, not recomputed
    again = _json(capsys)
    assert pt.stat().st_mtime_ns == stamp
    assert again["rank_after"] == first["rank_after"] and again["seconds"] == first["seconds"]
    assert main([*argv, "--seed", "1"]) == 2
    assert "other settings (seed=0, this run 1)" in capsys.readouterr().err

