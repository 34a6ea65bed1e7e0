"""The training stream mixes sources by weight, groups by modality, and resumes without replay."""

import itertools
import random
from collections import Counter

import pytest
from torch.utils.data import DataLoader

from lmm.data.catalog import Catalog
from lmm.data.collate import Collator
from lmm.data.image import ImageTransform
from lmm.data.mixture import Source, TrainingStream, World, approximate_length, plan_steps
from lmm.data.sample import SampleProcessor
from lmm.data.shards import list_shards


def processor(tokenizer):
    return SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=512
    )


def stream(
    data_root, tokenizer, sources, resume=0, batch_size=4, world=World(), plan="index", make_processor=processor
):
    shards = {name: list_shards(data_root / "synthetic" / name) for name, _ in sources}
    mixture = [Source(name, shards[name], weight) for name, weight in sources]
    process = make_processor(tokenizer)
    tokens = process.tokens_of_sizes if callable(process.image_tokens) else process.image_tokens
    catalog = Catalog(mixture, tokens, process.image_transform.exif) if plan == "index" else None
    return TrainingStream(
        mixture,
        process,
        Collator(tokenizer.pad_token_id),
        batch_size,
        seed=7,
        shuffle_buffer=20,
        group_size=2,
        resume_batches=resume,
        world=world,
        catalog=catalog,
    )


def keys(batches):
    return [[m["key"] for m in b.meta] for b in batches]


def take(loader, n):
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == n:
            return out


def test_weights_set_the_mixture(data_root, tokenizer):
    mixed = take(stream(data_root, tokenizer, [("train", 3.0), ("pretrain", 1.0)]), 40)
    sources = Counter(m["source"] for b in mixed for m in b.meta)
    caption_share = sources["caption"] / sum(sources.values())
    assert 0.15 < caption_share < 0.35  # expected 1/4


@pytest.mark.parametrize("plan", ["index", "raw"])
def test_resume_skips_exactly_the_consumed_batches(data_root, tokenizer, plan):
    sources = [("train", 1.0)]
    for workers in (0, 2):
        full = keys(
            take(DataLoader(stream(data_root, tokenizer, sources, plan=plan), batch_size=None, num_workers=workers), 7)
        )
        resumed = keys(
            take(
                DataLoader(
                    stream(data_root, tokenizer, sources, resume=3, plan=plan), batch_size=None, num_workers=workers
                ),
                4,
            )
        )
        assert resumed == full[3:], workers
    one_worker = keys(take(stream(data_root, tokenizer, sources, plan=plan), 7))
    assert one_worker == full  # the plan does not depend on the number of workers


def anyres_like(tokenizer):
    """Image tokens that depend on each image's size (as AnyRes's do): the plan reads the sizes."""
    return SampleProcessor(
        tokenizer,
        "vicuna_v1",
        ImageTransform(16, (0.5,) * 3, (0.5,) * 3),
        image_tokens=lambda h, w: h * w // 97,
        max_length=512,
    )


@pytest.mark.parametrize("make_processor", [processor, anyres_like])
def test_plans_from_the_index_are_the_plans_from_the_bytes(data_root, tokenizer, make_processor):
    """Same samples in the same micro-batches, on every rank and accumulation slot, from a
    mixture of two sources, whether the plan reads the shard indexes or the tar bytes."""
    sources = [("train", 3.0), ("pretrain", 1.0)]
    for world in (World(0, 1, 1), World(1, 2, 2)):
        plans = {}
        for plan in ("index", "raw"):
            s = stream(data_root, tokenizer, sources, world=world, plan=plan, make_processor=make_processor)
            s.epoch = 1
            batches = itertools.islice(s.micro_batches(), 30)
            plans[plan] = [[s.read(x)["__key__"] for x in batch] for batch in batches]
        assert plans["index"] == plans["raw"] and len(plans["raw"]) == 30, world


def test_a_resumed_stream_reads_only_what_it_trains(data_root, tokenizer):
    """Resuming at micro-batch 40 plans the 40 from the index and reads not one of their bytes:
    the bytes read are exactly the spans of the samples the resumed stream trains on."""
    resumed = stream(data_root, tokenizer, [("train", 1.0)], resume=40)
    batches = take(resumed, 2)
    catalog = resumed.catalog
    assert catalog.bytes_read > 0
    trained = [meta_location(catalog, meta["key"]) for batch in batches for meta in batch.meta]
    assert len(trained) == 8
    assert catalog.bytes_read == sum(int(catalog.span_bytes[position]) for _, position in trained)


def meta_location(catalog, key):
    """(shard url, catalog position) of the sample with this key (from the index's keys)."""
    from lmm.data.index import read_arrays

    for url in catalog.urls:
        keys = read_arrays(url, ("key",))["key"].tolist()
        if key in keys:
            return url, catalog.rows[url].start + keys.index(key)
    raise KeyError(key)


def test_same_seed_same_stream(data_root, tokenizer):
    a = keys(take(stream(data_root, tokenizer, [("train", 1.0)]), 5))
    b = keys(take(stream(data_root, tokenizer, [("train", 1.0)]), 5))
    assert a == b


def fake_samples(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"__key__": str(i), "json": b"x" * rng.randint(10, 800), **({"png": b""} if rng.random() > 0.2 else {})}
        for i in range(n)
    ]


def test_global_steps_one_modality_balanced_ranks():
    world = World(rank=0, size=4, accumulation=2)
    steps = list(
        plan_steps(
            iter(fake_samples(2000)),
            per_device=4,
            world=world,
            group_size=3,
            rng=random.Random(0),
            length=lambda s: approximate_length(s, 64),
        )
    )
    assert steps and all(len(step) == 2 and all(len(slot) == 4 for slot in step) for step in steps)
    length = lambda s: approximate_length(s, 64)  # noqa: E731
    for step in steps:
        samples = [s for slot in step for share in slot for s in share]
        assert len(samples) == 32 and len({("png" in s) for s in samples}) == 1  # all-image or all-text, on every rank
        for slot in step:
            assert all(len(share) == 4 for share in slot)
            tokens = [sum(map(length, share)) for share in slot]
            assert max(tokens) / (sum(tokens) / len(tokens)) < 1.1  # lengths balanced across ranks
    keys_seen = [s["__key__"] for step in steps for slot in step for share in slot for s in share]
    assert len(keys_seen) == len(set(keys_seen))  # every sample once


def test_ranks_take_disjoint_shares_of_one_plan(data_root, tokenizer):
    sources = [("train", 3.0), ("pretrain", 1.0)]
    ranks = [keys(take(stream(data_root, tokenizer, sources, world=World(r, 2, 1)), 6)) for r in (0, 1)]
    for a, b in zip(*ranks, strict=True):
        assert not set(a) & set(b) and len(a) == len(b) == 4
    # One rank with 2 accumulation slots trains the same micro-batches, in the same steps.
    single = keys(take(stream(data_root, tokenizer, sources, world=World(0, 1, 2)), 12))
    assert [k for pair in zip(*ranks, strict=True) for k in pair] == single
    # So a run checkpointed on 1 rank (2 slots) resumes on 2 ranks exactly where it was: after 3 steps.
    resumed = [keys(take(stream(data_root, tokenizer, sources, resume=3, world=World(r, 2, 1)), 1))[0] for r in (0, 1)]
    assert resumed == single[6:8]


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
    sample = {
        "__key__": "k",
        "json": b'{"conversations": [{"from": "human", '
        b'"value": "Q?\\nAnswer the question using a single word or phrase."}, {"from": "gpt", "value": "A"}]}',
    }
    trained = tokenizer.decode(module.processor(sample).input_ids)
    assert "Answer the question" not in trained and "Answer the question" in tokenizer.decode(
        evaluation(sample).input_ids
    )


def test_validation_batches_are_as_many_on_every_rank(data_root, tokenizer):
    """Every validation forward is a collective under FSDP: each rank gets the same number of
    batches (a rank left one short gets an empty one), and together they cover the split once."""
    from lmm.data.datamodule import ValidationBatches

    shards = list_shards(data_root / "synthetic" / "val")  # 24 samples: 5 batches of 5 (the last of 4)
    for workers in (0, 2):
        per_rank = []
        for rank in (0, 1):
            stream = ValidationBatches(
                shards, processor(tokenizer), Collator(tokenizer.pad_token_id), 5, World(rank, 2, 1)
            )
            per_rank.append(list(DataLoader(stream, batch_size=None, num_workers=workers)))
        assert len(per_rank[0]) == len(per_rank[1]) == 3, workers
        assert [len(b.meta) for b in per_rank[1]][-1] == 0  # rank 1's third batch is the empty one
        seen = [m["key"] for batches in per_rank for b in batches for m in b.meta]
        assert len(seen) == len(set(seen)) == 24


def test_unreadable_shards_are_counted_in_the_next_step():
    """A shard that breaks off yields an error marker; it must reach a batch (and be counted as a
    skip) at once, not wait in a modality pool that may never fill."""
    from lmm.data.shards import ERROR_KEY

    samples = fake_samples(600)
    for i in (5, 250, 251):
        samples.insert(i, {"__key__": f"bad{i}", ERROR_KEY: "shard: ReadError"})
    steps = list(
        plan_steps(
            iter(samples),
            per_device=4,
            world=World(0, 2, 1),
            group_size=2,
            rng=random.Random(0),
            length=lambda s: approximate_length(s, 64),
        )
    )
    markers = [s["__key__"] for step in steps for slot in step for share in slot for s in share if ERROR_KEY in s]
    assert markers == ["bad5", "bad250", "bad251"]
    assert [s["__key__"] for s in steps[0][0][0][4:]] == ["bad5"]  # carried by rank 0, after its own samples
