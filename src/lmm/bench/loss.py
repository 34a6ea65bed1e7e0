"""Benchmark: one training step with the fused loss (model.loss=fused) vs transformers' loss on the
full logits (model.loss=plain): peak tensor memory and time, at Qwen2's and Vicuna's vocabularies.

    lmm bench loss [--tokens 2048 --batch 4 --hidden 256 --labelled 0.5 --device cpu]

(make bench-loss; make gpu-check runs it with --device cuda)

A narrow Llama (2 layers, hidden 256) with each vocabulary runs one forward and backward on
batch × tokens ids, of which the last `labelled` share of each row is labelled (LLaVA's image
and prompt tokens are not), in one process, the two losses alternated. Measured with torch's
MemTracker (every tensor's bytes, by kind, at the step's peak): the whole step's peak, and the
loss part's alone (the final hidden states in, their gradient out: lm_head, logits,
cross-entropy and their backward). Time is the mean of `--repeats` steps. Writes
experiments/bench/loss.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributed._tools.mem_tracker import MemTracker
from transformers import LlamaConfig, LlamaForCausalLM

from lmm.bench import checked_ratio, save_result
from lmm.model.loss import causal_lm_loss, output_head

VOCABULARIES = {"qwen2": 151_936, "vicuna": 32_000}
MIB = 2**20


def peak_bytes(tracker: MemTracker) -> int:
    return sum(snapshot["Total"] for snapshot in tracker.get_tracker_snapshot("peak").values())


def llm_step(llm: LlamaForCausalLM, ids: torch.Tensor, labels: torch.Tensor, loss: str) -> float:
    """One forward and backward, as LMM.forward runs it for each model.loss."""
    if loss == "plain":
        value = llm(input_ids=ids, labels=labels, use_cache=False).loss
    else:
        value = causal_lm_loss(
            llm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state, labels, output_head(llm)
        )
    value.backward()
    return float(value.detach())


def loss_part(llm: LlamaForCausalLM, hidden: torch.Tensor, labels: torch.Tensor, loss: str) -> float:
    """The loss alone: final hidden states in, their gradient out."""
    hidden = hidden.detach().requires_grad_(True)
    if loss == "plain":
        value = llm.loss_function(llm.lm_head(hidden), labels, vocab_size=llm.config.vocab_size)
    else:
        value = causal_lm_loss(hidden, labels, output_head(llm))
    value.backward()
    return float(value.detach())


def measure(run, model: torch.nn.Module) -> tuple[int, float, float]:
    """(peak bytes, seconds, loss) of one call of `run`, its parameters' gradients cleared first."""
    model.zero_grad(set_to_none=True)
    tracker = MemTracker()
    tracker.track_external(model)
    device = next(model.parameters()).device
    start = time.perf_counter()
    with tracker:
        value = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return peak_bytes(tracker), time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--labelled", type=float, default=0.5, help="share of each row's tokens that are labelled")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vocabularies", nargs="+", default=list(VOCABULARIES), choices=list(VOCABULARIES))
    parser.add_argument("--vocab-override", type=int, default=None, help="(tests) one small vocabulary instead")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (make gpu-check)")
    parser.add_argument("--out", default="experiments/bench/loss.json")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {
        "benchmark": "loss",
        "device": args.device,
        "tokens": args.tokens,
        "batch": args.batch,
        "hidden": args.hidden,
        "labelled": args.labelled,
        "vocabularies": {},
    }
    for name in args.vocabularies:
        vocabulary = args.vocab_override or VOCABULARIES[name]
        config = LlamaConfig(
            hidden_size=args.hidden,
            intermediate_size=2 * args.hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocabulary,
            tie_word_embeddings=False,
        )
        llm = LlamaForCausalLM(config).to(args.device)
        ids = torch.randint(0, vocabulary, (args.batch, args.tokens), device=args.device)
        labels = ids.clone()
        labels[:, : int(args.tokens * (1 - args.labelled))] = -100
        hidden = torch.randn(args.batch, args.tokens, args.hidden, device=args.device)
        rows = {}
        for loss in ("plain", "fused") * args.repeats:  # alternated: a slow spell of the machine hits both
            step = measure(lambda: llm_step(llm, ids, labels, loss), llm)  # noqa: B023
            part = measure(lambda: loss_part(llm, hidden, labels, loss), llm)  # noqa: B023
            row = rows.setdefault(
                loss, {"step_peak": step[0], "loss_part_peak": part[0], "seconds": [], "loss": step[2]}
            )
            row["seconds"].append(step[1])
        plain, fused = rows["plain"], rows["fused"]
        seconds = {k: sum(r["seconds"]) / len(r["seconds"]) for k, r in rows.items()}
        work = {"plain": args.batch * args.tokens, "fused": args.batch * args.tokens}
        entry = {
            "vocabulary": vocabulary,
            "step_peak_mib": {k: round(r["step_peak"] / MIB, 1) for k, r in rows.items()},
            "loss_part_peak_mib": {k: round(r["loss_part_peak"] / MIB, 1) for k, r in rows.items()},
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "step_peak_reduction": round(checked_ratio(plain["step_peak"], fused["step_peak"], work), 2),
            "loss_part_reduction": round(checked_ratio(plain["loss_part_peak"], fused["loss_part_peak"], work), 2),
            "time_fused_over_plain": round(checked_ratio(seconds["fused"], seconds["plain"], work), 3),
            "loss_difference": abs(plain["loss"] - fused["loss"]),
        }
        result["vocabularies"][name] = entry
        print(
            f"{name} (V={vocabulary}), {args.batch} × {args.tokens} tokens, {args.labelled:.0%} labelled: step peak "
            f"{entry['step_peak_mib']['plain']:.0f} -> {entry['step_peak_mib']['fused']:.0f} MiB "
            f"({entry['step_peak_reduction']}x less), "
            f"loss part {entry['loss_part_peak_mib']['plain']:.0f} -> {entry['loss_part_peak_mib']['fused']:.0f} MiB "
            f"({entry['loss_part_reduction']}x less), time fused/plain {entry['time_fused_over_plain']:.2f}"
        )
    result["goals"] = {
        "step_peak_reduction": ">= 4 at Qwen2's vocabulary",
        "loss_part_reduction": ">= 8",
        "time_fused_over_plain": "<= 1.2",
    }
    return save_result(result, args.out, argv)


if __name__ == "__main__":
    main()
