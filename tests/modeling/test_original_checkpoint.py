"""Original LLaVA-Med / ExGra-Med checkpoints loaded through swift's loader, against references
written here from docs/method.md §1 (plain LlamaForCausalLM + CLIPVisionModel + hand-written
projector and splice) and golden token ids from the SentencePiece pieces (§2.5)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sentencepiece
import torch
from torch.nn import functional as F
from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from conftest import DATA_TEMPLATES
from exgramed_plugin.settings import parse_settings
from original_layout import (AUTHORS_PATH, END, HEADS, HIDDEN, INTERMEDIATE, LAYERS, NUM_PATCHES, PATCH, SP_MODEL,
                             START, VOCAB, original_state_dict, write_original_checkpoint, write_vision_tower)

IMAGE = str(DATA_TEMPLATES / "images" / "mri_head.png")
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    return write_vision_tower(tmp_path_factory.mktemp("tower") / "clip-tiny")


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    """Stage-2 style: GNN keys, and mm_vision_tower an absolute path of the authors' cluster."""
    return write_original_checkpoint(tmp_path_factory.mktemp("orig") / "exgra-med", AUTHORS_PATH)


@pytest.fixture(scope="module")
def original_dci(tmp_path_factory, tower) -> Path:
    """DCI variant (mm_hidden_size = 3 x 16), mm_vision_tower an existing local folder."""
    return write_original_checkpoint(tmp_path_factory.mktemp("orig") / "exgra-med-dci", str(tower),
                                     mm_hidden_size=48, seed=1, gnn=False)


def swift_load(model_dir: Path, *, load_model: bool = True):
    from swift.model import get_model_processor
    return get_model_processor(str(model_dir), model_type="exgra_med", load_model=load_model)


@pytest.fixture(scope="module")
def loaded(registered, original, tower):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISION_TOWER", str(tower))  # what --model_kwargs '{"vision_tower": ...}' sets
        return swift_load(original)


def reference_logits(state: dict, tower_dir: Path, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     features_fn) -> torch.Tensor:
    """§1: LLaMA from the checkpoint tensors, CLIP from the tower folder, projector by hand, splice by hand."""
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, rms_norm_eps=1e-6, max_position_embeddings=2048)).eval()
    llama_state = {k: v for k, v in state.items()
                   if not k.startswith(("model.mm_projector.", "model.message_pass_node_features."))
                   and not k.endswith("rotary_emb.inv_freq")}
    llama.load_state_dict(llama_state)
    clip = CLIPVisionModel.from_pretrained(tower_dir).eval()
    with torch.no_grad():
        hidden = clip(pixel_values, output_hidden_states=True).hidden_states
        features = features_fn(hidden)
        projected = F.linear(F.gelu(F.linear(features, state["model.mm_projector.0.weight"],
                                             state["model.mm_projector.0.bias"])),
                             state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        embeds = llama.model.embed_tokens(input_ids).clone()
        image_index = 0
        for b in range(input_ids.shape[0]):
            for s in (input_ids[b] == START).nonzero().flatten().tolist():
                assert input_ids[b, s + NUM_PATCHES + 1] == END
                embeds[b, s + 1:s + 1 + NUM_PATCHES] = projected[image_index]
                image_index += 1
        return llama(inputs_embeds=embeds).logits


def _none_features(hidden):
    return hidden[-2][:, 1:]


def _dci_features(hidden):
    # §1.4 verbatim for a 24-layer tower: [F | mean(H0..H11) | mean(H12..H23)], CLS dropped.
    g1 = torch.stack([hidden[i][:, 1:] for i in range(0, 12)]).mean(0)
    g2 = torch.stack([hidden[i][:, 1:] for i in range(12, 24)]).mean(0)
    return torch.cat([hidden[-2][:, 1:], g1, g2], dim=-1)


def _encode(template, question="What is shown?\n<image>", mode="transformers"):
    template.set_mode(mode)
    return template.encode({"messages": [{"role": "user", "content": question},
                                         {"role": "assistant", "content": "mri"}], "images": [IMAGE]})


def test_config_is_built_from_the_original_json(loaded):
    model, processor = loaded
    config = model.config
    assert config.model_type == "exgra_med" and config.max_position_embeddings == 2048
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (VOCAB, HIDDEN, LAYERS)
    # the legacy 0/1/-1 of config.json are ignored in favour of the tokenizer's </s> and [PAD]
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (2, 2, 32000)
    assert (config.im_patch_token_id, config.im_start_token_id, config.im_end_token_id) == (PATCH, START, END)
    assert config.mm_dense_connector_type == "none" and config.mm_legacy_tokenization is True
    assert config.vision_config.num_hidden_layers == 24 and config.num_image_tokens == NUM_PATCHES
    tokenizer = processor.tokenizer
    assert tokenizer.bos_token == "</s>" and tokenizer.bos_token_id == 2 and len(tokenizer) == VOCAB
    assert list(processor.image_processor.image_mean) == [0.48145466, 0.4578275, 0.40821073]
    assert processor.image_processor.crop_size["height"] == 28
    assert not any("message_pass" in k or "inv_freq" in k for k in model.state_dict())


def test_logits_match_the_reference_forward(loaded, tower):
    from swift.template import get_template
    model, processor = loaded
    encoded = _encode(get_template(processor))
    ids = torch.tensor([encoded["input_ids"]])
    pixels = encoded["pixel_values"]
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    expected = reference_logits(original_state_dict(16, seed=0), tower, ids, pixels, _none_features)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_dci_variant_matches_the_reference_forward(registered, original_dci, tower):
    model, processor = swift_load(original_dci)  # mm_vision_tower is the local folder: no override
    assert model.config.mm_dense_connector_type == "dci" and model.config.mm_hidden_size == 48
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, 28, 28, generator=generator)
    ids = torch.tensor([[2, 11, 12, START, *[PATCH] * NUM_PATCHES, END, 13, 17],
                        [2, 16, 18, START, *[PATCH] * NUM_PATCHES, END, 14, 15]])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    expected = reference_logits(original_state_dict(48, seed=1, gnn=False), tower, ids, pixels, _dci_features)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_safetensors_weights_load_the_same(registered, tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import load_original
    ck = write_original_checkpoint(tmp_path / "st", str(tower), safetensors=True)
    model, _ = load_original(ck)
    ids = torch.tensor([[2, 5, START, *[PATCH] * NUM_PATCHES, END, 6]])
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    expected = reference_logits(original_state_dict(16, seed=0), tower, ids, pixels, _none_features)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- tokenization §2.5


@pytest.fixture(scope="module")
def sp() -> sentencepiece.SentencePieceProcessor:
    return sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))


def _ids(sp, pieces: list[str]) -> list[int]:
    ids = [sp.piece_to_id(p) for p in pieces]
    assert sp.unk_id() not in ids, pieces
    return ids


@pytest.fixture(scope="module")
def legacy_template(registered, original, tower):
    from swift.template import get_template
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VISION_TOWER", str(tower))
        _, processor = swift_load(original, load_model=False)
    return get_template(processor)


def test_legacy_tokenization_around_image_tokens_golden_ids(sp, tower, original):
    from exgramed_plugin.data.conversation import Segment, tokenize_segments
    from exgramed_plugin.modeling.original_tokenizer import load_original_tokenizer
    tokenizer = load_original_tokenizer(original)
    text = "Hello world\n<im_start><im_patch><im_patch><im_end>\n### Assistant: the lesion\n###"
    ids, _ = tokenize_segments(tokenizer, [Segment(text)], bos_token_id=tokenizer.bos_token_id,
                               strip_around_special=True)
    # "\n" before <im_start> and after <im_end> disappear; each chunk gets its own "▁" prefix.
    expected = ([2] + _ids(sp, ["▁Hello", "▁world"]) + [START, PATCH, PATCH, END]
                + _ids(sp, ["▁###", "▁Assistant", ":", "▁the", "▁les", "ion", "<0x0A>", "###"]))
    assert ids == expected


def test_inference_prompt_golden_ids_and_stop_word(legacy_template, sp):
    encoded = _encode(legacy_template)
    prefix = f"{SYSTEM}###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: What is shown?"
    # §2.3 prompt, §2.5 tokenization: BOS </s>, the text chunk as SentencePiece encodes it on its
    # own, the "\n" before the image block stripped, "###" after <im_end> as "▁###".
    expected = [2] + sp.encode(prefix) + [START] + [PATCH] * NUM_PATCHES + [END] + _ids(sp, ["▁###"])
    assert sp.encode(prefix)[-4:] == _ids(sp, ["▁What", "▁is", "▁shown", "?"])
    assert encoded["input_ids"] == expected
    assert "###" in legacy_template.template_meta.stop_words


def test_switch_turns_legacy_tokenization_off(legacy_template, sp, monkeypatch):
    # --model_kwargs '{"exgramed_legacy_tokenization": 0}', parsed into the settings a template is made with
    settings = parse_settings({}, {"exgramed_legacy_tokenization": 0}).template
    monkeypatch.setattr(legacy_template, "settings", settings)
    ids = _encode(legacy_template)["input_ids"]
    start = ids.index(START)
    assert ids[start - 1] == sp.piece_to_id("<0x0A>")  # the "\n" before the image block is kept


def test_training_text_keeps_bos_and_strips_around_image(legacy_template, sp):
    encoded = _encode(legacy_template, mode="train")
    ids = encoded["input_ids"]
    assert ids[0] == 2
    end = ids.index(END)
    # "...?\n<im_start>...<im_end>\n### Assistant: mri\n### " (§2.1) -> after <im_end>: ▁### ▁Assistant : ▁m ri ...
    assert ids[end + 1:end + 4] == _ids(sp, ["▁###", "▁Assistant", ":"])
    assert ids[ids.index(START) - 1] == sp.piece_to_id("?")


# ------------------------------------------------------------------------------------ vision tower source


def test_authors_path_falls_back_to_the_hub_id_with_a_message(caplog):
    from exgramed_plugin.modeling.vision import resolve_original_vision_tower
    with caplog.at_level(logging.WARNING):
        source = resolve_original_vision_tower(AUTHORS_PATH, None, config_file="x/config.json")
    assert source == "openai/clip-vit-large-patch14"
    assert AUTHORS_PATH in caplog.text and "vision_tower" in caplog.text


def test_missing_override_path_is_an_error(original):
    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    with pytest.raises(FileNotFoundError, match="/nowhere/clip"):
        OriginalCheckpoint.open(original, vision_tower="/nowhere/clip")


def test_gnn_keys_map_to_the_mga_module_or_are_dropped():
    from exgramed_plugin.modeling.original_checkpoint import map_original_keys
    state = {"model.message_pass_node_features.conv1.lin_rel.weight": torch.zeros(1),
             "model.layers.0.self_attn.rotary_emb.inv_freq": torch.zeros(1), "lm_head.weight": torch.zeros(1)}
    origin = {k: Path("pytorch_model-00001-of-00002.bin") for k in state}
    with_mga, _ = map_original_keys(state, origin, has_mga=True)
    without, _ = map_original_keys(state, origin, has_mga=False)
    assert set(with_mga) == {"model.mga.gnn.conv1.lin_rel.weight", "lm_head.weight"}
    assert set(without) == {"lm_head.weight"}


def test_stage2_gnn_loads_into_the_mga_module_when_mga_is_on(registered, original, tower, monkeypatch):
    monkeypatch.setenv("VISION_TOWER", str(tower))
    monkeypatch.setenv("MGA_ENABLED", "1")  # --model_kwargs '{"mga_enabled": 1}' (or --loss_type exgra_mga)
    model, _ = swift_load(original)
    state = model.state_dict()
    reference = original_state_dict(16, seed=0)
    for conv in ("conv1", "conv2"):
        for name in ("lin_rel.weight", "lin_rel.bias", "lin_root.weight"):
            torch.testing.assert_close(state[f"model.mga.gnn.{conv}.{name}"],
                                       reference[f"model.message_pass_node_features.{conv}.{name}"], rtol=0, atol=0)


# --------------------------------------------------------------------------------------- broken checkpoints


def _broken_copy(tmp_path: Path, tower: Path, **kwargs) -> Path:
    return write_original_checkpoint(tmp_path / "broken", str(tower), **kwargs)


def test_missing_projector_names_file_and_key(tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import load_original
    from exgramed_plugin.common.weight_files import CheckpointError
    ck = _broken_copy(tmp_path, tower)
    index = json.loads((ck / "pytorch_model.bin.index.json").read_text())
    shard = index["weight_map"].pop("model.mm_projector.2.weight")
    tensors = torch.load(ck / shard, weights_only=True)
    del tensors["model.mm_projector.2.weight"]
    torch.save(tensors, ck / shard)
    (ck / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin\.index\.json: key 'model\.mm_projector\.2\.weight'"):
        load_original(ck)


def test_wrong_hidden_size_names_file_and_key(tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import load_original
    from exgramed_plugin.common.weight_files import CheckpointError
    ck = _broken_copy(tmp_path, tower)
    config = json.loads((ck / "config.json").read_text())
    config["hidden_size"] = 32
    (ck / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"pytorch_model-0000[12]-of-00002\.bin: key 'model\.[a-z_.0-9]+' has "
                                              r"shape"):
        load_original(ck)


def test_mm_hidden_size_not_matching_the_tower_names_file_and_key(tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    from exgramed_plugin.common.weight_files import CheckpointError
    ck = _broken_copy(tmp_path, tower, mm_hidden_size=20)
    with pytest.raises(CheckpointError, match=r"config\.json: key 'mm_hidden_size' is 20"):
        OriginalCheckpoint.open(ck)


@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer.model", "added_tokens.json"])
def test_missing_tokenizer_file_is_named(tmp_path, tower, name):
    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    ck = _broken_copy(tmp_path, tower)
    (ck / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        OriginalCheckpoint.open(ck)


def test_added_tokens_without_image_patch_names_file_and_key(tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    from exgramed_plugin.common.weight_files import CheckpointError
    ck = _broken_copy(tmp_path, tower)
    (ck / "added_tokens.json").write_text(json.dumps({"[PAD]": 32000}))
    with pytest.raises(CheckpointError, match=r"added_tokens\.json: key '<im_patch>'"):
        OriginalCheckpoint.open(ck)


def test_missing_config_key_is_named(tmp_path, tower):
    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    from exgramed_plugin.common.weight_files import CheckpointError
    ck = _broken_copy(tmp_path, tower)
    config = json.loads((ck / "config.json").read_text())
    del config["mm_hidden_size"]
    (ck / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: key 'mm_hidden_size' is missing"):
        OriginalCheckpoint.open(ck)
