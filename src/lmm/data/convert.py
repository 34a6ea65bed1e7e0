"""Convert a LLaVA-format JSON + image folders into WebDataset shards, one folder per source.

    lmm convert --json llava_v1_5_mix665k.json --images /data/llava --out data/shards/llava_mix665k

Writes `OUT/<source>/shard-NNNNNN.tar` (original encoded image bytes unless `--resize` asks
otherwise; the entry's JSON plus its `source`), a sidecar `shard-NNNNNN.json` per shard (so a
re-run skips finished shards), `OUT/manifest.json` (counts per source, bytes, shard lists,
rejections by reason) and `OUT/rejected.jsonl` (every rejected entry with its reason).
Parallel over shards, deterministic (same input -> byte-identical shards), resumable.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from lmm.data.conversation import IMAGE_TOKEN
from lmm.data.image import ImageError, decode_image
from lmm.data.index import ExactLengths, exact_key, read_arrays, write_index
from lmm.data.shards import MANIFEST, index_path, local_directory, shard_records, write_manifest
from lmm.data.sources import SOURCES, classify, entry_images

EXTENSIONS = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp", ".gif": "gif", ".bmp": "bmp"}


class Rejected(Exception):
    """An entry that cannot be converted; its message is the reason."""


def check_conversation(entry: dict) -> None:
    """Roles alternate human/gpt starting with human, values are non-empty strings, and there is
    one `<image>` tag per image (none without images)."""
    turns = entry.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise Rejected("conversation: missing or fewer than two turns")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            raise Rejected(f"conversation: turn {i} should be from '{expected}'")
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise Rejected(f"conversation: turn {i} is empty")
    tags = sum(turn["value"].count(IMAGE_TOKEN) for turn in turns)
    images = len(entry_images(entry))
    if images and tags != images:
        raise Rejected(f"conversation: {images} image(s) but {tags} <image> tags (expected one per image)")
    if not images and tags:
        raise Rejected("conversation: <image> tag but no image")


def image_path(root: Path, relative: str, follow_symlinks: bool = False) -> Path:
    """The file an entry names, which must stay under the image root: no `..` or absolute path
    out of it, and no symlink to outside it unless `follow_symlinks` (datasets linked in from
    elsewhere). The refusal says nothing about the outside file (not even whether it exists)."""
    root = root.resolve()
    lexical = Path(os.path.normpath(root / relative))
    path = lexical if follow_symlinks else lexical.resolve()
    if not path.is_relative_to(root):
        raise Rejected(
            "image: path leaves the image root"
            + ("" if follow_symlinks else " (or is a symlink out of it; see --follow-symlinks)")
        )
    return path


def read_image(
    root: Path, relative: str, resize: int | None, verify: bool, follow_symlinks: bool = False
) -> tuple[str, bytes]:
    path = image_path(root, relative, follow_symlinks)
    extension = EXTENSIONS.get(path.suffix.lower())
    if extension is None:
        raise Rejected(f"image: unsupported file type {path.suffix!r}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Rejected(f"image: missing file {path}") from None
    except OSError as e:
        raise Rejected(f"image: unreadable file {path} ({e})") from None
    if not (verify or resize):
        return extension, data
    try:
        image = decode_image(data)
    except ImageError as e:
        raise Rejected(f"image: {e}") from None
    if resize and max(image.size) > resize:
        image.thumbnail((resize, resize))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return "jpg", buffer.getvalue()
    return extension, data


def index_outdated(shard: Path, exact: tuple[str, str] | None) -> bool:
    """Whether a shard's index is missing, or lacks the exact counts asked for."""
    if not Path(index_path(shard)).is_file():
        return True
    if exact is None:
        return False
    recorded = read_arrays(str(shard), (), optional=("exact_for",)).get("exact_for")
    return recorded is None or str(recorded) != exact_key(*exact)


def _write_shard(task: tuple) -> dict:
    """Worker: write one shard (tmp file, then rename) and its sidecar; return its stats."""
    shard_path, entries, images_root, resize, verify, follow_symlinks, exact = task
    shard_path = Path(shard_path)
    written, size, rejected = 0, 0, []
    tmp = shard_path.with_suffix(".tar.tmp")
    with open(tmp, "wb") as stream, wds.TarWriter(stream, mtime=0.0) as writer:  # a file, never a URL or pipe:
        for index, source, entry in entries:
            try:
                check_conversation(entry)
                sample = {"__key__": f"{source}-{index:09d}", "json": {**entry, "source": source}}
                paths = entry_images(entry)
                for i, path in enumerate(
                    paths
                ):  # one image: `jpg`, `png`, ...; several: `0.jpg`, `1.png`, ... (in tag order)
                    extension, data = read_image(images_root, path, resize, verify, follow_symlinks)
                    sample[extension if len(paths) == 1 else f"{i}.{extension}"] = data
                    size += len(data)
                writer.write(sample)
                written += 1
            except Rejected as reason:
                rejected.append({"index": index, "id": entry.get("id"), "source": source, "reason": str(reason)})
    tmp.rename(shard_path)
    write_index(shard_path, ExactLengths(*exact) if exact else None)
    stats = {"shard": shard_path.name, "samples": written, "image_bytes": size, "rejected": rejected}
    shard_path.with_suffix(".json").write_text(json.dumps(stats) + "\n")
    return stats


def malformed(entry) -> str | None:
    """Why an entry's fields have the wrong types (one entry must never abort a conversion), or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    image = entry.get("image")
    if (
        image is not None
        and not isinstance(image, str)
        and not (isinstance(image, list) and all(isinstance(p, str) for p in image))
    ):
        return f"'image' must be a path (a string) or a list of paths, got {type(image).__name__}"
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        return "'conversations' must be a list of turn objects"
    return None  # roles and values are checked (and rejected with reasons) by check_conversation


def input_fingerprint(json_path: Path, shard_size: int, resize: int | None, verify: bool) -> str:
    """What the shards depend on: the JSON's bytes and the options that change them."""
    digest = hashlib.sha256()
    with open(json_path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    digest.update(json.dumps([shard_size, resize, verify]).encode())
    return digest.hexdigest()


def claim_output(out: Path, fingerprint: str) -> None:
    """Refuse to mix shards of different inputs in one folder: a re-run resumes only the same conversion."""
    marker = out / "input.sha256"
    if marker.exists() and marker.read_text().strip() != fingerprint:
        raise SystemExit(
            f"{out} holds shards converted from a different JSON or with other options; "
            "convert into a new --out, or delete this one"
        )
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint + "\n")


def plan(entries: list, out: Path, shard_size: int) -> tuple[list[tuple[Path, list]], list[dict]]:
    """Assign valid-looking entries to (source, shard) in input order; reject the unclassifiable."""
    by_source: dict[str, list] = defaultdict(list)
    rejected = []
    for index, entry in enumerate(entries):
        problem = malformed(entry)
        if problem:
            rejected.append(
                {
                    "index": index,
                    "id": entry.get("id") if isinstance(entry, dict) else None,
                    "source": None,
                    "reason": f"entry: {problem}",
                }
            )
            continue
        try:
            by_source[classify(entry)].append((index, entry))
        except ValueError as e:
            rejected.append({"index": index, "id": entry.get("id"), "source": None, "reason": f"source: {e}"})
    shards = []
    for source in sorted(by_source):
        items = by_source[source]
        for n, start in enumerate(range(0, len(items), shard_size)):
            chunk = [(i, source, e) for i, e in items[start : start + shard_size]]
            shards.append((out / source / f"shard-{n:06d}.tar", chunk))
    return shards, rejected


def convert(
    json_path: str | Path,
    images: str | Path,
    out: str | Path,
    workers: int | None = None,
    shard_size: int = 1000,
    resize: int | None = None,
    verify_images: bool = True,
    progress: bool = True,
    follow_symlinks: bool = False,
    exact: tuple[str, str] | None = None,
) -> dict:
    """`exact`: (tokenizer directory, template): the indexes also record each sample's exact text
    tokens under them (lmm.data.index)."""
    out, images = local_directory(out, "--out").resolve(), Path(images)
    if not images.is_dir():
        raise SystemExit(
            f"--images {images} is not a directory (it should hold coco/, gqa/, ... or the pretraining folders)"
        )
    try:
        entries = json.loads(Path(json_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"{json_path} is not valid JSON: {e}") from None
    except UnicodeDecodeError as e:
        raise SystemExit(
            f"{json_path} is not UTF-8 text (byte {e.start}: {e.reason}); is it the LLaVA JSON file?"
        ) from None
    except OSError as e:
        raise SystemExit(f"cannot read {json_path}: {e.strerror}") from None
    if not isinstance(entries, list):
        raise SystemExit(f"{json_path} must hold a JSON list of LLaVA entries, got {type(entries).__name__}")
    claim_output(out, input_fingerprint(Path(json_path), shard_size, resize, verify_images))
    shards, rejected = plan(entries, out, shard_size)
    todo = [s for s in shards if not (s[0].exists() and s[0].with_suffix(".json").exists())]
    for path, _ in todo:
        path.parent.mkdir(parents=True, exist_ok=True)
    tasks = [(str(path), chunk, images, resize, verify_images, follow_symlinks, exact) for path, chunk in todo]
    print(f"[lmm] {len(entries)} entries -> {len(shards)} shards ({len(shards) - len(todo)} already done)")
    workers = workers or os.cpu_count() or 1
    if tasks:
        with Pool(min(workers, len(tasks))) as pool:
            for _ in tqdm(
                pool.imap_unordered(_write_shard, tasks), total=len(tasks), disable=not progress, desc="shards"
            ):
                pass
    counts: Counter = Counter()
    image_bytes: Counter = Counter()
    shard_lists: dict[str, list[str]] = defaultdict(list)
    shard_samples: dict[str, dict[str, int]] = defaultdict(dict)
    for path, _ in shards:  # every shard's sidecar, fresh or from an earlier run
        stats = json.loads(path.with_suffix(".json").read_text())
        if index_outdated(path, exact):  # converted before shards had indexes, or with other exact counts
            write_index(path, ExactLengths(*exact) if exact else None)
        source = path.parent.name
        counts[source] += stats["samples"]
        image_bytes[source] += stats["image_bytes"]
        shard_lists[source].append(path.name)
        shard_samples[source][path.name] = stats["samples"]
        rejected += stats["rejected"]
    rejected.sort(key=lambda r: r["index"])
    manifest = {
        "json": str(json_path),
        "entries": len(entries),
        "counts": dict(sorted(counts.items())),
        "image_bytes": dict(sorted(image_bytes.items())),
        "shards": dict(sorted(shard_lists.items())),
        "shard_info": {
            source: shard_records(out / source, samples) for source, samples in sorted(shard_samples.items())
        },
        "rejected": dict(Counter(r["reason"].split(":")[0] for r in rejected)),
        "merged_sources": {"vqav2_okvqa": SOURCES["vqav2_okvqa"]},
    }
    with open(out / "rejected.jsonl", "w") as f:
        for record in rejected:
            f.write(json.dumps(record) + "\n")
    write_manifest(out, manifest)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="llava_v1_5_mix665k.json or blip_laion_cc_sbu_558k.json")
    parser.add_argument("--images", required=True, help="the image root (coco/, gqa/, ... below it)")
    parser.add_argument("--out", required=True, help="output folder, e.g. data/shards/llava_mix665k")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--resize", type=int, default=None, help="re-encode images whose longer side exceeds this")
    parser.add_argument("--no-verify-images", action="store_true", help="skip decoding each image (faster, less safe)")
    parser.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read images through symlinks that point outside --images (e.g. a linked-in coco/)",
    )
    parser.add_argument(
        "--tokenizer", help="the LLM's tokenizer (a local directory): indexes record exact text tokens ..."
    )
    parser.add_argument("--template", help="... under it and this chat template (vicuna_v1, plain, ...)")
    args = parser.parse_args(argv)
    if bool(args.tokenizer) != bool(args.template):
        raise SystemExit(
            "--tokenizer and --template go together (exact token counts hold for one tokenizer and one template)"
        )
    manifest = convert(
        args.json,
        args.images,
        args.out,
        args.workers,
        args.shard_size,
        args.resize,
        not args.no_verify_images,
        follow_symlinks=args.follow_symlinks,
        exact=(args.tokenizer, args.template) if args.tokenizer else None,
    )
    print(json.dumps({k: manifest[k] for k in ("entries", "counts", "rejected")}, indent=2))
    print(f"[lmm] manifest: {Path(args.out) / MANIFEST}; rejected entries: {Path(args.out) / 'rejected.jsonl'}")


if __name__ == "__main__":
    main()
