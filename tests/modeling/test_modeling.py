"""The exgra_med model against an independent reference forward written from docs/method.md §1."""

import pytest
import torch
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from exgramed_plugin.modeling.configuration import ExGraMedConfig
from exgramed_plugin.modeling.dense_connector import sci_layers, select_vision_features
from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM

PATCH, START, END = 101, 102, 103


def tiny_config(**overrides) -> ExGraMedConfig:
    values = dict(vocab_size=110, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  pad_token_id=0, vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=4,
                                                     num_attention_heads=2, image_size=28, patch_size=14),
                  im_patch_token_id=PATCH, im_start_token_id=START, im_end_token_id=END)
    values.update(overrides)
    return ExGraMedConfig(**values)


def build(config, seed=0):
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = ExGraMedForCausalLM(config).eval()
    torch.random.set_rng_state(generator_state)
    return model


def reference_logits(model: ExGraMedForCausalLM, input_ids, pixel_values, features_fn):
    """Plain LlamaForCausalLM + CLIP hidden states + a hand-written projector + manual splice."""
    cfg = model.config
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=cfg.max_position_embeddings)).eval()
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("model.vision_tower.", "model.mm_projector."))}
    llama.load_state_dict(state)
    with torch.no_grad():
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
        feats = features_fn(hidden)
        p = model.model.mm_projector
        projected = F.linear(F.gelu(F.linear(feats, p[0].weight, p[0].bias)), p[2].weight, p[2].bias)
        embeds = llama.model.embed_tokens(input_ids).clone()
        image_index = 0  # images are numbered across the batch, sample after sample
        for b in range(input_ids.shape[0]):
            for s in (input_ids[b] == START).nonzero().flatten().tolist():
                n = projected.shape[1]
                assert input_ids[b, s + n + 1] == END
                embeds[b, s + 1:s + 1 + n] = projected[image_index]
                image_index += 1
        return llama(inputs_embeds=embeds).logits


def _ids(num_tokens, prefix=(5, 6), suffix=(7, 8, 9)):
    return torch.tensor([[2, *prefix, START, *([PATCH] * num_tokens), END, *suffix]])


@pytest.mark.parametrize("connector, features_fn", [
    ("none", lambda h: h[-2][:, 1:]),
    # 4-layer tower: F = H[3]; G1 = mean(H[0], H[1]); G2 = mean(H[2], H[3])  (§1.4 scaled to L = 4)
    ("dci", lambda h: torch.cat([h[3][:, 1:], (h[0][:, 1:] + h[1][:, 1:]) / 2, (h[2][:, 1:] + h[3][:, 1:]) / 2], -1)),
])
def test_forward_matches_reference(connector, features_fn):
    model = build(tiny_config(mm_dense_connector_type=connector))
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(1, 3, 28, 28, generator=generator)
    ids = _ids(model.config.num_image_tokens)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, reference_logits(model, ids, pixels, features_fn), rtol=1e-4, atol=1e-5)


def test_two_images_in_two_samples_splice_in_order():
    model = build(tiny_config())
    n = model.config.num_image_tokens
    ids = torch.cat([_ids(n), _ids(n, prefix=(11, 12), suffix=(13, 14, 15))])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
    torch.testing.assert_close(ours, reference_logits(model, ids, pixels, lambda h: h[-2][:, 1:]),
                               rtol=1e-4, atol=1e-5)


def test_original_dense_connector_indices_for_clip_large():
    # 25 hidden states (CLIP-L/14): H[i] filled with the constant i.
    hidden = tuple(torch.full((1, 3, 2), float(i)) for i in range(25))
    assert sci_layers(24) == (7, 15)
    sci = select_vision_features(hidden, -2, "sci")
    assert sci.shape == (1, 2, 6) and sci[0, 0].tolist() == [23, 23, 7, 7, 15, 15]
    dci = select_vision_features(hidden, -2, "dci")
    assert dci[0, 0].tolist() == [23, 23, 5.5, 5.5, 17.5, 17.5]  # mean(0..11), mean(12..23)


def test_sti_placeholder_count_is_consistent():
    config = tiny_config(mm_dense_connector_type="sti", vision_config=dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56,
        patch_size=14))
    assert config.num_image_tokens == 16 + 2 * 2
    model = build(config)
    out = model(input_ids=_ids(20), pixel_values=torch.randn(1, 3, 56, 56))
    assert out.image_hidden_states.shape == (1, 20, 32)


def test_wrong_number_of_image_tokens_is_an_error():
    model = build(tiny_config())
    with pytest.raises(ValueError, match="<im_patch> tokens"):
        model(input_ids=_ids(3), pixel_values=torch.randn(1, 3, 28, 28))


def test_backward_reaches_projector_but_not_frozen_tower():
    model = build(tiny_config()).train()
    model.model.vision_tower.requires_grad_(False)
    ids = _ids(model.config.num_image_tokens)
    out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 28, 28), labels=ids)
    out.loss.backward()
    assert model.model.mm_projector[0].weight.grad is not None
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.vision_tower.parameters())


def test_generation_with_kv_cache_matches_no_cache_and_save_load(tmp_path):
    model = build(tiny_config())
    ids = _ids(model.config.num_image_tokens)
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    kwargs = dict(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cached = model.generate(use_cache=True, **kwargs)
    uncached = model.generate(use_cache=False, **kwargs)
    assert torch.equal(cached, uncached) and cached.shape[1] == ids.shape[1] + 6
    model.save_pretrained(tmp_path)
    reloaded = ExGraMedForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, pixel_values=pixels).logits,
                                   model(input_ids=ids, pixel_values=pixels).logits)


def test_parameter_names_follow_the_original_layout():
    names = set(dict(build(tiny_config()).named_parameters()))
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                 "model.mm_projector.0.weight", "model.mm_projector.2.bias", "lm_head.weight"):
        assert name in names


def test_config_validation():
    with pytest.raises(ValueError, match="mm_dense_connector_type"):
        tiny_config(mm_dense_connector_type="xyz")
    with pytest.raises(ValueError, match="mm_projector_type"):
        tiny_config(mm_projector_type="mlp2x_relu")
    assert tiny_config(mm_dense_connector_type="dci").mm_hidden_size == 48
