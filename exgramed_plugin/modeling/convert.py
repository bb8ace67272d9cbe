"""``exgramed convert``: an original LLaVA-Med / ExGra-Med checkpoint to the plugin layout, or to a
transformers ``LlavaForConditionalGeneration`` checkpoint (``llava1_5_hf`` in swift) (docs/method.md §1.9).

The original is read and checked by :mod:`.original_checkpoint`; this module only writes it out
again, renaming the parameters for ``LlavaForConditionalGeneration``.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..common.jsonio import print_summary, read_json
from .configuration import DENSE_CONNECTOR_TYPES, ExGraMedConfig
from ..common.tokens import IMAGE_PATCH_TOKEN
from .modeling import ExGraMedForCausalLM
from .original_checkpoint import MGA_PREFIX, load_original
from .original_config import is_original_checkpoint
from .processing import ExGraMedProcessor
from .vision import VISION_TOWER_PREFIX
from ..common.weight_files import CheckpointError

if TYPE_CHECKING:
    from transformers import LlavaConfig

logger = logging.getLogger(__name__)


def convert_to_plugin(src: str | os.PathLike, dst: str | os.PathLike, *, vision_tower: str | None = None,
                      dense_connector: str | None = None, legacy_tokenization: bool | None = None,
                      dtype: torch.dtype | None = None) -> Path:
    """Write the plugin layout: ``exgra_med`` config, safetensors with the vision tower bundled,
    tokenizer and image processor. ``mm_legacy_tokenization`` stays on (the weights were trained
    with the old tokenizer) unless switched off."""
    config_path = Path(src) / "config.json"
    if config_path.is_file() and read_json(config_path).get("model_type") == "exgra_med":
        raise CheckpointError(f"{config_path}: model_type is 'exgra_med': {src} is already in the plugin layout, "
                              "nothing to convert; pass it to swift as --model (or convert it --to llava-hf)")
    dst = Path(dst)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, processor = load_original(src, vision_tower=vision_tower, dense_connector=dense_connector,
                                     legacy_tokenization=legacy_tokenization, **kwargs)
    model.save_pretrained(dst)
    processor.save_pretrained(dst)
    logger.info("wrote the plugin layout of %s to %s", src, dst)
    return dst


def llava_hf_config(config: ExGraMedConfig) -> "LlavaConfig":
    """The ``LlavaConfig`` equivalent to ``config`` (no dense connector, ``mlp2x_gelu`` projector)."""
    from transformers import LlamaConfig, LlavaConfig
    if config.mm_dense_connector_type != "none":
        raise ValueError(f"dense connector {config.mm_dense_connector_type!r} has no LlavaForConditionalGeneration "
                         "equivalent; convert to the plugin layout (--to plugin) instead")
    if config.mm_projector_type != "mlp2x_gelu":
        raise ValueError(f"projector {config.mm_projector_type!r} has no LlavaForConditionalGeneration equivalent "
                         "(only mlp2x_gelu); convert to the plugin layout (--to plugin) instead")
    if getattr(config, "mm_vision_tower_type", "clip") != "clip":
        raise ValueError("only CLIP vision towers convert to LlavaForConditionalGeneration")
    text = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=config.rope_parameters, tie_word_embeddings=False, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    return LlavaConfig(
        text_config=text.to_dict(), vision_config=config.vision_config.to_dict(),
        image_token_index=config.im_patch_token_id, image_seq_length=config.num_patches,
        projector_hidden_act="gelu", vision_feature_select_strategy="default",
        vision_feature_layer=config.mm_vision_select_layer, multimodal_projector_bias=True,
        tie_word_embeddings=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, architectures=["LlavaForConditionalGeneration"])


def to_llava_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Plugin names -> ``LlavaForConditionalGeneration`` attribute names (transformers 5)."""
    converted: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key.startswith(MGA_PREFIX):
            continue
        if key.startswith(VISION_TOWER_PREFIX):
            new_key = "model.vision_tower." + key[len(VISION_TOWER_PREFIX):]
        elif key.startswith("model.mm_projector.0."):
            new_key = "model.multi_modal_projector.linear_1." + key.rsplit(".", 1)[1]
        elif key.startswith("model.mm_projector.2."):
            new_key = "model.multi_modal_projector.linear_2." + key.rsplit(".", 1)[1]
        elif key.startswith("model."):
            new_key = "model.language_model." + key[len("model."):]
        else:
            new_key = key  # lm_head
        converted[new_key] = tensor
    return converted


def convert_to_llava_hf(src: str | os.PathLike, dst: str | os.PathLike, *, vision_tower: str | None = None,
                        dtype: torch.dtype | None = None) -> Path:
    """Write a transformers ``LlavaForConditionalGeneration`` checkpoint (``llava1_5_hf`` in swift).

    Same weights and the same forward for the same ids: ``<im_patch>`` is the image token, each
    image is 256 of them (the processor expands one ``<im_patch>``), features are
    ``hidden_states[-2]`` without CLS. ``<im_start>``/``<im_end>`` and the §2.3 prompt are not
    produced by swift's ``llava1_5_hf`` template, and the modern tokenizer does not strip
    whitespace around added tokens, so generated answers can differ from the original's.
    """
    from transformers import LlavaForConditionalGeneration, LlavaProcessor
    dst = Path(dst)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if Path(src).joinpath("config.json").is_file() and is_original_checkpoint(src):
        model, processor = load_original(src, vision_tower=vision_tower, **kwargs)
    else:  # already in the plugin layout
        model = ExGraMedForCausalLM.from_pretrained(src, **kwargs)
        processor = ExGraMedProcessor.from_pretrained(src)
    config = model.config
    llava_config = llava_hf_config(config)
    state = to_llava_hf_state_dict(model.state_dict())
    llava = LlavaForConditionalGeneration.from_pretrained(None, config=llava_config, state_dict=state,
                                                          dtype=model.dtype)
    llava.save_pretrained(dst)
    LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer,
                   patch_size=config.vision_config.patch_size, vision_feature_select_strategy="default",
                   image_token=IMAGE_PATCH_TOKEN, num_additional_image_tokens=1).save_pretrained(dst)
    logger.info("wrote a LlavaForConditionalGeneration checkpoint of %s to %s", src, dst)
    return dst


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed convert",
        description="convert an original LLaVA-Med / ExGra-Med checkpoint (model_type 'llava', pytorch_model*.bin) "
                    "to the plugin layout or to a transformers LlavaForConditionalGeneration checkpoint")
    parser.add_argument("--src", required=True, type=Path, help="the downloaded original checkpoint folder")
    parser.add_argument("--dst", required=True, type=Path, help="output folder")
    parser.add_argument("--vision-tower", default=None,
                        help="CLIP (or BiomedCLIP open_clip) folder or hub id; default: mm_vision_tower of the config")
    parser.add_argument("--to", choices=("plugin", "llava-hf"), default="plugin")
    parser.add_argument("--dense-connector", choices=DENSE_CONNECTOR_TYPES, default=None,
                        help="default: inferred from mm_hidden_size (3 x vision width = dci)")
    parser.add_argument("--no-legacy-tokenization", action="store_true",
                        help="plugin layout: write mm_legacy_tokenization false (modern tokenization, §2.5)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default: the dtype of config.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.dst.exists() and any(args.dst.iterdir()):
        raise SystemExit(f"exgramed convert: {args.dst} exists and is not empty")
    if args.to == "plugin":
        out = convert_to_plugin(args.src, args.dst, vision_tower=args.vision_tower,
                                dense_connector=args.dense_connector,
                                legacy_tokenization=False if args.no_legacy_tokenization else None, dtype=dtype)
    else:
        if args.dense_connector not in (None, "none"):
            raise SystemExit("exgramed convert: --to llava-hf needs a checkpoint without a dense connector")
        out = convert_to_llava_hf(args.src, args.dst, vision_tower=args.vision_tower, dtype=dtype)
    logger.info("converted %s -> %s (%s)", args.src, out, args.to)
    print_summary({"src": str(args.src), "dst": str(out), "to": args.to})
    return 0
