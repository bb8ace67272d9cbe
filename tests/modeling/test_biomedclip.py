"""BiomedCLIP-style open_clip tower from a local folder, against open_clip/timm's own forward."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

MODEL_CFG = {
    "embed_dim": 16,
    # BiomedCLIP's vision_cfg with timm's tiny "test_vit" (64 wide, 6 blocks) at 32 px: 2 x 2 patches.
    "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                   "timm_proj": "linear", "image_size": 32},
    # open_clip's own text transformer instead of the hub PubMedBERT (offline).
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """The hub layout of microsoft/BiomedCLIP-...: open_clip_config.json + open_clip_pytorch_model.bin."""
    out = tmp_path_factory.mktemp("biomedclip") / "BiomedCLIP-tiny"
    out.mkdir()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.CLIP(**MODEL_CFG).eval()
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG,
                                                           "preprocess_cfg": {"mean": MEAN, "std": STD}}))
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")
    return out, model


@pytest.fixture(scope="module")
def tower(folder):
    from exgramed_plugin.modeling.biomedclip import (OpenClipVisionTower, open_clip_vision_config,
                                                     open_clip_vision_state_dict)
    path, _ = folder
    tower = OpenClipVisionTower(open_clip_vision_config(str(path))).eval()
    tower.load_state_dict(open_clip_vision_state_dict(str(path)))
    return tower


def test_config_describes_the_trunk(folder):
    from exgramed_plugin.modeling.biomedclip import open_clip_vision_config
    config = open_clip_vision_config(str(folder[0]))
    assert (config.hidden_size, config.num_hidden_layers, config.image_size, config.patch_size) == (64, 6, 32, 16)


def test_hidden_states_are_the_block_outputs_with_cls(folder, tower):
    _, model = folder
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tower(pixels, output_hidden_states=True)
        reference = model.visual.trunk.get_intermediate_layers(pixels, n=6, return_prefix_tokens=True)
        final = model.visual.trunk.forward_features(pixels)
    assert len(ours.hidden_states) == 7
    for k, (patches, prefix) in enumerate(reference, start=1):
        torch.testing.assert_close(ours.hidden_states[k], torch.cat([prefix, patches], dim=1))
    torch.testing.assert_close(ours.last_hidden_state, final)
    assert ours.hidden_states[-2][:, 1:].shape == (2, 4, 64)  # mm_vision_select_layer -2, CLS dropped


def test_dci_averages_num_l_blocks(folder, tower):
    from exgramed_plugin.modeling.biomedclip import biomed_dense_features
    _, model = folder
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden = tower(pixels, output_hidden_states=True).hidden_states
        blocks = [patches for patches, _ in model.visual.trunk.get_intermediate_layers(
            pixels, n=6, return_prefix_tokens=True)]
    ours = biomed_dense_features(hidden, -2, "dci", num_l=3)
    expected = torch.cat([blocks[4], sum(blocks[0:3]) / 3, sum(blocks[3:6]) / 3], dim=-1)  # §1.4, num_l = 3
    torch.testing.assert_close(ours, expected)


def test_image_processor_uses_the_folder_preprocessing(folder):
    from exgramed_plugin.modeling.biomedclip import open_clip_image_processor
    from exgramed_plugin.modeling.clip_common import is_open_clip_source
    processor = open_clip_image_processor(str(folder[0]))
    assert list(processor.image_mean) == MEAN and list(processor.image_std) == STD
    assert processor.crop_size == {"height": 32, "width": 32}
    assert is_open_clip_source(str(folder[0])) and not is_open_clip_source("openai/clip-vit-large-patch14")


def test_missing_folder_is_an_error():
    from exgramed_plugin.modeling.biomedclip import read_open_clip_config
    with pytest.raises(FileNotFoundError, match="/nowhere/BiomedCLIP"):
        read_open_clip_config("/nowhere/BiomedCLIP")


def test_original_checkpoint_with_a_biomedclip_tower(registered, folder, tmp_path):
    """mm_vision_tower = a BiomedCLIP folder: config and preprocessing from it; the model matches
    LLaMA + open_clip's own block outputs + projector + splice once ExGraMedModel builds its tower
    with vision.build_vision_tower (skipped until then)."""
    from torch.nn import functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from exgramed_plugin.modeling.original_checkpoint import OriginalCheckpoint
    from original_layout import (END, HEADS, HIDDEN, INTERMEDIATE, LAYERS, PATCH, START, VOCAB, original_state_dict,
                                 write_original_checkpoint)
    path, open_clip_model = folder
    ck = write_original_checkpoint(tmp_path / "llava-med-biomedclip", str(path), mm_hidden_size=64, gnn=False)
    checkpoint = OriginalCheckpoint.open(ck)
    config = checkpoint.config
    assert getattr(config, "mm_vision_tower_type", None) == "open_clip"
    assert config.mm_dense_connector_type == "none" and config.num_image_tokens == 4
    assert list(checkpoint.image_processor.image_mean) == MEAN
    try:
        model = checkpoint.load_model()
    except NotImplementedError as error:
        pytest.skip(f"modeling.py does not build open_clip towers yet: {error}")
    state = original_state_dict(64, seed=0, gnn=False)
    ids = torch.tensor([[2, 5, START, *[PATCH] * 4, END, 6]])
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, rms_norm_eps=1e-6,
                                         max_position_embeddings=2048)).eval()
    llama.load_state_dict({k: v for k, v in state.items()
                           if not k.startswith("model.mm_projector.") and not k.endswith("inv_freq")})
    with torch.no_grad():
        blocks = open_clip_model.visual.trunk.get_intermediate_layers(pixels, n=6)
        projected = F.linear(F.gelu(F.linear(blocks[-2], state["model.mm_projector.0.weight"],
                                             state["model.mm_projector.0.bias"])),
                             state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
        embeds = llama.model.embed_tokens(ids).clone()
        embeds[0, 3:7] = projected[0]
        expected = llama(inputs_embeds=embeds).logits
        ours = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
