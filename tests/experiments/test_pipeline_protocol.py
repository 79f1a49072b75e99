"""The upload pipeline in the protocol and the grid: figures after the round trip beside the
float ones, the pipeline in a grid's identity, and PGD through the pipeline."""

from __future__ import annotations

import json

import pytest
import torch

from advrank.attacks import LinfThreatModel, RankingAttack
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset, load_dataset
from advrank.errors import AdvrankError
from advrank.experiments.grid import run_grid
from advrank.experiments.protocol import run_attack
from advrank.models import create_model


@pytest.fixture(scope="module")
def setup():
    """A tiny model over 150 digits stored as 8-bit pictures (on the 1/255 grid)."""
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16).eval()
    ds = load_dataset("digits", "test")
    ds = TensorImageDataset(torch.round(ds.images[:150] * 255) / 255, ds.labels[:150])
    return model, Gallery.build(model, ds, get_distance("cosine"))


def _threat(eps, pipeline=None, through=False):
    return LinfThreatModel(eps, step_size=0.6 / 255, steps=10, pipeline=pipeline,
                           through_pipeline=through)


def test_run_attack_measures_after_the_pipeline(setup):
    model, gal = setup
    plain = run_attack(model, gal, "CA+", 0.05, 1, 12, threat=_threat(0.05))
    assert not any("pipeline" in key for key in plain.figures)
    png = run_attack(model, gal, "CA+", 0.05, 1, 12, threat=_threat(0.05, "png"))
    jpeg = run_attack(model, gal, "CA+", 0.05, 1, 12, threat=_threat(0.05, "jpeg:30"))
    for r in (png, jpeg):
        assert r.after["rank"] == plain.after["rank"]  # the float figures are unchanged
        assert len(r.after["rank_pipeline"]) == 12
        assert {"rank_pipeline_before", "rank_pipeline_after",
                "rank_pipeline_after_se"} <= set(r.figures)
    assert png.threat["pipeline"] == "png" and jpeg.threat["pipeline"] == "jpeg:30"
    # PNG keeps 8-bit clean pictures as they are; JPEG at quality 30 does not
    assert png.before["rank_pipeline"] == png.before["rank"]
    assert jpeg.before["rank_pipeline"] != jpeg.before["rank"]
    # JPEG moves the adversarial images' ranks; rounding to 1/255 moves them little
    assert jpeg.after["rank_pipeline"] != jpeg.after["rank"]
    assert abs(png.figures["rank_pipeline_after"] - png.figures["rank_after"]) < 5


def test_pgd_through_png_feeds_the_model_8bit_pictures(setup):
    model, gal = setup
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.inner(x)

    images = gal.images(torch.arange(4))
    targets = torch.tensor([[5], [6], [7], [8]])
    float_adv = RankingAttack(Spy(), gal.embeddings, "cosine", "CA+", _threat(0.05))(
        images, targets)
    assert any(not torch.equal(x * 255, torch.round(x * 255)) for x in seen)
    seen.clear()
    through = RankingAttack(Spy(), gal.embeddings, "cosine", "CA+",
                            _threat(0.05, "png", through=True))(images, targets)
    assert len(seen) == 10 and all(torch.equal(x * 255, torch.round(x * 255)) for x in seen)
    assert (through - images).abs().max() <= 0.05 + 1e-6
    assert not torch.equal(through, float_adv)


def test_attacking_through_png_is_at_least_as_good_after_the_round_trip(setup):
    model, gal = setup
    after = {}
    for through in (False, True):
        r = run_attack(model, gal, "CA+", 1.5 / 255, 1, 60, threat=_threat(1.5 / 255, "png",
                                                                            through))
        after[through] = r.figures["rank_pipeline_after"]
        assert after[through] < r.figures["rank_pipeline_before"] - 1  # the attack works
    # the through-attack optimises what the search sees: no worse (beyond noise) after it
    assert after[True] <= after[False] + 0.1, after


def test_grid_records_the_pipeline_and_refuses_to_mix(setup, tmp_path):
    model, gal = setup
    kw = dict(eps_values=(0.0, 0.05), ks=(1,), attacks=("CA+", "QA+"), num_attacks=4,
              progress=False, pipeline="jpeg:75")
    res = run_grid(model, gal, tmp_path, **kw)
    assert res["config"]["pipeline"] == "jpeg:75" and res["config"]["through_pipeline"] is False
    for cell in res["cells"].values():
        assert cell["threat"]["pipeline"] == "jpeg:75"
        assert {"rank_pipeline_before", "rank_pipeline_after"} <= set(cell)
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert "rank_pipeline_after" in csv[0].split(",")
    table = (tmp_path / "table.md").read_text()
    assert "After the upload pipeline jpeg:75" in table
    cell = res["cells"]["CA+|0.05|1"]
    assert f"{cell['rank_pipeline_after']:.1f}" in table.split("After the upload")[1]

    again = run_grid(model, gal, tmp_path, **kw)  # same pipeline: resumes, nothing to run
    assert again["cells"] == res["cells"]
    for other in ({"pipeline": "png"}, {"pipeline": None}, {"through_pipeline": True},
                  {"pipeline": "jpeg:76"}):
        with pytest.raises(AdvrankError, match="pipeline"):
            run_grid(model, gal, tmp_path, **{**kw, **other})
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["cells"] == res["cells"]  # the refusals left it as it was


def test_a_grid_without_pipeline_refuses_one_with_it(setup, tmp_path):
    model, gal = setup
    kw = dict(eps_values=(0.05,), ks=(1,), attacks=("CA+",), num_attacks=3, progress=False)
    run_grid(model, gal, tmp_path, **kw)
    assert "After the upload" not in (tmp_path / "table.md").read_text()
    with pytest.raises(AdvrankError, match="pipeline=None, this run 'png'"):
        run_grid(model, gal, tmp_path, **kw, pipeline="png")
