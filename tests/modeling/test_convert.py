"""``exgramed convert``: original layout -> plugin layout and -> LlavaForConditionalGeneration, both
checked against the reference forward written from docs/method.md §1 (same ids, same pixels)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import sentencepiece
import torch
from torch.nn import functional as F
from transformers import CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from conftest import DATA_TEMPLATES, last_summary
from original_layout import (END, HEADS, HIDDEN, INTERMEDIATE, LAYERS, NUM_PATCHES, PATCH, SP_MODEL, START, VOCAB,
                             original_state_dict, write_original_checkpoint, write_vision_tower)

IMAGE = str(DATA_TEMPLATES / "images" / "mri_head.png")


@pytest.fixture(scope="module")
def tower(tmp_path_factory) -> Path:
    return write_vision_tower(tmp_path_factory.mktemp("tower") / "clip-tiny")


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    return write_original_checkpoint(tmp_path_factory.mktemp("orig") / "llava-med-10",
                                     "/data/authors/weights/clip-vit-large-patch14", seed=5)


def _inputs():
    generator = torch.Generator().manual_seed(11)
    pixels = torch.randn(1, 3, 28, 28, generator=generator)
    ids = torch.tensor([[2, 1824, 349, START, *[PATCH] * NUM_PATCHES, END, 774, 21631, 28747]])
    return ids, pixels


def reference_logits(tower_dir: Path, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """§1 by hand: LlamaForCausalLM on the checkpoint tensors, CLIP H[-2] without CLS, mlp2x_gelu, splice."""
    state = original_state_dict(16, seed=5)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, rms_norm_eps=1e-6,
                                         max_position_embeddings=2048)).eval()
    llama.load_state_dict({k: v for k, v in state.items()
                           if not k.startswith(("model.mm_projector.", "model.message_pass_node_features."))
                           and not k.endswith("inv_freq")})
    with torch.no_grad():
        hidden = CLIPVisionModel.from_pretrained(tower_dir)(pixels, output_hidden_states=True).hidden_states
        projected = F.linear(F.gelu(F.linear(hidden[-2][:, 1:], state["model.mm_projector.0.weight"],
                                             state["model.mm_projector.0.bias"])),
                             state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        embeds = llama.model.embed_tokens(ids).clone()
        start = int((ids[0] == START).nonzero()[0])
        embeds[0, start + 1:start + 1 + NUM_PATCHES] = projected[0]
        return llama(inputs_embeds=embeds).logits


def _prompt_ids(processor) -> list[int]:
    from swift.template import get_template
    template = get_template(processor)
    template.set_mode("transformers")
    return template.encode({"messages": [{"role": "user", "content": "Is there a mass?  Describe it.\n<image>"}],
                            "images": [IMAGE]})["input_ids"]


@pytest.fixture(scope="module")
def plugin_dir(registered, original, tower, tmp_path_factory) -> Path:
    import contextlib
    import io

    from exgramed_plugin.commands.cli import main
    dst = tmp_path_factory.mktemp("converted") / "plugin"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["convert", "--src", str(original), "--dst", str(dst), "--vision-tower", str(tower)]) == 0
    assert last_summary(stdout.getvalue())["dst"] == str(dst)
    return dst


def test_plugin_layout_files(plugin_dir):
    config = json.loads((plugin_dir / "config.json").read_text())
    assert config["model_type"] == "exgra_med" and config["architectures"] == ["ExGraMedForCausalLM"]
    assert config["mm_legacy_tokenization"] is True and config["mm_dense_connector_type"] == "none"
    assert (plugin_dir / "model.safetensors").is_file() and not list(plugin_dir.glob("*.bin"))
    from safetensors import safe_open
    with safe_open(str(plugin_dir / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert any(n.startswith("model.vision_tower.") for n in names)  # bundled
    assert not any("inv_freq" in n or "message_pass" in n for n in names)


def test_plugin_layout_round_trips_to_identical_logits(plugin_dir, tower):
    from swift.model import get_model_processor
    model, processor = get_model_processor(str(plugin_dir))  # model_type found from architectures
    assert model.config.model_type == "exgra_med"
    ids, pixels = _inputs()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, reference_logits(tower, ids, pixels), rtol=1e-4, atol=1e-5)


def test_plugin_layout_keeps_the_original_tokenization(plugin_dir, original, tower, monkeypatch):
    from swift.model import get_processor
    monkeypatch.setenv("VISION_TOWER", str(tower))
    converted = get_processor(str(plugin_dir))
    source = get_processor(str(original), model_type="exgra_med")
    assert converted.tokenizer.bos_token_id == 2 and converted.tokenizer.pad_token_id == 32000
    assert _prompt_ids(converted) == _prompt_ids(source)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SP_MODEL))
    rng = random.Random(0)
    alphabet = list("abcHW  \n?!.,:0123456789#()-'é") + ["  ", "   ", "How", " ###", "\n\n", "lesion "]
    for _ in range(300):  # the saved tokenizer still encodes a chunk as SentencePiece does (§2.5)
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        assert converted.tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text), repr(text)


@pytest.fixture(scope="module")
def llava_hf_dir(registered, original, tower, tmp_path_factory) -> Path:
    from exgramed_plugin.modeling.convert import main
    dst = tmp_path_factory.mktemp("converted") / "llava-hf"
    assert main(["--src", str(original), "--dst", str(dst), "--vision-tower", str(tower), "--to", "llava-hf"]) == 0
    return dst


def test_llava_hf_round_trips_to_identical_logits(llava_hf_dir, tower):
    from transformers import LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(llava_hf_dir).eval()
    assert model.config.image_token_id == PATCH and model.config.vision_feature_layer == -2
    ids, pixels = _inputs()
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, reference_logits(tower, ids, pixels), rtol=1e-4, atol=1e-5)


def test_llava_hf_processor_expands_one_patch_token_per_image(llava_hf_dir):
    from PIL import Image
    from transformers import AutoProcessor
    processor = AutoProcessor.from_pretrained(llava_hf_dir)
    out = processor(text="<im_start><im_patch><im_end>", images=Image.open(IMAGE).convert("RGB"), return_tensors="pt")
    assert out["input_ids"][0].tolist().count(PATCH) == NUM_PATCHES
    assert out["pixel_values"].shape == (1, 3, 28, 28)


def test_llava_hf_loads_as_swift_llava1_5_hf(llava_hf_dir):
    from swift.model import get_model_processor
    model, _ = get_model_processor(str(llava_hf_dir), model_type="llava1_5_hf")
    assert type(model).__name__ == "LlavaForConditionalGeneration"


def test_dci_checkpoint_refuses_llava_hf(registered, tower, tmp_path):
    from exgramed_plugin.modeling.convert import convert_to_llava_hf
    src = write_original_checkpoint(tmp_path / "dci", str(tower), mm_hidden_size=48, gnn=False)
    with pytest.raises(ValueError, match="dense connector"):
        convert_to_llava_hf(src, tmp_path / "out")


def test_convert_of_a_plugin_layout_checkpoint_says_it_is_converted(registered, plugin_dir, tmp_path, capsys):
    from exgramed_plugin.commands.cli import main
    assert main(["convert", "--src", str(plugin_dir), "--dst", str(tmp_path / "again")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (f"{plugin_dir / 'config.json'}: model_type is 'exgra_med': {plugin_dir} is already in the plugin "
                    "layout, nothing to convert; pass it to swift as --model (or convert it --to llava-hf)")


def test_convert_names_a_truncated_bin_shard(registered, original, tower, tmp_path, capsys):
    import shutil
    from exgramed_plugin.commands.cli import main
    broken = tmp_path / "broken"
    shutil.copytree(original, broken)
    shard = sorted(broken.glob("pytorch_model*.bin"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert main(["convert", "--src", str(broken), "--dst", str(tmp_path / "out"), "--vision-tower", str(tower)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"{shard}: truncated or corrupt PyTorch weight file")
