"""A real SentencePiece-BPE Llama tokenizer, laid out as LLaVA/Vicuna checkpoints ship theirs
(tokenizer.model + tokenizer_config.json with its `legacy` flag), trained offline on a small
corpus: the tokenizer that LLaVA's own code runs with, without a download."""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, "
    "and assist the user with a variety of tasks using natural language.",
    "USER: What color is the bus? ASSISTANT: red",
    "[INST] How many people are there? [/INST] two",
    "Answer the question using a single word or phrase.",
    "Provide a one-sentence caption for the provided image.",
    "A man irons clothes on a taxi. It is a stunt. What is unusual about this image? Why?",
    "Who wrote this book? Jane Austen. Is the sky cloudy? no. What is the man doing? running sitting",
]


def train_model(out: Path, vocab_size: int = 400) -> Path:
    """Llama's SentencePiece settings: BPE, byte fallback, a dummy "▁" prefix, digits split."""
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(out / "llama"),
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
    )
    return out / "llama.model"


def write_llama_tokenizer(out: Path, model: Path, legacy: bool | None) -> Path:
    """A checkpoint's tokenizer folder; `legacy=None` leaves the flag out (transformers' default)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.read_bytes())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "model_max_length": 2048,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
    }
    if legacy is not None:
        config["legacy"] = legacy
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (out / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"})
    )
    return out
