"""Pretrain the embedded default's tiny tower (CLIP-style) and tiny LLM on synthetic scenes: one deterministic command.

    lmm pretrain-tiny [--out pretrained/tiny] [--placement free] [--tower-steps 400] [--high-res-steps 100]
                                [--llm-steps 800] [--seed 0]
    make pretrain-tiny

LLaVA starts from a contrastively pretrained CLIP tower and a pretrained, chat-tuned LLM; the
embedded default starts from their miniatures, written here from scenes that lmm.data.synthetic
draws with seeds of their own (never the benchmark's images):

    OUT/tokenizer/     byte-level BPE on the text corpus (with `<image>`)
    OUT/vision/        CLIPVisionModel (HF format) trained with CLIP's symmetric contrastive loss
                       against a tiny text encoder on (scene, its description) pairs, 64 px
    OUT/vision_128/    the same tower at 128 px: position embeddings interpolated, then trained on
                       (as CLIP's 336 px ViT-L/14 was made from the 224 px one)
    OUT/llm/           LlamaForCausalLM (HF format) trained on next-token prediction over text-only
                       chats about described scenes (the scene in words, then questions and answers:
                       what Vicuna brings to LLaVA, minus the image)
    OUT/llm_x2/        llm=tiny_x2's architecture (1.9x the parameters, as Vicuna-13B is to 7B)
                       trained on the same chats for as many steps
    OUT/pretrain.json  settings, losses, held-out image-to-text retrieval accuracy, seconds

The architectures are conf/vision/tiny.yaml's and conf/llm/{tiny,tiny_x2}.yaml's, so the results load
as `vision.pretrained` and `llm.model.pretrained` unchanged (vision=tiny_pretrained,
tiny_pretrained_128; llm=tiny_pretrained, tiny_x2_pretrained). Same arguments, same machine: the same
weights (CPU training is deterministic; other CPUs round differently).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lmm.core.config import CONF
from lmm.data.conversation import IMAGE_TOKEN, render
from lmm.data.image import ImageTransform
from lmm.data.synthetic import describe_scene, make_sample
from lmm.data.synthetic import render as render_scene
from lmm.data.tokenizer import train_tokenizer

CORPUS_SOURCES = ("vqa", "conversation", "ocr", "ocr_small", "region", "description", "caption")
TEXT_ENCODER = dict(
    hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128
)
MAX_TEXT_TOKENS = 128
MAX_CHAT_TOKENS = 256


def tower_arch() -> dict:
    """The `arch` of conf/vision/tiny.yaml."""
    return dict(OmegaConf.to_container(OmegaConf.load(CONF / "vision" / "tiny.yaml").arch))


def llm_arch(size: str) -> dict:
    """The model `arch` of conf/llm/<size>.yaml (a larger size's file overrides tiny's)."""
    arch = OmegaConf.load(CONF / "llm" / "tiny.yaml").model.arch
    if size != "tiny":
        arch = OmegaConf.merge(arch, OmegaConf.load(CONF / "llm" / f"{size}.yaml").model.arch)
    return dict(OmegaConf.to_container(arch))


def scene_text_pairs(rng: random.Random, n: int, placement: str) -> list[tuple]:
    """(image, description) pairs: object scenes (3 in 4) and written words (1 in 4, half of them small)."""
    pairs = []
    for i in range(n):
        draw = rng.random()
        source = "ocr" if draw < 0.125 else "ocr_small" if draw < 0.25 else "description"
        scene, _ = make_sample(rng, source, i, placement)
        pairs.append((render_scene(scene), describe_scene(scene)))
    return pairs


def text_chats(rng: random.Random, n: int, placement: str, template: str) -> list[str]:
    """Text-only chats: the scene described in words where LLaVA would put the image, then the
    synthetic mixture's questions and answers, rendered in the LLM's chat template."""
    chats = []
    for i in range(n):
        scene, record = make_sample(rng, CORPUS_SOURCES[i % len(CORPUS_SOURCES)], i, placement)
        turns = [dict(t) for t in record["conversations"]]
        turns[0]["value"] = turns[0]["value"].replace(IMAGE_TOKEN, describe_scene(scene)).strip()
        chats.append(render(template, turns))
    return chats


def batches(items: list, batch_size: int, steps: int, seed: int):
    """`steps` batches drawn from `items`, reshuffled every epoch (seeded)."""
    order: list[int] = []
    rng = random.Random(seed)
    for _ in range(steps):
        while len(order) < batch_size:
            epoch = list(range(len(items)))
            rng.shuffle(epoch)
            order += epoch
        yield [items[k] for k in order[:batch_size]]
        order = order[batch_size:]


def cosine_lr(optimizer: torch.optim.Optimizer, steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids (BOS ... EOS, right-padded) and the attention mask."""
    rows = [
        [
            tokenizer.bos_token_id,
            *tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 2],
            tokenizer.eos_token_id,
        ]
        for t in texts
    ]
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    return ids, mask


class ContrastivePair(nn.Module):
    """CLIP in miniature: the tower and a text encoder, each pooled and projected to a shared space."""

    def __init__(self, tower_arch: dict, vocab_size: int, bos: int, eos: int, pad: int):
        super().__init__()
        self.vision = CLIPVisionModel(CLIPVisionConfig(**tower_arch))
        self.text = CLIPTextModel(
            CLIPTextConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **TEXT_ENCODER)
        )
        width = tower_arch["hidden_size"]
        self.image_projection = nn.Linear(width, width, bias=False)
        self.text_projection = nn.Linear(TEXT_ENCODER["hidden_size"], width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(
            self.image_projection(self.vision(pixel_values=pixels).pooler_output), dim=-1
        )  # [B, D]

    def embed_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, Dt]
        last = mask.sum(1) - 1  # the EOS: pooled there, as CLIP pools at its end-of-text token
        return nn.functional.normalize(self.text_projection(hidden[torch.arange(len(ids)), last]), dim=-1)  # [B, D]

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = (
            self.logit_scale.exp().clamp(max=100) * self.embed_images(pixels) @ self.embed_texts(ids, mask).T
        )  # [B, B]
        targets = torch.arange(len(pixels))
        return (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2


def fit(model: nn.Module, loss_of, items: list, steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """`steps` AdamW steps (cosine schedule, 5% warm-up) on `loss_of(batch)`; the losses.
    Leaves `model` in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = cosine_lr(optimizer, steps, warmup=max(1, steps // 20))
    losses = []
    model.train()
    for batch in batches(items, batch_size, steps, seed):
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def contrastive_training(
    model: ContrastivePair,
    pairs: list[tuple],
    held_out: list[tuple],
    tokenizer,
    image_size: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict:
    """Train `model` with CLIP's loss on (image, text) pairs at `image_size`; the report's retrieval
    accuracy is over `held_out`."""
    vision_cfg = OmegaConf.load(CONF / "vision" / "tiny.yaml")
    transform = ImageTransform(image_size, vision_cfg.mean, vision_cfg.std, vision_cfg.image_aspect)
    pixels_of = lambda chunk: torch.stack([transform(image) for image, _ in chunk])  # noqa: E731  [B, 3, S, S]
    losses = fit(
        model,
        lambda batch: model.loss(pixels_of(batch), *tokenize(tokenizer, [text for _, text in batch], MAX_TEXT_TOKENS)),
        pairs,
        steps,
        batch_size,
        lr,
        seed,
    )
    texts = [t for _, t in held_out]
    with torch.no_grad():
        similarity = (
            model.embed_images(pixels_of(held_out)) @ model.embed_texts(*tokenize(tokenizer, texts, MAX_TEXT_TOKENS)).T
        )
    # A retrieved description counts when it is the right one or word-for-word the same text.
    hits = [texts[int(similarity[i].argmax())] == texts[i] for i in range(len(held_out))]
    words = [i for i, t in enumerate(texts) if t.startswith("The word")]
    return {
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "held_out_image_to_text_top1": round(sum(hits) / len(hits), 4),
        "held_out_words_top1": round(sum(hits[i] for i in words) / max(len(words), 1), 4),
        "held_out_pairs": len(held_out),
        "chance": round(1 / len(held_out), 4),
    }


def at_resolution(model: ContrastivePair, image_size: int) -> ContrastivePair:
    """A copy of `model` whose tower takes `image_size` images: the patch grid's position embeddings
    interpolated bicubically, as CLIP's 336 px ViT-L/14 was made from the 224 px one (then trained on)."""
    wider = copy.deepcopy(model)
    config = CLIPVisionConfig(**{**model.vision.config.to_dict(), "image_size": image_size})
    wider.vision = CLIPVisionModel(config)
    state = model.vision.state_dict()
    key = next(k for k in state if k.endswith("position_embedding.weight"))
    table = state[key]  # [1 + G*G, D]
    grid, width = int(math.isqrt(table.shape[0] - 1)), table.shape[1]
    new_grid = image_size // config.patch_size
    patches = table[1:].reshape(1, grid, grid, width).permute(0, 3, 1, 2)  # [1, D, G, G]
    patches = nn.functional.interpolate(patches, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    state[key] = torch.cat([table[:1], patches.permute(0, 2, 3, 1).reshape(-1, width)])
    missing, unexpected = wider.vision.load_state_dict(state, strict=False)
    if unexpected or any("position_ids" not in k for k in missing):  # (position_ids: a buffer of the new size)
        raise RuntimeError(f"tower weights do not fit at {image_size} px: missing {missing}, unexpected {unexpected}")
    return wider


def pretrain_llm(
    chats: list[str], held_out: list[str], tokenizer, size: str, steps: int, batch_size: int, lr: float, seed: int
) -> tuple[LlamaForCausalLM, dict]:
    arch = llm_arch(size)
    arch.pop("model_type")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(
        LlamaConfig(
            **arch,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )

    def loss_of(texts: list[str]) -> torch.Tensor:
        ids, mask = tokenize(tokenizer, texts, MAX_CHAT_TOKENS)
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    losses = fit(model, loss_of, chats, steps, batch_size, lr, seed)
    with torch.no_grad():
        held_out_loss = float(loss_of(held_out))
    return model, {
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
        "held_out_loss": round(held_out_loss, 4),
    }


TOWER_BATCH, HIGH_RES_BATCH, LLM_BATCH = 128, 64, 32
HIGH_RES = 128
LLMS = (("tiny", "llm"), ("tiny_x2", "llm_x2"))  # (conf/llm size, directory under OUT)


@dataclasses.dataclass(frozen=True)
class Settings:
    """`make pretrain-tiny`'s settings (the defaults); the shipped pretrained/tiny/pretrain.json records them."""

    placement: str = "free"
    seed: int = 0
    tower_steps: int = 400
    high_res_steps: int = 100
    llm_steps: int = 800  # both LLMs: the larger one differs from the tiny one in size alone


DEFAULT_SETTINGS = dataclasses.asdict(Settings())


def pretrain_tiny(
    out: Path, settings: Settings = Settings(), pairs: int = 8000, chats: int = 12000, held_out: int = 512
) -> dict:
    """Write OUT/{tokenizer,vision,vision_128,llm,llm_x2,pretrain.json}; returns what pretrain.json holds."""
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name], clock = round(time.perf_counter() - clock, 1), time.perf_counter()

    out, seed = Path(out), settings.seed
    template = OmegaConf.load(CONF / "llm" / "tiny.yaml").template
    # Seeds of their own (the benchmark's splits use seed * 1000 + split index).
    image_pairs = scene_text_pairs(random.Random(10_000 + seed), pairs + held_out, settings.placement)
    corpus = text_chats(random.Random(20_000 + seed), chats + held_out // 2, settings.placement, template)
    tokenizer = train_tokenizer(corpus + [text for _, text in image_pairs], out / "tokenizer")
    lap("tokenizer_and_data")
    train, held_out_pairs = image_pairs[:pairs], image_pairs[pairs:]
    arch = tower_arch()
    torch.manual_seed(seed)
    pair = ContrastivePair(arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    report: dict = {
        "vision": contrastive_training(
            pair, train, held_out_pairs, tokenizer, arch["image_size"], settings.tower_steps, TOWER_BATCH, 2e-3, seed
        )
    }
    pair.vision.save_pretrained(out / "vision")
    lap("vision")
    wide = at_resolution(pair, HIGH_RES)
    report["vision_128"] = contrastive_training(
        wide, train, held_out_pairs, tokenizer, HIGH_RES, settings.high_res_steps, HIGH_RES_BATCH, 5e-4, seed + 1
    )
    wide.vision.save_pretrained(out / f"vision_{HIGH_RES}")
    lap(f"vision_{HIGH_RES}")
    for size, name in LLMS:
        llm, report[name] = pretrain_llm(
            corpus[:chats], corpus[chats:], tokenizer, size, settings.llm_steps, LLM_BATCH, 3e-3, seed
        )
        llm.save_pretrained(out / name)
        lap(name)
    report = {
        "settings": {
            **dataclasses.asdict(settings),
            "image_text_pairs": pairs,
            "chats": chats,
            "tower_batch": TOWER_BATCH,
            "high_res_batch": HIGH_RES_BATCH,
            "llm_batch": LLM_BATCH,
        },
        **report,
        "seconds": seconds,
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pretrained/tiny"))
    for name, value in DEFAULT_SETTINGS.items():
        if name == "placement":
            parser.add_argument("--placement", choices=("grid", "free"), default=value)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    report = pretrain_tiny(args.out, Settings(**{name: getattr(args, name) for name in DEFAULT_SETTINGS}))
    print(json.dumps(report, indent=2))
    print(f"[lmm] tiny tower and LLM in {args.out}")
    return report


if __name__ == "__main__":
    main()
