"""The grid writes its tables and resumes where it stopped."""

import json

import pytest
import torch

import advrank.experiments.grid as grid_mod
from advrank.core.distances import get_distance
from advrank.core.gallery import Gallery
from advrank.data import TensorImageDataset, load_dataset
from advrank.errors import AdvrankError
from advrank.experiments.paper import paper_lookup, paper_value
from advrank.models import create_model
from advrank.reports.tables import markdown_table


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("c2f1", (1, 8, 8), embed_dim=16).eval()
    ds = load_dataset("digits", "test")
    ds = TensorImageDataset(ds.images[:150], ds.labels[:150])
    return model, Gallery.build(model, ds, get_distance("cosine"))


def test_grid_writes_tables_and_resumes(setup, tmp_path, monkeypatch):
    model, gal = setup
    kw = dict(eps_values=(0.0, 0.1), ks=(1, 2), attacks=("CA+", "QA-"), num_attacks=4, seed=0,
              progress=False, paper="mnist")
    res = grid_mod.run_grid(model, gal, tmp_path, **kw)
    assert len(res["cells"]) == 8
    for name in ("results.json", "results.csv", "table.md"):
        assert (tmp_path / name).exists()
    table = (tmp_path / "table.md").read_text()
    assert "CA+ w=1" in table and "QA- m=2" in table and "(12.7)" in table  # paper figure

    # simulate an interruption: two cells lost, then the same command again
    data = json.loads((tmp_path / "results.json").read_text())
    lost = ["CA+|0.1|2", "QA-|0.1|1"]
    for key in lost:
        del data["cells"][key]
    (tmp_path / "results.json").write_text(json.dumps(data))
    calls = []
    real = grid_mod.run_attack

    def counting(*args, **kwargs):
        calls.append((args[2].name, args[3], args[4]))
        return real(*args, **kwargs)

    monkeypatch.setattr(grid_mod, "run_attack", counting)
    again = grid_mod.run_grid(model, gal, tmp_path, **kw)
    assert sorted(calls) == sorted([("CA+", 0.1, 2), ("QA-", 0.1, 1)])
    assert again["cells"]["CA+|0.1|2"]["rank_after"] == pytest.approx(
        res["cells"]["CA+|0.1|2"]["rank_after"])  # same selection, same result

    with pytest.raises(AdvrankError, match="num_attacks"):
        grid_mod.run_grid(model, gal, tmp_path, **{**kw, "num_attacks": 5})
    with pytest.raises(AdvrankError, match="sp_reduction"):  # another reading of Eq. 12
        grid_mod.run_grid(model, gal, tmp_path, **{**kw, "sp_reduction": "sum"})


def test_paper_values_and_table_layout():
    assert paper_value("mnist", "CA+", 0.3, 1) == 2.1
    assert paper_value("mnist", "CA-", 0.3, 10) == 92.9
    assert paper_value("fashion-defended", "QA-", 0.3, 1) == 3.9
    assert paper_value("mnist", "CA+", 0.05, 1) is None
    cells = [{"attack": "CA+", "eps": 0.3, "k": 1, "rank_after": 2.0, "rank_after_se": 0.1}]
    md = markdown_table(cells, paper=paper_lookup("mnist"))
    assert "| 0.3 | 2.0 ± 0.1 (2.1) |" in md
