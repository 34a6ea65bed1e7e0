"""Teacher-forced log-likelihood of each row's labelled tokens (multiple-choice scoring)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmm.data.collate import Batch
from lmm.data.conversation import IGNORE_INDEX
from lmm.model.lmm import LMM


@torch.no_grad()
def labelled_logprobs(
    model: LMM, batches: Iterable[Batch], device: torch.device | str = "cpu"
) -> list[tuple[float, bool]]:
    """For every row of every batch, in order: (sum of log p(token) over its labelled tokens,
    whether greedy decoding would produce exactly those tokens). Batches must be right-padded."""
    results: list[tuple[float, bool]] = []
    for batch in batches:
        if not batch.rows:
            continue
        batch = batch.to(device)
        logprobs, greedy = model.token_scores(batch.labels, **batch.model_inputs(labels=False))  # [N], [N]: row by row
        counts = (
            (batch.labels[:, 1:] != IGNORE_INDEX).sum(1).tolist()
        )  # each row's labelled tokens (position t predicts t + 1)
        for row_logprobs, row_greedy in zip(logprobs.split(counts), greedy.split(counts), strict=True):
            results.append((float(row_logprobs.sum()), bool(row_greedy.all())))
    return results
