"""The converter sorts the official files into the paper's sources, rejects broken entries with
reasons, is deterministic and resumable, and its output trains."""

import hashlib
import json

import pytest

from lmm.data.convert import convert
from lmm.data.miniature import build_mix665k, build_pretrain558k
from lmm.data.sources import classify, strip_format_prompts


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    json_path, images, expected, broken = build_mix665k(root)
    manifest = convert(json_path, images, root / "shards", workers=2, shard_size=2, progress=False)
    return root, json_path, images, expected, broken, manifest


def test_counts_per_source(mix):
    root, _, _, expected, _, manifest = mix
    assert manifest["counts"] == dict(sorted(expected.items()))
    for source, count in expected.items():
        shards = manifest["shards"][source]
        assert len(shards) >= -(-count // 2)  # shard_size=2 (rejected entries also took places)
        assert all((root / "shards" / source / s).exists() for s in shards)
    assert "vqav2_okvqa" in manifest["merged_sources"]


def test_rejected_report(mix):
    root, _, _, _, broken, manifest = mix
    rejected = {
        r["id"]: r["reason"] for r in map(json.loads, (root / "shards" / "rejected.jsonl").read_text().splitlines())
    }
    assert set(rejected) == set(broken)
    for key, reason in broken.items():
        assert rejected[key].startswith(reason), (key, rejected[key])
    assert sum(manifest["rejected"].values()) == len(broken)


def test_original_bytes_and_sources_in_samples(mix):
    import webdataset as wds

    root, _, images, _, _, _ = mix
    samples = list(wds.WebDataset(str(root / "shards" / "gqa" / "shard-000000.tar"), shardshuffle=False))
    record = json.loads(samples[0]["json"])
    assert record["source"] == "gqa"
    assert samples[0]["jpg"] == (images / record["image"]).read_bytes()  # not re-encoded


def digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.tar"))
    }


def test_deterministic_and_resumable(mix, tmp_path, capsys):
    root, json_path, images, _, _, manifest = mix
    convert(json_path, images, tmp_path / "again", workers=1, shard_size=2, progress=False)
    assert digest(tmp_path / "again") == digest(root / "shards")
    (tmp_path / "again" / "gqa" / "shard-000001.tar").unlink()
    capsys.readouterr()
    resumed = convert(json_path, images, tmp_path / "again", workers=1, shard_size=2, progress=False)
    total = sum(len(s) for s in manifest["shards"].values())
    assert f"-> {total} shards ({total - 1} already done)" in capsys.readouterr().out
    assert resumed["counts"] == manifest["counts"] and digest(tmp_path / "again") == digest(root / "shards")


def test_exact_token_counts_at_conversion(mix, tmp_path, data_root):
    """--tokenizer/--template: every index records exact text tokens under them; a re-run with
    other ones rewrites the indexes, not the shards; indexes are byte-identical run to run."""
    from lmm.data.index import exact_key, read_arrays

    root, json_path, images, *_ = mix
    tokenizer = str(data_root / "synthetic" / "tokenizer")
    out = tmp_path / "exact"
    convert(json_path, images, out, workers=1, shard_size=2, progress=False, exact=(tokenizer, "vicuna_v1"))
    indexes = sorted(out.glob("*/*.idx.npz"))
    assert indexes and all(
        str(read_arrays(str(p).removesuffix(".idx.npz"), ("exact_for",))["exact_for"])
        == exact_key(tokenizer, "vicuna_v1")
        for p in indexes
    )
    shards_before = digest(out)
    convert(json_path, images, out, workers=1, shard_size=2, progress=False, exact=(tokenizer, "plain"))
    assert digest(out) == shards_before
    assert str(read_arrays(str(indexes[0]).removesuffix(".idx.npz"), ("exact_for",))["exact_for"]) == exact_key(
        tokenizer, "plain"
    )
    again = tmp_path / "again"
    convert(json_path, images, again, workers=1, shard_size=2, progress=False, exact=(tokenizer, "plain"))
    assert [p.read_bytes() for p in indexes] == [(again / p.relative_to(out)).read_bytes() for p in indexes]


def test_pretrain_set(tmp_path):
    json_path, images = build_pretrain558k(tmp_path)
    manifest = convert(json_path, images, tmp_path / "shards", workers=1, progress=False)
    assert manifest["counts"] == {"llava_pretrain": 6}


def test_malformed_json_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": 1,')
    with pytest.raises(SystemExit, match="is not valid JSON"):
        convert(bad, tmp_path, tmp_path / "out", progress=False)


def test_classify_and_strip():
    entry = {
        "image": "coco/train2017/1.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nQ?\nAnswer the question using a single word or phrase."}
        ],
    }
    assert classify(entry) == "vqav2_okvqa"
    assert strip_format_prompts(entry["conversations"])[0]["value"] == "<image>\nQ?"
    with pytest.raises(ValueError, match="no known"):
        classify({"image": "elsewhere/1.jpg", "conversations": []})
