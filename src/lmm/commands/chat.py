"""Interactive chat with a trained model, tokens streamed as they are generated.

    lmm chat CKPT [--image PATH] [--max-new-tokens 256] [--temperature 0] [--device cpu]

CKPT is an `export.format=lmm` directory or a finished run directory. Type a message; commands:
`/image PATH` adds an image to the conversation (your next message comes after it; several
images make a multi-image conversation, as LLaVA-NeXT's), `/reset` starts over without images,
`/quit` (or end of input) leaves. An unreadable image is reported in one line and the chat goes
on without it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmm.data.conversation import IMAGE_TOKEN

# torch, transformers and the model code are imported where they are used: `--help` and a usage
# error answer at once.


class Chat:
    def __init__(self, model, processor, max_new_tokens: int = 256, temperature: float = 0.0, device: str = "cpu"):
        self.model, self.processor, self.device = model, processor, device
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.images: list[bytes] = []  # the conversation's images, in order
        self.unasked = 0  # images added since the last message: their tags go before the next one
        self.turns: list[dict] = []

    def add_image(self, path: str) -> str:
        from lmm.data.image import ImageError, decode_image, read_image_file

        try:
            data = read_image_file(Path(path).expanduser())  # a regular file only: /dev/zero or a FIFO never ends
            decode_image(data)  # refuse it now, not mid-answer
        except ImageError as e:
            return f"[lmm] cannot use image {path}: {e}; the conversation goes on without it"
        self.images.append(data)
        self.unasked += 1
        return f"[lmm] image {path} added (image {len(self.images)} of this conversation)"

    def reset(self) -> str:
        self.turns, self.images, self.unasked = [], [], 0
        return "[lmm] conversation reset"

    def ask(self, text: str, out=sys.stdout) -> str | None:
        """Stream the answer to `out` and keep it in the conversation; None if it cannot be answered."""
        from lmm.data.collate import Collator
        from lmm.data.sample import Example, image_entries
        from lmm.eval.generate import end_of_turn_ids

        value = IMAGE_TOKEN * self.unasked + "\n" + text if self.unasked else text
        turns = [*self.turns, {"from": "human", "value": value}]
        sample = {"__key__": "chat", **image_entries(self.images)} if self.images else {"__key__": "chat"}
        item = self.processor.encode(sample, turns, generation_prompt=True)
        if not isinstance(item, Example):
            print(f"[lmm] cannot answer: {item.reason} (/reset to start a new conversation)", file=out)
            return None
        batch = Collator(self.processor.tokenizer.pad_token_id, "left")([item]).to(self.device)
        tokenizer = self.processor.tokenizer
        streamer = answer_streamer(tokenizer, out)
        print("ASSISTANT:", end=" ", flush=True, file=out)
        new_ids = self.model.generate(
            **batch.model_inputs(labels=False),
            max_new_tokens=self.max_new_tokens,
            eos_token_ids=end_of_turn_ids(tokenizer, self.processor.template),
            pad_token_id=tokenizer.pad_token_id,
            do_sample=self.temperature > 0,
            temperature=self.temperature or 1.0,
            streamer=streamer,
        )
        answer = tokenizer.decode(new_ids[0], skip_special_tokens=True).strip()
        if not answer:  # said, not shown as a blank line; and not kept: an empty turn cannot be rendered again
            print("[lmm] (the model ended its turn without a word)", file=out, flush=True)
            return answer
        self.turns, self.unasked = [*turns, {"from": "gpt", "value": answer}], 0
        return answer


def answer_streamer(tokenizer, out):
    """transformers' TextStreamer to `out`, without the reply's leading space ("ASSISTANT: Yes",
    not "ASSISTANT:  Yes": SentencePiece decodes the first token with its "▁")."""
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        def __init__(self):
            super().__init__(tokenizer, skip_special_tokens=True)
            self.started = False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            print(text, flush=True, end="" if not stream_end else None, file=out)

    return AnswerStreamer()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", type=Path)
    parser.add_argument("--image")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from lmm.build.factory import load_for_command

    model, processor = load_for_command(args.ckpt, args.device)
    chat = Chat(model, processor, args.max_new_tokens, args.temperature, args.device)
    if args.image:
        print(chat.add_image(args.image), flush=True)
    print("[lmm] type a message; /image PATH, /reset, /quit", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            print(chat.reset(), flush=True)
        elif line.startswith("/image"):
            print(chat.add_image(line[len("/image") :].strip()), flush=True)
        else:
            chat.ask(line)


if __name__ == "__main__":
    main()
