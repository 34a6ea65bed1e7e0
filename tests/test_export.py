"""Export: HF Llava reproduces lmm's logits and greedy answers; lmm's own format round-trips."""

import pytest
import torch
from omegaconf import OmegaConf

import lmm
from lmm.export import ExportError, save_hf, save_lmm
from lmm.factory import build_run
from tests.conftest import compose_config


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A tiny model with non-trivial weights (random init, perturbed) and its processor."""
    cfg = compose_config([], data_root)
    torch.manual_seed(0)
    model, processor = build_run(cfg)
    return cfg, model.eval(), processor


def example(processor, data_root):
    from lmm.data.shards import evaluation_stream, list_shards

    sample = next(iter(evaluation_stream(list_shards(data_root / "synthetic" / "test"))))
    turns = [{"from": "human", "value": "<image>\nWhat shape is in the top left cell?"}]
    item = processor.encode(sample, turns, generation_prompt=True)
    return torch.tensor([item.input_ids]), item.pixels  # [1, 3, S, S]


def test_hf_llava_matches_lmm(trained, data_root, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    cfg, model, processor = trained
    save_hf(model, processor, cfg, tmp_path / "hf")
    hf = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    input_ids, pixels = example(processor, data_root)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        ours = model(input_ids, mask, pixels).logits
        theirs = hf(input_ids=input_ids, attention_mask=mask, pixel_values=pixels).logits
    assert theirs.shape == ours.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    from lmm.eval.generate import end_of_turn_ids

    stops = end_of_turn_ids(processor.tokenizer, processor.template)
    mine = model.generate(input_ids, mask, pixels, max_new_tokens=12, eos_token_ids=stops, pad_token_id=processor.tokenizer.pad_token_id)
    hf_ids = hf.generate(input_ids=input_ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=12, do_sample=False)
    assert hf_ids[0, input_ids.shape[1]:].tolist()[: mine.shape[1]] == mine[0].tolist()
    # The processor (tokenizer + chat template + image processor) loads too.
    hf_processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    prompt = hf_processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}])
    assert prompt == processor.tokenizer.decode(processor.tokenizer(
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
        "and polite answers to the user's questions. USER: <image>\nHi? ASSISTANT:")["input_ids"])


def test_hf_export_refuses_other_connectors(data_root, tmp_path):
    cfg = compose_config(["connector=resampler_tiny"], data_root)
    model, processor = build_run(cfg)
    with pytest.raises(ExportError, match="only knows LLaVA-1.5's 2-layer MLP.*export.format=lmm"):
        save_hf(model, processor, cfg, tmp_path / "hf")


def test_lmm_format_round_trip(data_root, tmp_path):
    cfg = compose_config(["connector=resampler_tiny"], data_root)
    torch.manual_seed(1)
    model, processor = build_run(cfg)
    save_lmm(model.eval(), processor, cfg, tmp_path / "out")
    loaded, loaded_processor = lmm.load_pretrained(tmp_path / "out")
    input_ids, pixels = example(processor, data_root)
    mask = torch.ones_like(input_ids)
    with torch.no_grad():
        assert torch.equal(model(input_ids, mask, pixels).logits, loaded(input_ids, mask, pixels).logits)
    assert loaded_processor.template == processor.template and OmegaConf.load(tmp_path / "out" / "config.yaml").format_version == 1


def test_exported_model_runs_in_the_transformers_pipeline(trained, tmp_path):
    """transformers' pipeline (chat template, image processor, Llava) answers what lmm answers
    for the same question, given the same pixels; the pixels agree to bicubic rounding."""
    import io

    from PIL import Image
    from transformers import AutoProcessor, pipeline

    from lmm.data.collate import Collator
    from lmm.eval.generate import end_of_turn_ids

    cfg, model, processor = trained
    save_hf(model, processor, cfg, tmp_path / "hf")
    pipe = pipeline("image-text-to-text", model=str(tmp_path / "hf"))
    image = Image.new("RGB", (80, 40), (250, 20, 20))  # not square: padded to square like LLaVA-1.5
    out = pipe(text=[{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Colour?"}]}],
               max_new_tokens=4)
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    hf_pixels = AutoProcessor.from_pretrained(tmp_path / "hf").image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert (hf_pixels - processor.image_transform(image)).abs().mean() < 0.02

    png = io.BytesIO()
    image.save(png, format="PNG")
    item = processor.encode({"__key__": "q", "png": png.getvalue()}, [{"from": "human", "value": "<image>\nColour?"}],
                            generation_prompt=True)
    batch = Collator(processor.tokenizer.pad_token_id, "left")([item]).replace(pixel_values=hf_pixels[None])
    tokenizer = processor.tokenizer
    with torch.no_grad():
        ids = model.generate(**batch.model_inputs(labels=False), max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
                             eos_token_ids=end_of_turn_ids(tokenizer, processor.template))
    ours = tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    assert ours and out[0]["generated_text"][-1]["content"].strip() == ours
