"""lmm probe-words: a linear probe of rendered words on a frozen tower's features measures what the
features hold (true labels far above chance, shuffled labels at chance)."""

import json

import torch

from lmm.analysis.probe import features, linear_probe, main, vision_config, word_images
from lmm.build.model import build_tower


def test_the_probe_reads_words_the_features_hold_and_not_shuffled_labels():
    tower = build_tower(vision_config("tiny")).eval()
    train, test = features(tower, word_images("ocr", 200, 1)), features(tower, word_images("ocr", 100, 2))
    assert train[0].shape == (200, 64 * 128)
    assert linear_probe(train, test, seed=0) > 0.5  # centred 22 px words: linearly readable at 64 px
    shuffled = (train[0], train[1][torch.randperm(200, generator=torch.Generator().manual_seed(0))])
    assert linear_probe(shuffled, test, seed=0) < 0.15  # chance is 1/33


def test_the_command_writes_one_row_per_tower_and_source(tmp_path, capsys):
    out = tmp_path / "probe.json"
    rows = main(["--vision", "tiny", "--sources", "ocr_small", "--train", "40", "--test", "20", "--out", str(out)])
    assert json.loads(out.read_text()) == rows
    assert [(r["vision"], r["image_size"], r["source"], r["chance"]) for r in rows] == [
        ("tiny", 64, "ocr_small", round(1 / 33, 4))
    ]
    assert 0 <= rows[0]["accuracy"] <= 1 and "tiny" in capsys.readouterr().out
