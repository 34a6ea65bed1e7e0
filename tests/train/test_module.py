"""The stage decides what trains; the schedule is warmup then cosine; only trainable params reach AdamW."""

import pytest

from lmm.build.model import build_model
from lmm.build.stage import Stage, stage_of
from lmm.data.collate import Batch
from lmm.train.module import LMMModule, warmup_cosine
from tests.conftest import compose_config


def stage(train: dict, lr: float = 1e-3, **options) -> Stage:
    return Stage(train=train, optim={"lr": lr}, **options)


def test_warmup_cosine():
    assert warmup_cosine(0, 100, 4) == pytest.approx(0.25)
    assert warmup_cosine(3, 100, 4) == pytest.approx(1.0)
    assert warmup_cosine(4, 100, 4) == pytest.approx(1.0)
    assert warmup_cosine(52, 100, 4) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 4) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def model():
    return build_model(compose_config([]), image_token_id=4)


@pytest.mark.parametrize(
    "stage,trainable",
    [("pretrain", {"connector"}), ("finetune", {"connector", "llm"})],
)
def test_stage_freezes(model, stage, trainable):
    cfg = compose_config([f"stage={stage}"])
    module = LMMModule(model, stage_of(cfg))
    for name in ("vision", "connector", "llm"):
        flags = {p.requires_grad for p in getattr(model, name).parameters()}
        assert flags == {name in trainable}, name
    module.train()
    assert not model.vision.training  # frozen parts stay in eval mode
    assert model.connector.training


def test_optimizer_gets_only_trainable(model):
    module = LMMModule(model, stage({"connector": True}))

    class FakeTrainer:
        max_steps = 10

    module._trainer = FakeTrainer()  # configure_optimizers reads max_steps only
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert sum(p.numel() for p in params) == sum(p.numel() for p in model.connector.parameters())


def test_stage_that_trains_nothing_is_rejected(model):
    with pytest.raises(ValueError, match="trains nothing"):
        LMMModule(model, stage({"connector": False}))
    with pytest.raises(ValueError, match="unknown components"):
        LMMModule(model, stage({"projector": True}))


def test_partial_tower_fine_tuning(model):
    LMMModule(model, stage({"connector": True}, vision_last_blocks=1))
    blocks = model.vision.blocks()
    # select_layer=-2 (LLaVA): the last block feeds nothing, so the last *used* block trains.
    assert all(p.requires_grad for p in blocks[-2].parameters())
    assert not any(p.requires_grad for b in [*blocks[:-2], blocks[-1]] for p in b.parameters())
    assert not model.vision.model.embeddings.patch_embedding.weight.requires_grad
    with pytest.raises(ValueError, match="vision_last_blocks=9"):
        LMMModule(model, stage({"connector": True}, vision_last_blocks=9))


def test_lora_adapters_merge_into_plain_weights(data_root):
    import torch

    cfg = compose_config([], data_root)
    model = build_model(cfg, image_token_id=4)
    lora = Stage(
        train={"connector": True},
        optim={"lr": 2e-4, "component_lr": {"connector": 2e-5}},
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
    )
    module = LMMModule(model, lora)
    adapters = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n in adapters)  # the base LLM stays frozen
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero: make the adapters do something

    class FakeTrainer:
        max_steps = 10

    module._trainer = FakeTrainer()
    groups = {g["name"]: g["lr"] for g in module.configure_optimizers()["optimizer"].param_groups}
    assert groups == {"connector": 2e-5, "llm": 2e-4}
    ids = torch.randint(5, 200, (2, 12))
    with torch.no_grad():
        adapted = model.llm(input_ids=ids).logits
        Stage.merge(model)
        merged = model.llm(input_ids=ids).logits
    assert not any("lora" in key for key in model.llm.state_dict())
    assert torch.allclose(adapted, merged, atol=1e-5)


def test_every_collective_gets_tensors_on_the_module_device(model):
    """NCCL has no CPU path: a tensor handed to a collective must live on the module's device.
    The default device is set to meta here, so any tensor made without `device=` lands elsewhere."""
    import torch

    class RecordingStrategy:
        def __init__(self):
            self.devices = []

        def all_gather(self, tensor):
            self.devices.append(tensor.device)
            return tensor[None]

        def reduce(self, tensor, reduce_op=None):
            self.devices.append(tensor.device)
            return tensor

    class FakeTrainer:
        strategy, world_size, global_step, precision = RecordingStrategy(), 1, 0, "32-true"

    module = LMMModule(model, stage({"connector": True}))
    module._trainer = FakeTrainer()
    batch = Batch(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]]), seen=2, skipped={"image": 1})
    loss = torch.tensor(1.5)
    trainer = FakeTrainer()
    with torch.device("meta"):
        module.skips.on_train_batch_start(trainer, module, batch, 0)
        module.throughput.on_train_batch_start(trainer, module, batch, 0)
        module._agree_on_loss(loss)
        module.throughput.cost_summary(trainer, module)
    assert (
        len(FakeTrainer.strategy.devices) == 4
    )  # batch facts, the step's work (world totals), loss finiteness, model-load memory
    assert set(FakeTrainer.strategy.devices) == {module.device}
    assert (module.skips.seen_total, module.skips.skipped_total) == (2, 1)
