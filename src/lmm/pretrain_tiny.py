"""Pretrain the embedded default's tiny tower (CLIP-style) and tiny LLM on synthetic scenes: one deterministic command.

    python -m lmm.pretrain_tiny [--out pretrained/tiny] [--placement free] [--tower-steps 400] [--llm-steps 800]
    make pretrain-tiny

LLaVA starts from a contrastively pretrained CLIP tower and a pretrained, chat-tuned LLM; the
embedded default starts from their miniatures, written here from scenes that lmm.data.synthetic
draws with seeds of their own (never the benchmark's images):

    OUT/tokenizer/     byte-level BPE on the text corpus (with `<image>`)
    OUT/vision/        CLIPVisionModel (HF format) trained with CLIP's symmetric contrastive loss
                       against a tiny text encoder on (scene, its description) pairs
    OUT/llm/           LlamaForCausalLM (HF format) trained on next-token prediction over text-only
                       chats about described scenes (the scene in words, then questions and answers:
                       what Vicuna brings to LLaVA, minus the image)
    OUT/pretrain.json  settings, losses, held-out image-to-text retrieval accuracy, seconds

The architectures are conf/vision/tiny.yaml's and conf/llm/tiny.yaml's, so the results load as
`vision.pretrained` and `llm.model.pretrained` unchanged. Same arguments, same machine: the same
weights (CPU training is deterministic; other CPUs round differently).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lmm.data.conversation import IMAGE_TOKEN, render
from lmm.data.image import ImageTransform
from lmm.data.synthetic import describe_scene, make_sample, render as render_scene
from lmm.data.tokenizer import train_tokenizer

CONF = Path(__file__).resolve().parents[2] / "conf"
CORPUS_SOURCES = ("vqa", "ocr", "region", "description", "caption")
TEXT_ENCODER = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
MAX_TEXT_TOKENS = 128
MAX_CHAT_TOKENS = 256


def tiny_arch(group: str) -> dict:
    """The `arch` of conf/<group>/tiny.yaml (vision: the tower; llm: its model)."""
    cfg = OmegaConf.load(CONF / group / "tiny.yaml")
    return dict(OmegaConf.to_container(cfg.arch if group == "vision" else cfg.model.arch))


def scene_text_pairs(rng: random.Random, n: int, placement: str) -> list[tuple]:
    """(image, description) pairs: object scenes (3 in 4) and written words (1 in 4)."""
    pairs = []
    for i in range(n):
        scene, _ = make_sample(rng, "ocr" if rng.random() < 0.25 else "description", i, placement)
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
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids (BOS ... EOS, right-padded) and the attention mask."""
    rows = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 2], tokenizer.eos_token_id]
            for t in texts]
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
        self.text = CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, **TEXT_ENCODER))
        width = tower_arch["hidden_size"]
        self.image_projection = nn.Linear(width, width, bias=False)
        self.text_projection = nn.Linear(TEXT_ENCODER["hidden_size"], width, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_projection(self.vision(pixel_values=pixels).pooler_output), dim=-1)  # [B, D]

    def embed_texts(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, Dt]
        last = mask.sum(1) - 1  # the EOS: pooled there, as CLIP pools at its end-of-text token
        return nn.functional.normalize(self.text_projection(hidden[torch.arange(len(ids)), last]), dim=-1)  # [B, D]

    def loss(self, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        logits = self.logit_scale.exp().clamp(max=100) * self.embed_images(pixels) @ self.embed_texts(ids, mask).T  # [B, B]
        targets = torch.arange(len(pixels))
        return (nn.functional.cross_entropy(logits, targets) + nn.functional.cross_entropy(logits.T, targets)) / 2


def pretrain_tower(pairs: list[tuple], held_out: list[tuple], tokenizer, steps: int, batch_size: int, lr: float, seed: int) -> tuple[CLIPVisionModel, dict]:
    tower_arch = tiny_arch("vision")
    vision_cfg = OmegaConf.load(CONF / "vision" / "tiny.yaml")
    transform = ImageTransform(tower_arch["image_size"], vision_cfg.mean, vision_cfg.std, vision_cfg.image_aspect)
    torch.manual_seed(seed)
    model = ContrastivePair(tower_arch, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = cosine_lr(optimizer, steps, warmup=max(1, steps // 20))
    pixels_of = lambda chunk: torch.stack([transform(image) for image, _ in chunk])  # noqa: E731  [B, 3, S, S]
    losses = []
    model.train()
    for batch in batches(pairs, batch_size, steps, seed):
        loss = model.loss(pixels_of(batch), *tokenize(tokenizer, [text for _, text in batch], MAX_TEXT_TOKENS))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        similarity = model.embed_images(pixels_of(held_out)) @ model.embed_texts(*tokenize(tokenizer, [t for _, t in held_out], MAX_TEXT_TOKENS)).T
    texts = [t for _, t in held_out]
    # A retrieved description counts when it is the right one or word-for-word the same text.
    top1 = sum(texts[int(similarity[i].argmax())] == texts[i] for i in range(len(held_out))) / len(held_out)
    return model.vision, {"first_loss": round(losses[0], 4), "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                          "held_out_image_to_text_top1": round(top1, 4), "held_out_pairs": len(held_out),
                          "chance": round(1 / len(held_out), 4)}


def pretrain_llm(chats: list[str], held_out: list[str], tokenizer, steps: int, batch_size: int, lr: float, seed: int) -> tuple[LlamaForCausalLM, dict]:
    arch = tiny_arch("llm")
    arch.pop("model_type")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**arch, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    schedule = cosine_lr(optimizer, steps, warmup=max(1, steps // 20))

    def loss_of(texts: list[str]) -> torch.Tensor:
        ids, mask = tokenize(tokenizer, texts, MAX_CHAT_TOKENS)
        return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss

    losses = []
    model.train()
    for batch in batches(chats, batch_size, steps, seed):
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        held_out_loss = float(loss_of(held_out))
    return model, {"first_loss": round(losses[0], 4), "final_loss": round(sum(losses[-20:]) / len(losses[-20:]), 4),
                   "held_out_loss": round(held_out_loss, 4)}


TOWER_BATCH, LLM_BATCH = 128, 32


def pretrain_tiny(out: Path, placement: str = "free", tower_steps: int = 400, llm_steps: int = 800, seed: int = 0,
                  pairs: int = 8000, chats: int = 12000) -> dict:
    """Write OUT/{tokenizer,vision,llm,pretrain.json}; returns what pretrain.json holds."""
    start = time.perf_counter()
    out = Path(out)
    template = OmegaConf.load(CONF / "llm" / "tiny.yaml").template
    # Seeds of their own (the benchmark's splits use seed * 1000 + split index).
    image_pairs = scene_text_pairs(random.Random(10_000 + seed), pairs + 512, placement)
    corpus = text_chats(random.Random(20_000 + seed), chats + 256, placement, template)
    tokenizer = train_tokenizer(corpus + [text for _, text in image_pairs], out / "tokenizer")
    tokenizer_s = time.perf_counter() - start
    tower, tower_report = pretrain_tower(image_pairs[:pairs], image_pairs[pairs:], tokenizer, tower_steps, TOWER_BATCH, 2e-3, seed)
    tower.save_pretrained(out / "vision")
    tower_s = time.perf_counter() - start - tokenizer_s
    llm, llm_report = pretrain_llm(corpus[:chats], corpus[chats:], tokenizer, llm_steps, LLM_BATCH, 3e-3, seed)
    llm.save_pretrained(out / "llm")
    report = {
        "settings": {"placement": placement, "seed": seed, "tower_steps": tower_steps, "llm_steps": llm_steps,
                     "image_text_pairs": pairs, "chats": chats, "tower_batch": TOWER_BATCH, "llm_batch": LLM_BATCH},
        "vision": tower_report, "llm": llm_report,
        "seconds": {"tokenizer_and_data": round(tokenizer_s, 1), "tower": round(tower_s, 1),
                    "llm": round(time.perf_counter() - start - tokenizer_s - tower_s, 1)},
    }
    (out / "pretrain.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("pretrained/tiny"))
    parser.add_argument("--placement", choices=("grid", "free"), default="free")
    parser.add_argument("--tower-steps", type=int, default=400)
    parser.add_argument("--llm-steps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = pretrain_tiny(args.out, args.placement, args.tower_steps, args.llm_steps, args.seed)
    print(json.dumps(report, indent=2))
    print(f"[lmm] tiny tower and LLM in {args.out}")
    return report


if __name__ == "__main__":
    main()
