"""Find and read WebDataset shards: shard lists, the data root's manifest, robust tar expansion,
the ordered evaluation stream."""

from __future__ import annotations

import json
import os

from collections.abc import Iterable, Iterator
from pathlib import Path

import webdataset as wds
from webdataset.tariterators import group_by_keys, tar_file_iterator

ERROR_KEY = "__error__"
MANIFEST = "manifest.json"  # per data root: counts per split/source, shard lists (+ the synthetic baselines)


def has_manifest(root: str | Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: str | Path, needed_for: str | None = None) -> dict | None:
    """The data root's manifest.json (written by lmm.data.convert and lmm.data.synthetic). Absent:
    None, or, when it is `needed_for` something, a FileNotFoundError that says so."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        if needed_for is None:
            return None
        raise FileNotFoundError(f"no {MANIFEST} in {root} ({needed_for})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); regenerate it (convert or generate the data again)") from None


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Written whole or not at all (a temporary file renamed over it): a reader never sees half of one."""
    path = Path(root) / MANIFEST
    partial = path.with_name(f".{MANIFEST}.{os.getpid()}")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)
    return path


REMOTE_SCHEMES = ("http://", "https://")  # read by webdataset through curl
URL_UNSAFE = set("'\"`$;&|<>\\ \t\n")  # a remote URL reaches a shell command line (curl): none of these


def check_url(url: str, allow_pipe: bool = False) -> str:
    """One shard URL, after brace expansion: a local path, an http(s) URL without shell
    metacharacters, or (only when allowed) a `pipe:` command."""
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise ValueError(f"refusing shard URL {url!r}: pipe: runs a shell command; set data.allow_pipe_urls=true to allow it")
        return url
    if "://" in url:
        if not url.startswith(REMOTE_SCHEMES):
            raise ValueError(f"refusing shard URL {url!r}: only local paths and http(s):// URLs are read")
        if URL_UNSAFE & set(url):
            raise ValueError(f"refusing shard URL {url!r}: it contains characters a shell would interpret")
    return url


def local_directory(path: str | Path, what: str) -> Path:
    """`path` as a local directory to write into; a URL or `pipe:` command is refused."""
    text = str(path)
    if text.startswith("pipe:") or "://" in text:
        raise ValueError(f"{what} must be a local directory, got {text!r}")
    return Path(text)


def list_shards(spec: str | Path, allow_pipe: bool = False) -> list[str]:
    """A directory (its *.tar), or a brace-expanded URL pattern (`data/x/shard-{000000..000009}.tar`).

    Every expanded URL is checked (`check_url`): `pipe:` URLs run a shell command per shard and
    are refused unless `allow_pipe` is set, wherever they appear in a pattern."""
    spec = str(spec)
    check_url(spec, allow_pipe)
    if Path(spec).is_dir():
        shards = sorted(str(p) for p in Path(spec).glob("*.tar"))
    elif "{" in spec or "://" in spec or spec.startswith("pipe:"):
        shards = [check_url(url, allow_pipe) for url in wds.shardlists.expand_urls(spec)]
    else:
        shards = [spec] if Path(spec).exists() else []
    if not shards:
        raise FileNotFoundError(f"no .tar shards at {spec}; generate or convert the data first (see data/README.md)")
    return shards


def expand_shards(urls: Iterable[dict]) -> Iterator[dict]:
    """dict(url=...) -> samples. A shard that cannot be read, or breaks off mid-file, yields one
    `{ERROR_KEY: reason}` marker (counted as a skip downstream) and reading goes on."""
    for item in urls:
        url = item["url"]
        try:
            with wds.gopen(url) as stream:
                yield from group_by_keys({**member, "__url__": url} for member in tar_file_iterator(stream))
        except Exception as e:  # tarfile.ReadError, truncated members, I/O errors
            yield {"__key__": f"{url}#error", "__url__": url, ERROR_KEY: f"shard: {type(e).__name__}: {e} ({url})"}


def evaluation_stream(shards: list[str], split_by_node: bool = True) -> Iterator[dict]:
    """One ordered pass over `shards`, split across workers and (unless told not to) ranks."""
    urls = iter({"url": url} for url in shards)
    urls = wds.shardlists.split_by_worker(wds.split_by_node(urls) if split_by_node else urls)
    return expand_shards(urls)
