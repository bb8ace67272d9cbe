"""Tiny checkpoints written in the exact layout of the published LLaVA-Med / ExGra-Med uploads.

Written from docs/method.md §1.8 without any plugin code: config.json keys of the transformers-4.28
``LlavaLlamaForCausalLM`` dump (legacy bos/eos/pad 0/1/-1, ``max_sequence_length``), weight names
with ``rotary_emb.inv_freq`` and the stage-2 GNN, two ``pytorch_model-*.bin`` shards with an index,
the slow SentencePiece tokenizer files (BOS ``</s>``, the four added tokens). The SentencePiece
model is Mistral-7B's (32000 pieces, LLaMA family), shipped in the ``mistral-common`` wheel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

import mistral_common

SP_MODEL = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
HIDDEN, INTERMEDIATE, LAYERS, HEADS, VOCAB = 64, 128, 2, 4, 32004
VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=24, num_attention_heads=2, image_size=28,
              patch_size=14, projection_dim=16)
NUM_PATCHES = (28 // 14) ** 2
PAD, PATCH, START, END = 32000, 32001, 32002, 32003
AUTHORS_PATH = "/home/authors/cluster/weights/clip-vit-large-patch14"

TOKENIZER_CONFIG = {
    "add_bos_token": True, "add_eos_token": False,
    "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False},
    "clean_up_tokenization_spaces": False,
    "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False},
    "model_max_length": 2048, "pad_token": None, "padding_side": "right", "special_tokens_map_file": None,
    "tokenizer_class": "LlamaTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<unk>", "lstrip": False, "normalized": True, "rstrip": False,
                  "single_word": False},
}
SPECIAL_TOKENS_MAP = {"bos_token": "</s>", "eos_token": "</s>", "pad_token": "[PAD]", "unk_token": "<unk>"}
ADDED_TOKENS = {"[PAD]": PAD, "<im_patch>": PATCH, "<im_start>": START, "<im_end>": END}


def write_vision_tower(out: Path, seed: int = 7) -> Path:
    """A tiny CLIP vision tower saved like a hub folder (config + safetensors, no preprocessor)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        CLIPVisionModel(CLIPVisionConfig(**VISION)).save_pretrained(out)
    return out


def original_config(mm_hidden_size: int, vision_tower: str, *, multi_graph: bool = True) -> dict:
    config = {
        "_name_or_path": "/home/authors/cluster/checkpoints/stage2", "architectures": ["LlavaLlamaForCausalLM"],
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": -1, "freeze_mm_mlp_adapter": False,
        "hidden_act": "silu", "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": INTERMEDIATE,
        "max_sequence_length": 2048, "mm_hidden_size": mm_hidden_size, "mm_projector_type": "mlp2x_gelu",
        "mm_use_im_start_end": True, "mm_vision_select_layer": -2, "mm_vision_tower": vision_tower,
        "model_type": "llava", "more_mlp": False, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": "4.28.0.dev0", "tune_mm_mlp_adapter": False, "use_cache": False,
        "use_mm_proj": True, "vocab_size": VOCAB,
    }
    if multi_graph:
        config.update(multi_graph=True, graph_num_features=HIDDEN)
    return config


def original_state_dict(mm_hidden_size: int, *, seed: int = 0, gnn: bool = True) -> dict[str, torch.Tensor]:
    """Random tensors under the original names (std 0.02 so the logits are not degenerate)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    state = {"model.embed_tokens.weight": rand(VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            state[p + f"self_attn.{name}.weight"] = rand(HIDDEN, HIDDEN)
        state[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, 16, 2).float() / 16))
        state[p + "mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[p + "mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[p + "mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        state[p + "input_layernorm.weight"] = 1 + rand(HIDDEN)
        state[p + "post_attention_layernorm.weight"] = 1 + rand(HIDDEN)
    state["model.norm.weight"] = 1 + rand(HIDDEN)
    state["model.mm_projector.0.weight"] = rand(HIDDEN, mm_hidden_size) * 10
    state["model.mm_projector.0.bias"] = rand(HIDDEN)
    state["model.mm_projector.2.weight"] = rand(HIDDEN, HIDDEN) * 10
    state["model.mm_projector.2.bias"] = rand(HIDDEN)
    if gnn:
        for conv in ("conv1", "conv2"):
            p = f"model.message_pass_node_features.{conv}."
            state[p + "lin_rel.weight"] = rand(HIDDEN, HIDDEN)
            state[p + "lin_rel.bias"] = rand(HIDDEN)
            state[p + "lin_root.weight"] = rand(HIDDEN, HIDDEN)
    state["lm_head.weight"] = rand(VOCAB, HIDDEN)
    return state


def write_original_checkpoint(out: Path, vision_tower: str, *, mm_hidden_size: int = 16, seed: int = 0,
                              gnn: bool = True, safetensors: bool = False) -> Path:
    """The full original layout: config.json, weights, tokenizer files; no vision weights."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(original_config(mm_hidden_size, vision_tower, multi_graph=gnn),
                                                indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"_from_model_config": True, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0,
         "transformers_version": "4.28.0.dev0"}))
    state = original_state_dict(mm_hidden_size, seed=seed, gnn=gnn)
    if safetensors:
        from safetensors.torch import save_file
        save_file(state, str(out / "model.safetensors"))
    else:
        keys = list(state)
        shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                  "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
        weight_map = {}
        for name, shard_keys in shards.items():
            torch.save({k: state[k] for k in shard_keys}, out / name)
            weight_map.update({k: name for k in shard_keys})
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(t.numel() * 4 for t in state.values())}, "weight_map": weight_map}))
    shutil.copy(SP_MODEL, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    (out / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP))
    (out / "added_tokens.json").write_text(json.dumps(ADDED_TOKENS))
    return out
