"""What the CLIP and the open_clip (BiomedCLIP) vision towers share (docs/method.md §1.3).

A leaf module: ``vision`` and ``biomedclip`` both import it, and it imports neither, so neither
has to import the other inside a function.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers import CLIPImageProcessor

# CLIPImageProcessor.from_pretrained("openai/clip-vit-large-patch14") (§1.3).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
OPEN_CLIP_CONFIG = "open_clip_config.json"


def looks_like_local_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or os.path.isabs(source)


def local_dir(source: str) -> Path | None:
    """``source`` as an existing local folder, or None (a hub id, or a path that does not exist)."""
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def is_open_clip_source(source: str) -> bool:
    """True for BiomedCLIP-style open_clip towers (a folder with open_clip_config.json, or a BiomedCLIP hub id)."""
    local = local_dir(source)
    if local is not None:
        return (local / OPEN_CLIP_CONFIG).is_file()
    return "biomedclip" in source.lower()


def build_clip_image_processor(image_size: int, *, mean: list[float] | None = None,
                               std: list[float] | None = None) -> CLIPImageProcessor:
    """CLIP's eval transform at ``image_size``: RGB, bicubic resize of the shortest side, center crop,
    rescale, normalise with ``mean``/``std`` (default: the OpenAI CLIP ones)."""
    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_resize=True, do_center_crop=True, do_rescale=True, do_normalize=True,
        image_mean=list(CLIP_MEAN if mean is None else mean), image_std=list(CLIP_STD if std is None else std),
        do_convert_rgb=True, resample=3)
