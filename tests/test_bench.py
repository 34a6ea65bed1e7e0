"""The benchmarks run and report what they claim (their speed is measured by `make bench`, not here).
Each runs as its Makefile target's own command (`make bench-NAME ARGS=...`) at a tiny size."""

import json
import os
import shlex

import pytest
import torch

from tests.makefile import run_target


def bench(target: str, args: list[str]) -> dict:
    """`make TARGET ARGS=...`'s command, run in this process."""
    return run_target(target, ARGS=shlex.join(args))


def test_packing_benchmark_reports_waste_and_ratio(tmp_path):
    result = bench(
        "bench-packing",
        ["--samples", "48", "--repeats", "1", "--shapes", "narrow", "--out", str(tmp_path / "packing.json")],
    )
    assert json.loads((tmp_path / "packing.json").read_text()) == result
    assert result["padding_waste"]["packed"] == 0.0 and result["padding_waste"]["padded"] > 0.05
    narrow = result["shapes"]["narrow"]
    assert narrow["ratio"] == narrow["ratios_per_repeat"][0] > 0
    assert set(narrow["real_tokens_per_s"]) == {"padded", "packed"}


def test_straggler_benchmark_global_plan_balances_ranks(tmp_path):
    result = bench("bench-straggler", ["--steps", "200", "--out", str(tmp_path / "straggler.json")])
    factors = result["straggler_factor"]
    assert factors["global_plan"] <= 1.05 < factors["per_rank_plans"]
    assert result["mixed_modality_steps"]["global_plan"] == 0 < result["mixed_modality_steps"]["per_rank_plans"]


@pytest.fixture
def isolated_process_group():
    """The FSDP2 strategy starts a one-process group and sets MASTER_PORT & co. in this process;
    later tests that spawn their own groups must not inherit either."""
    environment = dict(os.environ)
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os.environ.clear()
    os.environ.update(environment)


@pytest.mark.slow
def test_mfu_benchmark_smoke_runs_all_four_variants_on_cpu(tmp_path, isolated_process_group):
    result = bench("bench-mfu", ["--smoke", "--steps", "6", "--batch-size", "2", "--out", str(tmp_path / "mfu.json")])
    variants = [(run["activation_checkpointing"], run["compile"]) for run in result["runs"]]
    assert variants == [(False, False), (True, False), (False, True), (True, True)]
    assert all(run["tokens_per_s"] > 0 and run["mfu"] is None for run in result["runs"])  # no GPU peak on CPU
    assert result["smoke"] and result["gpu"] is None


def test_data_benchmark_measures_both_loaders(tmp_path, data_root):
    result = bench(
        "bench-data",
        [
            "--images",
            "24",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--batches",
            "2",
            "--tokenizer",
            str(data_root / "synthetic" / "tokenizer"),
            "--out",
            str(tmp_path / "data.json"),
        ],
    )
    assert json.loads((tmp_path / "data.json").read_text()) == result
    assert result["lmm_samples_per_s"] > 0 and result["llava_map_style_samples_per_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["lmm_samples_per_s"] / result["llava_map_style_samples_per_s"], rel=0.01
    )
    assert result["index_plan_vs_raw_plan"] == pytest.approx(
        result["lmm_samples_per_s"] / result["lmm_raw_plan_samples_per_s"], rel=0.01
    )
    assert result["samples_timed"] == {
        "llava": 16,
        "lmm": 16,
        "lmm_raw_plan": 16,
    }  # 2 rounds × 2 batches × 4 on each side


def test_loss_benchmark_measures_both_losses(tmp_path):
    result = bench(
        "bench-loss",
        [
            "--tokens",
            "256",
            "--batch",
            "2",
            "--hidden",
            "64",
            "--vocab-override",
            "20000",
            "--vocabularies",
            "qwen2",
            "--repeats",
            "1",
            "--out",
            str(tmp_path / "loss.json"),
        ],
    )
    row = result["vocabularies"]["qwen2"]
    assert row["loss_difference"] < 1e-4  # the same loss
    assert row["step_peak_reduction"] > 1.5 and row["loss_part_reduction"] > 2  # no [B, T, V] logits
    assert row["step_peak_mib"]["plain"] > row["step_peak_mib"]["fused"] > 0


def test_data_scale_benchmark_counts_the_bytes_each_rank_reads(tmp_path):
    """At a tiny size: planning from indexes reads about what a rank trains on, the raw stream
    about ranks × workers times that; a resume reads less than a global step."""
    result = bench(
        "bench-data-scale",
        [
            "--samples",
            "1200",
            "--ranks",
            "4",
            "16",
            "--workers",
            "2",
            "--global-batch",
            "16",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "scale.json"),
        ],
    )
    assert json.loads((tmp_path / "scale.json").read_text()) == result
    for ranks, row in result["per_W"].items():
        assert 1.0 <= row["read_per_trained_index_samples_only"] <= row["read_per_trained_index"] < 1.3
        assert row["read_per_trained_raw"] > int(ranks)  # each of a rank's workers reads the whole world's samples
        assert row["planning_ms_per_step"] > 0 and row["straggler_factor"] >= 1.0
    assert [
        row["index_read_per_global_step"] < 1 < row["raw_read_per_global_step"]
        for row in result["resume"]["at"].values()
    ] == [True] * 3


def test_eval_benchmark_answers_every_question_on_both_sides(tmp_path, data_root):
    result = bench(
        "bench-eval",
        ["--questions", "4", "--batch-size", "4", "--data", str(data_root), "--out", str(tmp_path / "eval.json")],
    )
    assert result["questions"] > 0 and set(result["answers"].values()) == {result["questions"]}
    assert result["batch_1_answers_per_s"] > 0 and result["ratio"] > 0 and result["same_answers"]


@pytest.mark.slow
def test_train_step_benchmark_times_the_same_tokens_on_both_sides(tmp_path, data_root):
    from lmm.bench.train_step import WARMUP

    result = bench(
        "bench-train-step",
        [
            "--steps",
            str(WARMUP + 2),
            "--repeats",
            "1",
            "--data",
            str(data_root),
            "--out",
            str(tmp_path / "train_step.json"),
        ],
    )
    assert result["tokens_timed"]["lmm"] == result["tokens_timed"]["bare"] > 0
    assert result["lmm_tokens_per_s"] > 0 and result["bare_llava_tokens_per_s"] > 0 and result["ratio"] > 0


def test_no_ratio_is_printed_for_a_side_that_measured_nothing():
    from lmm.bench import NothingMeasured, checked_ratio

    assert checked_ratio(10.0, 5.0, {"ours": 3, "theirs": 3}) == 2.0
    with pytest.raises(NothingMeasured, match="batch 1 measured nothing"):
        checked_ratio(0.0, 5.0, {"batch 1": 0, "batch 32": 14})
