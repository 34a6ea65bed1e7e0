"""Batched greedy generation gives the same answers as one question at a time (fp32)."""

import json

import torch
from hydra.utils import instantiate

from lmm.build.factory import build_run


def test_answers_do_not_depend_on_batch_size(make_config, tmp_path):
    cfg = make_config("llm=small", "eval.benchmarks.synthetic.limit=12", "eval.benchmarks.synthetic.max_new_tokens=8")
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    predictions = {}
    for batch_size in (1, 8):
        benchmark = instantiate(cfg.eval.benchmarks.synthetic, batch_size=batch_size)
        benchmark.run(model, processor, out_dir=tmp_path / str(batch_size))
        lines = (tmp_path / str(batch_size) / "synthetic.jsonl").read_text().splitlines()
        predictions[batch_size] = [json.loads(line)["prediction"] for line in lines]
    assert len(predictions[1]) > 12  # several questions per image
    assert predictions[1] == predictions[8]
