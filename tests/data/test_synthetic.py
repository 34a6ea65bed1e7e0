"""The synthetic mixture is deterministic, LLaVA-formatted and self-consistent."""

import hashlib
import io
import json
import random
from collections import Counter
from dataclasses import replace

import webdataset as wds
from PIL import Image

from lmm.data.synthetic import (
    GROUNDING_PROMPT,
    PRESETS,
    REGION_CAPTION_PROMPT,
    SHORT_ANSWER,
    SMALL_TEXT_SIZE,
    SMALL_WORD_SIZE,
    WORD_SIZE,
    GenerationConfig,
    format_box,
    generate,
    make_sample,
    normalised_box,
    render,
)
from tests.conftest import SMALL

TINY = GenerationConfig(seed=3, pretrain=10, train=30, val=5, test=5, shard_size=20)


def digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.tar"))
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate(tmp_path / "a", TINY, train_tokenizer=False)
    generate(tmp_path / "b", TINY, train_tokenizer=False)
    generate(tmp_path / "c", GenerationConfig(**{**TINY.__dict__, "seed": 4}), train_tokenizer=False)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b and len(a) == 5  # pretrain, train (2 shards), val, test
    assert a != c


def test_runs_side_by_side_wait_for_the_one_generating(tmp_path):
    """A sweep's runs started together on a fresh checkout: the one holding the lock generates,
    the others wait, then find the mixture made and leave its shards alone."""
    import fcntl
    import threading

    out = tmp_path / "mix"
    out.mkdir()
    with open(out / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first run, generating
        waiting: dict = {}
        other = threading.Thread(target=lambda: waiting.update(manifest=generate(out, TINY, train_tokenizer=False)))
        other.start()
        other.join(timeout=1.0)
        assert other.is_alive() and not (out / "manifest.json").exists()  # it waits; nothing was written
        made = generate(tmp_path / "reference", TINY, train_tokenizer=False)
        for path in (tmp_path / "reference").rglob("*"):  # the first run's mixture, complete
            if path.is_file():
                (out / path.relative_to(tmp_path / "reference")).parent.mkdir(parents=True, exist_ok=True)
                (out / path.relative_to(tmp_path / "reference")).write_bytes(path.read_bytes())
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")}
    other.join(timeout=60)
    assert not other.is_alive() and waiting["manifest"] == made
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.tar")} == before  # read, not rewritten
    assert digest(out) == digest(tmp_path / "reference")


def samples(root, split):
    return list(
        wds.WebDataset(sorted(str(p) for p in (root / split).glob("*.tar")), shardshuffle=False).decode(only=["json"])
    )


def test_counts_match_manifest(data_root):
    root = data_root / "synthetic"
    manifest = json.loads((root / "manifest.json").read_text())
    for split in ("pretrain", "train", "val", "test"):
        got = samples(root, split)
        assert len(got) == getattr(SMALL, split) == sum(manifest["counts"][split].values())
    assert set(manifest["counts"]["train"]) == {"vqa", "ocr", "region", "description"}
    assert manifest["counts"]["pretrain"] == {"caption": SMALL.pretrain}
    assert (root / "tokenizer" / "tokenizer.json").exists()


def test_conversations_follow_llava_formats(data_root):
    for sample in samples(data_root / "synthetic", "train"):
        record = sample["json"]
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n")
        assert sum("<image>" in t["value"] for t in turns) == 1
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert len(record["qtypes"]) == len(turns) // 2
        image = Image.open(io.BytesIO(sample["png"]))
        for k, qtype in enumerate(record["qtypes"]):
            question, answer = turns[2 * k]["value"], turns[2 * k + 1]["value"]
            if record["source"] in ("vqa", "ocr"):
                assert question.endswith("\n" + SHORT_ANSWER)
                assert len(answer.split()) == 1
            if qtype == "grounding":
                assert GROUNDING_PROMPT in question
                box = json.loads(answer)
                assert len(box) == 4 and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
                assert answer == format_box(box)
            if qtype == "region_caption":
                assert REGION_CAPTION_PROMPT in question and question.endswith("]")
        if record["source"] == "vqa":
            assert 2 <= len(record["qtypes"]) <= 4 or image.size  # several turns when the scene allows
    vqa_turns = [
        len(s["json"]["qtypes"]) for s in samples(data_root / "synthetic", "train") if s["json"]["source"] == "vqa"
    ]
    assert max(vqa_turns) > 1


def test_boxes_are_normalised_to_the_padded_square():
    # A 96x72 image is padded to 96x96 with 12px bands above and below.
    assert normalised_box((0, 0, 96, 72), 96, 72) == [0.0, 0.12, 1.0, 0.88]
    assert normalised_box((24, 0, 48, 24), 72, 96) == [0.38, 0.0, 0.62, 0.25]
    assert format_box([0.1, 0.25, 0.5, 1.0]) == "[0.10, 0.25, 0.50, 1.00]"


def test_baselines_from_train(data_root):
    baselines = json.loads((data_root / "synthetic" / "manifest.json").read_text())["baselines"]
    assert {"colour", "shape", "count", "word"} <= set(baselines["majority_answer"])
    x1, y1, x2, y2 = baselines["centred_box"]
    assert abs((x1 + x2) / 2 - 0.5) < 0.01 and abs((y1 + y2) / 2 - 0.5) < 0.01 and x2 > x1


def test_default_mixture_bytes_are_those_of_generator_version_3(tmp_path):
    # The table2 options (weights, extra splits, small words) must not move a byte of the default.
    generate(tmp_path, TINY, train_tokenizer=False)
    assert {k: v[:12] for k, v in digest(tmp_path).items()} == {
        "pretrain/shard-000000.tar": "1cfed564a781",
        "test/shard-000000.tar": "30c5933fc5fa",
        "train/shard-000000.tar": "72b73f02fa35",
        "train/shard-000001.tar": "b7fda1563c36",
        "val/shard-000000.tar": "df8419b21b4c",
    }


def test_table2_preset_splits_and_sources(tmp_path):
    config = replace(PRESETS["table2"], train=120, val=10, test=40, shard_size=1000)
    manifest = generate(tmp_path, config, train_tokenizer=False)
    counts = manifest["counts"]
    assert set(counts) == {"pretrain", "train", "val", "test", "train_no_region"} and counts["pretrain"] == {}
    assert set(counts["train"]) == {"vqa", "conversation", "ocr", "ocr_small", "region", "description"}
    assert "region" not in counts["train_no_region"] and sum(counts["train_no_region"].values()) == 120
    assert "conversation" not in counts["test"] and "ocr_small" in counts["test"]
    by_source = {}
    for sample in samples(tmp_path, "train"):
        by_source.setdefault(sample["json"]["source"], sample["json"])
    talk = by_source["conversation"]
    assert all(SHORT_ANSWER not in t["value"] for t in talk["conversations"])  # no format prompt: long answers
    assert (
        talk["conversations"][1]["value"].startswith("The answer is ")
        and "The image shows" in talk["conversations"][1]["value"]
    )
    assert all(q.startswith("long_") for q in talk["qtypes"])
    assert by_source["ocr_small"]["qtypes"][0] == "word"


def test_small_words_are_half_size():
    heights = {}
    for source in ("ocr", "ocr_small"):
        scene, _ = make_sample(random.Random(5), source, 0, "free")
        ink = Image.eval(render(scene).convert("L"), lambda v: 255 if v < 250 else 0).getbbox()
        heights[source] = (scene.word_size, ink[3] - ink[1])
    assert heights["ocr"][0] == WORD_SIZE and heights["ocr_small"][0] == SMALL_WORD_SIZE
    assert heights["ocr_small"][1] < 0.6 * heights["ocr"][1]


def test_two_image_questions_need_both_images_and_are_answered_right():
    from lmm.data.synthetic import make_two_image_sample

    rng, kinds = random.Random(0), Counter()
    for i in range(400):
        (first, second), record = make_two_image_sample(rng, i, "free")
        (turn, reply) = record["conversations"]
        assert turn["value"].startswith("Image 1: <image>\nImage 2: <image>\n") and turn["value"].count("<image>") == 2
        qtype, answer = record["qtypes"][0], reply["value"]
        kinds[(qtype, answer)] += 1
        if qtype == "more_colour":
            colour = turn["value"].split("more ")[1].split(" objects")[0]
            counts = [sum(o.colour == colour for o in s.objects) for s in (first, second)]
            assert counts[0] != counts[1] and answer == ("first" if counts[0] > counts[1] else "second")
        elif qtype == "colour_of":
            which = first if "the first image" in turn["value"] else second
            other = second if which is first else first
            assert answer == which.objects[0].colour != other.objects[0].colour
            kinds[("colour_of_asks", "first" if which is first else "second")] += 1
        else:
            assert len(first.objects) == 1
            assert answer == ("yes" if any(o.shape == first.objects[0].shape for o in second.objects) else "no")
    for qtype, answers in (
        ("more_colour", ("first", "second")),
        ("shape_in_both", ("yes", "no")),
        ("colour_of_asks", ("first", "second")),
    ):
        total = sum(kinds[(qtype, a)] for a in answers)
        assert 100 <= total <= 170 and all(0.35 * total <= kinds[(qtype, a)] <= 0.65 * total for a in answers), kinds


def test_two_image_records_are_written_with_numbered_images(tmp_path):
    config = replace(TINY, weights={"vqa": 1.0, "two_image": 1.0})
    generate(tmp_path, config, train_tokenizer=False)
    raw = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "train").glob("*.tar")), shardshuffle=False))
    two = [s for s in raw if b'"two_image"' in s["json"]]
    assert two and all(sorted(k for k in s if k.endswith("png")) == ["0.png", "1.png"] for s in two)
    assert all("png" in s and "0.png" not in s for s in raw if s not in two)


def test_anyres_preset_has_small_digits_in_train_and_test(tmp_path):
    config = replace(PRESETS["anyres"], train=80, val=10, test=40, shard_size=1000)
    counts = generate(tmp_path, config, train_tokenizer=False)["counts"]
    assert "small_text" in counts["train"] and "small_text" in counts["test"] and counts["pretrain"] == {}
    scene, record = make_sample(random.Random(2), "small_text", 0)
    assert record["qtypes"] == ["digit"] and record["conversations"][1]["value"] == scene.word and scene.word.isdigit()
    ink = Image.eval(render(scene).convert("L"), lambda v: 255 if v < 250 else 0).getbbox()
    assert scene.word_size == SMALL_TEXT_SIZE and ink[3] - ink[1] <= 14  # at most 14 px of ink on the 48-96 px canvas
