"""``advrank attack``/``audit``/``evaluate``/``grid`` with ``--model/--weights/--data``: a random
timm model, a torchvision ResNet-18 from a .safetensors file, a TorchScript file and a
python: factory each embed a folder of 60 generated JPEGs; bad input is one error line."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest
import torch
from torch import nn

from advrank.cli import main

SMALL = ["--device", "cpu", "--quiet", "--input-size", "32"]
FACTORY = '''
import torch
from torch import nn

def build():
    """A user's own embedder for 24 px inputs, with its preprocessing."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(32, 12))
    net.data_config = {"input_size": (3, 24, 24), "mean": (0.5, 0.5, 0.5),
                       "std": (0.5, 0.5, 0.5), "crop_pct": 1.0}
    return net
'''


def _json(capsys) -> dict:
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert len(lines) == 1, (out, err)
    return json.loads(lines[0])


def _one_error(capsys, *fragments) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("advrank: error: "), err
    assert out == "" and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """The four kinds of outside model, as a user would have them."""
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in resnet18().state_dict().items()},
              str(root / "resnet18.safetensors"))
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2), nn.ReLU(), nn.Conv2d(6, 10, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten())
    torch.jit.save(torch.jit.script(net), str(root / "net.ts"))
    (root / "my_nets.py").write_text(textwrap.dedent(FACTORY))
    return {
        "timm": ["--model", "timm:test_vit", *SMALL],
        "torchvision": ["--model", "torchvision:resnet18", "--weights",
                        str(root / "resnet18.safetensors"), "--metric", "euclidean", *SMALL],
        "torchscript": ["--model", f"torchscript:{root / 'net.ts'}", "--mean", "0,0,0",
                        "--std", "1,1,1", *SMALL],
        "python": ["--model", f"python:{root / 'my_nets.py'}:build", "--device", "cpu",
                   "--quiet"],
    }


@pytest.mark.parametrize("source", ["timm", "torchvision", "torchscript", "python"])
def test_attack_and_audit_an_outside_model(source, model_files, image_folder, tmp_path,
                                           capsys, inspect_page):
    model = model_files[source]
    data = ["--data", f"imagefolder:{image_folder}"]
    assert main(["attack", *model, *data, "--attack", "QA+", "--eps", "8/255",
                 "--num-attacks", "3", "--steps", "2", "--json"]) == 0
    attack = _json(capsys)
    assert attack["gallery_size"] == 60 and attack["num_attacks"] == 3
    assert attack["model"] == model[1] and attack["checkpoint"] is None
    assert attack["eps"] == pytest.approx(8 / 255) and len(attack["data_sha"]) == 64

    out = tmp_path / "audit"
    eps = "0.03,8/255" if source == "timm" else "8/255"  # both spellings of eps accepted
    assert main(["audit", *model, *data, "--out", str(out), "--eps", eps, "--num-attacks", "3",
                 "--steps", "2", "--top", "3", "--json"]) == 0
    summary = _json(capsys)
    assert summary["gallery_size"] == 60 and 0 < summary["recall@1"] <= 100
    assert 0 < summary["map"] <= 100
    eps_values = [0.03, 8 / 255] if source == "timm" else [8 / 255]
    # pytest >= 9.2 refuses approx() over nested data: compare names exactly, eps approximately
    expected = [(a, e) for a in ("CA+", "CA-", "QA+", "QA-", "ES") for e in eps_values]
    assert [a["attack"] for a in summary["attacks"]] == [a for a, _ in expected]
    assert [a["eps"] for a in summary["attacks"]] == pytest.approx([e for _, e in expected])
    for row in summary["attacks"]:
        assert set(row) >= {"attack", "eps", "k", "rank_before", "rank_after"}
    report = json.loads((out / "report.json").read_text())
    cfg = report["config"]
    for key in ("command", "seed", "commit", "hardware", "model", "model_sha", "data_sha",
                "geometry", "mean", "std", "metric", "fingerprint"):
        assert cfg.get(key) is not None, key
    assert cfg["command"].startswith("advrank audit --model")
    assert cfg["metric"] == ("euclidean" if source == "torchvision" else "cosine")
    assert report["cells"]["retrieval"]["queries"] == 60
    page = (out / "report.html").read_text()
    found = inspect_page(page)
    assert all(u.startswith("data:image/png;base64,") for u in found["urls"])
    assert len(found["images"]) > 5 * 3 and "http" not in page.replace("http-equiv", "")
    assert (out / "cache").is_dir()  # embeddings cached for the next run


def test_audit_of_a_checkpoint_and_evaluate_with_a_split(tmp_path, image_folder, capsys,
                                                         model_files):
    from advrank.models import create_model
    from advrank.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = tmp_path / "digits.pt"
    save_checkpoint(ckpt, create_model("c2f1", (1, 8, 8), 16, mean=[0.3], std=[0.38]),
                    {"dataset": "digits", "arch": "c2f1", "metric": "cosine", "embed_dim": 16,
                     "image_shape": [1, 8, 8], "mean": [0.3], "std": [0.38]})
    assert main(["audit", "--checkpoint", str(ckpt), "--out", str(tmp_path / "a"), "--eps",
                 "0.3", "--num-attacks", "3", "--steps", "2", "--device", "cpu", "--quiet",
                 "--json"]) == 0
    summary = _json(capsys)
    assert summary["gallery_size"] == 719 and len(summary["attacks"]) == 5
    assert main(["evaluate", "--checkpoint", str(ckpt), "--query-fraction", "0.2",
                 "--device", "cpu", "--quiet", "--json"]) == 0
    own = _json(capsys)  # its own test set, split into queries and gallery
    assert own["queries"] + own["gallery_size"] == 719 and 130 < own["queries"] < 150
    # the paper's 8x8 grey model on a folder of colour photos: resized when read
    assert main(["evaluate", "--checkpoint", str(ckpt), "--data", f"imagefolder:{image_folder}",
                 "--query-fraction", "0.25", "--device", "cpu", "--quiet", "--json"]) == 0
    split = _json(capsys)
    assert split["gallery_size"] == 45 and split["queries"] == 15
    assert split["geometry"]["input_size"] == [1, 8, 8]
    assert main(["grid", *model_files["python"], "--data", f"imagefolder:{image_folder}",
                 "--out", str(tmp_path / "g"), "--eps-values", "8/255", "--k", "1",
                 "--attacks", "CA+", "--num-attacks", "2", "--json"]) == 0
    grid = _json(capsys)
    assert len(grid["cells"]) == 1 and grid["cells"][0]["gallery_size"] == 60


@pytest.fixture
def folders(tmp_path, image_folder):
    bad = tmp_path / "bad"
    shutil.copytree(image_folder, bad)
    (bad / "circles" / "007.jpg").write_bytes(b"\xff\xd8\xff garbage, not a JPEG")
    lonely = tmp_path / "lonely"
    shutil.copytree(image_folder, lonely)
    for f in sorted((lonely / "stripes").iterdir())[1:]:
        f.unlink()
    (tmp_path / "empty" / "a").mkdir(parents=True)
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "wrong.pt")
    return {"bad": bad, "lonely": lonely, "empty": tmp_path / "empty",
            "wrong": tmp_path / "wrong.pt", "good": image_folder}


@pytest.mark.parametrize("case, argv, fragments", [
    ("source", ["--model", "keras:resnet50", "--data", "imagefolder:{good}"],
     ["unknown model source 'keras'", "timm"]),
    ("weights", ["--model", "torchvision:resnet18", "--weights", "{wrong}", "--input-size",
                 "32", "--data", "imagefolder:{good}"], ["do not fit torchvision:resnet18"]),
    ("decode", ["--model", "timm:test_vit", "--input-size", "32", "--data", "imagefolder:{bad}"],
     ["1 of 60 images", "circles/007.jpg", "cannot be read", "--max-unreadable"]),
    ("empty", ["--model", "timm:test_vit", "--data", "imagefolder:{empty}"],
     ["holds no images"]),
    ("lonely", ["--model", "timm:test_vit", "--data", "imagefolder:{lonely}"],
     ["class 'stripes' has only one image"]),
    ("both", ["--model", "timm:test_vit", "--checkpoint", "x.pt", "--data", "imagefolder:{good}"],
     ["either --checkpoint FILE or --model SOURCE", "not both"]),
    ("neither", [], ["either --checkpoint FILE or --model SOURCE", "not neither"]),
    ("no data", ["--model", "timm:test_vit"], ["--model needs --data"]),
    ("ckpt options", ["--checkpoint", "x.pt", "--weights", "w.pt"],
     ["--weights apply to --model"]),
    ("eps 8", ["--model", "timm:test_vit", "--data", "imagefolder:{good}", "--eps", "8"],
     ["eps must lie in [0, 1], got '8'", "8/255"]),
    ("eps negative", ["--model", "timm:test_vit", "--data", "imagefolder:{good}", "--eps",
                      "2/255,-0.1"], ["eps must lie in [0, 1], got '-0.1'"]),
    ("eps text", ["--model", "timm:test_vit", "--data", "imagefolder:{good}", "--eps", "lots"],
     ["expected a number, got 'lots'"]),
])
def test_bad_input_is_one_error_line(case, argv, fragments, folders, tmp_path, capsys):
    argv = [a.format(**folders) for a in argv]
    out = tmp_path / "out"
    assert main(["audit", *argv, "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    _one_error(capsys, *fragments)
    assert not (out / "report.json").exists()


def test_unreadable_picture_of_a_large_folder_is_skipped_and_counted(tmp_path, capsys):
    """One broken file among 10,000 is reported and left out, not fatal; a tiny python:
    model and a query split keep this quick."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "big"
    for c in range(10):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(1000):
            Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(
                root / f"class{c}" / f"{i:04d}.png")
    (root / "class3" / "0042.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "tiny.py").write_text(textwrap.dedent('''
        from torch import nn
        def build():
            net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8))
            net.data_config = {"input_size": (3, 4, 4), "crop_pct": None}
            return net
    '''))
    assert main(["evaluate", "--model", f"python:{tmp_path / 'tiny.py'}:build", "--data",
                 f"imagefolder:{root}", "--query-fraction", "0.005", "--ks", "1", "--json",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result["unreadable_images"] == 1 and result["images_listed"] == 10_000
    assert result["unreadable"][0]["item"] == "class3/0042.png"
    assert result["gallery_size"] + result["queries"] == 9_999
    assert "skipped 1 unreadable image(s) of 10000, e.g. class3/0042.png" in err


def test_audit_counts_skipped_pictures_in_its_report(folders, model_files, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", *model_files["python"], "--data", f"imagefolder:{folders['bad']}",
                 "--max-unreadable", "0.05", "--out", str(out), "--eps", "8/255",
                 "--attacks", "CA+,ES", "--num-attacks", "2", "--steps", "1", "--json"]) == 0
    summary = _json(capsys)
    assert summary["gallery_size"] == 59 and summary["unreadable_images"] == 1
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["unreadable"][0]["item"] == "circles/007.jpg"
    assert report["config"]["images_listed"] == 60
    page = (out / "report.html").read_text()
    assert "Unreadable images (1)" in page and "circles/007.jpg" in page


def test_robustness_of_an_outside_model(model_files, image_folder, tmp_path, capsys):
    """``advrank robustness --model ... --data ...``: ERS of a model advrank did not train,
    with its provenance; the audit refuses the kinds that measure no rank."""
    model, data = model_files["python"], ["--data", f"imagefolder:{image_folder}"]
    out = tmp_path / "ers"
    assert main(["robustness", *model, *data, "--profile", "rob28", "--out", str(out),
                 "--num-attacks", "3", "--bootstrap", "50", "--json"]) == 0
    res = _json(capsys)
    assert set(res["scores"]) == set(res["rescaled"]) and len(res["scores"]) == 10
    low, high = res["ers_ci"]
    assert 0 <= low <= res["ers"] <= high <= 100
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["model"] == model[1] and len(cfg["data_sha"]) == 64
    assert main(["audit", *model, *data, "--out", str(tmp_path / "a"), "--attacks", "CA+,LTM",
                 "--num-attacks", "2"]) == 2
    _one_error(capsys, "LTM has none")


def test_readme_audit_on_100_pictures_estimates_first_and_fits_t(image_folder, tmp_path,
                                                                  capsys):
    """README's audit command (a small model, one eps, two kinds, one PGD step for speed) on a
    folder of 100 pictures: no --num-attacks needed (T = |X| with a note), the estimated time
    comes before the first attack, and one progress bar runs over every cell."""
    photos = shutil.copytree(image_folder, tmp_path / "photos")
    for i, picture in enumerate(sorted(photos.rglob("*.jpg"))[:40]):  # 60 + 40 pictures
        shutil.copy(picture, picture.with_name(f"copy{i:02d}.jpg"))
    assert sum(1 for _ in photos.rglob("*.jpg")) == 100
    assert main(["audit", "--model", "timm:test_vit", "--input-size", "32", "--data",
                 f"imagefolder:{photos}", "--out", str(tmp_path / "audit"), "--eps", "8/255",
                 "--attacks", "CA+,ES", "--steps", "1", "--examples", "0",
                 "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "T = 100 attacks" in err and "estimated time about" in err
    assert err.index("estimated time") < err.index("CA+ eps=8/255: rank")
    assert "audit:" in err and "200/200 attacks" in err and " left" in err  # the bar
    assert "CA+ eps=8/255" in out and "wrote" in out


def test_quick_look_fits_a_20_picture_folder_and_resumes(small_image_folder, tmp_path,
                                                         capsys):
    """README's quick look on 20 pictures: T sized from |X| (at most 20) and the time
    budget, one eps (8/255); rerunning resumes the same T instead of sizing it again."""
    argv = ["audit", "--model", "timm:test_vit", "--input-size", "32", "--data",
            f"imagefolder:{small_image_folder}", "--out", str(tmp_path / "audit"), "--quick",
            "--attacks", "CA+,ES", "--steps", "1", "--examples", "0", "--device", "cpu",
            "--json"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    t = summary["attacks"][0]["num_attacks"]
    assert 10 <= t <= 20 and f"quick look: T = {t} attacks per cell at eps = 8/255" in err
    assert [r["eps"] for r in summary["attacks"]] == [8 / 255, 8 / 255]
    assert summary["estimate"]["estimated_seconds"] > 0 and "--quick" not in err
    report = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert report["config"]["audit"]["quick"] == 5.0
    assert main(argv) == 0  # resumed: the stored quick look's T, nothing left to run
    out, err = capsys.readouterr()
    assert json.loads(out)["attacks"][0]["num_attacks"] == t and "no attack left" in err


def test_too_many_attacks_are_refused_before_the_model_loads(small_image_folder, tmp_path,
                                                            capsys, monkeypatch):
    """T above |X| is refused once the folder is listed, before the model is built, and
    the refused run leaves no empty output folder behind."""
    from advrank.experiments import target as target_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the refusal")

    monkeypatch.setattr(target_module, "_build_model", no_model)
    out = tmp_path / "new" / "audit"
    assert main(["audit", "--model", "timm:test_vit", "--data", f"imagefolder:{small_image_folder}",
                 "--out", str(out), "--num-attacks", "100", "--device", "cpu"]) == 2
    _one_error(capsys, "100 attacks requested but the gallery has only 20 items", "--quick")
    assert not (tmp_path / "new").exists()
