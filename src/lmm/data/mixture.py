"""The training stream: weighted mixture of per-source resampled shard streams, planned as
global batches (one seeded plan for every rank), processed in workers, resumable without replay.

[Contract] Every rank and every DataLoader worker draws the same raw sample stream (its RNGs
are seeded by (seed, epoch, source), never by rank or worker) and cuts it into the same global
steps. A step holds per-device batch × ranks × accumulation samples of ONE modality (all with
an image, or all text-only), of similar lengths, dealt into micro-batches with about the same
number of tokens; rank r takes micro-batch r of each of the step's accumulation slots. So
on every rank the same micro-batch runs the same modules (no collective is skipped by one rank)
and no rank waits long for a straggler. Each worker decodes only the micro-batches it serves
(DataLoader takes workers round-robin); the others it only plans, from raw bytes (no image
decoding): every worker reads the raw stream of the whole world, which costs I/O, not compute.

Resume: a resumed run re-plans from the start and skips the micro-batches already trained on
(planning only), then continues with exactly the batches an uninterrupted run would have seen,
whatever the number of workers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from lmm.data.collate import Collator
from lmm.data.sample import SampleProcessor, count_images
from lmm.data.shards import ERROR_KEY, expand_shards


@dataclass
class Source:
    name: str
    shards: list[str]
    weight: float  # sampling probability ∝ weight (natural size × the user's multiplier)
    expected: dict[str, dict] | None = None  # url -> the manifest's {"bytes", "samples"}: a shard lost or cut is a counted skip of its samples


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


def deal(samples: list[dict], shares: int, per_share: int, length) -> list[list[dict]]:
    """Split samples into `shares` lists of `per_share` with about equal total length: longest
    first, each to the share with the fewest tokens so far that still has room."""
    out: list[list[dict]] = [[] for _ in range(shares)]
    totals = [0] * shares
    for sample in sorted(samples, key=length, reverse=True):
        share = min((i for i in range(shares) if len(out[i]) < per_share), key=lambda i: (totals[i], i))
        out[share].append(sample)
        totals[share] += length(sample)
    return out


def plan_steps(
    samples: Iterator[dict], per_device: int, world: World, group_size: int, rng: random.Random,
    image_tokens: int | Callable[[dict], int],
) -> Iterator[list[list[list[dict]]]]:
    """LLaVA's get_modality_length_grouped_indices, streamed and global. Image and text-only
    samples fill separate pools of `group_size` global batches; a full pool is sorted by
    length and cut into steps (global batches of similar lengths); each step is dealt into
    accumulation × ranks micro-batches of per_device samples with about equal tokens, and the
    steps are emitted in shuffled order. A step is `step[slot][rank]`.

    The micro-batches depend only on the global batch and per_device, not on how they are
    spread over ranks and accumulation: 2 ranks × 1 slot train exactly the micro-batches that
    1 rank × 2 accumulation slots train, so the two runs take the same optimizer steps."""
    length = lambda s: approximate_length(s, image_tokens)  # noqa: E731
    units = world.size * world.accumulation  # micro-batches per step
    step_size = per_device * units
    pools: dict[bool, list[dict]] = {True: [], False: []}
    unreadable: list[dict] = []  # shard-error markers: counted as skips in the next step (rank 0), not pooled
    for sample in samples:
        if ERROR_KEY in sample:
            unreadable.append(sample)
            continue
        pool = pools[has_image(sample)]
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
    """Infinite stream of this rank's collated training micro-batches (DataLoader(batch_size=None))."""

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
    ):
        if not sources or sum(s.weight for s in sources) <= 0:
            raise ValueError("the data mixture has no source with a positive weight")
        self.sources, self.processor, self.collator = sources, processor, collator
        self.batch_size, self.seed, self.shuffle_buffer, self.group_size = batch_size, seed, shuffle_buffer, group_size
        self.resume_batches, self.world = resume_batches, world
        self.epoch = 0  # counts __iter__ calls in this process (persistent workers keep it)

    def _source(self, source: Source) -> Iterator[dict]:
        seed = f"{self.seed}/{self.epoch}/{source.name}"
        urls = self._shard_draws(source.shards, random.Random(seed), source.expected or {})
        return wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=random.Random(seed + "/shuffle"))(
            expand_shards(urls)
        )

    @staticmethod
    def _shard_draws(shards: list[str], rng: random.Random, expected: dict[str, dict]) -> Iterator[dict]:
        """Shards drawn with replacement, forever (webdataset's ResampledShards seeds from the
        real worker id and rank, which the global plan must not depend on)."""
        while True:
            url = rng.choice(shards)
            yield {"url": url, **expected.get(url, {})}

    def raw_samples(self, rng: random.Random) -> Iterator[dict]:
        streams = [self._source(s) for s in self.sources]
        weights = [s.weight for s in self.sources]
        while True:
            (stream,) = rng.choices(streams, weights=weights)
            yield next(stream)

    def micro_batches(self) -> Iterator[list[dict]]:
        """This rank's raw micro-batches, in training order (the same plan on every rank)."""
        rng = random.Random(f"{self.seed}/{self.epoch}")
        steps = plan_steps(self.raw_samples(rng), self.batch_size, self.world, self.group_size, rng, self.processor.planned_image_tokens)
        for step in steps:
            for slot in step:
                yield slot[self.world.rank]

    def __iter__(self) -> Iterator[dict]:
        self.epoch += 1
        worker, num_workers = worker_slot()
        resumed = self.resume_batches if self.epoch == 1 else 0
        # A new DataLoader starts its round-robin at worker 0: the first batch it hands out is
        # micro-batch `resumed`, so worker w serves the micro-batches n ≥ resumed with
        # (n − resumed) % num_workers == w.
        for n, plan in enumerate(self.micro_batches()):
            if n >= resumed and (n - resumed) % num_workers == worker:
                yield self.collator([self.processor(sample) for sample in plan])
