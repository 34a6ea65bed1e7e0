"""Resolve a model id to local files, never touching the network, or fail saying where we looked."""

from __future__ import annotations

import os
from pathlib import Path

# lmm never downloads at run time: set before huggingface_hub/transformers read it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


class WeightsNotFoundError(FileNotFoundError):
    """The weights for a configured model id are not on this machine."""


def resolve_weights(name_or_path: str, what: str = "weights") -> Path:
    """Return a local directory for `name_or_path`.

    Looks, in order, at: the path itself; `$LMM_WEIGHTS/<name>`; the Hugging Face cache
    (`$HF_HOME`/`$HF_HUB_CACHE`). Raises WeightsNotFoundError listing every place.
    """
    from huggingface_hub import constants, snapshot_download

    looked: list[str] = []
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    looked.append(f"the path {path.resolve()}")
    root = os.environ.get("LMM_WEIGHTS")
    if root:
        candidate = Path(root) / name_or_path
        if candidate.exists():
            return candidate
        looked.append(f"$LMM_WEIGHTS/{name_or_path} = {candidate}")
    else:
        looked.append("$LMM_WEIGHTS (not set)")
    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception:  # not cached, or not even a valid repo id
        looked.append(f"the Hugging Face cache {constants.HF_HUB_CACHE}")
    raise WeightsNotFoundError(
        f"no local {what} for '{name_or_path}'. lmm does not download at run time; it looked in "
        + "; ".join(looked)
        + f". Provide them with `hf download {name_or_path}` on a machine with network access "
        "(then copy the HF cache here), or point the config at a local directory: "
        + (
            "llm.tokenizer=/path/to/dir."
            if what == "tokenizer"
            else "llm.model.pretrained=/path/to/dir for the LLM, vision.pretrained=/path/to/dir for the vision tower."
        )
    )
