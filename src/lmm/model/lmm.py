"""The LLaVA-style model: vision tower -> connector -> visual tokens written into the LLM's input."""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationConfig

from lmm.model.connectors import Connector
from lmm.model.vision import VisionTower


class LMM(nn.Module):
    """Vision tower, connector and LLM.

    [Contract] Every image occupies exactly `num_image_tokens` placeholder ids
    (`image_token_id`) in `input_ids`, one per visual token, as HF Llava does; so sequence
    lengths are known before the model runs. Placeholder ids never reach the embedding
    table, so the image token may lie outside the LLM's vocabulary.
    """

    def __init__(self, vision: VisionTower, connector: Connector, llm: nn.Module, image_token_id: int):
        super().__init__()
        self.vision, self.connector, self.llm = vision, connector, llm
        self.image_token_id = image_token_id

    @property
    def num_image_tokens(self) -> int:
        return self.connector.num_tokens(self.vision.num_patches)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [I, 3, H, W] -> visual tokens [I, N, D]."""
        vision_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
            features = self.vision(pixels)  # [I, P, Dv]
        return self.connector(features)  # [I, N, D]

    def embed(self, input_ids: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """input_ids [B, T] (+ pixels [I, 3, H, W]) -> input embeddings [B, T, D]."""
        image_mask = input_ids == self.image_token_id  # [B, T]
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))  # [B, T, D]
        num_images = 0 if pixels is None else pixels.shape[0]
        expected = num_images * self.num_image_tokens
        if int(image_mask.sum()) != expected:
            raise ValueError(
                f"batch has {int(image_mask.sum())} image placeholder ids but {num_images} images × "
                f"{self.num_image_tokens} tokens = {expected}: the tokenizer's image_tokens must equal "
                "connector.num_tokens(vision.num_patches)"
            )
        if num_images:
            visual = self.encode_images(pixels).to(embeds.dtype)  # [I, N, D]
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), visual.reshape(-1, visual.shape[-1]))
        return embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ):
        """Returns the HF CausalLMOutput; `.loss` is the mean over label tokens (−100 ignored)."""
        embeds = self.embed(input_ids, pixel_values)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, position_ids=position_ids)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        max_new_tokens: int,
        eos_token_ids: list[int],
        pad_token_id: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> torch.Tensor:
        """Batched decoding with a KV cache; inputs must be LEFT-padded. Returns new ids [B, ≤max_new]."""
        embeds = self.embed(input_ids, pixel_values)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            eos_token_id=eos_token_ids,
            pad_token_id=pad_token_id,
        )
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config)
