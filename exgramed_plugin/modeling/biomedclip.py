"""BiomedCLIP (open_clip ViT-B/16) as the vision tower, read from a local folder (docs/method.md §1.3).

The original code has BiomedCLIP branches (``open_clip`` + ``get_intermediate_layers``) that no
published model uses. Here the tower is built from the folder's ``open_clip_config.json`` and
``open_clip_pytorch_model.bin`` with only the *vision* half of open_clip: the text half of
BiomedCLIP names a hub PubMedBERT, which is what makes loading it offline fail (open_clip #724,
#772), and the LLM never needs it.

:class:`OpenClipVisionTower` answers like ``CLIPVisionModel``: ``tower(pixels,
output_hidden_states=True).hidden_states`` is ``(H0, H1, ..., HL)`` with ``H0`` the token
embeddings entering the first block (after ``norm_pre``) and ``Hk`` the output of block ``k``,
CLS first; so ``mm_vision_select_layer = -2`` is the penultimate block (what the original's
``get_intermediate_layers(images, n=3)[-2]`` selected) and the CLS token is dropped downstream.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import CLIPImageProcessor, CLIPVisionConfig

from ..common.jsonio import read_json
from .clip_common import CLIP_MEAN, CLIP_STD, OPEN_CLIP_CONFIG, build_clip_image_processor, looks_like_local_path

logger = logging.getLogger(__name__)
OPEN_CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
VISUAL_PREFIX = "visual."


def open_clip_dir(source: str) -> Path:
    """Local folder of an open_clip tower: ``source`` itself, or the hub snapshot (cache when offline)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if looks_like_local_path(source):
        raise FileNotFoundError(f"BiomedCLIP folder {source!r} does not exist")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(source, allow_patterns=[OPEN_CLIP_CONFIG, *OPEN_CLIP_WEIGHTS]))
    except Exception as error:  # offline and not cached, or no such repo
        raise OSError(f"could not get the BiomedCLIP tower {source!r} ({error}); pass a local folder with "
                      f"{OPEN_CLIP_CONFIG} and {OPEN_CLIP_WEIGHTS[0]}") from error


def read_open_clip_config(source: str) -> dict[str, Any]:
    """``{"model_cfg": ..., "preprocess_cfg": ...}`` of the folder (open_clip's hub layout)."""
    path = open_clip_dir(source) / OPEN_CLIP_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: a BiomedCLIP folder needs {OPEN_CLIP_CONFIG}")
    config = read_json(path)
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "embed_dim" not in model_cfg:
        raise ValueError(f"{path}: key 'model_cfg' must hold 'embed_dim' and 'vision_cfg'")
    return config


def _build_visual(embed_dim: int, vision_cfg: dict[str, Any]) -> nn.Module:
    from open_clip.model import _build_vision_tower
    return _build_vision_tower(embed_dim, vision_cfg)


def open_clip_vision_config(source: str) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig`` describing the tower for the rest of the model (width, depth, image and
    patch size), carrying the open_clip ``model_cfg`` needed to rebuild it (``open_clip_model_cfg``)."""
    config = read_open_clip_config(source)
    model_cfg = config["model_cfg"]
    with torch.device("meta"):
        visual = _build_visual(model_cfg["embed_dim"], model_cfg["vision_cfg"])
    trunk = getattr(visual, "trunk", None)
    if trunk is None or not hasattr(trunk, "blocks"):
        raise ValueError(f"{source}: only timm ViT towers (BiomedCLIP's vit_base_patch16_224) are supported")
    width = trunk.embed_dim
    heads = trunk.blocks[0].attn.num_heads
    patch = trunk.patch_embed.patch_size
    # The preprocessing size decides the patch count; timm interpolates its position embeddings
    # when it differs from the trunk's native size.
    image = model_cfg["vision_cfg"].get("image_size") or trunk.patch_embed.img_size
    image = (image, image) if isinstance(image, int) else tuple(image)
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=trunk.blocks[0].mlp.fc1.out_features,
        num_hidden_layers=len(trunk.blocks), num_attention_heads=heads, image_size=int(image[0]),
        patch_size=int(patch[0]), projection_dim=model_cfg["embed_dim"], open_clip_model_cfg=model_cfg,
        open_clip_preprocess_cfg=config.get("preprocess_cfg", {}))


@dataclass
class OpenClipVisionOutput:
    last_hidden_state: Tensor
    hidden_states: tuple[Tensor, ...] | None = None


class OpenClipVisionTower(nn.Module):
    """open_clip's vision tower (``trunk`` = timm ViT, ``head``) with the CLIPVisionModel interface."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.config = config
        model_cfg = config.open_clip_model_cfg
        visual = _build_visual(model_cfg["embed_dim"], model_cfg["vision_cfg"])
        self.trunk = visual.trunk
        self.head = visual.head

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = True, **_: Any) -> OpenClipVisionOutput:
        trunk = self.trunk
        x = trunk.patch_embed(pixel_values)
        x = trunk._pos_embed(x)
        x = trunk.patch_drop(x)
        x = trunk.norm_pre(x)
        hidden = [x]
        for block in trunk.blocks:
            x = block(x)
            hidden.append(x)
        return OpenClipVisionOutput(last_hidden_state=trunk.norm(x),
                                    hidden_states=tuple(hidden) if output_hidden_states else None)


def open_clip_vision_state_dict(source: str) -> dict[str, Tensor]:
    """The ``visual.*`` tensors of the folder's open_clip checkpoint, named as in the wrapper."""
    folder = open_clip_dir(source)
    for name in OPEN_CLIP_WEIGHTS:
        path = folder / name
        if path.is_file():
            break
    else:
        raise FileNotFoundError(f"{folder}: no {' or '.join(OPEN_CLIP_WEIGHTS)}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    visual = {key[len(VISUAL_PREFIX):]: value for key, value in state.items() if key.startswith(VISUAL_PREFIX)}
    if not visual:
        raise ValueError(f"{path}: no key starts with {VISUAL_PREFIX!r}; not an open_clip CLIP checkpoint")
    return visual


def open_clip_image_processor(source: str) -> CLIPImageProcessor:
    """open_clip's eval transform as a CLIPImageProcessor: bicubic resize of the shortest side,
    center crop, the folder's mean/std (BiomedCLIP: the OpenAI CLIP ones)."""
    config = read_open_clip_config(source)
    preprocess = config.get("preprocess_cfg", {})
    size = config["model_cfg"]["vision_cfg"].get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    return build_clip_image_processor(size, mean=preprocess.get("mean", CLIP_MEAN), std=preprocess.get("std", CLIP_STD))


def biomed_dense_features(hidden_states: tuple[Tensor, ...], select_layer: int, connector: str,
                          num_l: int = 6) -> Tensor:
    """Dense connector for an open_clip tower (§1.4, ``is_biomed=True``): the intermediate blocks are
    averaged ``num_l`` at a time, ``[F | mean(blocks 1..num_l) | mean(blocks num_l+1..2 num_l)]``,
    CLS dropped. ``none`` is ``H[select_layer]`` without CLS, as for CLIP."""
    features = hidden_states[select_layer][:, 1:]
    if connector == "none":
        return features
    if connector != "dci":
        raise ValueError(f"dense connector {connector!r} is not defined for BiomedCLIP towers (only none/dci)")
    blocks = hidden_states[1:]
    if len(blocks) < 2 * num_l:
        raise ValueError(f"num_l={num_l} needs {2 * num_l} blocks; the tower has {len(blocks)}")
    first = torch.stack([h[:, 1:] for h in blocks[:num_l]]).mean(0)
    second = torch.stack([h[:, 1:] for h in blocks[num_l:2 * num_l]]).mean(0)
    return torch.cat([features, first.to(features.dtype), second.to(features.dtype)], dim=-1)


def is_open_clip_config(vision_config: CLIPVisionConfig) -> bool:
    return getattr(vision_config, "open_clip_model_cfg", None) is not None


def save_open_clip_folder(model: nn.Module, model_cfg: dict[str, Any], out: str | os.PathLike,
                          preprocess_cfg: dict[str, Any] | None = None) -> Path:
    """Write an open_clip model in the hub layout (config + ``open_clip_pytorch_model.bin``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OPEN_CLIP_CONFIG).write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg or {
        "mean": CLIP_MEAN, "std": CLIP_STD}}, indent=2))
    torch.save(model.state_dict(), out / OPEN_CLIP_WEIGHTS[0])
    return out
