"""Which LLaVA-1.5 source an entry came from, told by its image folder and prompt pattern.

The paper's Table 7 lists the mix665k sources. Two of them cannot be told apart from the
released file: VQAv2 and OKVQA both use COCO images and the same short-answer format
prompt, so they are merged into one named source, `vqav2_okvqa`.
"""

from __future__ import annotations

import re

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
SHORT_CAPTION = "Provide a one-sentence caption for the provided image."
GROUNDING = "Please provide the bounding box coordinate of the region this sentence describes:"
REGION_CAPTION = "Please provide a short description for this region:"
FORMAT_PROMPTS = (SHORT_ANSWER, MULTIPLE_CHOICE, SHORT_CAPTION)

# Table 7 of LLaVA-1.5 (instruction-tuning sources) plus the pretraining set.
SOURCES = {
    "llava_instruct": "LLaVA-Instruct 158K (COCO, free-form conversations)",
    "sharegpt": "ShareGPT 40K (text only)",
    "vqav2_okvqa": "VQAv2 83K + OKVQA 9K (COCO, short-answer prompt; not separable)",
    "gqa": "GQA 72K",
    "ocrvqa": "OCR-VQA 80K",
    "aokvqa": "A-OKVQA 66K (COCO, multiple-choice prompt)",
    "textcaps": "TextCaps 22K (TextVQA images, one-sentence caption prompt)",
    "refcoco": "RefCOCO 48K (COCO, region prompts)",
    "vg": "Visual Genome 86K (region prompts)",
    "llava_pretrain": "LCS-558K image-caption pairs (pretraining)",
}
_PRETRAIN_IMAGE = re.compile(r"^\d{5}/\d+\.\w+$")  # 00453/004539375.jpg


def _text(entry: dict) -> str:
    return "\n".join(
        str(turn.get("value", "")) for turn in entry.get("conversations", []) if turn.get("from") == "human"
    )


MULTI_IMAGE = "multi_image"  # entries with several images (LLaVA-NeXT's interleaved data)


def entry_images(entry: dict) -> list[str]:
    """The entry's image paths: LLaVA's one `"image": path`, or LLaVA-NeXT / M4-Instruct's list."""
    image = entry.get("image")
    return [] if not image else [image] if isinstance(image, str) else list(image)


def classify(entry: dict) -> str:
    """The source name for one LLaVA-format entry (raises ValueError when nothing matches)."""
    paths = entry_images(entry)
    if len(paths) > 1:
        return MULTI_IMAGE  # from any folder: a source of its own, weighted like the others
    image = paths[0] if paths else None
    if not image:
        return "sharegpt"
    text = _text(entry)
    region = GROUNDING in text or REGION_CAPTION in text
    if image.startswith("coco/"):
        if region:
            return "refcoco"
        if MULTIPLE_CHOICE in text:
            return "aokvqa"
        if SHORT_ANSWER in text:
            return "vqav2_okvqa"
        return "llava_instruct"
    for prefix, source in (("gqa/", "gqa"), ("ocr_vqa/", "ocrvqa"), ("textvqa/", "textcaps"), ("vg/", "vg")):
        if image.startswith(prefix):
            return source
    if _PRETRAIN_IMAGE.match(image):
        return "llava_pretrain"
    raise ValueError(f"image path {image!r} matches no known LLaVA-1.5 image folder")


def strip_format_prompts(turns: list[dict]) -> list[dict]:
    """The paper's '-format prompt' ablation: remove response-format prompts from human turns."""
    stripped = []
    for turn in turns:
        value = turn["value"]
        if turn["from"] == "human":
            for prompt in FORMAT_PROMPTS:
                value = value.replace("\n" + prompt, "").replace(" " + prompt, "").replace(prompt, "")
            value = value.strip()
        stripped.append({**turn, "value": value})
    return stripped
