"""Where the vision-tower weights come from when a checkpoint does not bundle them (§1.3, §1.9).

A source is a local CLIP directory or a hub id. A value that looks like a local path (absolute,
``./``, ``../`` or ``~``) is never turned into a download: if it does not exist, that is an error.
The one exception is the ``mm_vision_tower`` written into an *original* checkpoint's config.json:
it is often an absolute path on the authors' cluster, so :func:`resolve_original_vision_tower`
falls back to the matching hub id (with a warning) instead of failing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from .biomedclip import OpenClipVisionTower
from .clip_common import build_clip_image_processor, local_dir, looks_like_local_path

logger = logging.getLogger(__name__)
VISION_TOWER_PREFIX = "model.vision_tower."
DEFAULT_CLIP_HUB_ID = "openai/clip-vit-large-patch14"
# Folder names seen in original configs -> the hub id holding the same weights.
KNOWN_VISION_HUB_IDS = {
    "clip-vit-large-patch14": DEFAULT_CLIP_HUB_ID,
    "clip-vit-large-patch14-336": "openai/clip-vit-large-patch14-336",
    "biomedclip-pubmedbert_256-vit_base_patch16_224": "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
}


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


def resolve_original_vision_tower(configured: str | None, override: str | None, *, config_file: str | os.PathLike,
                                  model_dir: str | os.PathLike | None = None) -> str:
    """The vision-tower source for an original checkpoint (§1.8, §1.9 step 2).

    ``override`` (``--model_kwargs '{"vision_tower": ...}'`` or ``--vision-tower``) wins and must
    exist when it is a path. Otherwise ``mm_vision_tower`` of config.json: a hub id or an existing
    folder (also tried relative to the checkpoint) is used as is; a path that does not exist here
    (typically the authors' cluster) falls back to the hub id with the same folder name, or to
    ``openai/clip-vit-large-patch14``, the tower of every published checkpoint, with a warning.
    """
    if override:
        if looks_like_local_path(override) and local_dir(override) is None:
            raise FileNotFoundError(f"vision tower override {override!r} is a local path that does not exist")
        return str(Path(override).expanduser()) if local_dir(override) else override
    if not configured:
        raise ValueError(f"{config_file}: key 'mm_vision_tower' is missing or empty; pass the vision tower with "
                         "--model_kwargs '{\"vision_tower\": \"<dir or hub id>\"}' (swift) or --vision-tower (convert)")
    if local_dir(configured):
        return str(Path(configured).expanduser())
    if model_dir is not None and not os.path.isabs(configured) and (Path(model_dir) / configured).is_dir():
        return str(Path(model_dir) / configured)
    if not looks_like_local_path(configured) and configured.count("/") <= 1:
        return configured  # a hub id
    name = Path(configured.rstrip("/")).name.lower()
    hub_id = KNOWN_VISION_HUB_IDS.get(name, DEFAULT_CLIP_HUB_ID)
    logger.warning("%s: mm_vision_tower %r does not exist on this machine (a path from the machine that trained "
                   "the checkpoint); using the hub id %r instead. Pass --model_kwargs '{\"vision_tower\": "
                   "\"<dir or hub id>\"}' (or --vision-tower for exgramed convert) to choose another.",
                   config_file, configured, hub_id)
    return hub_id


def _hub_error(source: str, error: Exception) -> OSError:
    return OSError(f"could not read the vision tower {source!r} ({error}). Offline, a hub id must already be in the "
                   "Hugging Face cache; otherwise download it or pass a local folder with --model_kwargs "
                   "'{\"vision_tower\": \"<dir>\"}' (swift) or --vision-tower (exgramed convert)")


def clip_vision_config_from_source(source: str) -> CLIPVisionConfig:
    """CLIP vision config of a local folder or hub id (a full CLIP config's ``vision_config`` too)."""
    try:
        return CLIPVisionConfig.from_pretrained(source)
    except OSError as error:
        raise _hub_error(source, error) from error


def vision_tower_state_dict(source: str) -> dict[str, Tensor]:
    """CLIP vision weights of ``source`` with the parameter names of ``CLIPVisionModel``."""
    try:
        pretrained = CLIPVisionModel.from_pretrained(source)
    except OSError as error:
        raise _hub_error(source, error) from error
    return pretrained.state_dict()


def clip_image_processor(source: str | None, image_size: int) -> CLIPImageProcessor:
    """The tower's own preprocessor config when it has one, else the §1.3 CLIP defaults at ``image_size``."""
    if source:
        try:
            return CLIPImageProcessor.from_pretrained(source)
        except OSError:
            logger.info("vision tower %s has no preprocessor config; using the CLIP defaults at %d px", source,
                        image_size)
    return build_clip_image_processor(image_size)


def build_vision_tower(config) -> nn.Module:
    """The vision tower module for an ``ExGraMedConfig``: ``CLIPVisionModel``, or the open_clip
    (BiomedCLIP) wrapper when ``config.mm_vision_tower_type == "open_clip"``. Both answer
    ``tower(pixels, output_hidden_states=True).hidden_states``."""
    if getattr(config, "mm_vision_tower_type", "clip") == "open_clip" or \
            getattr(config.vision_config, "open_clip_model_cfg", None) is not None:
        return OpenClipVisionTower(config.vision_config)
    return CLIPVisionModel(config.vision_config)
