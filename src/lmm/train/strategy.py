"""Distributed strategies: Lightning's choice, DDP, and FSDP2 (`fully_shard`) per layer.

    strategy=auto   single device, or DDP when trainer.devices > 1
    strategy=ddp    DistributedDataParallel
    strategy=fsdp   Lightning's ModelParallelStrategy with FSDP2 applied by `FSDP2Strategy.shard`

FSDP units: each LLM decoder layer, each vision block (the frozen tower in units of its own, so
its all-gathers never wait on trainable parameters), the connector, and the root (embeddings,
final norm, LM head). Trainable parameters are kept sharded in their load dtype (fp32 master
weights), frozen ones in the compute dtype `param_dtype`; `reduce_dtype` is the gradient
reduce-scatter dtype. The model is built on the meta device and filled from rank 0 after
sharding (lmm.build.meta). Checkpoints are written as
distributed (sharded) checkpoints; `lmm consolidate RUN_DIR` merges one.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def auto() -> str:
    """Let Lightning pick: single device, or DDP when more than one device is configured."""
    return "auto"


def _dtype(name: str, option: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"strategy.{option}={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy (data parallel only) whose module is sharded by `shard()`."""

    def __init__(
        self,
        param_dtype: str = "bfloat16",
        reduce_dtype: str = "float32",
        reshard_after_forward: bool = True,
        compile_layers: bool = False,
        **kwargs,
    ):
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size="auto", save_distributed_checkpoint=True, **kwargs
        )
        self.param_dtype, self.reduce_dtype = _dtype(param_dtype, "param_dtype"), _dtype(reduce_dtype, "reduce_dtype")
        self.reshard_after_forward, self.compile_layers = reshard_after_forward, compile_layers

    def setup_environment(self) -> None:
        # Pure data parallelism over every process (Lightning's "auto" would make the devices of
        # a node tensor-parallel).
        self._data_parallel_size, self._tensor_parallel_size = self.num_nodes * self.num_processes, 1
        super().setup_environment()

    def shard(self, model: nn.Module, device_mesh) -> None:
        """Apply fully_shard bottom-up: vision blocks, decoder layers, the AnyRes newline, connector, then the root."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        for p in model.parameters():  # frozen parts are held in the compute dtype; trained ones keep their master dtype
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(self.param_dtype)
        mesh = device_mesh["data_parallel"]
        policy = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=self.reduce_dtype)
        options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": self.reshard_after_forward}
        for block in model.vision.blocks():
            fully_shard(block, **options)
        for layer in decoder_layers(model.llm):
            if self.compile_layers:  # torch.compile per decoder layer (the layers share one graph)
                layer.compile()
            fully_shard(layer, **options)
        if (
            getattr(model.connector, "anyres_tokens", None) is not None
            and model.connector.anyres_tokens.newline is not None
        ):
            fully_shard(
                model.connector.anyres_tokens, **options
            )  # called outside the connector's forward: its own unit
        fully_shard(model.connector, **options)
        fully_shard(model, **options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        """Load a sharded checkpoint that holds only the trainable parameters (and their optimizer
        state); frozen weights stay as built. Returns the trainer state (meta.pt)."""
        from pathlib import Path

        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from lmm.train.checkpoint import LIGHTNING_METADATA

        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():  # a full single-file checkpoint: Lightning's own loader
            return super().load_checkpoint(path, weights_only=weights_only)
        trainable = self.lightning_module.trainable_keys()
        model_state = {k: v for k, v in get_model_state_dict(self.model).items() if k in trainable}
        dcp.load({"state_dict": model_state}, checkpoint_id=path)  # raises if a trainable tensor is missing
        set_model_state_dict(self.model, model_state, options=StateDictOptions(strict=False))
        for index, optimizer in enumerate(self.optimizers):
            state = {f"optimizer_{index}": get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(state, checkpoint_id=path)
            set_optimizer_state_dict(
                self.model,
                optimizer,
                optim_state_dict=state[f"optimizer_{index}"],
                options=StateDictOptions(cpu_offload=True),
            )
        return torch.load(path / LIGHTNING_METADATA, weights_only=weights_only)


def decoder_layers(llm: nn.Module) -> nn.ModuleList:
    """The decoder layers of a transformers causal LM (`model.layers` in Llama, Mistral, Qwen2, Phi),
    also inside a peft (LoRA) wrapper."""
    if hasattr(llm, "get_base_model"):  # PeftModel -> the transformers model it adapts
        llm = llm.get_base_model()
    base = getattr(llm, "model", llm)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(llm).__name__}: no decoder layers at .model.layers; FSDP cannot wrap it per layer")
    return layers


def fsdp(**kwargs) -> FSDP2Strategy:
    return FSDP2Strategy(**kwargs)
