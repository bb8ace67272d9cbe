"""The alignment head on swift's built-in Qwen2.5-VL: nodes against independent references, the
template's training inputs, checkpoints with stock keys and a side file, and the bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import padded_and_padding_free
from head_helpers import alignment_rows, assert_nodes_match_references, load_with_head, recorded_nodes

ATOL = 1e-5


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return alignment_rows(tmp_path_factory.mktemp("images"))


def _load(checkpoint, **mga):
    return load_with_head(checkpoint, "qwen2_5_vl", **mga)


@pytest.fixture(scope="module")
def loaded(registered, tiny_qwen2_5_vl):
    return _load(tiny_qwen2_5_vl)


@pytest.mark.parametrize("packing", [True, False])
def test_nodes_equal_per_sample_references(registered, tiny_qwen2_5_vl, rows, packing):
    model, template = _load(tiny_qwen2_5_vl, mga_text_packing=packing)
    batch = template.data_collator([template.encode(row) for row in rows])
    assert ("mga_text_lengths" in batch) == packing and ("mga_text_mask" in batch) == (not packing)
    assert batch["mga_images_per_sample"].tolist() == [2, 0, 1]
    outputs, seen = recorded_nodes(model, batch)
    assert torch.isfinite(outputs.align_loss) and torch.isfinite(outputs.loss)
    head = model.alignment_head
    assert_nodes_match_references(model, "qwen2_5_vl", template, rows, seen, atol=ATOL)
    assert head.family.position_rows == 4  # the M-RoPE text model got [text, t, h, w] positions


def test_packed_text_pass_isolates_samples_under_mrope(loaded):
    """Changing one sample's tokens leaves the other samples' text nodes unchanged."""
    from exgramed_plugin.head.text_packing import packed_text_nodes
    model, _ = loaded
    decoder = model.model.language_model
    first, second = [5, 6, 7, 8, 9], [10, 11, 12]
    with torch.no_grad():
        nodes = packed_text_nodes(decoder, torch.tensor([first + second]), torch.tensor([5, 3]), after_de=True,
                                  position_rows=4)
        changed = packed_text_nodes(decoder, torch.tensor([[20, 21, 22, 23, 24] + second]), torch.tensor([5, 3]),
                                    after_de=True, position_rows=4)
        alone = decoder(input_ids=torch.tensor([second])).last_hidden_state[0].mean(dim=0)
    torch.testing.assert_close(nodes[1], changed[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(nodes[1], alone, atol=ATOL, rtol=0)
    assert not torch.allclose(nodes[0], changed[0])
    # the mechanism the packed pass relies on, in one row: text positions first, restarting per sample
    positions = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])[None, None].expand(4, 1, -1)
    with torch.no_grad():
        one_row = decoder(input_ids=torch.tensor([first + second]), position_ids=positions,
                          use_cache=False).last_hidden_state[0]
    torch.testing.assert_close(one_row[5:].mean(dim=0), alone, atol=ATOL, rtol=0)


def test_gradients_reach_the_graph_network_merger_and_language_model(loaded, rows):
    model, template = loaded
    batch = template.data_collator([template.encode(row) for row in rows])
    model.zero_grad()
    outputs = model(**batch)
    outputs.align_loss.backward()
    assert sum(p.grad.abs().sum() for p in model.mga.parameters() if p.grad is not None) > 0
    assert model.model.visual.merger.mlp[0].weight.grad.abs().sum() > 0  # through the image nodes
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the text passes
    assert {"matching_accuracy", "hamming_image_to_bary", "mga_graph_nodes"} <= set(outputs.align_terms)


def test_padding_free_batch_gives_the_padded_nodes_and_losses(registered, tiny_qwen2_5_vl, rows):
    """One packed row (text positions first, so sdpa masks per sample) = the padded batch."""
    model, template = _load(tiny_qwen2_5_vl)
    padded, packed = padded_and_padding_free(template, rows)
    packed["position_ids"] = torch.cat([packed.pop("text_position_ids")[None], packed["position_ids"]])
    for key in [k for k in packed if k.startswith(("cu_seq", "max_length"))]:
        packed.pop(key)
    model.alignment_head.calls = 0
    padded_out, padded_nodes = recorded_nodes(model, padded)
    model.alignment_head.calls = 0
    model.config.text_config.use_cache = False  # no cache: sdpa reads the packed samples from the positions
    try:
        packed_out, packed_nodes = recorded_nodes(model, packed)
    finally:
        model.config.text_config.use_cache = True
    for name in ("image", "text", "extended"):
        torch.testing.assert_close(packed_nodes[name], padded_nodes[name], atol=ATOL, rtol=0)
    torch.testing.assert_close(packed_out.align_loss, padded_out.align_loss, atol=ATOL, rtol=0)
    torch.testing.assert_close(packed_out.loss, padded_out.loss, atol=ATOL, rtol=0)


def test_inference_encoding_is_the_stock_templates(loaded, rows):
    from swift.template import TEMPLATE_MAPPING
    from swift.template.templates.qwen import Qwen2_5VLTemplate
    model, template = loaded
    assert isinstance(template, Qwen2_5VLTemplate) and type(template) is not Qwen2_5VLTemplate
    stock = Qwen2_5VLTemplate(template.processor, TEMPLATE_MAPPING["qwen2_5_vl"])
    for mode in ("transformers", "train"):
        template.set_mode(mode)
        stock.set_mode(mode)
        ours, theirs = template.encode(dict(rows[2])), stock.encode(dict(rows[2]))
        extra = {"merged_answer_ids", "extended_answer_ids", "mga_image_tokens"} if mode == "train" else set()
        assert set(ours) == set(theirs) | extra
        assert ours["input_ids"] == theirs["input_ids"]
    template.set_mode("train")


def test_rows_without_extended_answers_or_with_wrong_image_counts_are_named(loaded, rows):
    from exgramed_plugin.swift_glue.alignment_inputs import image_token_counts
    _, template = loaded
    with pytest.raises(ValueError, match="one-image.*|extended answers"):
        template.encode(dict(rows[2], extended_answers=None))
    with pytest.raises(ValueError, match="2 image.*1 run.*row-7"):
        image_token_counts([1, 9, 9, 9, 2], 9, 2, context="id='row-7'")
    assert image_token_counts([9, 9, 9, 9], 9, 2, context="") == [2, 2]  # adjacent fixed-size images


def test_batch_whose_image_tokens_disagree_with_its_images_is_an_error(loaded, rows):
    model, template = loaded
    batch = template.data_collator([template.encode(row) for row in rows])
    batch["mga_image_tokens"] = batch["mga_image_tokens"] + 1
    with pytest.raises(ValueError, match="image-token positions but its images have"):
        model(**batch)


def test_unsupported_model_type_lists_the_supported_ones(loaded):
    from exgramed_plugin.head.builtin import attach_alignment_head
    from exgramed_plugin.settings import MGASettings
    model, _ = loaded
    with pytest.raises(ValueError, match="qwen2_vl.*supported model types: exgra_med, qwen2_5_vl, qwen3_vl"):
        attach_alignment_head(model, "qwen2_vl", MGASettings(enabled=True), None)


def test_checkpoint_has_the_stock_keys_and_the_network_in_a_side_file(loaded, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    from exgramed_plugin.head.side_file import SIDE_FILE, read_side_file
    model, _ = loaded
    model.save_pretrained(tmp_path / "ours")
    stock = Qwen2_5_VLForConditionalGeneration(model.config)
    stock.save_pretrained(tmp_path / "stock")

    def keys(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            return set(handle.keys())

    assert keys(tmp_path / "ours") == keys(tmp_path / "stock")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    tensors, settings, model_type = read_side_file(tmp_path / "ours")
    assert (tmp_path / "ours" / SIDE_FILE).is_file() and model_type == "qwen2_5_vl" and settings.k == 5
    for name, value in model.mga.state_dict().items():
        assert torch.equal(tensors[name], value)
    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "ours")  # a stock loader accepts it
    assert not hasattr(reloaded, "mga")


def test_side_file_loads_into_a_fresh_head(registered, tiny_qwen2_5_vl, loaded, tmp_path):
    import shutil

    from exgramed_plugin.head.side_file import load_side_file
    model, _ = loaded
    with torch.no_grad():
        for parameter in model.mga.parameters():
            parameter.add_(0.5)
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_qwen2_5_vl, folder)
    model.save_pretrained(folder)
    fresh, _ = _load(folder)  # the loader finds the side file beside the weights
    for (name, value), (_, expected) in zip(fresh.mga.state_dict().items(), model.mga.state_dict().items()):
        assert torch.equal(value, expected), name
    other = torch.nn.Linear(2, 2)
    with pytest.raises(Exception, match="does not fit the graph network"):
        load_side_file(other, folder)


def test_frozen_image_node_modules_are_named_with_the_flag_that_trains_them(loaded):
    from exgramed_plugin.head.families import frozen_image_nodes
    model, _ = loaded
    visual = list(model.model.visual.parameters())
    states = [p.requires_grad for p in visual]
    try:
        assert frozen_image_nodes(model, "qwen2_5_vl") is None  # the loaded model trains everything
        for parameter in visual:
            parameter.requires_grad_(False)
        frozen = frozen_image_nodes(model, "qwen2_5_vl")
    finally:
        for parameter, state in zip(visual, states):
            parameter.requires_grad_(state)
    assert frozen.flags == {"freeze_aligner": False} and "--freeze_aligner false" in frozen.message
    assert "model.visual." in frozen.message


def test_training_batch_without_merged_answers_names_the_template(loaded, rows):
    model, template = loaded
    batch = template.data_collator([template.encode(row) for row in rows])
    stripped = {key: value for key, value in batch.items() if not key.startswith("mga_")}
    with pytest.raises(ValueError, match="without merged answers.*--template qwen2_5_vl"):
        model(**stripped)
    model.eval()
    try:
        with torch.no_grad():
            assert model(**stripped).logits is not None  # evaluation / generation need none of it
    finally:
        model.train()
