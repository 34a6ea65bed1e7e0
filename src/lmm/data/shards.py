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
MANIFEST = "manifest.json"  # per data root: counts per split/source, shard lists and sizes (+ the synthetic baselines)


REMOTE_SCHEMES = ("http://", "https://")  # read by webdataset through curl, and by the catalog with Range requests
FETCH_TIMEOUT_S = 60


def is_remote(location: str | Path) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def child(root: str | Path, name: str) -> str | Path:
    """ROOT/name: a Path under a local root, a URL under an http(s) one (a Path would fold its //)."""
    return f"{str(root).rstrip('/')}/{name}" if is_remote(root) else Path(root) / name


def has_manifest(root: str | Path) -> bool:
    return (Path(root) / MANIFEST).is_file()


def read_manifest(root: str | Path, needed_for: str | None = None) -> dict | None:
    """The data root's manifest.json (written by lmm.data.convert and lmm.data.synthetic; for an
    http(s) root, fetched). Absent: None, or, when it is `needed_for` something, a
    FileNotFoundError that says so."""
    path = child(root, MANIFEST)
    text = fetch_text(path) if is_remote(root) else (Path(path).read_text() if Path(path).is_file() else None)
    if text is None:
        if needed_for is None:
            return None
        raise FileNotFoundError(f"no {MANIFEST} in {root} ({needed_for})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); regenerate it (convert or generate the data again)"
        ) from None


def fetch_text(url: str) -> str | None:
    """A remote file's text; None when the server has none (404)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(check_url(url), timeout=FETCH_TIMEOUT_S) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise OSError(f"{url}: HTTP {e.code} {e.reason}") from None


def write_manifest(root: str | Path, manifest: dict) -> Path:
    """Written whole or not at all (a temporary file renamed over it): a reader never sees half of one."""
    path = Path(root) / MANIFEST
    partial = path.with_name(f".{MANIFEST}.{os.getpid()}")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)
    return path


URL_UNSAFE = set("'\"`$;&|<>\\ \t\n")  # a remote URL reaches a shell command line (curl): none of these


def check_url(url: str, allow_pipe: bool = False) -> str:
    """One shard URL, after brace expansion: a local path, an http(s) URL without shell
    metacharacters, or (only when allowed) a `pipe:` command."""
    if url.startswith("pipe:"):
        if not allow_pipe:
            raise ValueError(
                f"refusing shard URL {url!r}: pipe: runs a shell command; set data.allow_pipe_urls=true to allow it"
            )
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


INDEX_SUFFIX = ".idx.npz"  # a shard's index (lmm.data.index) lies beside it: x.tar -> x.tar.idx.npz


def index_path(shard: str | Path) -> str:
    return f"{shard}{INDEX_SUFFIX}"


def shard_records(folder: Path, samples: dict[str, int]) -> dict[str, dict]:
    """The manifest's record of a folder's shards: name -> {"bytes", "samples"} (what completeness
    is checked against), and "index_bytes" for a shard with an index."""
    records = {}
    for name, count in sorted(samples.items()):
        shard = Path(folder) / name
        index = Path(index_path(shard))
        records[name] = {
            "bytes": shard.stat().st_size,
            "samples": count,
            **({"index_bytes": index.stat().st_size} if index.is_file() else {}),
        }
    return records


def expected_shards(folder: str | Path) -> dict[str, dict] | None:
    """What the data root's manifest says `folder` (ROOT/<split or source>, local or http(s)) holds:
    name -> {"bytes", "samples"} (None values from a manifest that lists names only); None for a
    folder with no manifest above it, or a URL pattern."""
    text = str(folder).rstrip("/")
    if (("://" in text or text.startswith("pipe:")) and not is_remote(text)) or "{" in text:
        return None
    parent, name = text.rsplit("/", 1) if is_remote(text) else (Path(text).parent, Path(text).name)
    manifest = read_manifest(parent)
    if manifest is None:
        return None
    records = manifest.get("shard_info", {}).get(name)
    if records is None and name in manifest.get("shards", {}):
        records = {shard: {"bytes": None, "samples": None} for shard in manifest["shards"][name]}
    return records


def shard_problem(path: str | Path, expected: dict) -> str | None:
    """Why a local shard does not match its manifest record (missing, another size), or None."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    size, wanted = path.stat().st_size, expected.get("bytes")
    if wanted is not None and size != wanted:
        return f"{path.name} has {size} bytes, the manifest says {wanted}"
    return None


def shard_problems(folder: str | Path, expected: dict[str, dict]) -> list[tuple[str, str, int | None]]:
    """(name, why, samples it should hold) for each shard of `folder` that does not match its record."""
    return [
        (name, problem, record.get("samples"))
        for name, record in expected.items()
        if (problem := shard_problem(Path(folder) / name, record))
    ]


def list_complete_shards(spec: str | Path, allow_pipe: bool = False) -> list[str]:
    """The shards of a split that must be whole (evaluation, validation): the manifest's list,
    each present with its recorded size, or FileNotFoundError naming what is missing or short
    (a partial split must never be scored as if complete). Without a manifest: list_shards."""
    expected = expected_shards(spec)
    if expected is None:
        return list_shards(spec, allow_pipe)
    if is_remote(
        spec
    ):  # sizes cannot be checked without a request per shard: a shard that fails to read is reported then
        return [check_url(str(child(spec, name))) for name in expected]
    problems = shard_problems(spec, expected)
    if problems:
        lost = sum(samples or 0 for _, _, samples in problems)
        raise FileNotFoundError(
            f"{spec} is incomplete: {'; '.join(why for _, why, _ in problems[:5])}"
            f"{'; ...' if len(problems) > 5 else ''} "
            f"({len(problems)} of {len(expected)} shards{f', {lost} samples' if lost else ''}); "
            "convert or generate the data again"
        )
    if not expected:
        raise FileNotFoundError(f"no .tar shards at {spec} (its manifest lists none)")
    return [str(Path(spec) / name) for name in expected]


def shard_markers(url: str, reason: str, samples: int | None) -> Iterator[dict]:
    """One `{ERROR_KEY: reason}` marker per sample a broken shard should have held (one if unknown):
    each is a counted skip downstream, so a lost shard weighs what it held."""
    for i in range(max(1, samples or 0)):
        yield {"__key__": f"{url}#{i}", "__url__": url, ERROR_KEY: reason}


def expand_shards(urls: Iterable[dict]) -> Iterator[dict]:
    """dict(url=..., [bytes=, samples=] from the manifest) -> samples. A shard that is missing or
    not its recorded size yields one marker per sample it held; one that cannot be read, or breaks
    off mid-file, yields one marker; each is counted as a skip downstream, and reading goes on."""
    for item in urls:
        url = item["url"]
        if "bytes" in item and "://" not in url and (problem := shard_problem(url, item)):
            yield from shard_markers(url, f"shard: {problem} ({url})", item.get("samples"))
            continue
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
