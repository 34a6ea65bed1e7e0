"""Fake sweeps in Hydra's layout become exact tables: mean ± std over seeds, n, footnotes, bold."""

import json

import yaml

from lmm.ablate import build_table, csv_text, find_runs, latex, main, markdown


def fake_sweep(root, runs):
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    for i, (overrides, metrics, status) in enumerate(runs):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if status == "finished":
            (run / "results.json").write_text(json.dumps({"metrics": metrics}))
        elif status == "failed":
            (run / "run.log").write_text("Error executing job with overrides: [...]\nTraceback (most recent call last):\n")
    return root


def sweep(tmp_path):
    return fake_sweep(tmp_path / "sweep", [
        (["connector=linear", "seed=0"], {"acc": 0.50, "loss": 2.0}, "finished"),
        (["connector=linear", "seed=1"], {"acc": 0.60, "loss": 1.8}, "finished"),
        (["connector=linear", "seed=2"], {"acc": 0.70, "loss": 1.6}, "finished"),
        (["connector=mlp", "seed=0"], {"acc": 0.80, "loss": 1.5}, "finished"),
        (["connector=mlp", "seed=1"], {"acc": 0.90}, "finished"),            # lacks the loss
        (["connector=mlp", "seed=2"], {}, "failed"),
        (["connector=qformer", "seed=0"], {"acc": 0.40, "loss": 2.5}, "finished"),
        (["connector=qformer", "seed=1"], {"acc": 0.45, "loss": 2.4}, "finished"),  # a missing seed
    ])


def test_markdown_exact(tmp_path):
    table = build_table(find_runs([str(sweep(tmp_path))]))
    assert table.factors == ["connector"] and table.metrics == ["acc", "loss"]
    assert markdown(table, decimals=2) == (
        "| connector | n | acc | loss |\n"
        "|---|---:|---:|---:|\n"
        "| linear | 3 | 0.60 ± 0.10 | 1.80 ± 0.20 |\n"
        "| mlp | 3 | **0.85 ± 0.07** | **1.50** |\n"
        "| qformer | 2 | 0.43 ± 0.04 | 2.45 ± 0.07 |\n"
        "\n"
        "- connector=mlp: run 5 failed\n"
        "- connector=qformer: 2 run(s), fewer than the 3 of other rows\n"
        "\n"
        "Mean ± sample std over seeds; n = runs per row; best per column in bold; — = no value.\n"
    )


def test_latex_csv_and_files(tmp_path):
    root = sweep(tmp_path)
    table = build_table(find_runs([str(root)]), metrics=["acc"])
    tex = latex(table, decimals=2)
    assert tex.startswith("\\begin{tabular}{lrr}\n\\toprule\nconnector & n & acc \\\\\n\\midrule\n")
    assert "mlp & 3 & \\textbf{0.85 $\\pm$ 0.07} \\\\" in tex and tex.endswith("\\bottomrule\n\\end{tabular}\n")
    rows = csv_text(table).splitlines()
    assert rows[0] == "connector,n,acc_mean,acc_std,acc_n"
    assert rows[1] == "linear,3,0.6,0.1,3"
    main([str(root), "--out", str(tmp_path / "out"), "--rename", "acc=Accuracy"])
    assert "| connector | n | Accuracy | loss |" in (tmp_path / "out" / "ablation.md").read_text()
    assert (tmp_path / "out" / "ablation_acc.png").stat().st_size > 1000
    assert (tmp_path / "out" / "ablation.csv").exists() and (tmp_path / "out" / "ablation.tex").exists()
