"""Text queries on the command line: ``attack --queries text:FILE --attack CA+`` and ``audit
--queries text:FILE`` with the smallest random-weight open_clip model on a folder of 60
generated pictures (its tokenizer ships with open_clip: no network); ``grid`` and
``evaluate`` with a clip-tiny checkpoint; a single-tower model or a picture-query kind given
text queries is one error line, before the collection is embedded."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("open_clip")

CLIP = ["--model", "open_clip:ViT-S-32-alt", "--input-size", "32"]  # the smallest text tower
QUIET = ["--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No network: a tokenizer that needed the hub would fail here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def query_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("queries") / "queries.txt"
    path.write_text("red circles\tcircles\ngreen stripes\tstripes\nblue squares\tsquares\n"
                    "a round thing\nstriped fabric\tstripes\nsquare box\tsquares\n")
    return path


@pytest.fixture(scope="module")
def dual_checkpoint(tmp_path_factory):
    """An untrained digits clip-tiny checkpoint (16-d)."""
    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("clip-tiny", (1, 8, 8), 16, [0.3], [0.38])
    path = tmp_path_factory.mktemp("ckpt") / "dual.pt"
    save_checkpoint(path, model, {"dataset": "digits", "arch": "clip-tiny", "metric": "cosine",
                                  "embed_dim": 16, "image_shape": [1, 8, 8], "mean": [0.3],
                                  "std": [0.38]})
    return path


def test_attack_with_text_queries_on_an_open_clip_model(cli, image_folder, query_file,
                                                        tmp_path):
    status, out, err = cli(["attack", *CLIP, "--data", f"imagefolder:{image_folder}",
                            "--queries", f"text:{query_file}", "--attack", "CA+", "--eps",
                            "8/255", "--steps", "3", "--num-attacks", "5", "--cache-dir",
                            tmp_path, "--json", *QUIET])
    assert status == 0, err
    s = json.loads(out)
    assert s["attack"] == "CA+" and s["num_attacks"] == 5 and s["gallery_size"] == 60
    assert s["text_queries"] == f"text:{query_file}" and s["query_texts"] == 6
    assert s["labelled_texts"] == 5 and "recall@1_after" not in s  # one text names no class
    assert 0 <= s["rank_after"] <= s["rank_before"] <= 100
    assert s["model"] == "open_clip:ViT-S-32-alt" and s["text_tower"] == "random"


def test_audit_with_text_queries_writes_the_text_section(cli, image_folder, query_file,
                                                         tmp_path):
    out_dir = tmp_path / "audit"
    argv = ["audit", *CLIP, "--data", f"imagefolder:{image_folder}", "--queries",
            f"text:{query_file}", "--attacks", "CA+", "--eps", "8/255", "--steps", "3",
            "--num-attacks", "4", "--out", out_dir, "--json", *QUIET]
    status, out, err = cli(argv)
    assert status == 0, err
    text = json.loads(out)["text"]
    assert text["query_texts"] == 6 and 0 <= text["retrieval"]["recall@1"] <= 100
    assert [(r["attack"], r["eps"]) for r in text["attacks"]] == [("CA+", 8 / 255)]
    panel = text["examples"][0]
    assert panel["query_text"] in query_file.read_text() and panel["query"] is None
    page = (out_dir / "report.html").read_text()
    assert "<h2>Text queries</h2>" in page and 'class="qtext"' in page
    report = json.loads((out_dir / "report.json").read_text())
    assert sum(key.startswith("text|") for key in report["cells"]) == 1
    status, out, err = cli(argv)  # resumed: nothing left to run, the same figures
    assert status == 0 and json.loads(out)["text"]["attacks"] == text["attacks"]


def test_grid_and_evaluate_with_text_queries(cli, dual_checkpoint, tmp_path):
    status, out, err = cli(["grid", "--checkpoint", dual_checkpoint, "--queries",
                            "prompts:a photo of a {}|the digit {}", "--out", tmp_path / "g",
                            "--eps", "0.1", "--k", "1", "--num-attacks", "3", "--top-fraction",
                            "0.2", "--json", *QUIET])
    assert status == 0, err
    cells = json.loads(out)["cells"]
    assert sorted(c["attack"] for c in cells) == ["CA+", "CA-"]  # QA+/QA- take pictures
    assert all(c["query_texts"] == 20 for c in cells)
    assert "queries: the texts of prompts:" in (tmp_path / "g" / "table.md").read_text()
    status, out, err = cli(["evaluate", "--checkpoint", dual_checkpoint, "--queries",
                            "prompts:a photo of a {}", "--json", *QUIET])
    assert status == 0, err
    figures = json.loads(out)["text"]
    assert figures["labelled_texts"] == 10 and 0 <= figures["map"] <= 100


def test_text_queries_need_a_text_tower_and_a_candidate_attack(cli, one_error_line,
                                                               untrained_digits, query_file,
                                                               image_folder, tmp_path):
    one_error_line(*cli(["attack", "--checkpoint", untrained_digits, "--queries",
                         f"text:{query_file}", "--attack", "CA+", "--eps", "0.1", *QUIET]),
                   "has no text tower")
    cache = tmp_path / "cache"
    one_error_line(*cli(["attack", "--model", "timm:resnet10t", "--input-size", "32", "--data",
                         f"imagefolder:{image_folder}", "--queries", f"text:{query_file}",
                         "--attack", "CA+", "--eps", "0.1", "--cache-dir", cache, *QUIET]),
                   "has no text tower")
    assert not cache.exists()  # refused before the collection was embedded
    one_error_line(*cli(["attack", *CLIP, "--data", f"imagefolder:{image_folder}",
                         "--queries", f"text:{query_file}", "--attack", "QA+", "--eps", "0.1",
                         *QUIET]), "text queries go with the candidate attacks")
    one_error_line(*cli(["attack", *CLIP, "--data", f"imagefolder:{image_folder}",
                         "--queries", "prompts:a photo", "--attack", "CA+", "--eps", "0.1",
                         *QUIET]), "--queries", "one {}")
    one_error_line(*cli(["audit", *CLIP, "--data", f"imagefolder:{image_folder}", "--queries",
                         f"text:{query_file}", "--attacks", "QA+", "--out", tmp_path / "a",
                         *QUIET]), "needs an attack whose queries may be texts")


def test_train_reports_text_to_image_recall(cli, tmp_path):
    status, out, err = cli(["train", "--dataset", "digits", "--arch", "clip-tiny", "--epochs",
                            "1", "--embed-dim", "16", "--out", tmp_path / "d.pt", *QUIET])
    assert status == 0, err
    assert "text-to-image R@1" in out and "after 1 epochs" in out
    status, out, err = cli(["train", "--dataset", "digits", "--arch", "clip-tiny", "--loss",
                            "triplet", "--out", tmp_path / "e.pt", *QUIET])
    assert status == 2 and "trains with --loss clip" in err
