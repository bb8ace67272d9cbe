"""Tiny random-weight ``exgra_med`` checkpoints with a real LLaMA tokenizer, built offline.

The tokenizer is the LLaMA-2 SentencePiece-BPE vocabulary shipped in the PyPI package
``wordllama`` (same 32000-token vocabulary as LLaMA-1 / Vicuna, i.e. LLaVA-Med v1 and ExGra-Med),
extended with the original added tokens ``[PAD] <im_patch> <im_start> <im_end>`` (ids 32000-32003)
and, as in the published checkpoints, ``</s>`` as BOS (docs/method.md §1.8).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaTokenizerFast, PreTrainedTokenizerBase

from ..modeling.clip_common import build_clip_image_processor
from ..common.tokens import ADDED_TOKENS, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, PAD_TOKEN
from ..modeling.configuration import ExGraMedConfig
from ..modeling.modeling import ExGraMedForCausalLM
from ..modeling.processing import ExGraMedProcessor

logger = logging.getLogger(__name__)


def llama_tokenizer_file() -> Path:
    """Path of the LLaMA-2 ``tokenizer.json`` inside the ``wordllama`` package."""
    try:
        import wordllama
    except ImportError as error:
        raise ImportError("the tiny checkpoints use the LLaMA tokenizer shipped in the PyPI package 'wordllama': "
                          "pip install wordllama (or pip install 'exgramed-plugin[demo]')") from error
    path = Path(wordllama.__file__).parent / "tokenizers" / "l2_supercat_tokenizer_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"wordllama is installed but {path} is missing")
    return path


def build_tokenizer() -> LlamaTokenizerFast:
    """LLaMA tokenizer + the four added tokens of the LLaVA-7b-v0 lineage, BOS = ``</s>``."""
    tokenizer = LlamaTokenizerFast(tokenizer_file=str(llama_tokenizer_file()), bos_token="</s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=2048, padding_side="right")
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN,
                                  "additional_special_tokens": [IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, IMAGE_END_TOKEN]})
    ids = tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS))
    if ids != list(range(32000, 32004)):
        raise RuntimeError(f"unexpected ids for the added tokens: {dict(zip(ADDED_TOKENS, ids))}")
    return tokenizer


def tiny_vision_config(image_size: int, patch_size: int, hidden_size: int, layers: int) -> dict[str, Any]:
    """The ``vision_config`` of the tiny checkpoints (a CLIP tower ``hidden_size`` wide)."""
    return dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                num_attention_heads=2, image_size=image_size, patch_size=patch_size, projection_dim=hidden_size)


def make_tiny_checkpoint(
    out_dir: str | os.PathLike,
    *,
    dense_connector: str = "none",
    image_size: int = 56,
    patch_size: int = 14,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 32,
    vision_layers: int = 2,
    projector_type: str = "mlp2x_gelu",
    use_im_start_end: bool = True,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    vision_tower_weights: str | os.PathLike | None = None,
) -> Path:
    """Write a random ``exgra_med`` checkpoint (model, tokenizer, image processor) to ``out_dir``.

    The vision tower is bundled, so the checkpoint loads with no network. Weights depend only on
    ``seed`` (the global RNG is left as it was). ``tokenizer``: another vocabulary with the same
    added tokens (default: the LLaMA one of :func:`build_tokenizer`); ``vision_tower_weights``: a
    ``safetensors`` file of pre-trained ``CLIPVisionModel`` weights for the tower (checked to fit).
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer() if tokenizer is None else tokenizer
    config = ExGraMedConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        vision_config=tiny_vision_config(image_size, patch_size, vision_hidden_size, vision_layers),
        mm_projector_type=projector_type, mm_dense_connector_type=dense_connector,
        mm_use_im_start_end=use_im_start_end,
        im_patch_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN),
        im_start_token_id=tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN),
        im_end_token_id=tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN),
        architectures=["ExGraMedForCausalLM"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ExGraMedForCausalLM(config)
    if vision_tower_weights is not None:
        _load_tower(model, vision_tower_weights)
    model.save_pretrained(out_dir)
    ExGraMedProcessor(image_processor=build_clip_image_processor(image_size), tokenizer=tokenizer).save_pretrained(out_dir)
    logger.info("wrote a tiny exgra_med checkpoint (%d parameters, vocabulary %d, %d image tokens, %s tower) to %s",
                sum(p.numel() for p in model.parameters()), len(tokenizer), config.num_image_tokens,
                "random" if vision_tower_weights is None else "pre-trained", out_dir)
    return out_dir


def _load_tower(model: ExGraMedForCausalLM, weights: str | os.PathLike) -> None:
    from safetensors.torch import load_file

    missing, unexpected = model.model.vision_tower.load_state_dict(load_file(str(weights)), strict=False)
    missing = [name for name in missing if not name.endswith("position_ids")]  # a non-persistent buffer
    if missing or unexpected:
        raise ValueError(f"{weights}: vision tower weights do not fit the checkpoint's tower "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
