"""The training stream: weighted mixture of per-source resampled shard streams, grouped into
batches by modality and length, processed in workers, resumable without replay.

Determinism: every random choice (shard draws, shuffle buffers, source picks, batch order)
comes from an RNG seeded by (seed, rank, worker, epoch). Batches are planned from raw samples
(no image decoding), so a resumed run skips the batches it already trained on cheaply and then
continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from lmm.data.collate import Collator
from lmm.data.sample import IMAGE_KEYS, SampleProcessor
from lmm.data.shards import expand_shards


@dataclass
class Source:
    name: str
    shards: list[str]
    weight: float  # sampling probability ∝ weight (natural size × the user's multiplier)


def worker_info() -> tuple[int, int, int, int]:
    rank, world, _, _ = wds.utils.pytorch_worker_info()
    info = get_worker_info()
    return rank, world, (info.id if info else 0), (info.num_workers if info else 1)


def batches_before(consumed: int, worker: int, num_workers: int) -> int:
    """How many of `consumed` batches came from `worker` (DataLoader takes workers round-robin)."""
    return len(range(worker, consumed, num_workers))


def has_image(sample: dict) -> bool:
    return any(key in sample for key in IMAGE_KEYS)


def plan_batches(samples: Iterator[dict], batch_size: int, group_size: int, rng: random.Random, image_tokens: int) -> Iterator[list[dict]]:
    """LLaVA's group_by_modality_length, streamed: image and text-only samples fill separate
    pools of batch_size × group_size; a full pool is sorted by approximate length (JSON bytes
    / 4 + image tokens), cut into batches, and the batches are emitted in shuffled order."""
    pools: dict[bool, list[dict]] = {True: [], False: []}
    length = lambda s: len(s.get("json", b"")) // 4 + (image_tokens if has_image(s) else 0)  # noqa: E731
    for sample in samples:
        pool = pools[has_image(sample)]
        pool.append(sample)
        if len(pool) == batch_size * group_size:
            pool.sort(key=length)
            batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(batches)
            yield from batches
            pool.clear()


class TrainingStream(IterableDataset):
    """Infinite stream of collated training batches (used with DataLoader(batch_size=None))."""

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
    ):
        if not sources or sum(s.weight for s in sources) <= 0:
            raise ValueError("the data mixture has no source with a positive weight")
        self.sources, self.processor, self.collator = sources, processor, collator
        self.batch_size, self.seed, self.shuffle_buffer, self.group_size = batch_size, seed, shuffle_buffer, group_size
        self.resume_batches = resume_batches
        self.epoch = 0  # counts __iter__ calls in this process (persistent workers keep it)

    def _source(self, source: Source, rank: int, role: int) -> Iterator[dict]:
        seed = f"{self.seed}/{rank}/{role}/{self.epoch}/{source.name}"
        urls = self._shard_draws(source.shards, random.Random(seed))
        return wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer), rng=random.Random(seed + "/shuffle"))(
            expand_shards(urls)
        )

    @staticmethod
    def _shard_draws(shards: list[str], rng: random.Random) -> Iterator[dict]:
        """Shards drawn with replacement, forever (webdataset's ResampledShards seeds from the
        real worker id, which a resumed worker must not use)."""
        while True:
            yield {"url": rng.choice(shards)}

    def raw_samples(self, rng: random.Random, rank: int, role: int) -> Iterator[dict]:
        streams = [self._source(s, rank, role) for s in self.sources]
        weights = [s.weight for s in self.sources]
        while True:
            (stream,) = rng.choices(streams, weights=weights)
            yield next(stream)

    def __iter__(self) -> Iterator[dict]:
        self.epoch += 1
        rank, _, worker, num_workers = worker_info()
        resumed = self.resume_batches if self.epoch == 1 else 0
        # A new DataLoader starts its round-robin at worker 0, but the next batch in order came
        # from worker (consumed % W): each worker takes over the role (seed, position) of the
        # worker whose batch is due at its turn.
        role = (worker + resumed) % num_workers
        rng = random.Random(f"{self.seed}/{rank}/{role}/{self.epoch}")
        plans = plan_batches(self.raw_samples(rng, rank, role), self.batch_size, self.group_size, rng, self.processor.image_tokens)
        skip = batches_before(resumed, role, num_workers)
        for n, plan in enumerate(plans):
            if n >= skip:
                yield self.collator([self.processor(sample) for sample in plan])
