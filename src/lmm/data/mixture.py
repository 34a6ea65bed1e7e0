"""The training stream: weighted mixture of per-source resampled shard streams, planned as
global batches (one seeded plan for every rank), processed in workers, resumable without replay.

[Contract] Every rank and every DataLoader worker draws the same sample stream (its RNGs are
seeded by (seed, epoch, source), never by rank or worker) and cuts it into the same global
steps. A step holds per-device batch × ranks × accumulation samples of ONE modality (all with
an image, or all text-only), of similar lengths, dealt into micro-batches with about the same
number of tokens; rank r takes micro-batch r of each of the step's accumulation slots. So
on every rank the same micro-batch runs the same modules (no collective is skipped by one rank)
and no rank waits long for a straggler.

Planning reads no sample bytes (`data.plan=index`, the default): the stream is drawn over the
catalog (lmm.data.catalog: each sample's length and modality from the shard indexes, read once
per rank), and each worker reads, by byte range, only the samples of the micro-batches it
serves (DataLoader takes workers round-robin). `data.plan=raw` plans from the raw tar stream
instead (every worker reads the whole world's bytes): the same plan, for shards without an index.

Resume: a resumed run re-plans from the start and skips the micro-batches already trained on
(planning only: from the catalog that reads nothing), then continues with exactly the batches an
uninterrupted run would have seen, whatever the number of workers.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from lmm.data.catalog import Catalog
from lmm.data.collate import Collator
from lmm.data.sample import SampleProcessor, count_images
from lmm.data.shards import ERROR_KEY, expand_shards


@dataclass
class Source:
    name: str
    shards: list[str]
    weight: float  # sampling probability ∝ weight (natural size × the user's multiplier)
    expected: dict[str, dict] | None = (
        None  # url -> the manifest's {"bytes", "samples"}: a shard lost or cut is a counted skip of its samples
    )


@dataclass(frozen=True)
class World:
    """Where this process sits in data-parallel training: what the global plan is cut for."""

    rank: int = 0
    size: int = 1
    accumulation: int = 1


def worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def has_image(sample: dict) -> bool:
    return count_images(sample) > 0


def approximate_length(sample: dict, image_tokens: int | Callable[[dict], int]) -> int:
    """Tokens of a raw sample without tokenizing it: JSON bytes / 4 + its images' tokens, exact:
    `image_tokens` per image, or a function of the sample (SampleProcessor.planned_image_tokens,
    which reads AnyRes image sizes from the headers)."""
    images = image_tokens(sample) if callable(image_tokens) else image_tokens * count_images(sample)
    return len(sample.get("json", b"")) // 4 + images


def deal(samples: list, shares: int, per_share: int, length) -> list[list]:
    """Split samples into `shares` lists of `per_share` with about equal total length: longest
    first, each to the share with the fewest tokens so far that still has room (ties: the lowest
    share), kept in a heap so that a step of thousands of ranks deals in milliseconds."""
    out: list[list] = [[] for _ in range(shares)]
    room = [(0, i) for i in range(shares)]  # (tokens so far, share) of the shares with room: a heap
    for sample in sorted(samples, key=length, reverse=True):
        tokens, share = heapq.heappop(room)
        out[share].append(sample)
        if len(out[share]) < per_share:
            heapq.heappush(room, (tokens + length(sample), share))
    return out


def is_marker(sample) -> bool:
    """A shard-error marker (a dict with ERROR_KEY): a counted skip, not a sample to plan."""
    return isinstance(sample, dict) and ERROR_KEY in sample


def plan_steps(
    samples: Iterator,
    per_device: int,
    world: World,
    group_size: int,
    rng: random.Random,
    length: Callable,
    modality: Callable = has_image,
) -> Iterator[list[list[list]]]:
    """LLaVA's get_modality_length_grouped_indices, streamed and global. Image and text-only
    samples (`modality`) fill separate pools of `group_size` global batches; a full pool is
    sorted by `length` and cut into steps (global batches of similar lengths); each step is
    dealt into accumulation × ranks micro-batches of per_device samples with about equal tokens,
    and the steps are emitted in shuffled order. A step is `step[slot][rank]`. Samples are raw
    samples or catalog positions: the plan only calls `length` and `modality` on them.

    The micro-batches depend only on the global batch and per_device, not on how they are
    spread over ranks and accumulation: 2 ranks × 1 slot train exactly the micro-batches that
    1 rank × 2 accumulation slots train, so the two runs take the same optimizer steps."""
    units = world.size * world.accumulation  # micro-batches per step
    step_size = per_device * units
    pools: dict[bool, list] = {True: [], False: []}
    unreadable: list[dict] = []  # shard-error markers: counted as skips in the next step (rank 0), not pooled
    for sample in samples:
        if is_marker(sample):
            unreadable.append(sample)
            continue
        pool = pools[modality(sample)]
        pool.append(sample)
        if len(pool) == step_size * group_size:
            pool.sort(key=length)
            steps = [deal(pool[i : i + step_size], units, per_device, length) for i in range(0, len(pool), step_size)]
            rng.shuffle(steps)
            for micro_batches in steps:  # slot a holds micro-batches a·ranks … a·ranks + ranks − 1
                micro_batches[0] += unreadable
                unreadable = []
                yield [micro_batches[a * world.size : (a + 1) * world.size] for a in range(world.accumulation)]
            pool.clear()


class TrainingStream(IterableDataset):
    """Infinite stream of this rank's collated training micro-batches (DataLoader(batch_size=None)).
    With a `catalog` the plan is made from the shard indexes and each served sample is read by
    byte range; without one, from the raw tar stream."""

    def __init__(
        self,
        sources: list[Source],
        processor: SampleProcessor,
        collator: Collator,
        batch_size: int,
        seed: int,
        shuffle_buffer: int = 1000,
        group_size: int = 8,
        resume_batches: int = 0,
        world: World = World(),
        catalog: Catalog | None = None,
    ):
        if not sources or sum(s.weight for s in sources) <= 0:
            raise ValueError("the data mixture has no source with a positive weight")
        self.sources, self.processor, self.collator = sources, processor, collator
        self.batch_size, self.seed, self.shuffle_buffer, self.group_size = batch_size, seed, shuffle_buffer, group_size
        self.resume_batches, self.world, self.catalog = resume_batches, world, catalog
        self.epoch = 0  # counts __iter__ calls in this process (persistent workers keep it)

    def _source(self, source: Source) -> Iterator:
        seed = f"{self.seed}/{self.epoch}/{source.name}"
        draws = self._shard_draws(source.shards, random.Random(seed), source.expected or {})
        samples = (
            expand_shards(draws)
            if self.catalog is None
            else (s for draw in draws for s in self.catalog.samples_of(draw))
        )
        return wds.shuffle(
            self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=random.Random(seed + "/shuffle")
        )(samples)

    @staticmethod
    def _shard_draws(shards: list[str], rng: random.Random, expected: dict[str, dict]) -> Iterator[dict]:
        """Shards drawn with replacement, forever (webdataset's ResampledShards seeds from the
        real worker id and rank, which the global plan must not depend on)."""
        while True:
            url = rng.choice(shards)
            yield {"url": url, **expected.get(url, {})}

    def raw_samples(self, rng: random.Random) -> Iterator:
        """The mixture's sample stream: raw samples, or catalog positions when planning from indexes."""
        streams = [self._source(s) for s in self.sources]
        cumulative = list(
            itertools.accumulate(s.weight for s in self.sources)
        )  # what choices(weights=) computes per call
        while True:
            (stream,) = rng.choices(streams, cum_weights=cumulative)
            yield next(stream)

    def steps(self) -> Iterator[list[list[list]]]:
        """The epoch's global steps, `step[slot][rank]` (the same plan on every rank)."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        if self.catalog is None:  # from the raw bytes: JSON bytes / 4 + the images' planned tokens
            length, modality = (lambda s: approximate_length(s, self.processor.planned_image_tokens)), has_image
        else:  # from the catalog: its lists' own lookups (C-level calls; planning is per sample)
            length, modality = self.catalog.length.__getitem__, self.catalog.has_image.__getitem__
        return plan_steps(self.raw_samples(rng), self.batch_size, self.world, self.group_size, rng, length, modality)

    def micro_batches(self) -> Iterator[list]:
        """This rank's planned micro-batches, in training order."""
        for step in self.steps():
            for slot in step:
                yield slot[self.world.rank]

    def read(self, sample) -> dict:
        return sample if self.catalog is None else self.catalog.read(sample)

    def served(self, worker: int, num_workers: int) -> Iterator[list[dict]]:
        """The raw samples of the micro-batches that DataLoader worker `worker` of `num_workers`
        serves on this rank, read (only those), in training order; one call is one epoch."""
        self.epoch += 1
        resumed = self.resume_batches if self.epoch == 1 else 0
        # A new DataLoader starts its round-robin at worker 0: the first batch it hands out is
        # micro-batch `resumed`, so worker w serves the micro-batches n ≥ resumed with
        # (n − resumed) % num_workers == w.
        for n, plan in enumerate(self.micro_batches()):
            if n >= resumed and (n - resumed) % num_workers == worker:
                yield [self.read(sample) for sample in plan]

    def __iter__(self) -> Iterator[dict]:
        for raw in self.served(*worker_slot()):
            yield self.collator([self.processor(sample) for sample in raw])
