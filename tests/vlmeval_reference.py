"""VLMEvalKit's inference path for a local TSV dataset, taken line by line from its source
(open-compass/VLMEvalKit at e8e78f05f3080fe28154f2130321f17951c3be94, Apache-2.0), for the
branches a single-image VQA or multiple-choice TSV takes. VLMEvalKit is not on PyPI and its
requirements (gradio, litellm, decord, ...) are far beyond a test's, so the adapter's test drives
lmm's model through these copies instead of the installed kit. The code is VLMEvalKit's; what
differs is only what a local single-image TSV never reaches (base64/URL inputs of parse_file,
multi-image and image_path branches of dump_image, caching and retries of the loop) and that
the VQA and multiple-choice build_prompt are one method with a flag.

vlmeval/smp/file.py: LMUDataRoot, parse_file (local-file branch), load (tsv)
vlmeval/smp/vlm.py: decode_base64_to_image, decode_base64_to_image_file, read_ok
vlmeval/smp/misc.py: toliststr (without its `eval` branch: single images here)
vlmeval/dataset/image_base.py: ImageBaseDataset.__init__ (image map), dump_image (single image),
    build_prompt (VQA)
vlmeval/dataset/image_mcq.py: ImageMCQDataset.build_prompt
vlmeval/vlm/base.py: BaseModel.check_content, preproc_content, generate
vlmeval/inference.py: infer_data's loop (set_dump_image, build_prompt, generate)
"""

import base64
import io
import mimetypes
import os
import os.path as osp
import string

import numpy as np
import pandas as pd
from PIL import Image


# vlmeval/smp/file.py
def LMUDataRoot():
    if "LMUData" in os.environ and osp.exists(os.environ["LMUData"]):
        return os.environ["LMUData"]
    home = osp.expanduser("~")
    root = osp.join(home, "LMUData")
    os.makedirs(root, exist_ok=True)
    return root


def parse_file(s):
    if osp.exists(s) and s != ".":
        assert osp.isfile(s)
        suffix = osp.splitext(s)[1].lower()
        if suffix == ".webp":
            return ("image/webp", s)
        mime = mimetypes.types_map.get(suffix, "unknown")
        return (mime, s)
    return (None, s)  # (its base64 and URL branches are not taken by local TSV images)


def load_tsv(f):
    return pd.read_csv(f, sep="\t")


# vlmeval/smp/vlm.py
def decode_base64_to_image(base64_string, target_size=-1):
    image_data = base64.b64decode(base64_string)
    image = Image.open(io.BytesIO(image_data))
    if image.mode in ("RGBA", "P", "LA"):
        image = image.convert("RGB")
    if target_size > 0:
        image.thumbnail((target_size, target_size))
    return image


def decode_base64_to_image_file(base64_string, image_path, target_size=-1):
    image = decode_base64_to_image(base64_string, target_size=target_size)
    base_dir = osp.dirname(image_path)
    if not osp.exists(base_dir):
        os.makedirs(base_dir, exist_ok=True)
    image.save(image_path)


def read_ok(img_path):
    if not osp.exists(img_path):
        return False
    try:
        im = Image.open(img_path)
        assert im.size[0] > 0 and im.size[1] > 0
        return True
    except Exception:
        return False


# vlmeval/smp/misc.py
def toliststr(s):
    if isinstance(s, str):
        return [s]
    elif isinstance(s, list):
        return [str(x) for x in s]
    raise NotImplementedError


def istype(s, type):
    if isinstance(s, type):
        return True
    try:
        return isinstance(eval(s), type)  # noqa: S307 (VLMEvalKit's own; indexes here are plain numbers)
    except Exception:
        return False


# vlmeval/dataset/image_base.py (ImageBaseDataset) and image_mcq.py (ImageMCQDataset.build_prompt)
class ImageDataset:
    def __init__(self, dataset, multiple_choice=False, skip_noimg=True):
        ROOT = LMUDataRoot()
        self.dataset_name = dataset
        self.img_root = osp.join(ROOT, "images", dataset)
        self.multiple_choice = multiple_choice
        data = load_tsv(osp.join(ROOT, f"{dataset}.tsv"))
        self.skip_noimg = skip_noimg
        if skip_noimg and "image" in data:
            data = data[~pd.isna(data["image"])]
        data["index"] = [str(x) for x in data["index"]]
        self.meta_only = True
        if "image" in data:
            data["image"] = [str(x) if not pd.isna(x) else "" for x in data["image"]]
            image_map = {x: y for x, y in zip(data["index"], data["image"], strict=True)}
            for k in image_map:
                if len(image_map[k]) <= 64 and len(image_map[k]) > 0:
                    idx = image_map[k]
                    assert idx in image_map and len(image_map[idx]) > 64
                    image_map[k] = image_map[idx]
            images = [toliststr(image_map[k]) for k in data["index"]]
            data["image"] = [x[0] if len(x) == 1 else x for x in images]
            self.meta_only = False
        if np.all([istype(x, int) for x in data["index"]]):
            data["index"] = [int(x) for x in data["index"]]
        self.data = data

    def dump_image(self, line):
        os.makedirs(self.img_root, exist_ok=True)
        tgt_path = osp.join(self.img_root, f"{line['index']}.png")
        if not read_ok(tgt_path):
            decode_base64_to_image_file(line["image"], tgt_path)
        tgt_path = [tgt_path]
        return tgt_path

    def build_prompt(self, line):
        if isinstance(line, int):
            line = self.data.iloc[line]
        tgt_path = self.dump_image(line)
        question = line["question"]
        if self.multiple_choice:
            options = {cand: line[cand] for cand in string.ascii_uppercase if cand in line and not pd.isna(line[cand])}
            options_prompt = "Options:\n"
            for key, item in options.items():
                options_prompt += f"{key}. {item}\n"
            hint = line["hint"] if ("hint" in line and not pd.isna(line["hint"])) else None
            prompt = ""
            if hint is not None:
                prompt += f"Hint: {hint}\n"
            prompt += f"Question: {question}\n"
            if len(options):
                prompt += options_prompt
                prompt += "Please select the correct answer from the options above. \n"
            question = prompt
        msgs = []
        if isinstance(tgt_path, list):
            msgs.extend([dict(type="image", value=p) for p in tgt_path])
        else:
            msgs = [dict(type="image", value=tgt_path)]
        msgs.append(dict(type="text", value=question))
        return msgs


# vlmeval/vlm/base.py (BaseModel)
def check_content(msgs):
    if isinstance(msgs, str):
        return "str"
    if isinstance(msgs, dict):
        return "dict"
    if isinstance(msgs, list):
        types = [check_content(m) for m in msgs]
        if all(t == "str" for t in types):
            return "liststr"
        if all(t == "dict" for t in types):
            return "listdict"
    return "unknown"


def preproc_content(inputs):
    if check_content(inputs) == "str":
        return [dict(type="text", value=inputs)]
    elif check_content(inputs) == "dict":
        assert "type" in inputs and "value" in inputs
        return [inputs]
    elif check_content(inputs) == "liststr":
        res = []
        for s in inputs:
            mime, pth = parse_file(s)
            if mime is None or mime == "unknown":
                res.append(dict(type="text", value=s))
            else:
                res.append(dict(type=mime.split("/")[0], value=pth))
        return res
    elif check_content(inputs) == "listdict":
        for item in inputs:
            assert "type" in item and "value" in item
            mime, s = parse_file(item["value"])
            if mime is None:
                assert item["type"] == "text"
            else:
                assert mime.split("/")[0] == item["type"]
                item["value"] = s
        return inputs
    else:
        return None


def generate(model, message, dataset=None):
    assert check_content(message) in ["str", "dict", "liststr", "listdict"], f"Invalid input type: {message}"
    message = preproc_content(message)
    assert message is not None and check_content(message) == "listdict"
    for item in message:
        assert item["type"] in model.allowed_types, f"Invalid input type: {item['type']}"
    return model.generate_inner(message, dataset)


# vlmeval/inference.py (infer_data's loop, without its result caching and retries)
def infer_data(model, dataset):
    data = dataset.data
    if hasattr(model, "set_dump_image"):
        model.set_dump_image(dataset.dump_image)
    results = {}
    for i in range(len(data)):
        idx = data.iloc[i]["index"]
        if hasattr(model, "use_custom_prompt") and model.use_custom_prompt(dataset.dataset_name):
            struct = model.build_prompt(data.iloc[i], dataset=dataset.dataset_name)
        else:
            struct = dataset.build_prompt(data.iloc[i])
        results[idx] = generate(model, message=struct, dataset=dataset.dataset_name)
    return results
