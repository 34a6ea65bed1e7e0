"""The training mixture's samples as numbers: what the global plan needs, loaded once per rank
from the shard indexes, and each sample's bytes read by range when a worker serves it.

[Contract] A sample is an int (its position in the catalog). The plan (lmm.data.mixture) sees
only `length[i]` and `has_image[i]`, which equal what it computes from the raw bytes
(approximate_length, count_images), so plans made from the catalog are the plans made from the
bytes. The catalog is built in the rank's main process before the DataLoader starts its
workers, which inherit it: per rank, the index arrays are read once (`index_bytes`), whatever
the number of workers, and a resumed run re-plans from memory without reading a sample.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lmm.data.image import decoded_size
from lmm.data.index import PLAN_ARRAYS, SIZE_ARRAYS, parse_sample, read_arrays, read_span
from lmm.data.shards import ERROR_KEY, index_path, shard_markers, shard_problem

ImageTokens = int | Callable[[list[tuple[int, int]]], int]  # per image, or a function of the images' (height, width)


class MissingIndex(FileNotFoundError):
    """A shard without an index: planning from indexes needs every one."""


def check_indexes(sources: list) -> None:
    """Every local shard of the sources has its index (MissingIndex naming the command otherwise):
    checked before any work, by stat alone."""
    for source in sources:
        for url in source.shards:
            if "://" not in url and Path(url).is_file() and not Path(index_path(url)).is_file():
                raise missing_index(url)


def missing_index(url: str) -> MissingIndex:
    return MissingIndex(
        f"{index_path(url)} is missing: index the data with `lmm index "
        f"{Path(url).parent.parent}` (the converter and the generator write indexes), or set data.plan=raw"
    )


class Catalog:
    def __init__(self, sources: list, image_tokens: ImageTokens, exif: str = "ignore", exact_for: str | None = None):
        """`sources`: lmm.data.mixture.Source (its shards, and the manifest's record of each).
        `exact_for`: this run's lmm.data.index.exact_key; a shard indexed with exact text tokens
        for it is planned by them, any other by the estimate (JSON bytes / 4)."""
        self.exact_for, self.exact_shards = exact_for, 0
        self.urls: list[str] = []
        self.rows: dict[str, range] = {}  # url -> the catalog positions of its samples
        self.problems: dict[str, tuple[str, int]] = {}  # url -> (why its samples are skips, how many)
        self.index_bytes = [0]  # bytes of index read to build the catalog
        self.bytes_read = 0  # sample bytes read since (this process)
        starts, spans, lengths, images, shard_of = [], [], [], [], []
        first = 0  # catalog position of the next shard's first sample
        for source in sources:
            for url in source.shards:
                arrays = self._arrays(url, (source.expected or {}).get(url, {}), callable(image_tokens))
                if arrays is None:
                    continue
                bounds = arrays["span_start"].astype(np.int64)  # sample i: [bounds[i], bounds[i + 1])
                n = len(bounds) - 1
                self.rows[url] = range(first, first + n)
                first += n
                self.urls.append(url)
                starts.append(bounds[:-1])
                spans.append(np.diff(bounds))
                shard_of.append(np.full(n, len(self.urls) - 1, dtype=np.int32))
                counts = arrays["image_count"].astype(np.int64)
                images.append(counts)
                lengths.append(
                    arrays["text_tokens"].astype(np.int64) + self._image_tokens(arrays, counts, image_tokens, exif)
                )
        self.span_start = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)
        self.span_bytes = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        self.shard_of = np.concatenate(shard_of) if shard_of else np.zeros(0, dtype=np.int32)
        # Python lists: the plan reads these per sample, and list indexing is several times faster than numpy's.
        self.length: list[int] = np.concatenate(lengths).tolist() if lengths else []
        self.has_image: list[bool] = (np.concatenate(images) > 0).tolist() if images else []

    def _arrays(self, url: str, record: dict, sizes: bool) -> dict | None:
        """The shard's plan arrays, or None when its samples are skips (recorded in self.problems)."""
        local = "://" not in url
        if local and record and (problem := shard_problem(url, record)):
            self.problems[url] = (f"shard: {problem} ({url})", record.get("samples") or 1)
            return None
        if local and not Path(index_path(url)).is_file():
            raise missing_index(url)
        wanted = record.get("index_bytes") if local and record else None
        if wanted is not None and (size := Path(index_path(url)).stat().st_size) != wanted:
            raise ValueError(
                f"{index_path(url)} has {size} bytes, the manifest says {wanted}: re-index with "
                f"`lmm index {Path(url).parent.parent}`"
            )
        arrays = read_arrays(
            url,
            PLAN_ARRAYS + ("shard_bytes",) + (SIZE_ARRAYS if sizes else ()),
            self.index_bytes,
            optional=("exact_for", "text_tokens_exact") if self.exact_for else (),
        )
        if self.exact_for and "exact_for" in arrays and str(arrays["exact_for"]) == self.exact_for:
            arrays["text_tokens"] = arrays["text_tokens_exact"]
            self.exact_shards += 1
        if local and (size := Path(url).stat().st_size) != int(arrays["shard_bytes"]):
            self.problems[url] = (
                f"shard: {Path(url).name} has {size} bytes, its index says {int(arrays['shard_bytes'])} "
                f"(re-index with `lmm index`) ({url})",
                len(arrays["text_tokens"]),
            )
            return None
        return arrays

    @staticmethod
    def _image_tokens(arrays: dict, counts: np.ndarray, image_tokens: ImageTokens, exif: str) -> np.ndarray:
        """Each sample's planned visual tokens, as SampleProcessor.planned_image_tokens counts them
        from the bytes: per image, or from the header sizes (an unreadable header: 0 for the sample)."""
        if not callable(image_tokens):
            return counts * image_tokens
        out = np.zeros(len(counts), dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)])  # sample i: images [bounds[i], bounds[i + 1])
        heights, widths, turned = arrays["image_height"], arrays["image_width"], arrays["image_turned"]
        for i in np.flatnonzero(counts):
            lo, hi = bounds[i], bounds[i + 1]
            if (heights[lo:hi] > 0).all():
                out[i] = image_tokens(
                    [
                        decoded_size(int(h), int(w), bool(t), exif)
                        for h, w, t in zip(heights[lo:hi], widths[lo:hi], turned[lo:hi], strict=True)
                    ]
                )
        return out

    def __len__(self) -> int:
        return len(self.length)

    def samples_of(self, record: dict) -> list:
        """A drawn shard ({"url", ...}) -> its samples in tar order, or one skip marker per sample
        it should hold when it is missing or changed."""
        url = record["url"]
        if url in self.problems:
            reason, count = self.problems[url]
            return list(shard_markers(url, reason, count))
        return list(self.rows[url])

    def read(self, sample) -> dict:
        """A planned sample -> the raw sample (webdataset's dict), read by byte range; a marker is
        passed through; a read that fails is a marker (a counted skip), never a crash."""
        if isinstance(sample, dict):
            return sample
        url = self.urls[self.shard_of[sample]]
        row = sample - self.rows[url].start
        try:
            span = read_span(url, int(self.span_start[sample]), int(self.span_bytes[sample]))
            self.bytes_read += len(span)
            return parse_sample(span, url)
        except Exception as e:  # a cut or changed shard, a server error, a damaged header
            return {"__key__": f"{url}#{row}", "__url__": url, ERROR_KEY: f"shard: {type(e).__name__}: {e} ({url})"}
