"""Weights of a published LLaVA-Med / ExGra-Med checkpoint in its original layout, checked and
loaded into an ``ExGraMedForCausalLM`` (docs/method.md §1.8, §1.9).

The original layout has ``pytorch_model*.bin`` shards under the plugin's parameter names, except
for the stage-2 GNN, and no vision-tower weights. A checkpoint must be what its config.json
claims: a missing, unexpected or wrongly shaped tensor is an error naming the file and the key,
not a silently random layer. :class:`OriginalCheckpoint` ties config, tokenizer, vision tower and
weights together; ``swift_glue/model.py`` and ``exgramed convert`` load through it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import CLIPImageProcessor, PreTrainedTokenizerBase

from .biomedclip import open_clip_image_processor, open_clip_vision_state_dict
from .configuration import ExGraMedConfig
from .modeling import ExGraMedForCausalLM
from .original_config import build_original_config, read_original_config
from .original_tokenizer import load_original_tokenizer
from .processing import ExGraMedProcessor
from .vision import VISION_TOWER_PREFIX, clip_image_processor, resolve_original_vision_tower, vision_tower_state_dict
from ..common.weight_files import CheckpointError, load_weight_file, weight_files

logger = logging.getLogger(__name__)

GNN_PREFIX = "model.message_pass_node_features."
MGA_GNN_PREFIX = "model.mga.gnn."
MGA_PREFIX = "model.mga."
_ROTARY_SUFFIX = "rotary_emb.inv_freq"


def read_original_weights(model_dir: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Path], Path]:
    """All tensors of the checkpoint, the file each one came from, and the file that names missing keys."""
    files, summary = weight_files(model_dir)
    state: dict[str, Tensor] = {}
    origin: dict[str, Path] = {}
    for path in files:
        for key, tensor in load_weight_file(path).items():
            if key in state:
                raise CheckpointError(f"{path}: key {key!r} is also stored in {origin[key]}")
            state[key], origin[key] = tensor, path
    return state, origin, summary


def map_original_keys(state: dict[str, Tensor], origin: dict[str, Path], *, has_mga: bool
                      ) -> tuple[dict[str, Tensor], dict[str, Path]]:
    """Original names -> plugin names: drop ``rotary_emb.inv_freq``; the GNN of stage-2 checkpoints
    goes to ``model.mga.gnn`` when the model has an MGA module, and is dropped otherwise (as the
    original ``llava.py`` did). Everything else already has the plugin's name (§1.8)."""
    mapped: dict[str, Tensor] = {}
    mapped_origin: dict[str, Path] = {}
    dropped_gnn = 0
    for key, tensor in state.items():
        if key.endswith(_ROTARY_SUFFIX):
            continue
        new_key = key
        if key.startswith(GNN_PREFIX):
            if not has_mga:
                dropped_gnn += 1
                continue
            new_key = MGA_GNN_PREFIX + key[len(GNN_PREFIX):]
        mapped[new_key], mapped_origin[new_key] = tensor, origin[key]
    if dropped_gnn:
        logger.info("ignoring the %d MGA GNN tensors (%s*): the model has no MGA module (mga_enabled is false)",
                    dropped_gnn, GNN_PREFIX)
    elif has_mga and not any(k.startswith(MGA_GNN_PREFIX) for k in mapped):
        logger.info("the checkpoint has no MGA GNN weights; the MGA module starts from a fresh initialisation")
    return mapped, mapped_origin


def _shape_hint(key: str, config: ExGraMedConfig) -> str:
    if key.startswith("model.mm_projector."):
        return (f"projector {config.mm_projector_type} from mm_hidden_size {config.mm_hidden_size} to hidden_size "
                f"{config.hidden_size}")
    return (f"hidden_size {config.hidden_size}, intermediate_size {config.intermediate_size}, vocab_size "
            f"{config.vocab_size}, {config.num_attention_heads} heads")


def check_original_weights(expected: dict[str, torch.Size], state: dict[str, Tensor], origin: dict[str, Path],
                           summary: Path, config: ExGraMedConfig, config_file: Path) -> None:
    """Fail on a missing, unexpected or wrongly shaped tensor, naming the file and the key."""
    for key, shape in expected.items():
        if key.startswith(VISION_TOWER_PREFIX) or key.startswith(MGA_PREFIX):
            continue  # the vision tower never is in an original checkpoint; MGA may start fresh
        if key not in state:
            what = "projector weights" if key.startswith("model.mm_projector.") else "weights"
            raise CheckpointError(f"{summary}: key {key!r} is missing; {config_file} promises these {what} "
                                  f"({_shape_hint(key, config)})")
    for key, tensor in state.items():
        if key not in expected:
            raise CheckpointError(f"{origin[key]}: key {key!r} is not part of a LLaVA-Med model as described by "
                                  f"{config_file}")
        if tuple(tensor.shape) != tuple(expected[key]):
            raise CheckpointError(f"{origin[key]}: key {key!r} has shape {tuple(tensor.shape)}, but {config_file} "
                                  f"implies {tuple(expected[key])} ({_shape_hint(key, config)})")


@dataclass
class OriginalCheckpoint:
    """An original-layout checkpoint, opened and checked: config, tokenizer and vision source.

    ``open`` reads config.json and the tokenizer; ``load_model`` reads and checks the weights.
    """

    model_dir: Path
    raw_config: dict[str, Any]
    config: ExGraMedConfig
    tokenizer: PreTrainedTokenizerBase
    vision_source: str
    _image_processor: CLIPImageProcessor | None = field(default=None, repr=False)

    @classmethod
    def open(cls, model_dir: str | os.PathLike, *, vision_tower: str | None = None,
             dense_connector: str | None = None, num_l: int | None = None,
             legacy_tokenization: bool | None = None) -> "OriginalCheckpoint":
        """Arguments left at None take the faithful defaults: tower from ``mm_vision_tower``,
        connector from the widths, legacy tokenization on (§2.5). In a swift run they come from
        the plugin's settings (``--model_kwargs``), see ``swift_glue/model.py``."""
        model_dir = Path(model_dir)
        config_file = model_dir / "config.json"
        raw = read_original_config(model_dir)
        legacy = True if legacy_tokenization is None else legacy_tokenization
        tokenizer = load_original_tokenizer(model_dir, legacy_sentencepiece=legacy)
        vision_source = resolve_original_vision_tower(
            raw.get("mm_vision_tower"), vision_tower, config_file=config_file,
            model_dir=model_dir)
        config = build_original_config(
            raw, tokenizer, vision_source, config_file=config_file, dense_connector=dense_connector, num_l=num_l,
            legacy_tokenization=legacy)
        logger.info("original LLaVA-Med checkpoint %s: vision tower %s, dense connector %s, projector %s, legacy "
                    "tokenization %s", model_dir, vision_source, config.mm_dense_connector_type,
                    config.mm_projector_type, config.mm_legacy_tokenization)
        return cls(model_dir, raw, config, tokenizer, vision_source)

    @property
    def image_processor(self) -> CLIPImageProcessor:
        """The vision tower's preprocessing (§1.3): its own preprocessor config, else CLIP defaults."""
        if self._image_processor is None:
            if getattr(self.config, "mm_vision_tower_type", "clip") == "open_clip":
                self._image_processor = open_clip_image_processor(self.vision_source)
            else:
                self._image_processor = clip_image_processor(self.vision_source, self.config.vision_config.image_size)
        return self._image_processor

    def processor(self) -> ExGraMedProcessor:
        return ExGraMedProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)

    def _vision_state(self) -> dict[str, Tensor]:
        if getattr(self.config, "mm_vision_tower_type", "clip") == "open_clip":
            state = open_clip_vision_state_dict(self.vision_source)
        else:
            state = vision_tower_state_dict(self.vision_source)
        return {VISION_TOWER_PREFIX + key: value for key, value in state.items()}

    def load_model(self, **from_pretrained_kwargs: Any) -> ExGraMedForCausalLM:
        """Read, map and check the weights, add the vision tower's, and build the model.

        ``from_pretrained_kwargs`` (``dtype``, ``device_map``, ``attn_implementation``, ...) go to
        ``ExGraMedForCausalLM.from_pretrained``, which materialises the weights without a random
        initialisation first.
        """
        config_file = self.model_dir / "config.json"
        with torch.device("meta"):
            skeleton = ExGraMedForCausalLM(self.config)
        expected = {key: value.shape for key, value in skeleton.state_dict().items()}
        has_mga = hasattr(skeleton.model, "mga")
        if getattr(self.config, "mm_vision_tower_type", "clip") == "open_clip" and \
                type(skeleton.model.vision_tower).__name__ != "OpenClipVisionTower":
            raise NotImplementedError(
                f"{self.vision_source} is an open_clip (BiomedCLIP) tower, but ExGraMedModel builds a CLIPVisionModel; "
                "it needs to build its tower with exgramed_plugin.modeling.vision.build_vision_tower(config)")
        del skeleton
        state, origin, summary = read_original_weights(self.model_dir)
        state, origin = map_original_keys(state, origin, has_mga=has_mga)
        check_original_weights(expected, state, origin, summary, self.config, config_file)
        vision_state = self._vision_state()
        for key, tensor in vision_state.items():
            if key not in expected or tuple(tensor.shape) != tuple(expected[key]):
                raise CheckpointError(f"vision tower {self.vision_source}: key {key[len(VISION_TOWER_PREFIX):]!r} "
                                      "does not match the vision config read from it")
        state.update(vision_state)
        from_pretrained_kwargs.pop("trust_remote_code", None)
        from_pretrained_kwargs.setdefault("dtype", self.config.dtype or torch.float32)
        model = ExGraMedForCausalLM.from_pretrained(None, config=self.config, state_dict=state, **from_pretrained_kwargs)
        model.eval()
        return model


def load_original(model_dir: str | os.PathLike, *, vision_tower: str | None = None,
                  dense_connector: str | None = None, legacy_tokenization: bool | None = None,
                  **from_pretrained_kwargs: Any) -> tuple[ExGraMedForCausalLM, ExGraMedProcessor]:
    """Model and processor of an original checkpoint (what ``swift infer/sft`` get from the loader)."""
    checkpoint = OriginalCheckpoint.open(model_dir, vision_tower=vision_tower, dense_connector=dense_connector,
                                         legacy_tokenization=legacy_tokenization)
    return checkpoint.load_model(**from_pretrained_kwargs), checkpoint.processor()
