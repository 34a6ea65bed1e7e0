"""Every broken sample is skipped and counted by kind; unusual-but-valid ones are used correctly;
a shard cut mid-file costs only its own samples."""

import pytest
import webdataset as wds

from lmm.data.collate import Collator
from lmm.data.image import ImageTransform
from lmm.data.sample import Example, SampleProcessor, Skip
from lmm.data.shards import expand_shards
from tests.data.broken_samples import catalogue


@pytest.fixture(scope="module")
def process(tokenizer):
    return SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=300
    )


@pytest.mark.parametrize("name", sorted(catalogue()))
def test_catalogue(process, name):
    sample, expected_kind = catalogue()[name]
    result = process(sample)
    if expected_kind is None:
        assert isinstance(result, Example), getattr(result, "reason", None)
        assert result.pixels.shape == (1, 3, 16, 16)
    else:
        assert isinstance(result, Skip) and result.kind == expected_kind, getattr(result, "reason", result)


def test_too_long_conversation_loses_whole_trailing_turns(process, tokenizer):
    sample, _ = catalogue()["too_long_multi_turn"]
    example = process(sample)
    assert example.meta["truncated_turns"] == 2
    assert example.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 4  # image span intact
    assert tokenizer.decode([t for t in example.labels if t >= 0]) == " red</s>"


def test_collate_counts_every_kind(process):
    items = [process(sample) for sample, _ in catalogue().values()]
    batch = Collator(0)(items)
    expected = {}
    for _, kind in catalogue().values():
        if kind:
            expected[kind] = expected.get(kind, 0) + 1
    assert batch.skipped == expected and batch.seen == len(items)
    assert batch.input_ids.shape[0] == len(items) - sum(expected.values())
    assert batch.truncated == 1


def test_shard_cut_mid_file(tmp_path, process):
    good = tmp_path / "good.tar"
    with wds.TarWriter(str(good)) as writer:
        for name in ("grayscale", "rgba", "palette"):
            writer.write(catalogue()[name][0])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:1500])
    samples = list(expand_shards([{"url": str(cut)}, {"url": str(good)}]))
    results = [process(s) for s in samples]
    kinds = [r.kind if isinstance(r, Skip) else "ok" for r in results]
    assert kinds[-3:] == ["ok", "ok", "ok"]  # the next shard is read in full
    assert "shard" in kinds  # the cut one is reported, not silently dropped
