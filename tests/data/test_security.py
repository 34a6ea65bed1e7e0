"""No input runs a command or reads outside its root: pipe: URLs are refused after brace
expansion on every path that opens or writes shards; the converter stays under --images."""

import json

import pytest
from PIL import Image

from lmm.data.convert import convert
from lmm.data.datamodule import LMMDataModule
from lmm.data.miniature import build_mix665k
from lmm.data.shards import check_url, list_shards
from lmm.data.synthetic import GenerationConfig, generate


@pytest.fixture
def marker(tmp_path):
    """A file that exists only if a shell command ran."""
    return tmp_path / "pwned"


def test_pipe_inside_a_brace_pattern_is_refused(tmp_path, marker):
    (tmp_path / "a.tar").write_bytes(b"")
    with pytest.raises(ValueError, match="pipe: runs a shell command"):
        list_shards(f"{{pipe:touch {marker},{tmp_path}/a.tar}}")
    with pytest.raises(ValueError, match="pipe: runs a shell command"):
        list_shards(f"{{{tmp_path}/a.tar,pipe:touch {marker}}}")  # not the first URL either
    assert not marker.exists()
    assert list_shards(f"{{pipe:true,{tmp_path}/a.tar}}", allow_pipe=True)  # opt-in still works


def test_remote_urls_cannot_reach_the_shell():
    assert check_url("https://example.com/shards/shard-000001.tar")
    for url in (
        "https://example.com/x'$(touch /tmp/p)'.tar",
        "http://a/b;rm -rf ~",
        "ftp://example.com/a.tar",
        "file:///etc/x.tar",
    ):
        with pytest.raises(ValueError, match="refusing shard URL"):
            check_url(url)


def test_a_pipe_root_never_reaches_the_generator(tmp_path, marker, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = LMMDataModule(f"pipe:touch {marker}", generate_if_missing=True)
    with pytest.raises(ValueError, match="must be a local directory"):
        data.ensure_data()
    with pytest.raises(ValueError, match="must be a local directory"):
        generate(f"pipe:touch {marker}", GenerationConfig(train=4, val=1, test=1, pretrain=1), train_tokenizer=False)
    assert not marker.exists() and not list(tmp_path.iterdir())


def test_converter_output_is_a_local_directory(tmp_path, marker):
    json_path, images, _, _ = build_mix665k(tmp_path / "mini")
    with pytest.raises(ValueError, match="must be a local directory"):
        convert(json_path, images, f"pipe:touch {marker}", workers=1, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("verify", [True, False])
def test_converter_reads_nothing_outside_the_image_root(tmp_path, verify):
    json_path, images, _, _ = build_mix665k(tmp_path / "mini")
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (31, 17), (1, 2, 3)).save(secret, format="JPEG")  # a readable image outside the root
    (images / "gqa" / "link.jpg").symlink_to(secret)
    entries = json.loads(json_path.read_text())
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]
    hostile = {
        "climb": "gqa/../../secret.jpg",
        "absolute": str(secret),
        "symlink": "gqa/link.jpg",
        "climb-missing": "gqa/../../no_such_file.jpg",
    }
    entries += [{"id": key, "image": path, "conversations": turns} for key, path in hostile.items()]
    json_path.write_text(json.dumps(entries))
    out = tmp_path / "shards"
    convert(json_path, images, out, workers=1, shard_size=4, verify_images=verify, progress=False)
    rejected = {r["id"]: r["reason"] for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}
    assert set(hostile) <= set(rejected)
    reasons = {rejected[key] for key in ("climb", "symlink", "climb-missing")}
    assert len(reasons) == 1 and reasons.pop().startswith(
        "image: path leaves the image root"
    )  # exists or not: same words
    secret_bytes = secret.read_bytes()
    assert not any(secret_bytes in tar.read_bytes() for tar in out.rglob("*.tar"))
    # A dataset linked in from elsewhere is read when asked to.
    again = convert(
        json_path,
        images,
        tmp_path / "followed",
        workers=1,
        shard_size=4,
        verify_images=verify,
        progress=False,
        follow_symlinks=True,
    )
    followed = {r["id"] for r in map(json.loads, (tmp_path / "followed" / "rejected.jsonl").read_text().splitlines())}
    assert "symlink" not in followed and {"climb", "absolute", "climb-missing"} <= followed
    assert again["counts"]["gqa"] == 4


def test_malformed_entries_are_rejected_not_fatal(tmp_path):
    json_path, images, expected, _ = build_mix665k(tmp_path / "mini")
    entries = json.loads(json_path.read_text())
    turns = [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "x"}]
    entries += [
        {"id": "list-image", "image": ["a.jpg", 7], "conversations": turns},
        {"id": "list-mismatch", "image": ["m4/a.jpg", "m4/b.jpg"], "conversations": turns},
        {"id": "number-image", "image": 5, "conversations": turns},
        {"id": "string-turns", "image": "gqa/images/n0.jpg", "conversations": "hello"},
        {"id": "number-turn", "conversations": [1, 2]},
    ]
    json_path.write_text(json.dumps(entries))
    manifest = convert(json_path, images, tmp_path / "shards", workers=1, progress=False)
    assert {k: n for k, n in manifest["counts"].items() if n} == dict(sorted(expected.items()))
    rejected = {
        r["id"]: r["reason"] for r in map(json.loads, (tmp_path / "shards" / "rejected.jsonl").read_text().splitlines())
    }
    assert all(
        rejected[key].startswith("entry: ") for key in ("list-image", "number-image", "string-turns", "number-turn")
    )
    assert rejected["list-mismatch"].startswith(
        "conversation: 2 image(s) but 1 <image> tags"
    )  # a list is fine; its tags must match


def test_converter_input_errors_end_at_once(tmp_path):
    json_path, images, _, _ = build_mix665k(tmp_path / "mini")
    with pytest.raises(SystemExit, match="is not a directory"):
        convert(json_path, tmp_path / "no_such_root", tmp_path / "a", progress=False)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe[]")
    with pytest.raises(SystemExit, match="not UTF-8"):
        convert(binary, images, tmp_path / "b", progress=False)
    # Converting a changed JSON into a folder that holds another conversion's shards stops.
    convert(json_path, images, tmp_path / "c", workers=1, progress=False)
    entries = json.loads(json_path.read_text())
    json_path.write_text(json.dumps(entries[1:]))
    with pytest.raises(SystemExit, match="different JSON"):
        convert(json_path, images, tmp_path / "c", workers=1, progress=False)


def test_a_pipe_in_the_data_root_stops_the_run_before_any_work(data_root, tmp_path, marker):
    from lmm.train.train import preflight
    from tests.conftest import compose_config

    root = f"{{pipe:touch {marker}; echo ,{data_root}/synthetic}}"
    cfg = compose_config([f"data.root='{root}'", "data.generate_if_missing=false", "eval=none"], data_root)
    with pytest.raises(ValueError, match="refusing shard URL 'pipe:touch"):
        preflight(cfg)
    assert not marker.exists()
