"""The training progress bar: the stage and its steps, not "Epoch 0/-2".

Training streams are infinite and the Trainer counts steps (max_epochs=-1), which Lightning's
bar renders as "Epoch 0/-2"; this one names the stage instead, e.g. "finetune 120/700 0:01:02 • 0:04:49".
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StageProgressBar(RichProgressBar):
    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def _get_train_description(self, current_epoch: int) -> str:
        return self.stage
