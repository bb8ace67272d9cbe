"""The alignment head's shared tests, run for every family but Qwen2.5-VL (tests/head/test_builtin_head.py):
``exgra_med`` (one family of the same head), Qwen3-VL, InternVL3-hf, llava-1.5-hf, Gemma 3. Nodes against
independent per-sample references, gradients, and the templates' training / inference encodings.

Image node, per image: the mean of what the language model receives at that image's token positions; the
references below compute it from the model's own ``get_image_features`` on that image alone. Where a model puts
more than that into its language model, the node (and so the reference) keeps to the definition:

* Qwen3-VL: the merger output only; the DeepStack features the model adds to the hidden states after its
  first decoder layers are not part of the image node (they never reach the language model's inputs).
* Gemma 3: the projector's pooled soft tokens as they are scattered into ``inputs_embeds`` (not scaled by
  ``sqrt(hidden)`` as Gemma scales its word embeddings; the text nodes do use the scaled word embeddings).
* InternVL: one image is several tiles (a 2:1 image: 2 tiles + a thumbnail) whose tokens form one run between
  ``<img>`` and ``</img>``: the image node is the mean over all its tiles' tokens.
"""

from __future__ import annotations

import pytest
import torch

from head_helpers import alignment_rows, assert_nodes_match_references, load_with_head, recorded_nodes
from prepared_models import TINY_FIXTURES

ATOL = 1e-5
FAMILY_TYPES = ("exgra_med", "qwen3_vl", "internvl", "llava1_5_hf", "gemma3_vision")
ALIGNMENT_KEYS = {"merged_answer_ids", "extended_answer_ids", "mga_image_tokens"}
# A module through which the image nodes are computed (the merger / projector), per family.
PROJECTOR_WEIGHT = {
    "exgra_med": lambda model: model.model.mm_projector[0].weight,
    "qwen3_vl": lambda model: model.model.visual.merger.linear_fc1.weight,
    "internvl": lambda model: model.model.multi_modal_projector.linear_1.weight,
    "llava1_5_hf": lambda model: model.model.multi_modal_projector.linear_1.weight,
    "gemma3_vision": lambda model: model.model.multi_modal_projector.mm_input_projection_weight,
}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return alignment_rows(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def loader(registered):
    """Load each (family, text packing) once per module: the tiny models load in seconds, but 8 of them add up."""
    cache: dict[tuple[str, bool], tuple] = {}

    def load(request, model_type: str, packing: bool = True):
        key = (model_type, packing)
        if key not in cache:
            cache[key] = load_with_head(request.getfixturevalue(TINY_FIXTURES[model_type]), model_type,
                                        mga_text_packing=packing)
        return cache[key]

    return load


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_nodes_equal_per_sample_references(request, loader, rows, model_type, packing):
    model, template = loader(request, model_type, packing)
    batch = template.data_collator([template.encode(row) for row in rows])
    assert ("mga_text_lengths" in batch) == packing and ("mga_text_mask" in batch) == (not packing)
    assert batch["mga_images_per_sample"].tolist() == [2, 0, 1]
    outputs, seen = recorded_nodes(model, batch)
    assert torch.isfinite(outputs.align_loss) and torch.isfinite(outputs.loss)
    assert_nodes_match_references(model, model_type, template, rows, seen, atol=ATOL)
    assert model.alignment_head.family.position_rows == (4 if model_type == "qwen3_vl" else 0)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_gradients_reach_the_graph_network_projector_and_language_model(request, loader, rows, model_type):
    model, template = loader(request, model_type)
    batch = template.data_collator([template.encode(row) for row in rows])
    model.zero_grad()
    outputs = model(**batch)
    outputs.align_loss.backward()
    family = model.alignment_head.family
    assert sum(p.grad.abs().sum() for p in family.network_of(model).parameters() if p.grad is not None) > 0
    assert PROJECTOR_WEIGHT[model_type](model).grad.abs().sum() > 0  # through the image nodes
    assert family.decoder_of(model).layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the text passes
    if model_type == "qwen3_vl":  # the DeepStack mergers feed decoder layers, not the image node
        assert all(p.grad is None for p in model.model.visual.deepstack_merger_list.parameters())
    assert {"matching_accuracy", "hamming_image_to_bary", "mga_graph_nodes"} <= set(outputs.align_terms)
    model.zero_grad()


def _stock_template(model, template):
    """swift's own template class (the installed one is AlignmentTemplateMixin on top of it) on the same processor."""
    from swift.template import TEMPLATE_MAPPING
    stock_cls = type(template).__mro__[2]
    assert issubclass(type(template), stock_cls) and type(template) is not stock_cls
    assert not getattr(stock_cls, "_exgramed_alignment", False)
    stock = stock_cls(template.processor, TEMPLATE_MAPPING[model.alignment_head.family.template])
    stock.model = model
    return stock


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_training_encoding_adds_only_the_alignment_keys(request, loader, rows, model_type):
    model, template = loader(request, model_type)
    stock = _stock_template(model, template)
    stock.set_mode("train")
    for row in rows:
        ours, theirs = template.encode(dict(row)), stock.encode(dict(row))
        assert set(ours) == set(theirs) | ALIGNMENT_KEYS, row["id"]
        assert ours["input_ids"] == theirs["input_ids"], row["id"]
        image_id = model.alignment_head.family.image_token_id(model.config)
        assert sum(ours["mga_image_tokens"]) == ours["input_ids"].count(image_id)
        assert len(ours["mga_image_tokens"]) == len(row["images"])


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_inference_encoding_is_the_stock_templates(request, loader, rows, model_type):
    model, template = loader(request, model_type)
    stock = _stock_template(model, template)
    template.set_mode("transformers")
    stock.set_mode("transformers")
    try:
        for row in rows:
            ours, theirs = template.encode(dict(row)), stock.encode(dict(row))
            assert set(ours) == set(theirs), row["id"]
            for key, value in theirs.items():
                if isinstance(value, torch.Tensor):
                    assert torch.equal(ours[key], value), (row["id"], key)
                else:
                    assert ours[key] == value, (row["id"], key)
    finally:
        template.set_mode("train")
