"""Configs and overrides saved by earlier versions of lmm, in today's layout: classes that moved
module, the AnyRes keys that moved from `vision:` to their own `anyres:` node, and keys added
since whose default keeps what runs did before (a run without them is the same run).

A run's saved config, its run.json identity, its replayed overrides and an lmm directory's
config.yaml are re-read long after they were written; each is upgraded as it is read, so a run
trained before a move still resumes, scores and exports as the same run.
"""

from __future__ import annotations

MOVED_TARGETS = {
    "lmm.train.stage.Stage": "lmm.build.stage.Stage",
    "lmm.simulate.hardware.GPU": "lmm.analysis.simulate.hardware.GPU",
}
# vision.<old> -> anyres.<new>
MOVED_ANYRES_KEYS = {
    "grid_pinpoints": "grid_pinpoints",
    "max_tiles": "max_tiles",
    "anyres_overview": "overview",
    "image_newline": "image_newline",
    "tile_pool": "tile_pool",
}

# keys added since (parent node, key) -> the value that means what runs did before them
ADDED_KEYS = {
    ("connector", "tokens"): None,  # no token budget: the connector's own count
    ("eval", "blind"): False,  # no blind pass
}


def renamed_targets(node):
    """`node` (a plain container) with every moved `_target_` renamed, at any depth."""
    if isinstance(node, dict):
        return {k: MOVED_TARGETS.get(v, v) if k == "_target_" else renamed_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [renamed_targets(item) for item in node]
    return node


def upgrade_config(node: dict) -> dict:
    """A whole config (plain container, already checked as data) in today's layout."""
    node = renamed_targets(node)
    vision = node.get("vision")
    if isinstance(vision, dict) and any(key in vision for key in MOVED_ANYRES_KEYS):
        anyres = dict(node.get("anyres") or {})
        for old, new in MOVED_ANYRES_KEYS.items():
            if old in vision:
                anyres.setdefault(new, vision[old])
        node = {**node, "vision": {k: v for k, v in vision.items() if k not in MOVED_ANYRES_KEYS}, "anyres": anyres}
    for (parent, key), value in ADDED_KEYS.items():
        if isinstance(node.get(parent), dict) and key not in node[parent]:
            node = {**node, parent: {**node[parent], key: value}}
    return node


def upgrade_overrides(overrides: list[str]) -> list[str]:
    """Saved command-line overrides in today's keys (`vision.tile_pool=2` -> `anyres.tile_pool=2`)."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        parts = key.lstrip("+~").split(".")
        if sep and len(parts) == 2 and parts[0] == "vision" and parts[1] in MOVED_ANYRES_KEYS:
            override = f"{prefix}anyres.{MOVED_ANYRES_KEYS[parts[1]]}={value}"
        out.append(override)
    return out
