"""Teacher-forced log-likelihood of each row's labelled tokens (multiple-choice scoring)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lmm.data.collate import Batch
from lmm.data.conversation import IGNORE_INDEX
from lmm.model.lmm import LMM


@torch.no_grad()
def labelled_logprobs(model: LMM, batches: Iterable[Batch], device: torch.device | str = "cpu") -> list[tuple[float, bool]]:
    """For every row of every batch, in order: (sum of log p(token) over its labelled tokens,
    whether greedy decoding would produce exactly those tokens). Batches must be right-padded."""
    results: list[tuple[float, bool]] = []
    for batch in batches:
        if not batch.rows:
            continue
        batch = batch.to(device)
        logits = model(**batch.model_inputs(labels=False)).logits.float()  # [B, T, V]
        # Position t predicts token t + 1.
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)  # [B, T-1, V]
        targets = batch.labels[:, 1:]  # [B, T-1]
        scored = targets != IGNORE_INDEX
        token_logprobs = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T-1]
        greedy = logprobs.argmax(-1) == targets
        for row in range(targets.shape[0]):
            keep = scored[row]
            results.append((float(token_logprobs[row][keep].sum()), bool(greedy[row][keep].all())))
    return results
