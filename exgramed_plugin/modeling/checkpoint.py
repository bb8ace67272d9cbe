"""Published LLaVA-Med / ExGra-Med checkpoints in their original layout (method-spec §1.8, §1.9).

The MERGE-Group uploads (``exgra-med``, ``exgra-med-dci``, ``-10/-40``, the VQA fine-tunes,
``llava-med-10/-40``) are ``LlavaLlamaForCausalLM`` checkpoints saved by transformers 4.28: a
config.json with ``model_type "llava"`` (which modern transformers would map to the unrelated
``LlavaConfig``), ``pytorch_model*.bin`` shards, a slow SentencePiece tokenizer whose BOS is
``</s>``, and no vision-tower weights. This module reads that layout without ``AutoConfig``,
checks that the checkpoint is what it claims (every error names the file and the key), builds an
``ExGraMedForCausalLM`` from it, and converts it to the plugin layout or to a transformers
``LlavaForConditionalGeneration`` checkpoint (``exgramed convert``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..data.jsonio import read_json
from .configuration import (ADDED_TOKENS, DENSE_CONNECTOR_TYPES, IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN,
                            IMAGE_START_TOKEN, ExGraMedConfig)
from .modeling import ExGraMedForCausalLM
from .processing import ExGraMedProcessor
from .vision import (VISION_TOWER_PREFIX, clip_image_processor, clip_vision_config_from_source, is_open_clip_source,
                     resolve_original_vision_tower, vision_tower_state_dict)
from .weight_files import CheckpointError, load_weight_file, weight_files

logger = logging.getLogger(__name__)

ORIGINAL_MODEL_TYPE = "llava"
ORIGINAL_ARCHITECTURES = ("LlavaLlamaForCausalLM",)
GNN_PREFIX = "model.message_pass_node_features."
MGA_GNN_PREFIX = "model.mga.gnn."
MGA_PREFIX = "model.mga."
_ROTARY_SUFFIX = "rotary_emb.inv_freq"
_REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "mm_hidden_size")
_ORIGINAL_TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                             "added_tokens.json")
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
                                  f"{', '.join(_REQUIRED_CONFIG_KEYS)} (method-spec §1.8)")
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


def make_sentencepiece_exact(tokenizer: PreTrainedTokenizerBase, sp_model_file: str | os.PathLike
                             ) -> PreTrainedTokenizerBase:
    """Make the tokenizers-backed LLaMA tokenizer give the ids of the SentencePiece model itself.

    transformers 5 converts ``tokenizer.model`` to a BPE whose merge order is not SentencePiece's
    (whitespace-only pieces such as ``"▁▁"`` have score -1e9 there, i.e. merge last) and whose
    Metaspace pre-tokenizer adds no dummy prefix to a text that starts with a space. Both change
    ids of the original prompts (the §2.3 prompt has ``"there!  How"``: SentencePiece gives
    ``▁ ▁How``, the converted tokenizer ``▁▁ How``). The fix, kept in tokenizer.json when saved:
    merges ranked by the SentencePiece score of the merged piece, the dummy ``▁`` prepended to
    every text chunk as a normalizer (as the old slow tokenizer encoded each chunk), and added
    tokens matched on the raw text. The result is a plain ``TokenizersBackend`` (``LlamaTokenizer``
    would rebuild its default normalizer when the saved tokenizer.json is loaded again). Needs
    the ``sentencepiece`` package; without it the converted tokenizer is returned unchanged with a
    warning.
    """
    try:
        import sentencepiece
    except ImportError:
        logger.warning("sentencepiece is not installed: the tokenizer of %s may give other ids than the original "
                       "slow tokenizer for runs of spaces (pip install sentencepiece)", sp_model_file)
        return tokenizer
    from tokenizers import Tokenizer
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sp_model_file))
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state.get("model", {})
    if model.get("type") != "BPE" or not model.get("merges"):
        logger.warning("%s: the tokenizer is not a converted SentencePiece BPE; left unchanged", sp_model_file)
        return tokenizer

    def rank(merge: list[str] | str) -> tuple[float, int]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        piece_id = processor.piece_to_id(left + right)
        return -processor.get_score(piece_id), piece_id

    model["merges"] = sorted(model["merges"], key=rank)
    state["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    state["pre_tokenizer"] = None
    for added in state.get("added_tokens", []):
        added["normalized"] = False
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)), bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token, unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token,
        model_max_length=tokenizer.model_max_length, padding_side=tokenizer.padding_side,
        clean_up_tokenization_spaces=False)


def load_original_tokenizer(model_dir: str | os.PathLike, *, legacy_sentencepiece: bool = True
                            ) -> PreTrainedTokenizerBase:
    """The checkpoint's own tokenizer, BOS as its special_tokens_map.json says (``</s>`` = 2 expected).

    ``legacy_sentencepiece``: give exactly the SentencePiece ids (:func:`make_sentencepiece_exact`),
    as the slow tokenizer the published weights were trained with.

    The original layout ships a slow SentencePiece tokenizer (§1.8); all four of its files are
    required, because a missing special_tokens_map.json or added_tokens.json would silently change
    BOS or the image-token ids. A checkpoint re-saved with a ``tokenizer.json`` is accepted too.
    """
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        required: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json")
    else:
        required = _ORIGINAL_TOKENIZER_FILES
    for name in required:
        if not (model_dir / name).is_file():
            raise FileNotFoundError(f"{model_dir / name} is missing: the checkpoint's tokenizer needs "
                                    f"{', '.join(required)} (method-spec §1.8)")
    tokenizer_class = read_json(model_dir / "tokenizer_config.json").get("tokenizer_class") or ""
    if tokenizer_class in ("", "LlamaTokenizer", "LlamaTokenizerFast"):
        # Not AutoTokenizer: with config.json saying model_type "llava" it builds a generic backend
        # without the SentencePiece dummy prefix, which changes every id (§2.5).
        tokenizer = LlamaTokenizer.from_pretrained(str(model_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if legacy_sentencepiece and (model_dir / "tokenizer.model").is_file():
        tokenizer = make_sentencepiece_exact(tokenizer, model_dir / "tokenizer.model")
    added_path = model_dir / "added_tokens.json"
    added = read_json(added_path) if added_path.is_file() else {}
    for token in ADDED_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        known = token_id is not None and token_id != tokenizer.unk_token_id
        if token in added and token_id != added[token]:
            raise CheckpointError(f"{added_path}: key {token!r} is id {added[token]} but the tokenizer maps it to "
                                  f"{token_id}")
        if not known and token != ADDED_TOKENS[0]:
            raise CheckpointError(f"{added_path}: key {token!r} is missing; LLaVA-Med checkpoints add "
                                  f"{', '.join(ADDED_TOKENS)} to the LLaMA vocabulary")
    logger.info("tokenizer of %s: %d tokens, BOS %r (id %s), pad %r", model_dir, len(tokenizer), tokenizer.bos_token,
                tokenizer.bos_token_id, tokenizer.pad_token)
    return tokenizer


def build_original_config(raw: dict[str, Any], tokenizer: PreTrainedTokenizerBase, vision_source: str, *,
                          config_file: str | os.PathLike, dense_connector: str | None = None,
                          num_l: int | None = None, legacy_tokenization: bool = True) -> ExGraMedConfig:
    """``ExGraMedConfig`` from an original config.json (§1.9 step 7): LLaMA fields, ``mm_*`` fields,
    the vision tower's own config, ids from the tokenizer (never the legacy 0/1/-1 of config.json)."""
    if is_open_clip_source(vision_source):
        from .biomedclip import open_clip_vision_config
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
        # Read by vision.build_vision_tower once the config declares the field (see the closing note).
        config.mm_vision_tower_type = tower_type
    if len(tokenizer) > config.vocab_size:
        raise CheckpointError(f"{config_file}: key 'vocab_size' is {config.vocab_size} but the tokenizer has "
                              f"{len(tokenizer)} tokens")
    return config


# --------------------------------------------------------------------------------------------- weights


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
    _image_processor: Any = field(default=None, repr=False)

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
    def image_processor(self):
        """The vision tower's preprocessing (§1.3): its own preprocessor config, else CLIP defaults."""
        if self._image_processor is None:
            if getattr(self.config, "mm_vision_tower_type", "clip") == "open_clip":
                from .biomedclip import open_clip_image_processor
                self._image_processor = open_clip_image_processor(self.vision_source)
            else:
                self._image_processor = clip_image_processor(self.vision_source, self.config.vision_config.image_size)
        return self._image_processor

    def processor(self) -> ExGraMedProcessor:
        return ExGraMedProcessor(image_processor=self.image_processor, tokenizer=self.tokenizer)

    def _vision_state(self) -> dict[str, Tensor]:
        if getattr(self.config, "mm_vision_tower_type", "clip") == "open_clip":
            from .biomedclip import open_clip_vision_state_dict
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


# ------------------------------------------------------------------------------------------ conversion


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


def llava_hf_config(config: ExGraMedConfig):
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
    return 0
