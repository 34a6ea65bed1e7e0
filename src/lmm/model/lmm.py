"""The LLaVA-style model: vision tower -> connector -> visual tokens written into the LLM's input."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import GenerationConfig
from transformers.modeling_outputs import CausalLMOutputWithPast

from lmm.data.anyres import AnyRes
from lmm.model.anyres import AnyResTokens
from lmm.model.connectors import Connector
from lmm.model.connectors.base import budget_side, pool_grid
from lmm.model.loss import IGNORE_INDEX, LOSSES, causal_lm_loss, labelled_token_scores, output_head, shifted_targets
from lmm.model.vision import VisionTower

COMPONENTS = ("vision", "connector", "llm")


class LMM(nn.Module):
    """Vision tower, connector and LLM.

    [Contract] Every image occupies exactly `image_tokens(height, width)` placeholder ids
    (`image_token_id`) in `input_ids`, one per visual token, as HF Llava does: `num_image_tokens`
    for every image, or under AnyRes (`anyres`, LLaVA-NeXT's tiling) a count its size fixes; so
    sequence lengths are known before the model runs. Placeholder ids never reach the embedding
    table, so the image token may lie outside the LLM's vocabulary.
    """

    def __init__(
        self,
        vision: VisionTower,
        connector: Connector,
        llm: nn.Module,
        image_token_id: int,
        anyres: AnyRes | None = None,
        loss: str = "plain",
        tokens: int | None = None,
    ):
        """`loss`: "fused" computes the loss from the final hidden states in chunks, never holding
        [B, T, V] logits (lmm.model.loss); "plain" takes transformers' loss on the full logits.
        `tokens`: the visual-token budget per view (`connector.tokens`). A connector that does not
        emit that many itself must be a grid connector, whose token grid is then average-pooled
        to √tokens × √tokens (pool_grid; no parameters)."""
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        self.vision, self.connector, self.llm = vision, connector, llm
        self.pooled_side = self._budget_side(tokens)
        self.image_token_id, self.anyres, self.loss_path = image_token_id, anyres, loss
        if loss == "fused":
            output_head(llm)  # a head the fused loss cannot compute fails here, before any work
        if anyres is not None and anyres.pool > 1 and self.token_grid_side is None:
            raise ValueError(
                f"anyres.tile_pool={anyres.pool} pools a grid of tokens, but {type(connector).__name__}'s "
                f"{self.num_image_tokens} tokens are not one: use tile_pool=1 or a grid connector (linear, mlp, "
                "pixel_shuffle, ...)"
            )
        if anyres is not None:
            self.connector.anyres_tokens = AnyResTokens(anyres, llm.config.hidden_size, self.token_grid_side)
        # Counting placeholders reads a value from the batch; lmm.analysis.simulate runs on fake tensors,
        # which have no values, and builds its batches with the right count by construction.
        # For the same reason it has the fused loss project every position (static shapes).
        self.check_placeholders = True
        self.loss_all_positions = False

    def _budget_side(self, tokens: int | None) -> int | None:
        """The side the connector's token grid is pooled to, or None when it emits the budget itself."""
        native = self.connector.num_tokens(self.vision.num_patches)
        if tokens is None or tokens == native:
            return None
        name = type(self.connector).__name__
        if not self.connector.spatial:
            raise ValueError(f"connector.tokens={tokens}: {name} emits {native} tokens and they are not a grid to pool")
        if tokens > native:
            raise ValueError(
                f"connector.tokens={tokens} exceeds the {native} tokens {name} makes from "
                f"{self.vision.num_patches} patches: a budget reduces them (raise the resolution for more)"
            )
        return budget_side(tokens)

    @property
    def num_image_tokens(self) -> int:
        """Visual tokens of one view (of every image, without AnyRes)."""
        if self.pooled_side is not None:
            return self.pooled_side**2
        return self.connector.num_tokens(self.vision.num_patches)

    @property
    def token_grid_side(self) -> int | None:
        """The side of the square grid a spatial connector's tokens form (None: not a grid)."""
        side = math.isqrt(self.num_image_tokens)
        return side if self.connector.spatial and side * side == self.num_image_tokens else None

    def image_tokens(self, height: int, width: int) -> int:
        """Visual tokens of an image of this size."""
        if self.anyres is None:
            return self.num_image_tokens
        return self.anyres.num_tokens(height, width, self.num_image_tokens, self.token_grid_side)

    def expected_placeholders(self, pixels: torch.Tensor | None, image_sizes: torch.Tensor | None) -> int:
        """Placeholder ids a batch with these images must hold."""
        if pixels is None:
            return 0
        if self.anyres is None:
            return pixels.shape[0] * self.num_image_tokens
        if image_sizes is None:
            raise ValueError(
                "vision.image_aspect=anyres needs image_sizes [I, 2] with the pixel_values (the Collator makes them)"
            )
        return sum(self.image_tokens(h, w) for h, w in image_sizes.tolist())

    def set_trainable(self, train: dict[str, bool], vision_last_blocks: int | None = None) -> None:
        """Freeze/unfreeze components for a stage; `vision_last_blocks=k` trains only the tower's last k blocks."""
        unknown = set(train) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"stage.train has unknown components {sorted(unknown)}; known: {COMPONENTS}")
        for name in COMPONENTS:
            getattr(self, name).requires_grad_(bool(train.get(name, False)))
        used = set(map(id, self.vision.used_blocks()))
        for block in self.vision.blocks():  # blocks after the selected layer never get a gradient
            if id(block) not in used:
                block.requires_grad_(False)
        if vision_last_blocks:
            blocks = self.vision.used_blocks()
            if not 0 < vision_last_blocks <= len(blocks):
                raise ValueError(
                    f"stage.vision_last_blocks={vision_last_blocks} but the tower has {len(blocks)} blocks up to "
                    f"its selected layer (vision.select_layer={self.vision.select_layer})"
                )
            for block in blocks[-vision_last_blocks:]:
                block.requires_grad_(True)
        if not any(p.requires_grad for p in self.parameters()):
            raise ValueError("the stage trains nothing: set at least one of stage.train.{vision,connector,llm}")

    def encode_images(
        self,
        pixels: torch.Tensor,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """pixels [V, 3, H, W] (+ the instruction [V, L] for instruction-aware connectors) -> visual tokens
        [V, N, D]."""
        vision_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(vision_trains and torch.is_grad_enabled()):
            features = self.vision(pixels)  # [I, P, Dv]
        if self.connector.uses_instruction:
            if instruction_ids is None:
                raise ValueError(f"{type(self.connector).__name__} needs instruction_ids (the question for each image)")
            tokens = self.connector(features, instruction_ids=instruction_ids, instruction_mask=instruction_mask)
        else:
            tokens = self.connector(features)  # [I, N, D]
        return tokens if self.pooled_side is None else pool_grid(tokens, self.pooled_side)  # [I, budget, D]

    def embed(
        self,
        input_ids: torch.Tensor,
        pixels: torch.Tensor | None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        always_encode: bool = False,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T] (+ pixels [V, 3, H, W]: one view per image, or under AnyRes each
        image's overview and tiles, with image_sizes [I, 2]) -> input embeddings [B, T, D].

        `always_encode`: a batch without images still runs the tower and connector (and AnyRes's
        arrangement), on one zero image whose tokens are added with weight 0 (LLaVA's dummy image for text-only
        samples).
        Training needs it: under DDP and FSDP the connector's gradient reduction and the tower's
        all-gathers are collectives, so every rank must run the same modules every step."""
        image_mask = input_ids == self.image_token_id  # [B, T]
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(image_mask, 0))  # [B, T, D]
        if self.check_placeholders:
            expected = self.expected_placeholders(pixels, image_sizes)
            if int(image_mask.sum()) != expected:
                raise ValueError(
                    f"batch has {int(image_mask.sum())} image placeholder ids but its images make {expected} visual "
                    "tokens "
                    f"({self.num_image_tokens} per view): the tokenizer's image_tokens must equal the model's "
                    "image_tokens()"
                )
        if pixels is None and always_encode:  # one zero image of the tower's size (under AnyRes, its views)
            size = self.vision.image_size
            views = 1 if self.anyres is None else self.anyres.num_views(size, size)
            dummy = torch.zeros((views, 3, size, size), device=embeds.device)  # [V, 3, S, S]
            ids = (
                torch.zeros((1, 1), dtype=torch.long, device=embeds.device) if self.connector.uses_instruction else None
            )
            visual = self._visual_tokens(
                dummy, torch.tensor([[size, size]]), ids, None if ids is None else torch.ones_like(ids)
            )
            return embeds + 0.0 * visual.sum().to(embeds.dtype)
        if pixels is not None:
            visual = self._visual_tokens(pixels, image_sizes, instruction_ids, instruction_mask).to(
                embeds.dtype
            )  # [Σ tokens, D]
            embeds = embeds.masked_scatter(image_mask.unsqueeze(-1), visual)
        return embeds

    def _visual_tokens(
        self,
        pixels: torch.Tensor,
        image_sizes: torch.Tensor | None,
        instruction_ids: torch.Tensor | None,
        instruction_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The images' visual tokens one after another [Σ tokens, D]: each view's, or under AnyRes
        each image's views arranged (AnyResTokens, called once per batch)."""
        if self.anyres is None:
            visual = self.encode_images(pixels, instruction_ids, instruction_mask)  # [I, N, D]
            return visual.reshape(-1, visual.shape[-1])
        sizes = image_sizes.tolist()
        if instruction_ids is not None:  # every view of an image reads its question
            views = torch.tensor([self.anyres.num_views(h, w) for h, w in sizes], device=instruction_ids.device)
            instruction_ids, instruction_mask = (
                instruction_ids.repeat_interleave(views, 0),
                instruction_mask.repeat_interleave(views, 0),
            )
        return self.connector.anyres_tokens(
            self.encode_images(pixels, instruction_ids, instruction_mask), sizes
        )  # [V, N, D] -> [Σ T, D]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        cu_seq_lens_q: torch.Tensor | None = None,
        cu_seq_lens_k: torch.Tensor | None = None,
        max_length_q: int | None = None,
        max_length_k: int | None = None,
        always_encode: bool = False,
    ):
        """Returns the HF CausalLMOutput; `.loss` is the mean over label tokens (−100 ignored).
        A packed batch comes with attention_mask=None, position ids restarting per sample and the
        sample boundaries (`cu_seq_lens_q/k` offsets, `max_length_q/k`), read by the attention.
        `always_encode`: see `embed` (the training module sets it)."""
        embeds = self.embed(input_ids, pixel_values, instruction_ids, instruction_mask, always_encode, image_sizes)
        packed = dict(
            cu_seq_lens_q=cu_seq_lens_q,
            cu_seq_lens_k=cu_seq_lens_k,
            max_length_q=max_length_q,
            max_length_k=max_length_k,
        )
        if labels is not None and self.loss_path == "fused":
            hidden = self.final_hidden(embeds, attention_mask, position_ids, **packed)  # [B, T, D]
            return CausalLMOutputWithPast(
                loss=causal_lm_loss(hidden, labels, output_head(self.llm), self.loss_all_positions)
            )
        # No KV cache in a training forward: packed attention needs the whole row at once.
        return self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            use_cache=False,
            **packed,
        )

    def final_hidden(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **packed,
    ) -> torch.Tensor:
        """The LLM's last hidden states [B, T, D] (after its final norm), before the output projection."""
        return self.llm.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **packed
        ).last_hidden_state

    @torch.no_grad()
    def token_scores(self, labels: torch.Tensor, **inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """For each labelled token, row by row: its log-probability [N] and whether greedy decoding
        picks it [N] (teacher-forced; without [B, T, V] logits under model.loss=fused)."""
        if self.loss_path == "fused":
            image = ("input_ids", "pixel_values", "instruction_ids", "instruction_mask", "image_sizes")
            embeds = self.embed(*(inputs.get(key) for key in image[:4]), image_sizes=inputs.get("image_sizes"))
            hidden = self.final_hidden(embeds, **{key: value for key, value in inputs.items() if key not in image})
            return labelled_token_scores(hidden, labels, output_head(self.llm))
        logprobs = torch.log_softmax(self(**inputs).logits.float(), dim=-1)  # [B, T, V]
        targets = shifted_targets(labels)  # position t predicts token t + 1
        keep = targets != IGNORE_INDEX
        token_logprobs = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, T]
        return token_logprobs[keep], (logprobs.argmax(-1) == targets)[keep]

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
        instruction_ids: torch.Tensor | None = None,
        instruction_mask: torch.Tensor | None = None,
        streamer=None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Batched decoding with a KV cache; inputs must be LEFT-padded. Returns new ids [B, ≤max_new].
        `streamer`: a transformers streamer (e.g. TextStreamer) that receives tokens as they come."""
        embeds = self.embed(input_ids, pixel_values, instruction_ids, instruction_mask, image_sizes=image_sizes)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            eos_token_id=eos_token_ids,
            pad_token_id=pad_token_id,
        )
        return self.llm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, generation_config=config, streamer=streamer
        )
