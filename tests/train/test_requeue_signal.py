"""On the preemption signal, a checkpoint is written at the next step, then submitit's handler runs."""

import os
import signal

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from lmm.build.factory import build_run
from lmm.build.stage import Stage
from lmm.train.checkpoint import AtomicCheckpoint, is_complete
from lmm.train.module import LMMModule
from lmm.train.slurm import CheckpointBeforeRequeue
from tests.conftest import compose_config


class Requeued(Exception):
    pass


class SignalAt(L.Callback):
    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)  # as SLURM does before a time limit


def test_checkpoint_then_requeue(data_root, tmp_path):
    cfg = compose_config([], data_root)
    model, processor = build_run(cfg)
    data = instantiate(cfg.data, seed=0, batch_size=4, num_workers=0)
    data.attach(processor, processor.tokenizer.pad_token_id)
    stream = iter(data.train_dataloader())
    batches = [next(stream) for _ in range(10)]
    calls = []

    def submitit_handler(signum, frame):  # stands in for submitit's checkpoint-and-requeue
        calls.append(signum)
        raise Requeued

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        last = tmp_path / "checkpoints" / "last.ckpt"
        trainer = L.Trainer(
            accelerator="cpu",
            max_steps=10,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[
                AtomicCheckpoint(
                    dirpath=tmp_path / "checkpoints", save_last=True, every_n_train_steps=100, save_top_k=0
                ),
                CheckpointBeforeRequeue(last),
                SignalAt(),
            ],
        )
        with pytest.raises(Requeued):
            trainer.fit(
                LMMModule(model, Stage(train={"connector": True, "llm": True}, optim={"lr": 1e-3})),
                DataLoader(batches, batch_size=None),
            )
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2]
    assert (
        is_complete(last) and torch.load(last, weights_only=False)["global_step"] == 4
    )  # the step in flight finished first
