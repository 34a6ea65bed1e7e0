"""Per-shard index: where each sample lies in its tar and what the global plan needs, so that
planning reads no sample bytes and a worker reads only the samples it serves, by byte range.

    lmm index ROOT [--force]     index every shard of a data root (writes x.tar.idx.npz)

The index of `x.tar` is `x.tar.idx.npz` beside it (for an http(s) shard, the same URL with the
suffix, fetched once per shard). It is an uncompressed .npz of plain arrays (read with
allow_pickle=False), one row per sample, samples grouped exactly as webdataset groups a tar
(its own group_by_keys): the sample's span (from its first member's header to the end of its
last member, so one read returns the whole sample), its text tokens (the plan's estimate: JSON
bytes / 4; indexed with `--tokenizer DIR --template NAME`, also the exact count under those,
which runs with the same tokenizer files and template plan by), its image count and their header sizes, and,
for people and tests, its key, source and
members (name, data offset, size). Members of an .npz load one at a time, so the plan reads only
the few bytes per sample it needs (`PLAN_ARRAYS`), never the keys.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from webdataset.tariterators import group_by_keys, meta_prefix, meta_suffix

from lmm.data.image import ImageError, header_size
from lmm.data.sample import image_keys
from lmm.data.shards import (
    FETCH_TIMEOUT_S,
    MANIFEST,
    index_path,
    is_remote,
    read_manifest,
    shard_records,
    write_manifest,
)

FORMAT = "lmm-shard-index/1"
PLAN_ARRAYS = ("span_start", "text_tokens", "image_count")  # what a plan loads: ~7 bytes a sample
SIZE_ARRAYS = ("image_height", "image_width", "image_turned")  # loaded only when image tokens depend on sizes (AnyRes)
SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator skips these members (its skip_meta default)
BLOCK = 512  # tar block: headers and member data start on its multiples


def tar_members(stream, url: str) -> Iterator[dict]:
    """A tar's members as webdataset's tar_file_iterator yields them (same skips), with where each
    lies: data = (header offset, data offset, size, bytes)."""
    tar = tarfile.open(fileobj=stream, mode="r|")  # "r|": an uncompressed tar only (byte ranges need one)
    for info in tar:
        name = info.name
        if (
            not info.isreg()
            or ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix))
            or SKIP_META.match(name)
        ):
            continue
        data = tar.extractfile(info).read()
        yield {"fname": name, "data": (info.offset, info.offset_data, info.size, data), "__url__": url}
        tar.members = []  # a stream: keep no member list (as webdataset does)


class ExactLengths:
    """The exact text tokens of a sample's conversation under one tokenizer and template (what an
    index records when they are known), and the key a run compares with its own (exact_key)."""

    def __init__(self, tokenizer_dir: str | Path, template: str):
        from lmm.data.conversation import IMAGE_TOKEN
        from lmm.data.tokenizer import load_tokenizer

        self.tokenizer, self.template, self.key = (
            load_tokenizer(str(tokenizer_dir)),
            template,
            exact_key(tokenizer_dir, template),
        )
        self.image_token, self.image_token_id = IMAGE_TOKEN, self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def __call__(self, raw_json: bytes) -> int | None:
        """Tokens of the rendered conversation without its image placeholders; None: not countable."""
        from lmm.data.conversation import encode

        try:
            turns = json.loads(raw_json)["conversations"]
            images = sum(turn["value"].count(self.image_token) for turn in turns)
            return len(encode(self.tokenizer, self.template, turns, 1, self.image_token_id).input_ids) - images
        except Exception:  # a malformed sample: the estimate stands (reading it is a counted skip)
            return None


def exact_key(tokenizer_dir: str | Path, template: str) -> str:
    """`template:sha256 of the tokenizer's files` (16 hex digits): which exact counts fit which run."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(tokenizer_dir).iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{template}:{digest.hexdigest()[:16]}"


def _sample_row(sample: dict, exact: ExactLengths | None = None) -> dict:
    """One grouped sample (entries: (header offset, data offset, size, bytes)) -> its index row."""
    members = sorted(
        ((name, *value) for name, value in sample.items() if not name.startswith("__")), key=lambda m: m[1]
    )
    start = members[0][1]
    end = max(offset + size for _, _, offset, size, _ in members)
    raw = {name: value[3] for name, value in sample.items() if not name.startswith("__")}
    try:
        keys = image_keys(raw)
    except ImageError:
        # not one image nor a numbered list: planned as text-only; reading it is a counted skip, as without an index
        keys = []
    sizes = []
    for key in keys:
        try:
            sizes.append(header_size(raw[key]))
        except ImageError:
            sizes.append((0, 0, False))  # unreadable: 0 tokens planned (the sample is skipped when read)
    return {
        "key": sample["__key__"],
        "source": _source(raw.get("json", b"")),
        "span": (start, -(-end // BLOCK) * BLOCK - start),
        "text_tokens": len(raw.get("json", b"")) // 4,
        "sizes": sizes,
        "exact": exact(raw.get("json", b"")) if exact is not None else None,
        "members": [(name, offset, size) for name, _, offset, size, _ in members],
    }


def _source(raw: bytes) -> str:
    try:
        record = json.loads(raw)
        return str(record.get("source") or "") if isinstance(record, dict) else ""
    except ValueError:
        return ""


def build_index(shard: str | Path, exact: ExactLengths | None = None) -> dict[str, np.ndarray]:
    """The index arrays of a local shard (reads it once); with `exact`, also each sample's exact
    text tokens under that tokenizer and template (`text_tokens_exact`, `exact_for`)."""
    shard = Path(shard)
    with open(shard, "rb") as stream:
        if stream.read(2) == b"\x1f\x8b":
            raise ValueError(f"{shard} is gzip-compressed: an index needs an uncompressed tar (byte ranges)")
        stream.seek(0)
        try:
            rows = [_sample_row(s, exact) for s in group_by_keys(tar_members(stream, str(shard)))]
        except (tarfile.TarError, ValueError) as e:  # not a tar, cut mid-member, a duplicate member name
            raise ValueError(f"{shard} cannot be indexed: not a readable tar ({type(e).__name__}: {e})") from None
    sizes = [size for row in rows for size in row["sizes"]]
    members = [m for row in rows for m in row["members"]]
    # Sample i's span is [span_start[i], span_start[i + 1]): from its first header to the next
    # sample's (or, for the last, to the end of its data rounded to a block). The plan's arrays
    # take the smallest integer type that holds them: a few bytes a sample, read by every rank.
    ends = [r["span"][0] + r["span"][1] for r in rows]
    starts = [r["span"][0] for r in rows] + ends[-1:]
    return {
        "format": np.array(FORMAT),
        "shard_bytes": np.array(shard.stat().st_size, dtype=np.int64),
        "span_start": compact(starts or [0]),
        "text_tokens": compact([r["text_tokens"] for r in rows]),
        "image_count": compact([len(r["sizes"]) for r in rows]),
        "image_height": np.array([s[0] for s in sizes], dtype=np.int32),
        "image_width": np.array([s[1] for s in sizes], dtype=np.int32),
        "image_turned": np.array([s[2] for s in sizes], dtype=bool),
        "key": np.array([r["key"] for r in rows], dtype=str),
        "source": np.array([r["source"] for r in rows], dtype=str),
        "member_start": np.cumsum([0] + [len(r["members"]) for r in rows]).astype(np.int64),
        "member_name": np.array([m[0] for m in members], dtype=str),
        "member_offset": np.array([m[1] for m in members], dtype=np.int64),
        "member_size": np.array([m[2] for m in members], dtype=np.int64),
        **(
            {
                "exact_for": np.array(exact.key),
                "text_tokens_exact": compact([r["text_tokens"] if r["exact"] is None else r["exact"] for r in rows]),
            }
            if exact
            else {}
        ),
    }


def compact(values: list[int]) -> np.ndarray:
    """Non-negative integers in the smallest unsigned type that holds them."""
    return np.array(values, dtype=np.min_scalar_type(max(values, default=0)))


def write_index(shard: str | Path, exact: ExactLengths | None = None) -> Path:
    """Index one local shard (written whole or not at all); returns the index's path."""
    path = Path(index_path(shard))
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    save_arrays(partial, build_index(shard, exact))
    os.replace(partial, path)
    return path


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez's format (an uncompressed zip of .npy members), with fixed member times: the same
    shard gives the same index bytes, as the converter's shards are byte-identical run to run."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue())


def read_arrays(
    url: str, names: tuple[str, ...], counter: list[int] | None = None, optional: tuple[str, ...] = ()
) -> dict[str, np.ndarray]:
    """Some arrays of a shard's index (a local file, or an http(s) URL fetched whole), and those
    of `optional` it holds; `counter[0]` grows by the bytes read. FileNotFoundError / ValueError
    say what is wrong."""
    where = index_path(url)
    if is_remote(url):
        with urllib.request.urlopen(where, timeout=FETCH_TIMEOUT_S) as response:
            source = io.BytesIO(response.read())
    else:
        if not Path(where).is_file():
            raise FileNotFoundError(f"{where} is missing")
        source = CountingFile(open(where, "rb"))
    try:
        with np.load(source, allow_pickle=False) as archive:
            if str(archive["format"]) != FORMAT:
                raise ValueError(f"{where} is not an lmm shard index ({FORMAT})")
            arrays = {name: archive[name] for name in names} | {
                name: archive[name] for name in optional if name in archive.files
            }
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{where} cannot be read ({type(e).__name__}: {e}); re-index with `lmm index`") from None
    finally:
        if counter is not None:
            counter[0] += source.bytes_read if isinstance(source, CountingFile) else len(source.getbuffer())
        source.close()
    return arrays


class CountingFile(io.RawIOBase):
    """A file that counts the bytes read through it (what the plan costs in I/O)."""

    def __init__(self, file):
        self.file, self.bytes_read = file, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.file.seek(offset, whence)

    def tell(self) -> int:
        return self.file.tell()

    def readinto(self, buffer) -> int:
        n = self.file.readinto(buffer)
        self.bytes_read += n or 0
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def read_span(url: str, start: int, length: int) -> bytes:
    """Bytes [start, start + length) of a shard: a seek for a local file, an HTTP Range request
    for a remote one. OSError when fewer bytes come back (a cut file, a server without Range)."""
    if is_remote(url):
        request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{start + length - 1}"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            if response.status != 206:
                raise OSError(f"the server answered {response.status} to a Range request (it must honour Range)")
            data = response.read(length + 1)
    else:
        with open(url, "rb") as f:
            f.seek(start)
            data = f.read(length)
    if len(data) != length:  # a whole tar ends in zero blocks, so every span lies inside it
        raise OSError(f"{len(data)} bytes at {start}, the index says {length} (the shard changed since it was indexed)")
    return data


def parse_sample(span: bytes, url: str) -> dict:
    """One sample's span of tar bytes -> the raw sample webdataset would have yielded."""
    samples = list(group_by_keys({**m, "data": m["data"][3]} for m in tar_members(io.BytesIO(span), url)))
    if len(samples) != 1:
        raise ValueError(f"the index's span holds {len(samples)} samples, not one (re-index the shard)")
    return samples[0]


def index_root(root: str | Path, force: bool = False, exact: ExactLengths | None = None) -> dict[str, int]:
    """Index every shard of a data root (the manifest's folders, else every folder of *.tar) that
    lacks an index or whose index is older than the shard (`force`, or exact counts asked for:
    every shard); record the indexes' sizes in the manifest. Returns {folder: shards indexed}."""
    force = force or exact is not None
    root = Path(root)
    manifest = read_manifest(root)
    listed = (manifest.get("shard_info") or manifest.get("shards") or {}) if manifest else {}
    folders = sorted(set(listed) | {p.parent.name for p in root.glob("*/*.tar")})
    done: dict[str, int] = {}
    for folder in folders:
        shards = sorted((root / folder).glob("*.tar"))
        stale = [
            s
            for s in shards
            if force or not Path(index_path(s)).is_file() or Path(index_path(s)).stat().st_mtime < s.stat().st_mtime
        ]
        for shard in stale:
            write_index(shard, exact)
        done[folder] = len(stale)
        if manifest is not None and folder in manifest.get("shard_info", {}):
            samples = {name: (record or {}).get("samples") for name, record in manifest["shard_info"][folder].items()}
            manifest["shard_info"][folder] = shard_records(root / folder, samples)
    if manifest is not None:
        write_manifest(root, manifest)
    return done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help=f"a data root (with {MANIFEST}) written by lmm.data.convert or lmm.data.synthetic")
    parser.add_argument("--force", action="store_true", help="re-index shards that already have an index")
    parser.add_argument(
        "--tokenizer", help="also record exact text tokens under this tokenizer (a local directory) ..."
    )
    parser.add_argument(
        "--template", help="... and this chat template (vicuna_v1, plain, ...): runs with both plan by them"
    )
    args = parser.parse_args(argv)
    if not Path(args.root).is_dir():
        raise SystemExit(f"{args.root} is not a directory")
    if bool(args.tokenizer) != bool(args.template):
        raise SystemExit(
            "--tokenizer and --template go together (exact token counts hold for one tokenizer and one template)"
        )
    exact = ExactLengths(args.tokenizer, args.template) if args.tokenizer else None
    try:
        done = index_root(args.root, args.force, exact)
    except ValueError as e:
        raise SystemExit(f"[lmm] {e}") from None
    if not done:
        raise SystemExit(f"no shards under {args.root} (expected ROOT/<folder>/*.tar)")
    for folder, count in done.items():
        print(f"[lmm] {Path(args.root) / folder}: {count} shard(s) indexed")


if __name__ == "__main__":
    main()
