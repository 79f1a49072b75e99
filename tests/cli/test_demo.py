"""`advrank demo` end to end on the embedded digits, with a tiny budget."""

import json

from advrank.cli import main


def test_demo_trains_attacks_defends_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--epochs", "2", "--num-attacks", "20",
                 "--defense-epochs", "1", "--defense-steps", "2", "--device", "cpu", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vanilla"]["recall@1"] > 80
    cells = {(c["attack"], c["eps"]): c for c in report["vanilla"]["cells"]}
    assert len(cells) == 16  # 4 attacks x 4 eps rows, w = m = 1
    assert cells[("CA+", 0.3)]["rank_after"] < cells[("CA+", 0.0)]["rank_after"]
    assert cells[("CA-", 0.3)]["rank_after"] > cells[("CA-", 0.0)]["rank_after"]
    models = report["defense_comparison"]["models"]
    assert models["defended"]["defense"] == "est" and models["vanilla"]["defense"] is None
    for name in ("digits-c2f1.pt", "digits-c2f1-est.pt", "grid-vanilla/table.md"):
        assert (out / name).exists(), name
    retrieval, attacks, defense = report["sentences"]  # one sentence per figure
    assert retrieval.startswith("Retrieval: for ") and "R@1" in retrieval
    assert f"CA+ {cells[('CA+', 0.3)]['rank_before']:.0f}% -> " in attacks
    assert defense.startswith("Defense (second table, eps = 0.3)")
    main(["demo", "--out", str(out), "--epochs", "2", "--num-attacks", "20",
          "--defense-epochs", "1", "--defense-steps", "2", "--device", "cpu", "--quiet"])
    text = capsys.readouterr().out  # resumed: the text ends with the sentences
    assert text.rstrip().endswith(defense) and "What the figures say:" in text
