"""LightningDataModule: the training mixture and the validation pass as DataLoaders."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from lmm.data.catalog import Catalog
from lmm.data.collate import Collator
from lmm.data.image import check_options
from lmm.data.index import exact_key
from lmm.data.mixture import Source, TrainingStream, World, worker_slot
from lmm.data.sample import SampleProcessor
from lmm.data.shards import (
    check_url,
    child,
    expand_shards,
    expected_shards,
    has_manifest,
    is_remote,
    list_complete_shards,
    list_shards,
    local_directory,
    read_manifest,
    shard_problems,
)

PLANS = ("index", "raw")  # index: from the shard indexes (reads only what it trains); raw: from the tar stream


class ValidationBatches(IterableDataset):
    """The validation split as collated batches, the same number on every rank: every worker
    reads the whole split in order and cuts it into batches; batch b goes to rank b % ranks
    (and, of that rank's batches, the i-th to worker i % workers). A rank left one short gets an
    empty batch, which runs a zero-weight forward (lmm.train.module): under FSDP and DDP every
    validation forward is a collective, so no rank may finish early."""

    def __init__(
        self, shards: list[str], processor: SampleProcessor, collator: Collator, batch_size: int, world: World
    ):
        self.shards, self.processor, self.collator, self.batch_size, self.world = (
            shards,
            processor,
            collator,
            batch_size,
            world,
        )

    def __iter__(self):
        worker, workers = worker_slot()
        rank, ranks = self.world.rank, self.world.size
        samples = expand_shards({"url": url} for url in self.shards)
        served, b = 0, -1  # this rank's batches so far; the last batch index of the split
        for b, raw in enumerate(iter(lambda: list(itertools.islice(samples, self.batch_size)), [])):
            if b % ranks == rank:
                if served % workers == worker:
                    yield self.collator([self.processor(sample) for sample in raw])
                served += 1
        if served < -(-(b + 1) // ranks) and served % workers == worker:
            yield self.collator([])


class LMMDataModule(L.LightningDataModule):
    """Training data is either one folder (`root/<train_split>`, the synthetic set) or a
    weighted mixture of per-source folders (`root/<source>`, written by `lmm.data.convert`):
    `sources: {name: {weight: w}}` samples each source with probability ∝ its natural size
    (from `root/manifest.json`) × w; weight 0 (or removing the key) drops a source.

    The tokenizer-dependent processing is attached with `attach()` once the model exists,
    because the number of image placeholder ids depends on the vision tower and connector.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        sources: dict | None = None,
        strip_format_prompts: bool = False,
        batch_size: int = 16,
        num_workers: int = 1,
        max_length: int = 2048,
        shuffle_buffer: int = 1000,
        group_by_modality_length: bool = True,
        length_group_size: int = 8,
        max_skip_rate: float = 0.01,
        skip_check_after: int = 1000,
        allow_pipe_urls: bool = False,
        plan: str = "index",
        packing: bool = False,
        seed: int = 0,
        generate_if_missing: bool = False,
        synthetic_preset: str = "default",
        image: dict | None = None,
    ):
        super().__init__()
        switches = {
            "strip_format_prompts": strip_format_prompts,
            "group_by_modality_length": group_by_modality_length,
            "allow_pipe_urls": allow_pipe_urls,
            "packing": packing,
            "generate_if_missing": generate_if_missing,
        }
        for name, value in switches.items():  # a typo ("packing=ture") must not read as true
            if not isinstance(value, bool):
                raise ValueError(f"data.{name} must be true or false, got {value!r}")
        if plan not in PLANS:
            raise ValueError(f"data.plan must be one of {PLANS}, got {plan!r}")
        self.plan = plan
        self.image = dict(
            image or {}
        )  # read by the factory's ImageTransform (lmm.build.factory.image_options); checked here
        check_options(self.image.get("alpha", "drop"), self.image.get("exif", "ignore"))
        # A local folder, or an http(s) URL (shards, indexes and the manifest are then fetched).
        self.root, self.train_split, self.val_split = (
            (str(root).rstrip("/") if is_remote(root) else Path(root)),
            train_split,
            val_split,
        )
        self.sources = {name: dict(spec or {}) for name, spec in (sources or {}).items()}
        self.strip_format_prompts = strip_format_prompts
        self.batch_size, self.num_workers, self.max_length = batch_size, num_workers, max_length
        self.shuffle_buffer, self.seed, self.generate_if_missing = shuffle_buffer, seed, generate_if_missing
        self.group_size = length_group_size if group_by_modality_length else 1
        self.max_skip_rate, self.skip_check_after, self.allow_pipe_urls = (
            max_skip_rate,
            skip_check_after,
            allow_pipe_urls,
        )
        self.packing, self.synthetic_preset = packing, synthetic_preset
        self.processor: SampleProcessor | None = None

    def ensure_data(self) -> None:
        """Generate the synthetic mixture when asked to and absent (under a minute)."""
        if self.needs_generation():
            from lmm.data.synthetic import PRESETS, generate

            if self.synthetic_preset not in PRESETS:
                raise ValueError(
                    f"data.synthetic_preset must be one of {sorted(PRESETS)}, got {self.synthetic_preset!r}"
                )
            print(f"[lmm] generating the synthetic mixture ({self.synthetic_preset}) in {self.root}")
            generate(self.root, PRESETS[self.synthetic_preset])

    def needs_generation(self) -> bool:
        """Whether ensure_data will generate the synthetic mixture (asked to, and absent); the root
        must then be a local directory, never a pipe: command. An http(s) root is read, never generated."""
        if is_remote(self.root):
            return False
        return self.generate_if_missing and not has_manifest(
            local_directory(self.root, "data.root (generate_if_missing)")
        )

    def attach(self, processor: SampleProcessor, pad_token_id: int) -> None:
        # A copy, so the training-data options (format-prompt stripping) never reach evaluation prompts.
        self.processor, self.pad_token_id = copy.copy(processor), pad_token_id
        self.processor.strip_format_prompts = self.strip_format_prompts

    def source(self, name: str, weight: float) -> Source:
        """A folder's shards: the manifest's list with each shard's recorded size and sample count
        (a missing or cut shard is then a counted, named skip of all its samples), or its *.tar
        when there is no manifest."""
        folder = child(self.root, name)
        expected = expected_shards(folder)
        if expected is None:
            return Source(name, list_shards(folder, self.allow_pipe_urls), weight)
        if not expected:
            raise FileNotFoundError(f"no .tar shards at {folder} (its manifest lists none)")
        problems = (
            [] if is_remote(folder) else shard_problems(folder, expected)
        )  # remote: a shard that cannot be read is a counted skip
        if problems:
            print(
                f"[lmm] {folder}: {len(problems)} of {len(expected)} shards missing or not their recorded size "
                f"({', '.join(name for name, _, _ in problems[:5])}{', ...' if len(problems) > 5 else ''}); their "
                "samples count as skipped"
            )
        urls = {check_url(str(child(folder, shard))): record for shard, record in expected.items()}
        return Source(name, list(urls), weight, urls)

    def mixture(self) -> list[Source]:
        """The weighted sources (natural size × weight), or the single training folder."""
        if not self.sources:
            return [self.source(self.train_split, 1.0)]
        counts = read_manifest(self.root, "convert the data with `lmm convert` first")["counts"]
        unknown = set(self.sources) - set(counts)
        if unknown:
            raise ValueError(
                f"data.sources names {sorted(unknown)} but {self.root}'s manifest has only {sorted(counts)}"
            )
        return [
            self.source(name, counts[name] * float(spec.get("weight", 1.0)))
            for name, spec in sorted(self.sources.items())
            if float(spec.get("weight", 1.0)) > 0 and counts[name] > 0
        ]

    def catalog(self, sources: list[Source]) -> Catalog:
        """The sources' samples from their shard indexes (built here, in the rank's main process:
        the DataLoader's workers inherit it)."""
        processor = self._processor()
        tokens = processor.tokens_of_sizes if callable(processor.image_tokens) else processor.image_tokens
        tokenizer_dir = Path(str(getattr(processor.tokenizer, "name_or_path", "")))
        exact_for = (
            exact_key(tokenizer_dir, processor.template)
            if tokenizer_dir.is_dir() and str(tokenizer_dir) != "."
            else None
        )
        return Catalog(sources, tokens, processor.image_transform.exif, exact_for)

    def _processor(self) -> SampleProcessor:
        if self.processor is None:
            raise RuntimeError("LMMDataModule.attach(processor, pad_token_id) must be called before loading")
        return self.processor

    def train_dataloader(self) -> DataLoader:
        # Batches already trained on (a resumed run) are skipped, not replayed. Every rank plans
        # the same global batches (lmm.data.mixture) and takes its share.
        trainer, world = self.trainer, self._world()
        sources = self.mixture()
        stream = TrainingStream(
            sources,
            self._processor(),
            Collator(self.pad_token_id, packed=self.packing),
            self.batch_size,
            self.seed,
            self.shuffle_buffer,
            self.group_size,
            resume_batches=trainer.global_step * world.accumulation if trainer else 0,
            world=world,
            catalog=self.catalog(sources) if self.plan == "index" else None,
        )
        return DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_split:
            return []
        stream = ValidationBatches(
            list_complete_shards(child(self.root, self.val_split), self.allow_pipe_urls),
            self._processor(),
            Collator(self.pad_token_id),
            self.batch_size,
            self._world(),
        )
        return DataLoader(
            stream, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0
        )

    def _world(self) -> World:
        trainer = self.trainer
        return World(trainer.global_rank, trainer.world_size, trainer.accumulate_grad_batches) if trainer else World()
