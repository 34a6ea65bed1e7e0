"""Blind controls (eval.blind=true): the same prompts with every image blanked to the tower's mean
colour; "needs vision" = score − blind score per benchmark, per question type and per question."""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from lmm.analysis.ablate import build_table, find_runs, markdown
from lmm.analysis.stats import metric_range
from lmm.build.factory import build_run
from lmm.eval.blind import blank_images
from lmm.eval.evaluate import evaluate
from tests.conftest import compose_config
from tests.test_ablate import fake_sweep


@pytest.fixture(scope="module")
def blind_eval(data_root, tmp_path_factory):
    """A tiny model scored on 8 test images with eval.blind=true, recording what the LLM and the
    tower were given on each pass."""
    cfg = compose_config(["eval.blind=true", "eval.benchmarks.synthetic.limit=8"], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    model.eval()
    calls = {"prompts": [], "pixels": []}
    embed = model.embed

    def recording_embed(input_ids, pixels, *args, **kwargs):
        if pixels is not None:  # the prompt (with its images); decoding steps come without pixels
            calls["prompts"].append(input_ids.clone())
        return embed(input_ids, pixels, *args, **kwargs)

    model.embed = recording_embed
    model.vision.register_forward_hook(lambda module, args, out: calls["pixels"].append(args[0].clone()))
    run_dir = tmp_path_factory.mktemp("blind")
    results = evaluate(cfg, model, processor, run_dir)
    return results, calls, run_dir, processor


def test_the_blind_pass_asks_the_same_prompts_and_blanks_only_the_pixels(blind_eval):
    _, calls, _, _ = blind_eval
    prompts, pixels = calls["prompts"], calls["pixels"]
    half = len(prompts) // 2  # generation batches: the seen pass, then the blind pass
    assert half > 0 and len(prompts) == 2 * half
    for seen, blind in zip(prompts[:half], prompts[half:], strict=True):
        assert torch.equal(seen, blind)
    seen_pixels, blind_pixels = pixels[: len(pixels) // 2], pixels[len(pixels) // 2 :]
    assert all(p.abs().sum() > 0 for p in seen_pixels)
    assert all(p.eq(0).all() for p in blind_pixels)
    assert [p.shape for p in seen_pixels] == [p.shape for p in blind_pixels]


def test_zero_pixels_are_the_towers_mean_colour_image(blind_eval):
    *_, processor = blind_eval
    transform = processor.image_transform
    colour = tuple(round(255 * m) for m in transform.mean)
    pixels = transform(Image.new("RGB", (50, 30), colour))
    assert pixels.abs().max() < 1 / (255 * min(transform.std))  # rounding to 8 bits only


def test_results_report_blind_scores_and_what_needs_vision(blind_eval):
    results, _, run_dir, _ = blind_eval
    bench = results["benchmarks"]["synthetic"]
    metrics = results["metrics"]
    assert results["harness"] == {"name": "lmm", "version": "0.1.0", "template": "vicuna_v1"}
    assert bench["decoding"] == {"strategy": "greedy", "max_new_tokens": 24}
    for key, value in bench["metrics"].items():
        blind = metrics[f"synthetic.blind/{key}"]
        assert blind == bench["blind"]["metrics"][key]
        if "loss" in key:
            assert f"synthetic.needs_vision/{key}" not in metrics
        else:
            assert metrics[f"synthetic.needs_vision/{key}"] == pytest.approx(value - blind, abs=1e-4)
    per_type = bench["blind"]["needs_vision_per_question_type"]
    assert per_type and set(per_type) == set(bench["per_question_type"])
    for qtype, gain in per_type.items():
        assert gain == pytest.approx(bench["per_question_type"][qtype] - bench["blind"]["per_question_type"][qtype])
        # flat, for lmm ablate's intervals
        assert metrics[f"synthetic.needs_vision/qtype/{qtype}"] == gain
        assert metrics[f"synthetic/qtype/{qtype}"] == bench["per_question_type"][qtype]
        assert metrics[f"synthetic.blind/qtype/{qtype}"] == bench["blind"]["per_question_type"][qtype]
    seen = [json.loads(line) for line in (run_dir / "predictions" / "synthetic.jsonl").read_text().splitlines()]
    blind = [json.loads(line) for line in (run_dir / "predictions" / "synthetic.blind.jsonl").read_text().splitlines()]
    assert [(r["id"], r["turn"]) for r in seen] == [(r["id"], r["turn"]) for r in blind]
    assert [r["blind_score"] for r in seen] == [r["score"] for r in blind]
    assert [r["blind_answer"] for r in seen] == [r["prediction"] for r in blind]
    # the question-level differences average to the reported gain
    key = "vqa/exact_match"
    gains = [s["score"] - s["blind_score"] for s in seen if s["metric"] == key]
    assert metrics[f"synthetic.needs_vision/{key}"] == pytest.approx(np.mean(gains), abs=1e-4)


def test_blank_images_is_undone_on_exit(blind_eval):
    model = build_run(compose_config([]))[0]
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.vision(pixels)
        with blank_images(model):
            blanked = model.vision(pixels)
        after = model.vision(pixels)
        zeros = model.vision(torch.zeros_like(pixels))
    assert torch.equal(before, after) and torch.equal(blanked, zeros) and not torch.equal(before, blanked)


def test_needs_vision_cells_pair_each_question_with_its_blind_answer(tmp_path):
    """A needs-vision column: per question seen − blind, resampled by question (lmm.analysis.stats);
    its interval may go below zero (a metric's range on both sides)."""
    rng = random.Random(0)
    runs, files = [], []
    for connector, (seen_rate, blind_rate) in (("linear", (0.6, 0.5)), ("mlp", (0.9, 0.3))):
        for seed in range(3):
            seen = [float(rng.random() < seen_rate) for _ in range(60)]
            blind = [float(rng.random() < blind_rate) for _ in range(60)]
            metrics = {
                "synthetic/vqa/exact_match": np.mean(seen),
                "synthetic.blind/vqa/exact_match": np.mean(blind),
                "synthetic.needs_vision/vqa/exact_match": np.mean(seen) - np.mean(blind),
                "synthetic.needs_vision/qtype/vqa/colour": np.mean(seen[::2]) - np.mean(blind[::2]),
            }
            runs.append(([f"connector={connector}", f"seed={seed}"], metrics, "finished"))
            files.append((seen, blind))
    root = fake_sweep(tmp_path / "sweep", runs)
    for i, (seen, blind) in enumerate(files):
        (root / str(i) / "predictions").mkdir()
        for name, scores in (("synthetic", seen), ("synthetic.blind", blind)):
            lines = [
                json.dumps(
                    {
                        "id": f"s{q}",
                        "turn": 0,
                        "source": "vqa",
                        "qtype": "colour" if q % 2 == 0 else "count",
                        "metric": "vqa/exact_match",
                        "score": v,
                    }
                )
                for q, v in enumerate(scores)
            ]
            (root / str(i) / "predictions" / f"{name}.jsonl").write_text("\n".join(lines))
    run = find_runs([str(root)])[0]
    paired = run.question_scores("synthetic.needs_vision/vqa/exact_match")
    assert paired == {f"s{q}#0": s - b for q, (s, b) in enumerate(zip(*files[0], strict=True))}
    table = build_table(find_runs([str(root)]), baseline="linear")
    for row in (("linear",), ("mlp",)):
        cell = table.cells[(row, "synthetic.needs_vision/vqa/exact_match")]
        assert cell.interval.method == "bootstrap over seeds and questions"
        assert cell.interval.low < cell.mean < cell.interval.high
    assert table.comparisons[(("mlp",), "synthetic.needs_vision/vqa/exact_match")].p < 0.05
    assert "synthetic.needs_vision/vqa/exact_match" in markdown(table).splitlines()[0]
    by_type = run.question_scores("synthetic.needs_vision/qtype/vqa/colour")
    assert by_type == {f"s{q}#0": s - b for q, (s, b) in enumerate(zip(*files[0], strict=True)) if q % 2 == 0}
    assert "synthetic.needs_vision/qtype/vqa/colour" not in table.metrics  # only when asked for
    typed = build_table(find_runs([str(root)]), metrics=["synthetic.needs_vision/qtype/vqa/colour"], baseline="linear")
    cell = typed.cells[(("mlp",), "synthetic.needs_vision/qtype/vqa/colour")]
    assert cell.interval.method == "bootstrap over seeds and questions"
    assert metric_range("synthetic.needs_vision/vqa/exact_match", [0.2, -0.1]) == (-1.0, 1.0)
    assert metric_range("synthetic/vqa/exact_match", [0.2]) == (0.0, 1.0)
