"""Shard indexes: they describe the tars byte for byte, plans read nothing else, a worker reads
only its samples (locally by seek, remotely by HTTP Range), and what is damaged is counted."""

import itertools
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest

from lmm.data.catalog import Catalog, MissingIndex
from lmm.data.index import build_index, main, parse_sample, read_arrays, read_span
from lmm.data.mixture import Source
from lmm.data.sample import SampleProcessor, Skip
from lmm.data.shards import ERROR_KEY, INDEX_SUFFIX, expand_shards, list_shards, read_manifest
from tests.http_server import RangeHandler, serve

DETAIL = (
    "key",
    "source",
    "span_start",
    "text_tokens",
    "image_count",
    "image_height",
    "image_width",
    "member_start",
    "member_name",
    "member_offset",
    "member_size",
)


def shards_of(root: Path) -> list[str]:
    return [s for folder in sorted(p for p in root.iterdir() if p.is_dir()) for s in list_shards(folder)]


def test_the_index_of_a_converted_miniature_is_its_tars_byte_for_byte(multi_image_root):
    """Every shard of the converted mix665k and multi-image miniatures (text-only, multi-turn,
    one- and several-image samples): each sample's key, source and members (name, data offset,
    size) are the tar's, its span re-reads to webdataset's own sample, the estimate is JSON/4."""
    import io

    from PIL import Image

    root = multi_image_root / "shards"
    checked = 0
    for shard in shards_of(root / "llava_mix665k") + shards_of(root / "multi_image_mix"):
        a = read_arrays(shard, DETAIL)
        with tarfile.open(shard) as tar:
            members = [(m.name, m.offset_data, m.size) for m in tar.getmembers() if m.isreg()]
        indexed = [
            (f"{a['key'][i]}.{a['member_name'][j]}", int(a["member_offset"][j]), int(a["member_size"][j]))
            for i in range(len(a["key"]))
            for j in range(a["member_start"][i], a["member_start"][i + 1])
        ]
        assert indexed == members, shard
        for i, sample in enumerate(expand_shards([{"url": shard}])):
            start, end = int(a["span_start"][i]), int(a["span_start"][i + 1])
            assert parse_sample(read_span(shard, start, end - start), shard) == sample
            record = json.loads(sample["json"])
            assert a["source"][i] == record["source"] and a["text_tokens"][i] == len(sample["json"]) // 4
            images = [k for k in sample if k.endswith(("jpg", "png"))]
            first = int(a["image_count"][:i].sum())
            assert a["image_count"][i] == len(images)
            for k, j in zip(sorted(images), range(first, first + len(images)), strict=True):
                width, height = Image.open(io.BytesIO(sample[k])).size
                assert (a["image_height"][j], a["image_width"][j]) == (height, width)
            checked += 1
    counts = np.concatenate(
        [read_arrays(s, ("image_count",))["image_count"] for s in shards_of(root / "multi_image_mix")]
    )
    assert checked > 40 and {0, 1, 2} <= set(
        counts.tolist()
    )  # text-only, one-image and several-image samples were among them


def test_the_manifest_records_each_index(mix665k_root):
    manifest = read_manifest(mix665k_root / "shards" / "llava_mix665k")
    for folder, records in manifest["shard_info"].items():
        for name, record in records.items():
            index = mix665k_root / "shards" / "llava_mix665k" / folder / (name + INDEX_SUFFIX)
            assert record["index_bytes"] == index.stat().st_size


def copy_root(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def catalog_of(folder: Path, **tokens) -> Catalog:
    from lmm.data.shards import expected_shards

    expected = expected_shards(folder)
    urls = {str(folder / name): record for name, record in expected.items()}
    return Catalog([Source(folder.name, list(urls), 1.0, urls)], tokens.get("image_tokens", 4))


def test_the_index_command_indexes_what_lacks_one(data_root, tmp_path, capsys):
    from omegaconf import OmegaConf

    from lmm.data.shards import write_manifest
    from lmm.run.directory import data_manifest_sha256

    root = copy_root(data_root / "synthetic", tmp_path / "synthetic")
    fingerprint = lambda: data_manifest_sha256(OmegaConf.create({"data": {"root": str(root)}}))  # noqa: E731
    indexed = fingerprint()
    for index in root.glob(f"*/*{INDEX_SUFFIX}"):  # a root written before shards had indexes
        index.unlink()
    old = read_manifest(root)
    for records in old["shard_info"].values():
        for record in records.values():
            del record["index_bytes"]
    write_manifest(root, old)
    assert fingerprint() == indexed  # indexing a root is not a change of data (runs trained on it resume)
    with pytest.raises(MissingIndex, match=rf"lmm index {root}` .*data.plan=raw"):
        catalog_of(root / "train")
    main([str(root)])
    assert "shard(s) indexed" in capsys.readouterr().out
    assert fingerprint() == indexed
    catalog = catalog_of(root / "train")
    assert len(catalog) == sum(r["samples"] for r in read_manifest(root)["shard_info"]["train"].values())
    assert all("index_bytes" in r for r in read_manifest(root)["shard_info"]["train"].values())
    main([str(root)])  # nothing left to do
    assert "train: 0 shard(s) indexed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a directory"):
        main([str(tmp_path / "nowhere")])
    (root / "train" / "shard-999999.tar").write_bytes(b"not a tar")
    with pytest.raises(SystemExit, match=r"shard-999999.tar cannot be indexed: not a readable tar \(ReadError"):
        main([str(root)])


def test_a_gzip_shard_is_refused(tmp_path):
    import gzip

    shard = tmp_path / "x.tar"
    shard.write_bytes(gzip.compress(b"not a plain tar"))
    with pytest.raises(ValueError, match="gzip-compressed"):
        build_index(shard)


def test_damage_after_indexing_is_counted(data_root, tmp_path, tokenizer):
    """A member corrupted in place (same size) is read and skipped as an unreadable image; a shard
    cut after indexing gives one counted skip per sample its index holds; neither crashes."""
    from lmm.data.image import ImageTransform

    root = copy_root(data_root / "synthetic", tmp_path / "synthetic")
    shards = sorted((root / "train").glob("*.tar"))
    a = read_arrays(str(shards[0]), DETAIL)
    png = next(j for j, name in enumerate(a["member_name"]) if name == "png")
    with open(shards[0], "r+b") as f:  # overwrite the first image's bytes, keep the size
        f.seek(int(a["member_offset"][png]))
        f.write(b"\0" * int(a["member_size"][png]))
    shards[1].write_bytes(shards[1].read_bytes()[:2048])  # cut
    catalog = Catalog([Source("train", [str(s) for s in shards], 1.0)], 4)
    process = SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=512
    )
    first = [process(catalog.read(i)) for i in catalog.samples_of({"url": str(shards[0])})]
    assert [r.kind for r in first if isinstance(r, Skip)] == ["image"]
    cut = catalog.samples_of({"url": str(shards[1])})
    assert len(cut) == len(read_arrays(str(shards[1]), ("key",))["key"]) and all(ERROR_KEY in m for m in cut)
    assert "its index says" in cut[0][ERROR_KEY]


@pytest.fixture
def http_root(data_root):
    with serve(data_root / "synthetic") as url:
        yield url


def test_http_shards_plan_from_their_index_and_read_by_range(data_root, http_root):
    """The same catalog from http(s) shards as from the local files; samples are read with Range
    requests; a server that ignores Range gives counted skips, not whole-shard downloads."""
    names = sorted(p.name for p in (data_root / "synthetic" / "train").glob("*.tar"))
    local = Catalog([Source("train", [str(data_root / "synthetic" / "train" / n) for n in names], 1.0)], 4)
    remote = Catalog([Source("train", [f"{http_root}/train/{n}" for n in names], 1.0)], 4)
    assert remote.length == local.length and remote.has_image == local.has_image
    assert remote.index_bytes[0] > 0
    picks = random.Random(0).sample(range(len(local)), 5)
    for i in picks:
        got, want = remote.read(i), local.read(i)
        assert {k: v for k, v in got.items() if k != "__url__"} == {k: v for k, v in want.items() if k != "__url__"}
    assert remote.bytes_read == local.bytes_read == sum(int(local.span_bytes[i]) for i in picks)
    RangeHandler.honour_range = False
    try:
        refused = remote.read(picks[0])
    finally:
        RangeHandler.honour_range = True
    assert "must honour Range" in refused[ERROR_KEY]


def test_planned_lengths_follow_the_image_sizes(data_root):
    """With size-dependent image tokens (AnyRes) the catalog's lengths are the raw plan's."""
    from lmm.data.image import ImageTransform
    from lmm.data.mixture import approximate_length

    folder = data_root / "synthetic" / "train"
    catalog = catalog_of(folder, image_tokens=lambda sizes: sum(h * 3 + w for h, w in sizes))
    transform = ImageTransform(16, (0.5,) * 3, (0.5,) * 3)
    raw = list(expand_shards({"url": url} for url in catalog.urls))

    def planned(sample):
        from lmm.data.sample import image_keys

        return sum(h * 3 + w for h, w in (transform.size_of(sample[k]) for k in image_keys(sample)))

    assert catalog.length == [approximate_length(s, planned) for s in raw]
    assert np.array(catalog.has_image).all()  # the synthetic mixture: every sample has an image


def test_an_index_that_is_not_the_manifests_stops_before_any_work(data_root, tmp_path):
    root = copy_root(data_root / "synthetic", tmp_path / "synthetic")
    index = next((root / "train").glob(f"*{INDEX_SUFFIX}"))
    index.write_bytes(index.read_bytes() + b"\0")
    with pytest.raises(ValueError, match=r"the manifest says .*lmm index"):
        catalog_of(root / "train")
    index.write_bytes(b"not an npz")
    manifest = read_manifest(root)
    manifest["shard_info"]["train"][index.name.removesuffix(INDEX_SUFFIX)]["index_bytes"] = len(b"not an npz")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="cannot be read .*re-index"):
        catalog_of(root / "train")


def test_unknown_plan_is_refused(data_root):
    from lmm.data.datamodule import LMMDataModule

    with pytest.raises(ValueError, match=r"data.plan must be one of \('index', 'raw'\)"):
        LMMDataModule(str(data_root / "synthetic"), plan="fast")


def test_a_data_root_over_http_trains_and_validates_as_the_local_one(data_root, http_root, tokenizer):
    """data.root=http(s)://...: the manifest, indexes and shards are fetched; the training batches
    and the validation split are the local root's."""
    from lmm.data.datamodule import LMMDataModule
    from tests.data.test_mixture import processor

    batches = {}
    for root in (str(data_root / "synthetic"), http_root):
        module = LMMDataModule(root, train_split="train", val_split="val", batch_size=4, num_workers=0)
        module.attach(processor(tokenizer), tokenizer.pad_token_id)
        train = [b.meta for b in itertools.islice(module.train_dataloader(), 3)]
        val = [b.meta for b in module.val_dataloader()]
        batches[root] = ([[m["key"] for m in meta] for meta in train], [[m["key"] for m in meta] for meta in val])
    local, remote = batches.values()
    assert remote == local and len(local[1]) > 1


def test_exact_text_tokens_plan_runs_with_that_tokenizer_and_template(data_root, tmp_path, tokenizer, capsys):
    """Indexed with --tokenizer and --template, a run with both plans by each sample's exact length
    (its encoded ids, image placeholders included); a run with another template by the estimate."""
    from lmm.data.image import ImageTransform
    from lmm.data.index import exact_key
    from lmm.data.mixture import approximate_length

    root = copy_root(data_root / "synthetic", tmp_path / "synthetic")
    tokenizer_dir = data_root / "synthetic" / "tokenizer"
    with pytest.raises(SystemExit, match="go together"):
        main([str(root), "--tokenizer", str(tokenizer_dir)])
    main([str(root), "--tokenizer", str(tokenizer_dir), "--template", "vicuna_v1"])
    folder = root / "train"
    urls = [str(p) for p in sorted(folder.glob("*.tar"))]
    process = SampleProcessor(
        tokenizer, "vicuna_v1", ImageTransform(16, (0.5,) * 3, (0.5,) * 3), image_tokens=4, max_length=100_000
    )
    exact = Catalog([Source("train", urls, 1.0)], 4, exact_for=exact_key(tokenizer_dir, "vicuna_v1"))
    other = Catalog([Source("train", urls, 1.0)], 4, exact_for=exact_key(tokenizer_dir, "plain"))
    raw = list(expand_shards({"url": url} for url in urls))
    assert exact.exact_shards == len(urls) and other.exact_shards == 0
    assert exact.length == [len(process(sample).input_ids) for sample in raw]
    assert other.length == [approximate_length(sample, 4) for sample in raw] != exact.length
    from lmm.data.datamodule import LMMDataModule

    module = LMMDataModule(str(root), train_split="train")
    module.attach(
        process, tokenizer.pad_token_id
    )  # the run's tokenizer is the indexed one: its catalog plans by exact counts
    assert module.catalog(module.mixture()).length == exact.length


def test_a_missing_index_stops_training_before_any_work(data_root, tmp_path, make_config):
    from lmm.train.train import train

    root = copy_root(data_root / "synthetic", tmp_path / "synthetic")
    next((root / "train").glob(f"*{INDEX_SUFFIX}")).unlink()
    with pytest.raises(MissingIndex, match=rf"lmm index {root}`"):
        train(make_config(f"data.root={root}", "trainer.max_steps=2", "data.num_workers=0", run_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
