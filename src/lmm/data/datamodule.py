"""LightningDataModule: shard streams -> SampleProcessor -> Collator -> DataLoaders."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from lmm.data.collate import Collator
from lmm.data.sample import SampleProcessor
from lmm.data.shards import evaluation_stream, list_shards, training_stream


class LMMDataModule(L.LightningDataModule):
    """Streams `root/<train_split>` (resampled, infinite) and `root/<val_split>` (one pass).

    The tokenizer-dependent processing is attached with `attach()` once the model exists,
    because the number of image placeholder ids depends on the vision tower and connector.
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str | None = "val",
        batch_size: int = 16,
        num_workers: int = 1,
        max_length: int = 2048,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        generate_if_missing: bool = False,
    ):
        super().__init__()
        self.root, self.train_split, self.val_split = Path(root), train_split, val_split
        self.batch_size, self.num_workers, self.max_length = batch_size, num_workers, max_length
        self.shuffle_buffer, self.seed, self.generate_if_missing = shuffle_buffer, seed, generate_if_missing
        self.processor: SampleProcessor | None = None

    def ensure_data(self) -> None:
        """Generate the synthetic mixture when asked to and absent (under a minute)."""
        if self.generate_if_missing and not (self.root / "manifest.json").exists():
            from lmm.data.synthetic import generate

            print(f"[lmm] generating the synthetic mixture in {self.root}")
            generate(self.root)

    def attach(self, processor: SampleProcessor, pad_token_id: int) -> None:
        self.processor, self.pad_token_id = processor, pad_token_id

    def _loader(self, stream, padding_side: str = "right") -> DataLoader:
        if self.processor is None:
            raise RuntimeError("LMMDataModule.attach(processor, pad_token_id) must be called before loading")
        return DataLoader(
            stream.compose(wds.map(self.processor)),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=Collator(self.pad_token_id, padding_side),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(training_stream(list_shards(self.root / self.train_split), self.seed, self.shuffle_buffer))

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_split:
            return []
        return self._loader(evaluation_stream(list_shards(self.root / self.val_split)))
