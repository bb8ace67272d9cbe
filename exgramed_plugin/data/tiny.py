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

import torch
from transformers import CLIPImageProcessor, LlamaTokenizerFast

from ..modeling.clip_common import CLIP_MEAN, CLIP_STD
from ..modeling.configuration import ADDED_TOKENS, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, \
    PAD_TOKEN, ExGraMedConfig
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
) -> Path:
    """Write a random ``exgra_med`` checkpoint (model, tokenizer, image processor) to ``out_dir``.

    The vision tower is bundled, so the checkpoint loads with no network. Weights depend only on
    ``seed`` (the global RNG is left as it was).
    """
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    config = ExGraMedConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, max_position_embeddings=2048,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        vision_config=dict(hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                           num_hidden_layers=vision_layers, num_attention_heads=2, image_size=image_size,
                           patch_size=patch_size, projection_dim=vision_hidden_size),
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
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        do_center_crop=True, do_resize=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
        do_convert_rgb=True)
    model.save_pretrained(out_dir)
    ExGraMedProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out_dir)
    logger.info("wrote a tiny exgra_med checkpoint (%d parameters, %d image tokens) to %s",
                sum(p.numel() for p in model.parameters()), config.num_image_tokens, out_dir)
    return out_dir
