"""A training stage (conf/stage/, built by `_target_`): what learns, LoRA, the template, the optimiser.

`Stage.apply` is the one place a stage changes a model (freezing, the partial tower, LoRA
adapters); training, the final save, checkpoint consolidation and `task=describe` all call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lmm.model.lmm import COMPONENTS, LMM


@dataclass
class Optim:
    """AdamW with linear warmup and cosine decay (LLaVA's schedule); one lr per component if given."""

    lr: float
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    betas: tuple[float, float] = (0.9, 0.999)
    component_lr: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.betas = tuple(self.betas)
        self.component_lr = dict(self.component_lr or {})
        unknown = set(self.component_lr) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"stage.optim.component_lr names {sorted(unknown)}; components are {COMPONENTS}")


@dataclass
class Stage:
    """One stage of a recipe. `train` names the components that learn (LLaVA pretrain:
    connector; finetune: connector + llm); `vision_last_blocks=k` also trains the tower's last k
    used blocks; `lora` ({r, alpha, dropout, target_modules}) puts peft adapters on the LLM."""

    train: dict[str, bool]
    optim: Optim | dict
    name: str = "stage"
    template: str = "plain"
    init_from: str | None = None  # a finished run (or safetensors file) whose connector starts this stage
    vision_last_blocks: int | None = None
    global_batch_size: int | None = None  # lmm.run.plan
    epochs: float | None = None
    lora: dict | None = None

    def __post_init__(self):
        self.train = dict(self.train)
        if isinstance(self.optim, dict):
            self.optim = Optim(**self.optim)
        self.lora = dict(self.lora) if self.lora else None
        unknown = set(self.lora or {}) - {"r", "alpha", "dropout", "target_modules"}
        if unknown or (self.lora and not {"r", "alpha"} <= set(self.lora)):
            raise ValueError(f"stage.lora={self.lora}: needs r and alpha; may set dropout and target_modules")

    def apply(self, model: LMM) -> LMM:
        """Freeze what this stage does not train and add its LoRA adapters (on the LLM's linear
        layers, not the LM head; peft freezes the base weights under them)."""
        model.set_trainable(self.train, self.vision_last_blocks)
        if self.lora:
            from peft import LoraConfig, get_peft_model

            lora = {"dropout": 0.05, "target_modules": "all-linear", **self.lora}
            config = LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            )
            model.llm = get_peft_model(model.llm, config)
        return model

    @staticmethod
    def merge(model: LMM) -> LMM:
        """Fold LoRA adapters into the base weights (a plain transformers LLM again), if any."""
        if hasattr(model.llm, "merge_and_unload"):
            model.llm = model.llm.merge_and_unload()
        return model

    def load_trained(
        self, model: LMM, state: dict[str, torch.Tensor], strict: bool = True, assign: bool = False
    ) -> LMM:
        """`model` as built before this stage, with a state this stage trained: adapters added so
        the keys match, the state loaded, adapters merged (the tensors final.safetensors holds)."""
        self.apply(model)
        if not strict:
            unknown = set(state) - set(model.state_dict())
            if unknown:
                raise ValueError(f"the trained state has tensors the run's model does not: {sorted(unknown)[:3]}")
        model.load_state_dict(state, strict=strict, assign=assign)
        return self.merge(model)


def stage_of(cfg: DictConfig) -> Stage:
    """The configured stage as an object (configs saved before stages had a `_target_` too).
    `init_from` is None where it cannot be resolved: an experiment's path to its pretrain run
    names Hydra's run directory, unknown outside a Hydra app (task=describe of a recipe)."""
    init_from = OmegaConf.select(cfg, "stage.init_from", throw_on_resolution_failure=False)
    target = cfg.stage.get("_target_", f"{Stage.__module__}.{Stage.__qualname__}")
    return instantiate(cfg.stage, _target_=target, _convert_="all", init_from=init_from)
