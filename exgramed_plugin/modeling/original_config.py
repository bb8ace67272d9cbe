"""config.json of the published LLaVA-Med / ExGra-Med checkpoints, read without ``AutoConfig``
(docs/method.md §1.8, §1.9).

The MERGE-Group uploads (``exgra-med``, ``exgra-med-dci``, ``-10/-40``, the VQA fine-tunes,
``llava-med-10/-40``) are ``LlavaLlamaForCausalLM`` checkpoints saved by transformers 4.28: their
config.json says ``model_type "llava"``, which modern transformers would map to the unrelated
``LlavaConfig``. This module recognises that layout, checks the keys a loader needs (every error
names the file and the key) and turns it into an ``ExGraMedConfig``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..common.jsonio import read_json
from .biomedclip import open_clip_vision_config
from .clip_common import is_open_clip_source
from .configuration import DENSE_CONNECTOR_TYPES, ExGraMedConfig
from ..common.tokens import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN
from .vision import clip_vision_config_from_source
from ..common.weight_files import CheckpointError

logger = logging.getLogger(__name__)

ORIGINAL_MODEL_TYPE = "llava"
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
_REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "mm_hidden_size")
# LLaMA fields copied from the original config.json; the legacy bos/eos/pad ids (0/1/-1) are not.
_LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "hidden_act", "rms_norm_eps", "initializer_range", "tie_word_embeddings",
               "attention_bias", "mlp_bias", "head_dim")
_MM_KEYS = ("mm_hidden_size", "mm_projector_type", "mm_vision_select_layer", "mm_use_im_start_end", "use_mm_proj")


def is_original_checkpoint(model_dir: str | os.PathLike) -> bool:
    """True for the original LLaVA-Med layout: ``model_type "llava"`` with flat LLaMA + ``mm_*`` keys.

    The official transformers LLaVA layout has the same ``model_type`` but nested ``text_config``;
    it is not ours.
    """
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        return False
    raw = read_json(config_path)
    if raw.get("model_type") != ORIGINAL_MODEL_TYPE or "text_config" in raw:
        return False
    architectures = raw.get("architectures") or []
    return any(a in ORIGINAL_ARCHITECTURES for a in architectures) or any(k.startswith("mm_") for k in raw)


def read_original_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The raw config.json of an original checkpoint, with the keys a loader cannot do without."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    raw = read_json(config_path)
    for key in _REQUIRED_CONFIG_KEYS:
        if key not in raw:
            raise CheckpointError(f"{config_path}: key {key!r} is missing; an original LLaVA-Med config.json has "
                                  f"{', '.join(_REQUIRED_CONFIG_KEYS)} (docs/method.md §1.8)")
    if "mm_projector_type" not in raw and not raw.get("use_mm_proj", False):
        raise CheckpointError(f"{config_path}: neither 'mm_projector_type' nor 'use_mm_proj' is set; a LLaVA-Med "
                              "checkpoint without a projector cannot take images")
    return raw


def infer_dense_connector(mm_hidden_size: int, vision_hidden_size: int, *, config_file: str | os.PathLike,
                          requested: str | None = None) -> str:
    """``none`` when ``mm_hidden_size`` equals the vision width, ``dci`` when it is three times it (§1.4).

    ``sci`` gives the same width and is never used by a published model, so it is only chosen when
    requested. A requested connector must agree with the width.
    """
    widths = {"none": vision_hidden_size, "sti": vision_hidden_size, "sci": 3 * vision_hidden_size,
              "dci": 3 * vision_hidden_size}
    if requested:
        if requested not in DENSE_CONNECTOR_TYPES:
            raise ValueError(f"dense connector {requested!r} unknown; expected one of {DENSE_CONNECTOR_TYPES}")
        if widths[requested] != mm_hidden_size:
            raise CheckpointError(f"{config_file}: key 'mm_hidden_size' is {mm_hidden_size} but dense connector "
                                  f"{requested!r} on a {vision_hidden_size}-wide vision tower needs "
                                  f"{widths[requested]}")
        return requested
    if mm_hidden_size == vision_hidden_size:
        return "none"
    if mm_hidden_size == 3 * vision_hidden_size:
        logger.info("%s: mm_hidden_size %d = 3 x %d: dense connector 'dci' (the original did not store it; pass "
                    "EXGRAMED_DENSE_CONNECTOR=sci if the checkpoint was trained with sci)", config_file,
                    mm_hidden_size, vision_hidden_size)
        return "dci"
    raise CheckpointError(f"{config_file}: key 'mm_hidden_size' is {mm_hidden_size}, but the vision tower is "
                          f"{vision_hidden_size} wide: expected {vision_hidden_size} (no dense connector) or "
                          f"{3 * vision_hidden_size} (dci/sci). Wrong vision tower?")


def build_original_config(raw: dict[str, Any], tokenizer: PreTrainedTokenizerBase, vision_source: str, *,
                          config_file: str | os.PathLike, dense_connector: str | None = None,
                          num_l: int | None = None, legacy_tokenization: bool = True) -> ExGraMedConfig:
    """``ExGraMedConfig`` from an original config.json (§1.9 step 7): LLaMA fields, ``mm_*`` fields,
    the vision tower's own config, ids from the tokenizer (never the legacy 0/1/-1 of config.json)."""
    if is_open_clip_source(vision_source):
        vision_config, tower_type = open_clip_vision_config(vision_source), "open_clip"
    else:
        vision_config, tower_type = clip_vision_config_from_source(vision_source), "clip"
    values: dict[str, Any] = {k: raw[k] for k in _LLAMA_KEYS if k in raw}
    values.update({k: raw[k] for k in _MM_KEYS if k in raw})
    values["max_position_embeddings"] = raw.get("max_position_embeddings") or raw.get("max_sequence_length") or 2048
    values.setdefault("tie_word_embeddings", False)
    if "rope_theta" in raw or "rope_scaling" in raw:
        values["rope_parameters"] = {"rope_type": "default", "rope_theta": raw.get("rope_theta", 10000.0)}
    values.setdefault("mm_projector_type", "linear")  # LLaVA v0 configs: use_mm_proj without a type
    values["mm_dense_connector_type"] = infer_dense_connector(
        raw["mm_hidden_size"], vision_config.hidden_size, config_file=config_file, requested=dense_connector)
    if num_l is not None:
        values["num_l"] = num_l
    if "torch_dtype" in raw or "dtype" in raw:
        values["dtype"] = raw.get("dtype") or raw.get("torch_dtype")
    config = ExGraMedConfig(
        **values,
        vision_config=vision_config.to_dict(),
        mm_vision_tower=vision_source,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        im_patch_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN),
        im_start_token_id=tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN),
        im_end_token_id=tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN),
        mm_legacy_tokenization=legacy_tokenization,
        architectures=["ExGraMedForCausalLM"],
    )
    if tower_type != "clip":
        # Read by vision.build_vision_tower.
        config.mm_vision_tower_type = tower_type
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"{config_file}: key 'vocab_size' is {config.vocab_size} but the tokenizer has "
                              f"{len(tokenizer)} tokens")
    return config
