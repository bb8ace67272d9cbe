"""Where the vision-tower weights come from when a checkpoint does not bundle them (§1.3, §1.9).

A source is a local CLIP directory or a hub id. A value that looks like a local path (absolute,
``./``, ``../`` or ``~``) is never turned into a download: if it does not exist, that is an error.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from torch import nn
from transformers import CLIPVisionModel

logger = logging.getLogger(__name__)
VISION_TOWER_PREFIX = "model.vision_tower."
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def looks_like_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)


def checkpoint_weight_names(model_dir: str | os.PathLike) -> set[str]:
    """Tensor names stored in a checkpoint folder (safetensors or .bin, sharded or not)."""
    model_dir = Path(model_dir)
    for index_name in _WEIGHT_INDEXES:
        index = model_dir / index_name
        if index.is_file():
            return set(json.loads(index.read_text())["weight_map"])
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open
        with safe_open(str(single), framework="pt") as handle:
            return set(handle.keys())
    names: set[str] = set()
    for shard in sorted(model_dir.glob("pytorch_model*.bin")):
        import torch
        names.update(torch.load(shard, map_location="meta", weights_only=True).keys())
    return names


def load_vision_tower_weights(tower: nn.Module, source: str) -> None:
    """Copy CLIP weights from ``source`` (local dir or hub id) into ``tower`` (strict shapes)."""
    if looks_like_local_path(source):
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(
                f"vision tower {source!r} is a local path that does not exist; pass an existing CLIP folder or a "
                "hub id with --model_kwargs '{\"vision_tower\": \"<dir or hub id>\"}'")
        source = str(path)
    logger.info("loading vision tower weights from %s", source)
    pretrained = CLIPVisionModel.from_pretrained(source)
    missing, unexpected = tower.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(f"vision tower {source!r} does not match the checkpoint's vision_config: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
