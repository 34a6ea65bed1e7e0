"""Train the tiny byte-level BPE tokenizer offline and load tokenizers without network access."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lmm.core.weights import resolve_weights
from lmm.data.conversation import IMAGE_TOKEN, LLAVA_SYSTEM

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]


def train_tokenizer(texts: list[str], out: str | Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE (lossless, so piecewise tokenization always decodes back to the text)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    template_texts = [LLAVA_SYSTEM, "USER: ", " ASSISTANT:"]
    tokenizer.train_from_iterator(template_texts + texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    fast.save_pretrained(str(out))
    return fast


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, out: str | Path) -> None:
    """save_pretrained, keeping the `legacy` flag transformers 5 leaves out of tokenizer_config.json
    (without it a SentencePiece tokenizer reloads non-legacy: other ids after special tokens)."""
    tokenizer.save_pretrained(str(out))
    legacy = getattr(tokenizer, "legacy", None)
    if legacy is not None:
        path = Path(out) / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config["legacy"] = bool(legacy)
        path.write_text(json.dumps(config, indent=2, ensure_ascii=False))


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load from a local directory or the HF cache; add `<image>` and a pad token if missing."""
    tokenizer = AutoTokenizer.from_pretrained(str(resolve_weights(name_or_path, "tokenizer")))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token is None:  # Llama/Vicuna ship none; LLaVA uses unk
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer
