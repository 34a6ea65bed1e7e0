"""Fake sweeps in Hydra's layout become exact tables: means with 95% intervals over seeds, paired
comparisons, n, footnotes, bold, the generated summary."""

import itertools
import json

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lmm.analysis.ablate import RecipeSpec, build_table, csv_text, find_runs, latex, main, markdown, summary
from tests.conftest import CONF, compose_config


def fake_sweep(root, runs):
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    for i, (overrides, metrics, status) in enumerate(runs):
        run = root / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        if status == "finished":
            (run / "results.json").write_text(json.dumps({"metrics": metrics}))
        elif status == "failed":  # failed while training: it has a checkpoint
            (run / "run.log").write_text(
                "Error executing job with overrides: [...]\nTraceback (most recent call last):\n"
            )
            (run / "checkpoints").mkdir()
        elif status == "not started":  # the command stopped before training (a mistyped key, a refused config)
            (run / "status.json").write_text(
                json.dumps({"status": "failed", "task": "train", "error": "ValueError: unknown key"})
            )
    return root


def sweep(tmp_path):
    return fake_sweep(
        tmp_path / "sweep",
        [
            (["connector=linear", "seed=0"], {"acc": 0.50, "loss": 2.0}, "finished"),
            (["connector=linear", "seed=1"], {"acc": 0.60, "loss": 1.8}, "finished"),
            (["connector=linear", "seed=2"], {"acc": 0.70, "loss": 1.6}, "finished"),
            (["connector=mlp", "seed=0"], {"acc": 0.80, "loss": 1.5}, "finished"),
            (["connector=mlp", "seed=1"], {"acc": 0.90}, "finished"),  # lacks the loss
            (["connector=mlp", "seed=2"], {}, "failed"),
            (["connector=qformer", "seed=0"], {"acc": 0.40, "loss": 2.5}, "finished"),
            (["connector=qformer", "seed=1"], {"acc": 0.45, "loss": 2.4}, "finished"),  # a missing seed
        ],
    )


def test_markdown_exact(tmp_path):
    table = build_table(find_runs([str(sweep(tmp_path))]))
    assert table.factors == ["connector"] and table.metrics == ["acc", "loss"]
    assert markdown(table, decimals=2) == (
        "| connector | n | acc | loss |\n"
        "|---|---:|---:|---:|\n"
        "| linear | 3 | 0.60 [0.35, 0.85] | **1.80 [1.30, 2.30]** |\n"  # t intervals: 0.6 ± 4.30 · 0.1/√3
        # one of its 2 finished seeds has a loss: shown with n, not bold; acc +0.3 on both paired seeds: shown (†)
        # 0.85 ± 0.64 would pass 1: an accuracy's interval stays inside [0, 1]
        "| mlp | 3 | **0.85 [0.21, 1.00]**† | 1.50 (n=1) |\n"
        "| qformer | 2 | 0.43 [0.11, 0.74] | 2.45 [1.81, 3.09] |\n"
        "\n"
        "- connector=mlp: run 5 failed\n"
        "- connector=qformer: 2 run(s), fewer than the 3 of other rows\n"
        "\n"
        "Mean over seeds [95% interval: t over seeds; t over seeds, clipped to the metric's range [0, 1]]; † = "
        "differs from linear (paired by seed and by question where both are known, "
        "Holm-corrected p < 0.05 across the table; every comparison in ablation_summary.md); n = runs per row (a "
        "cell's own n "
        "when fewer of them have the metric; such cells are never bold); best per column in bold; — = no value. "
        "Method: lmm.analysis.stats (docs/ablations.md).\n"
    )
    # Paired t-tests over the common seeds, Holm across the three: qformer's acc −0.125 ± 0.035 on
    # 2 seeds (raw p 0.126), its loss +0.55 ± 0.07 (raw p 0.058, ×2 = 0.12).
    assert summary(table, decimals=2).splitlines()[4:] == [
        "- mlp vs linear, acc: +0.30 [+0.30, +0.30], p < 0.001 (paired t-test over seeds), 2 seeds — shown",
        "- qformer vs linear, acc: −0.12 [−0.44, +0.19], p = 0.13 (paired t-test over seeds), 2 seeds — not shown; "
        "~3 seeds would be needed",
        "- qformer vs linear, loss: +0.55 [−0.09, +1.19], p = 0.12 (paired t-test over seeds), 2 seeds — not shown; "
        "~3 seeds would be needed",
        "- mlp vs linear, loss: no test (1 and 3 seeds with a value; each side needs 2 or more)",
    ]


def test_latex_csv_and_files(tmp_path):
    root = sweep(tmp_path)
    table = build_table(find_runs([str(root)]), metrics=["acc"])
    tex = latex(table, decimals=2)
    assert tex.startswith("\\begin{tabular}{lrr}\n\\toprule\nconnector & n & acc \\\\\n\\midrule\n")
    assert "mlp & 3 & \\textbf{0.85 [0.21, 1.00]}$^\\dagger$ \\\\" in tex and tex.endswith(
        "\\bottomrule\n\\end{tabular}\n"
    )
    rows = csv_text(table).splitlines()
    assert rows[0] == "connector,n,acc_mean,acc_std,acc_n,acc_low,acc_high"
    assert rows[1] == "linear,3,0.6,0.1,3,0.351586,0.848414"
    main([str(root), "--out", str(tmp_path / "out"), "--rename", "acc=Accuracy"])
    assert "| connector | n | Accuracy | loss |" in (tmp_path / "out" / "ablation.md").read_text()
    assert (tmp_path / "out" / "ablation_acc.png").stat().st_size > 1000
    assert (tmp_path / "out" / "ablation.csv").exists() and (tmp_path / "out" / "ablation.tex").exists()


TABLE2 = CONF / "experiment" / "llava15_table2"
# What each row changes relative to the row before it (LLaVA-1.5's Table 2).
ROW_DELTAS = {
    "r02_vqav2": {"data"},
    "r03_format_prompt": {"data"},
    "r04_mlp": {"connector"},
    "r05_okvqa_ocr": {"data"},
    "r06_region": {"data"},
    "r07_res336": {"vision"},
    "r08_gqa": {"data"},
    "r09_sharegpt": {"data"},
    "r10_vicuna13b": {"llm"},
}


def test_table2_rows_are_cumulative_deltas():
    rows = sorted(p.stem for p in TABLE2.glob("*.yaml"))
    assert rows == ["r01_llava", *ROW_DELTAS]
    configs = {row: OmegaConf.to_container(compose_config([f"experiment=llava15_table2/{row}"])) for row in rows}
    first = configs["r01_llava"]
    assert (
        first["connector"]["_target_"],
        first["llm"]["model"]["pretrained"],
        first["vision"]["arch"]["image_size"],
    ) == ("lmm.model.connectors.LinearConnector", "lmsys/vicuna-7b-v1.5", 224)
    assert first["data"]["strip_format_prompts"] is True and set(first["eval"]["benchmarks"]) >= {"vqav2", "gqa", "mme"}
    for previous, row in itertools.pairwise(rows):
        changed = {k for k in configs[row] if configs[row][k] != configs[previous][k]}
        assert changed == ROW_DELTAS[row] | {"name"}, row
    last = configs["r10_vicuna13b"]
    assert last["llm"]["model"]["pretrained"] == "lmsys/vicuna-13b-v1.5" and last["vision"]["arch"]["image_size"] == 336
    assert all(source["weight"] == 1.0 for source in last["data"]["sources"].values())


MINI_TABLE2 = CONF / "experiment" / "table2"
SHIPPED = CONF.parent / "pretrained"
# make table2 (the miniature on the pretrained tiny parts): what each row changes.
MINI_ROW_DELTAS = {
    "r2_format_prompt": {"data"},
    "r3_mlp": {"connector"},
    "r4_region": {"data"},
    "r5_res128": {"vision"},
    "r6_larger_llm": {"llm"},
}


def test_miniature_table2_rows_are_cumulative_deltas():
    rows = sorted(p.stem for p in MINI_TABLE2.glob("*.yaml"))
    assert rows == ["r1_llava", *MINI_ROW_DELTAS]
    configs = {row: OmegaConf.to_container(compose_config([f"experiment=table2/{row}"]), resolve=True) for row in rows}
    first = configs["r1_llava"]
    assert first["data"]["strip_format_prompts"] is True and first["data"]["train_split"] == "train_no_region"
    assert (first["vision"]["pretrained"], first["llm"]["model"]["pretrained"]) == (
        str(SHIPPED / "tiny" / "vision"),
        str(SHIPPED / "tiny" / "llm"),
    )
    assert first["eval"]["benchmarks"]["synthetic"]["root"] == first["data"]["root"] == "data/synthetic_table2"
    for previous, row in itertools.pairwise(rows):
        changed = {k for k in configs[row] if configs[row][k] != configs[previous][k]}
        assert changed == MINI_ROW_DELTAS[row] | {"name"}, row
    last = configs["r6_larger_llm"]
    assert (last["vision"]["arch"]["image_size"], last["llm"]["model"]["pretrained"]) == (
        128,
        str(SHIPPED / "tiny" / "llm_x2"),
    )
    assert last["data"]["strip_format_prompts"] is False and last["data"]["train_split"] == "train"


@pytest.mark.parametrize("layout,sweep_name", [("llava15_table2", "llava15_table2"), ("table2", "table2")])
def test_table2_sweep_and_spec_name_every_row(layout, sweep_name):
    spec = RecipeSpec.load(CONF / "experiment" / layout / "table.yml")
    rows = [f"{layout}/{p.stem}" for p in sorted((CONF / "experiment" / layout).glob("*.yaml"))]
    assert [experiment for _, experiment in spec.rows] == rows
    sweep = yaml.safe_load((CONF / "sweep" / f"{sweep_name}.yaml").read_text())
    value = sweep["hydra"]["sweeper"]["params"]["experiment"]
    (override,) = OverridesParser.create().parse_overrides([f"experiment={value}"])  # as Hydra's sweeper reads it
    assert sorted(override.sweep_string_iterator()) == rows  # every row once (the sweep may run them in any order)


def test_recipe_layout_exact(tmp_path):
    spec = tmp_path / "table.yml"
    spec.write_text(
        yaml.safe_dump(
            {
                "row_header": "Recipe",
                "rows": [
                    {"label": "LLaVA", "experiment": "t/r1"},
                    {"label": "+VQA-v2", "experiment": "t/r2"},
                    {"label": "+MLP", "experiment": "t/r3"},
                ],
                "columns": {"vqav2/accuracy": "VQAv2", "mme/perception": "MME"},
            },
            sort_keys=False,
        )
    )
    cost = {"trainable_parameters": 7.0e9, "tokens_seen": 2.5e9, "train_wall_s": 5400.0, "flops": 1.2e20}
    root = tmp_path / "runs"
    root.mkdir()
    for name, overrides, metrics in [
        ("a", ["experiment=t/r2", "seed=0"], {"vqav2/accuracy": 70.0, "mme/perception": 1300.0}),
        ("b", ["experiment=t/r2", "seed=1"], {"vqav2/accuracy": 72.0, "mme/perception": 1310.0}),
        ("c", ["experiment=t/r1"], {"vqav2/accuracy": 60.0, "mme/perception": 1200.0}),
        ("d", ["experiment=other"], {"vqav2/accuracy": 99.0}),
    ]:
        fake_sweep(root / name, [(overrides, metrics, "finished")])
        results = root / name / "0" / "results.json"
        results.write_text(json.dumps({"metrics": metrics, "cost": cost}))
    main([str(root), "--spec", str(spec), "--out", str(tmp_path / "out"), "--decimals", "1"])
    assert (tmp_path / "out" / "ablation.md").read_text() == (
        "| Recipe | n | VQAv2 | MME | trainable params | tokens | train time | FLOPs |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| LLaVA | 1 | 60.0 | 1200.0 | 7B | 2.5B | 90.0 min | 1.20e+20 |\n"
        "| +VQA-v2 | 2 | **71.0 [58.3, 83.7]** | **1305.0 [1241.5, 1368.5]** | 7B | 2.5B | 90.0 min | 1.20e+20 |\n"
        "| +MLP | 0 | — | — | — | — | — | — |\n"
        "\n"
        "- 1 run(s) not in the spec, left out: 0 (experiment=other)\n"
        "- Recipe=LLaVA: 1 run(s), fewer than the 2 of other rows\n"
        "- Recipe=+MLP: not run\n"
        "\n"
        "Mean over seeds [95% interval: t over seeds]; † = differs from the row above (paired by seed and by "
        "question where both are known, "
        "Holm-corrected p < 0.05 across the table; every comparison in ablation_summary.md); n = runs per row (a "
        "cell's own n "
        "when fewer of them have the metric; such cells are never bold); best per column in bold; — = no value. "
        "Method: lmm.analysis.stats (docs/ablations.md).\n"
    )
    assert (
        "- +VQA-v2 vs LLaVA, VQAv2: no test (2 and 1 seeds with a value"
        in (tmp_path / "out" / "ablation_summary.md").read_text()
    )
    assert "+MLP & 0 & -- & -- & -- & -- & -- & -- \\\\" in (tmp_path / "out" / "ablation.tex").read_text()


def test_row_order_and_labels(tmp_path):
    table = build_table(find_runs([str(sweep(tmp_path))]), metrics=["acc"], order=["qformer", "linear"])
    assert [row for (row,) in table.rows] == ["qformer", "linear", "mlp"]
    text = markdown(table, decimals=2, labels={"qformer": "Q-Former (32 queries)"})
    assert text.splitlines()[2] == "| Q-Former (32 queries) | 2 | 0.43 [0.11, 0.74] |"


def test_status_files_decide_and_eval_directories_are_not_rows(tmp_path):
    """A run's status.json (written last by the run) says finished or failed, even when run.log
    shows nothing; task=eval / task=export directories are not runs of the sweep."""
    root = fake_sweep(
        tmp_path / "sweep",
        [
            (["connector=linear", "seed=0"], {"acc": 0.5}, "finished"),
            (["connector=mlp", "seed=0"], {"acc": 0.8}, "finished"),
            (["task=eval", "ckpt=x"], {"acc": 0.9}, "finished"),
        ],
    )
    runs = find_runs([str(root)])
    assert len(runs) == 2 and all("task" not in r.overrides for r in runs)
    mlp = next(r for r in runs if r.overrides["connector"] == "mlp")
    (mlp.path / "status.json").write_text(json.dumps({"status": "failed", "task": "train", "error": "AgreedStop: ..."}))
    statuses = {r.overrides["connector"]: r.status for r in find_runs([str(root)])}
    assert statuses == {"linear": "finished", "mlp": "failed"}  # results.json alone no longer means finished
    linear = next(r for r in runs if r.overrides["connector"] == "linear")
    (linear.path / "results.json").write_text('{"metrics": {"acc": 0.')  # torn mid-write
    statuses = {r.overrides["connector"]: r.status for r in find_runs([str(root)])}
    assert statuses == {"linear": "incomplete", "mlp": "failed"}


def test_runs_with_predictions_are_resampled_by_question(tmp_path):
    """Runs that saved per-question scores (predictions/<benchmark>.jsonl) get bootstrap intervals
    and question-paired comparisons; a torn line is left out, not fatal."""
    import random

    rng = random.Random(0)
    runs = []
    for connector, rate in (("linear", 0.4), ("mlp", 0.8)):
        for seed in range(3):
            scores = [float(rng.random() < rate) for _ in range(50)]
            runs.append(
                (
                    [f"connector={connector}", f"seed={seed}"],
                    {"synthetic/vqa/exact_match": sum(scores) / 50},
                    "finished",
                    scores,
                )
            )
    root = fake_sweep(tmp_path / "sweep", [r[:3] for r in runs])
    for i, (*_, scores) in enumerate(runs):
        lines = [
            json.dumps({"id": f"s{q // 2}", "turn": q % 2, "metric": "vqa/exact_match", "score": v})
            for q, v in enumerate(scores)
        ]
        (root / str(i) / "predictions").mkdir()
        (root / str(i) / "predictions" / "synthetic.jsonl").write_text("\n".join(lines) + "\n{torn")
    table = build_table(find_runs([str(root)]), baseline="linear")
    cell = table.cells[(("mlp",), "synthetic/vqa/exact_match")]
    assert (
        cell.interval.method == "bootstrap over seeds and questions"
        and cell.interval.low < cell.mean < cell.interval.high
    )
    (line,) = summary(table, decimals=2, names={"synthetic/vqa/exact_match": "VQA EM"}).splitlines()[4:]
    assert (
        line.startswith("- mlp vs linear, VQA EM: +0.")
        and "(bootstrap over seeds and questions), 3 seeds × 50 questions — shown" in line
    )
    assert "†" in markdown(table).splitlines()[3]


# make ablate-anyres, make ablate-multi-image: two rows each, the second changing one group.
PAST_LLAVA15 = {"high_res": ("anyres", {"vision"}), "two_image": ("multi_image", {"data"})}


@pytest.mark.parametrize("layout,sweep_name", [("high_res", "anyres"), ("two_image", "multi_image")])
def test_past_llava15_ablations_change_one_thing(layout, sweep_name):
    spec = RecipeSpec.load(CONF / "experiment" / layout / "table.yml")
    rows = [experiment for _, experiment in spec.rows]
    assert sorted(rows) == [f"{layout}/{p.stem}" for p in sorted((CONF / "experiment" / layout).glob("*.yaml"))]
    sweep = yaml.safe_load((CONF / "sweep" / f"{sweep_name}.yaml").read_text())
    (override,) = OverridesParser.create().parse_overrides(
        [f"experiment={sweep['hydra']['sweeper']['params']['experiment']}"]
    )
    assert sorted(override.sweep_string_iterator()) == sorted(rows)
    first, second = (OmegaConf.to_container(compose_config([f"experiment={row}"]), resolve=True) for row in rows)
    changed_row, groups = PAST_LLAVA15[layout]
    assert rows[1] == f"{layout}/{changed_row}" and {k for k in second if second[k] != first[k]} == groups | {"name"}
    assert first["eval"]["benchmarks"]["synthetic"]["root"] == first["data"]["root"]
    if layout == "high_res":
        assert (first["vision"]["image_aspect"], second["vision"]["image_aspect"]) == ("pad", "anyres")
    else:
        assert (first["data"]["train_split"], second["data"]["train_split"]) == ("train_single_image", "train")


def test_commands_that_never_trained_are_footnotes_and_never_the_baseline(tmp_path):
    root = fake_sweep(
        tmp_path / "sweep",
        [
            (["connector=conector", "seed=0"], {}, "not started"),  # a mistyped value: stopped before training
            (["connector=linear", "seed=0"], {"acc": 0.5}, "finished"),
            (["connector=linear", "seed=1"], {"acc": 0.6}, "finished"),
            (["connector=mlp", "seed=0"], {"acc": 0.8}, "finished"),
            (["connector=mlp", "seed=1"], {"acc": 0.9}, "finished"),
            (["connector=qformer", "seed=0"], {}, "failed"),  # trained, then failed: a row without values
        ],
    )
    table = build_table(find_runs([str(root)]))
    assert [row for row in table.rows] == [("linear",), ("mlp",), ("qformer",)]
    assert table.reference_text == "linear" and "not started: 0: ValueError: unknown key" in table.notes
    with pytest.raises(
        SystemExit,
        match="--baseline 'qformer': that row has no finished run; rows that could be the baseline: linear; mlp",
    ):
        build_table(find_runs([str(root)]), baseline="qformer")


def matched_sweep(tmp_path, flops_by_connector):
    """Two connectors × 2 seeds with a results.json cost (steps 100; FLOPs as given)."""
    runs = [
        ([f"connector={c}", f"seed={seed}"], {"acc": 0.5 + 0.1 * seed}, "finished")
        for c in flops_by_connector
        for seed in range(2)
    ]
    root = fake_sweep(tmp_path / "sweep", runs)
    for i, (overrides, metrics, _) in enumerate(runs):
        flops = flops_by_connector[overrides[0].split("=")[1]]
        cost = {"steps": 100, "flops": flops, "tokens_seen": 1000, "visual_tokens_per_image": 16.0}
        (root / str(i) / "results.json").write_text(json.dumps({"metrics": metrics, "cost": cost}))
    return root


def test_match_states_what_was_held_equal(tmp_path):
    root = matched_sweep(tmp_path, {"linear": 1.00e12, "mlp": 1.03e12})
    out = tmp_path / "out"
    table = main([str(root), "--match", "flops", "--out", str(out)])
    assert table.held_equal == "held equal (--match flops): training FLOPs, 1e+12–1.03e+12 (within 5%) in every run"
    assert "The comparison is held equal (--match flops)" in (out / "ablation.md").read_text()
    assert "The comparison is held equal (--match flops)" in (out / "ablation_summary.md").read_text()
    assert main([str(root), "--match", "steps", "--out", str(out)]).held_equal == (
        "held equal (--match steps): optimizer steps, 100 in every run"
    )
    assert "visual tokens per image, 16" in main([str(root), "--match", "visual-tokens", "--out", str(out)]).held_equal


def test_match_refuses_unmatched_rows_and_says_how_to_match_them(tmp_path):
    root = matched_sweep(tmp_path, {"linear": 1.0e12, "mlp": 2.0e12})
    with pytest.raises(SystemExit) as stop:
        main([str(root), "--match", "flops", "--out", str(tmp_path / "out")])
    message = str(stop.value)
    assert message.startswith("--match flops: the rows did not train with equal training FLOPs")
    assert "connector=linear" not in message and "  mlp: 2e+12, 2e+12" in message
    assert "    linear: trainer.max_steps=100" in message and "    mlp: trainer.max_steps=50" in message
    assert not (tmp_path / "out").exists()  # refused before writing anything
    (root / "0" / "results.json").write_text(json.dumps({"metrics": {"acc": 0.5}, "cost": {}}))
    with pytest.raises(SystemExit, match=r"has no 'flops' in its results.json cost"):
        main([str(root), "--match", "flops"])
    (root / "0" / "results.json").write_text(json.dumps({"metrics": {"acc": 0.5}, "cost": {"flops": "lots"}}))
    table = build_table(find_runs([str(root)]))  # a damaged cost: footnoted, never summed
    assert "connector=linear: run 0 incomplete" in table.notes


def test_rows_of_one_factor_average_over_the_others_and_pair_by_them(tmp_path):
    """--rows connector over a connector × vision sweep: each row averages both visions; a run pairs
    with the run of the same vision and seed (so a constant per-vision gap cancels exactly)."""
    runs = []
    for connector, gain in (("linear", 0.0), ("mlp", 0.05)):
        for vision, level in (("v64", 0.3), ("v128", 0.6)):
            for seed in range(3):
                value = level + gain + 0.01 * seed
                runs.append(
                    ([f"connector={connector}", f"vision={vision}", f"seed={seed}"], {"acc": value}, "finished")
                )
    table = build_table(find_runs([str(fake_sweep(tmp_path / "sweep", runs))]), rows=["connector"])
    assert table.rows == [("linear",), ("mlp",)]
    assert table.cells[(("mlp",), "acc")].n == 6
    assert table.cells[(("mlp",), "acc")].mean == pytest.approx(0.51)  # (0.35 + 0.65) / 2 + the seeds' 0.01
    comparison = table.comparisons[(("mlp",), "acc")]
    assert comparison.difference == pytest.approx(0.05) and comparison.seeds == 6
    assert comparison.low == pytest.approx(0.05) and comparison.high == pytest.approx(0.05)  # paired: no spread
    assert any(note.startswith("each row averages over vision") for note in table.notes)
    assert "6 pairs of runs — shown" in summary(table)
