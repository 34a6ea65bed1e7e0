"""Stream WebDataset shards: resampled and shuffled for training, ordered and finite for evaluation."""

from __future__ import annotations

from pathlib import Path

import webdataset as wds


def list_shards(split_dir: str | Path) -> list[str]:
    shards = sorted(str(p) for p in Path(split_dir).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {split_dir}; generate or convert the data first (see data/README.md)")
    return shards


def _warn_and_continue(exn: Exception) -> bool:
    # An unreadable tar member is counted by webdataset's handler contract: log and go on.
    print(f"[lmm] skipping unreadable shard data: {exn}")
    return True


def training_stream(shards: list[str], seed: int, shuffle_buffer: int) -> wds.DataPipeline:
    """Infinite stream: each rank/worker draws shards with replacement from its own deterministic
    RNG (seeded by `seed`, rank and worker id), then a sample shuffle buffer."""
    return wds.DataPipeline(
        wds.ResampledShards(shards, seed=seed, deterministic=True),
        wds.tarfile_to_samples(handler=_warn_and_continue),
        wds.shuffle(shuffle_buffer, initial=min(100, shuffle_buffer), seed=seed),
        wds.decode(only=["json"], handler=_warn_and_continue),
    )


def evaluation_stream(shards: list[str]) -> wds.WebDataset:
    """One ordered pass, shards split across ranks and workers."""
    dataset = wds.WebDataset(
        shards, shardshuffle=False, nodesplitter=wds.split_by_node, handler=_warn_and_continue, empty_check=False
    )
    return dataset.decode(only=["json"], handler=_warn_and_continue)
