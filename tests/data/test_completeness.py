"""Shards are checked against the manifest (names, sizes, samples): a missing or cut shard is an
error for evaluation and a counted, named skip of all its samples for training."""

import random
import shutil

import pytest
from hydra.utils import instantiate

from lmm.data.shards import expand_shards, list_complete_shards, read_manifest
from lmm.data.synthetic import GenerationConfig, generate
from lmm.eval.benchmarks import SyntheticBenchmark
from tests.conftest import compose_config

MANY_SHARDS = GenerationConfig(seed=1, pretrain=0, train=60, val=10, test=48, shard_size=10)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("many_shards")
    generate(root / "synthetic", MANY_SHARDS)
    return root / "synthetic"


@pytest.fixture
def root(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "synthetic")
    return tmp_path / "synthetic"


def test_the_manifest_records_each_shard(root):
    manifest = read_manifest(root)
    for split, counts in manifest["counts"].items():
        records = manifest["shard_info"][split]
        assert sorted(records) == manifest["shards"][split]
        assert sum(r["samples"] for r in records.values()) == sum(counts.values())
        assert all(r["bytes"] == (root / split / name).stat().st_size for name, r in records.items())
    assert len(manifest["shards"]["test"]) == 5


def test_evaluation_refuses_an_incomplete_split(root):
    (root / "test" / "shard-000001.tar").unlink()
    (root / "test" / "shard-000003.tar").unlink()
    message = (
        r"test is incomplete: shard-000001.tar is missing; shard-000003.tar is missing \(2 of 5 shards, 20 samples\)"
    )
    with pytest.raises(FileNotFoundError, match=message):
        SyntheticBenchmark(str(root)).check()
    with pytest.raises(FileNotFoundError, match=message):
        list_complete_shards(root / "test")


def test_evaluation_refuses_a_cut_shard(root):
    shard = root / "test" / "shard-000002.tar"
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[: size // 2])
    with pytest.raises(FileNotFoundError, match=rf"shard-000002.tar has {size // 2} bytes, the manifest says {size}"):
        SyntheticBenchmark(str(root)).check()


def test_training_counts_every_sample_of_a_lost_shard(root, capsys):
    from lmm.data.mixture import TrainingStream

    lost = root / "train" / "shard-000004.tar"
    lost.unlink()
    data = instantiate(compose_config([f"paths.data={root.parent}"]).data, seed=0)
    sources = data.mixture()
    assert (
        "1 of 6 shards missing or not their recorded size (shard-000004.tar); their samples count as skipped"
        in capsys.readouterr().out
    )
    stream = TrainingStream(sources, processor=None, collator=None, batch_size=4, seed=0)
    raw = [next(samples) for samples in [stream.raw_samples(random.Random(0))] for _ in range(600)]
    markers = [s for s in raw if "__error__" in s]
    assert markers and all("shard: shard-000004.tar is missing" in s["__error__"] for s in markers)
    (source,) = sources
    one_draw = list(expand_shards([{"url": str(lost), **source.expected[str(lost)]}]))
    assert (
        len(one_draw) == 10 == source.expected[str(lost)]["samples"]
    )  # a draw of the lost shard: each of its samples a skip


@pytest.mark.slow
def test_training_with_most_shards_lost_stops_at_the_skip_rate(root, tmp_path):
    from lmm.train.train import train

    for name in ("shard-000000.tar", "shard-000001.tar", "shard-000002.tar", "shard-000003.tar", "shard-000004.tar"):
        (root / "train" / name).unlink()
    cfg = compose_config(
        [
            "vision=tiny",
            "llm=tiny",
            "trainer.max_steps=40",
            "eval_after_train=false",
            "data.batch_size=4",
            "trainer.limit_val_batches=0",
            "data.num_workers=0",
            "trainer.enable_progress_bar=false",
            "data.skip_check_after=40",
        ],
        root.parent,
        tmp_path / "run",
    )
    with pytest.raises(Exception, match=r"data.max_skip_rate.*'shard'"):
        train(cfg)
