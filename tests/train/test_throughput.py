"""Model FLOPs per step follow the stage: frozen parts forward only, gradients only where they flow."""

import pytest
import torch

from lmm.build.model import build_model
from lmm.train.throughput import FlopCounter, peak_flops
from tests.conftest import compose_config


def counter(vision=(0, 0), connector=(0, 0), llm=(0, 0)):
    return FlopCounter(vision=vision, connector=connector, llm=llm, patches=4, llm_layers=2, llm_width=8)


def test_pretrain_stage_flops_by_hand():
    # Frozen tower: forward only (2N per patch token); trained connector: 6N; frozen LLM with a
    # trained connector upstream: forward + input gradients (4N per token), attention ×3.
    flops = counter(vision=(100, 0), connector=(10, 10), llm=(1000, 0)).step_flops([5, 3], images=2)
    vision = 2 * 4 * 2 * 100
    connector = 2 * 4 * 6 * 10
    llm = 8 * 4 * 1000
    attention = 3 * 4 * 2 * 8 * (25 + 9)
    assert flops == vision + connector + llm + attention


def test_finetune_and_frozen_everything():
    finetune = counter(vision=(100, 0), connector=(10, 10), llm=(1000, 1000)).step_flops([5], images=1)
    assert finetune == 2 * 4 * 100 + 6 * 4 * 10 + 6 * 5 * 1000 + 3 * 4 * 2 * 8 * 25
    # Only the LLM trains: nothing upstream needs gradients.
    llm_only = counter(vision=(100, 0), connector=(10, 0), llm=(1000, 1000)).step_flops([5], images=1)
    assert llm_only == 2 * 4 * 100 + 2 * 4 * 10 + 6 * 5 * 1000 + 3 * 4 * 2 * 8 * 25
    # A partly trained tower: forward over all of it, backward through its trained part.
    partial = counter(vision=(100, 30), connector=(10, 0), llm=(1000, 0)).step_flops([5], images=1)
    assert partial == 4 * (2 * 100 + 4 * 30) + 4 * 4 * 10 + 4 * 5 * 1000 + 3 * 4 * 2 * 8 * 25


def test_counts_from_the_model_leave_out_the_embedding_table():
    cfg = compose_config(["stage=pretrain"])
    model = build_model(cfg, image_token_id=4)
    model.set_trainable(dict(cfg.stage.train))
    flops = FlopCounter.from_model(model)
    embedding = model.llm.get_input_embeddings().weight.numel()
    llm_total = sum(p.numel() for p in model.llm.parameters())
    tied = model.llm.get_output_embeddings().weight is model.llm.get_input_embeddings().weight
    assert flops.llm == (llm_total - (0 if tied else embedding), 0)
    assert flops.connector == (sum(p.numel() for p in model.connector.parameters()),) * 2
    assert flops.vision[1] == 0 and flops.patches == model.vision.num_patches
    assert flops.llm_layers == model.llm.config.num_hidden_layers


def test_peak_flops_only_for_known_gpus_in_16_bit():
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        expected = pytest.approx(989e12) if "H100" in name and "PCIe" not in name else None
        if expected is not None:
            assert peak_flops(torch.device("cuda"), "bf16-mixed") == expected
        assert peak_flops(torch.device("cuda"), "32-true") is None
