"""The training stream mixes sources by weight, groups by modality, and resumes without replay."""

import random
from collections import Counter

import pytest

from torch.utils.data import DataLoader

from lmm.data.collate import Collator
from lmm.data.image import ImageTransform
from lmm.data.mixture import Source, TrainingStream, batches_before, plan_batches
from lmm.data.sample import SampleProcessor
from lmm.data.shards import list_shards


def processor(tokenizer):
    return SampleProcessor(tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=512)


def stream(data_root, tokenizer, sources, resume=0, batch_size=4):
    shards = {name: list_shards(data_root / "synthetic" / name) for name, _ in sources}
    mixture = [Source(name, shards[name], weight) for name, weight in sources]
    return TrainingStream(mixture, processor(tokenizer), Collator(tokenizer.pad_token_id), batch_size, seed=7,
                          shuffle_buffer=20, group_size=2, resume_batches=resume)


def keys(batches):
    return [[m["key"] for m in b["meta"]] for b in batches]


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out


def test_weights_set_the_mixture(data_root, tokenizer):
    mixed = take(stream(data_root, tokenizer, [("train", 3.0), ("pretrain", 1.0)]), 40)
    sources = Counter(m["source"] for b in mixed for m in b["meta"])
    caption_share = sources["caption"] / sum(sources.values())
    assert 0.15 < caption_share < 0.35  # expected 1/4


def test_resume_skips_exactly_the_consumed_batches(data_root, tokenizer):
    sources = [("train", 1.0)]
    for workers in (0, 2):
        full = keys(take(DataLoader(stream(data_root, tokenizer, sources), batch_size=None, num_workers=workers), 7))
        resumed = keys(take(DataLoader(stream(data_root, tokenizer, sources, resume=3), batch_size=None, num_workers=workers), 4))
        assert resumed == full[3:], workers
    assert [batches_before(5, w, 2) for w in (0, 1)] == [3, 2]


def test_same_seed_same_stream(data_root, tokenizer):
    a = keys(take(stream(data_root, tokenizer, [("train", 1.0)]), 5))
    b = keys(take(stream(data_root, tokenizer, [("train", 1.0)]), 5))
    assert a == b


def test_modality_grouping():
    samples = [{"__key__": str(i), "json": b"x" * (i * 10), **({"png": b""} if i % 3 else {})} for i in range(60)]
    batches = list(plan_batches(iter(samples), batch_size=4, group_size=3, rng=random.Random(0), image_tokens=64))
    for batch in batches:
        assert len({("png" in s) for s in batch}) == 1  # never mixes text-only and image samples
    text = [b for b in batches if "png" not in b[0]]
    pool = sorted((s for b in text[:3] for s in b), key=lambda s: len(s["json"]))  # one pool of 12
    assert sorted(len(s["json"]) for s in text[0]) in [[len(s["json"]) for s in pool[i : i + 4]] for i in (0, 4, 8)]


def test_refuses_pipe_urls(tmp_path):
    with pytest.raises(ValueError, match="pipe: runs a shell command"):
        list_shards("pipe:curl -s http://example.com/shard-{000..009}.tar")
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(tmp_path)


def test_format_prompt_stripping_stays_in_training(tokenizer, data_root):
    from lmm.data.datamodule import LMMDataModule

    evaluation = processor(tokenizer)
    module = LMMDataModule(str(data_root / "synthetic"), strip_format_prompts=True)
    module.attach(evaluation, tokenizer.pad_token_id)
    assert module.processor.strip_format_prompts and not evaluation.strip_format_prompts
    sample = {"__key__": "k", "json": b'{"conversations": [{"from": "human", "value": "Q?\\nAnswer the question using a single word or phrase."}, {"from": "gpt", "value": "A"}]}'}
    trained = tokenizer.decode(module.processor(sample).input_ids)
    assert "Answer the question" not in trained and "Answer the question" in tokenizer.decode(evaluation(sample).input_ids)
