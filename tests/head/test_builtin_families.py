"""The alignment head on swift's other built-in VLMs (Qwen3-VL, InternVL3-hf, llava-1.5-hf, Gemma 3): nodes against
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
from PIL import Image

ATOL = 1e-5
FAMILY_TYPES = ("qwen3_vl", "internvl", "llava1_5_hf", "gemma3_vision")
ALIGNMENT_KEYS = {"merged_answer_ids", "extended_answer_ids", "mga_image_tokens"}
# A module through which the image nodes are computed (the merger / projector), per family.
PROJECTOR_WEIGHT = {
    "qwen3_vl": lambda model: model.model.visual.merger.linear_fc1.weight,
    "internvl": lambda model: model.model.multi_modal_projector.linear_1.weight,
    "llava1_5_hf": lambda model: model.model.multi_modal_projector.linear_1.weight,
    "gemma3_vision": lambda model: model.model.multi_modal_projector.mm_input_projection_weight,
}


def _image(path, width: int, height: int, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (width, height), colour).save(path)
    return str(path)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """A two-image row (images of different sizes and aspect ratios), a text-only row and a one-image row."""
    folder = tmp_path_factory.mktemp("images")
    small = _image(folder / "small.png", 56, 56, (200, 30, 30))
    wide = _image(folder / "wide.png", 112, 56, (30, 200, 30))  # InternVL: 2 tiles + a thumbnail
    tall = _image(folder / "tall.png", 56, 84, (30, 30, 200))
    return [
        {"id": "two-images", "images": [small, wide],
         "messages": [{"role": "user", "content": "<image>\n<image>\nCompare the two scans."},
                      {"role": "assistant", "content": "The second shows an effusion."}],
         "extended_answers": ["The second scan shows a pleural effusion at the right base, absent in the first."]},
        {"id": "text-only", "images": [],
         "messages": [{"role": "user", "content": "What is an effusion?"},
                      {"role": "assistant", "content": "Fluid in a body cavity."},
                      {"role": "user", "content": "Where?"},
                      {"role": "assistant", "content": "Often the pleura."}],
         "extended_answers": ["An effusion is an abnormal collection of fluid in a body cavity.",
                              "It is often found in the pleural space around the lungs."]},
        {"id": "one-image", "images": [tall],
         "messages": [{"role": "user", "content": "<image>\nIs there a fracture?"},
                      {"role": "assistant", "content": "No."}],
         "extended_answers": ["No, the cortex of the bone is intact and there is no fracture line."]},
    ]


def _load(checkpoint, model_type: str, **mga):
    from swift.model import get_model_processor
    from swift.template import get_template

    from exgramed_plugin.head.builtin import FAMILIES
    from exgramed_plugin.settings import parse_settings, use_settings
    use_settings(parse_settings({}, mga, loss_type="exgra_mga"))
    model, processor = get_model_processor(str(checkpoint), model_type=model_type, torch_dtype=torch.float32,
                                           device_map="cpu")
    template = get_template(processor, template_type=FAMILIES[model_type].template)
    template.set_mode("train")
    template.model = model  # as swift's sft pipeline does (else swift loads a dummy model for these templates)
    template.register_post_encode_hook([model])
    model.train()
    for module in model.modules():  # deterministic: no dropout in the nodes or the GNN
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if model_type == "gemma3_vision":  # the image nodes are not all zero (the tiny builder draws the projection)
        assert model.model.multi_modal_projector.mm_input_projection_weight.abs().sum() > 0
    return model, template


@pytest.fixture(scope="module")
def loader(registered):
    """Load each (family, text packing) once per module: the tiny models load in seconds, but 8 of them add up."""
    cache: dict[tuple[str, bool], tuple] = {}

    def load(request, model_type: str, packing: bool = True):
        key = (model_type, packing)
        if key not in cache:
            cache[key] = _load(request.getfixturevalue(f"tiny_{model_type}"), model_type, mga_text_packing=packing)
        return cache[key]

    return load


def _recorded_nodes(model, batch):
    """Run the training forward and record the three node sets the graph network receives."""
    seen = {}
    original = model.mga.forward

    def record(z_image, z_text, z_extended, **kwargs):
        seen.update(image=z_image.detach(), text=z_text.detach(), extended=z_extended.detach())
        return original(z_image, z_text, z_extended, **kwargs)

    model.mga.forward = record
    try:
        outputs = model(**batch)
    finally:
        del model.mga.forward
    return outputs, seen


def _image_features(model, model_type: str, media) -> torch.Tensor:
    """Independent: the model's own ``get_image_features`` on one image's pixel values, ``[tokens, hidden]``."""
    vision, config = model.model, model.config
    with torch.no_grad():
        if model_type == "qwen3_vl":  # per-image tuple; the DeepStack features are not the language model's input
            output = vision.get_image_features(media["pixel_values"], image_grid_thw=media["image_grid_thw"])
            return torch.cat(list(output.pooler_output))
        if model_type in ("internvl", "llava1_5_hf"):  # InternVL: [tiles, tokens, hidden], all tiles of the image
            output = vision.get_image_features(media["pixel_values"], vision_feature_layer=config.vision_feature_layer,
                                               vision_feature_select_strategy=config.vision_feature_select_strategy)
            features = output.pooler_output
            features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
            return features.reshape(-1, features.shape[-1])
        features = vision.get_image_features(media["pixel_values"]).pooler_output  # Gemma: unscaled soft tokens
        return features.reshape(-1, features.shape[-1])


def _reference_image_node(model, model_type: str, template, row) -> torch.Tensor:
    """Mean of each image's features (encoded alone, the template's preprocessing), then over the images."""
    nodes = []
    for path in row["images"]:
        template.set_mode("transformers")  # the same image preprocessing, without the training inputs
        try:
            encoded = template.encode({"messages": [{"role": "user", "content": "<image>x"}], "images": [path]})
        finally:
            template.set_mode("train")
        nodes.append(_image_features(model, model_type, encoded).mean(dim=0))
    return torch.stack(nodes).mean(dim=0)


def _zero_reference(model, model_type: str, template) -> torch.Tensor:
    """A black 32x32 image through the model's image processor and get_image_features, mean over its tokens."""
    media = template.processor.image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")
    return _image_features(model, model_type, media).mean(dim=0)


def _reference_text_node(model, tokenizer, texts) -> torch.Tensor:
    """Independent: a plain language-model forward of that sample alone (BOS first if any), mean over its tokens."""
    from exgramed_plugin.data.conversation import merge_answers
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    ids = bos + tokenizer.encode(merge_answers(texts), add_special_tokens=False)
    with torch.no_grad():
        hidden = model.model.language_model(input_ids=torch.tensor([ids])).last_hidden_state
    return hidden[0].mean(dim=0)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_nodes_equal_per_sample_references(request, loader, rows, model_type, packing):
    model, template = loader(request, model_type, packing)
    batch = template.data_collator([template.encode(row) for row in rows])
    assert ("mga_text_lengths" in batch) == packing and ("mga_text_mask" in batch) == (not packing)
    assert batch["mga_images_per_sample"].tolist() == [2, 0, 1]
    outputs, seen = _recorded_nodes(model, batch)
    assert torch.isfinite(outputs.align_loss) and torch.isfinite(outputs.loss)
    zero = _zero_reference(model, model_type, template)
    for index, row in enumerate(rows):
        expected = _reference_image_node(model, model_type, template, row) if row["images"] else zero
        torch.testing.assert_close(seen["image"][index], expected, atol=ATOL, rtol=0)
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        torch.testing.assert_close(seen["text"][index], _reference_text_node(model, template.tokenizer, answers),
                                   atol=ATOL, rtol=0)
        torch.testing.assert_close(seen["extended"][index],
                                   _reference_text_node(model, template.tokenizer, row["extended_answers"]),
                                   atol=ATOL, rtol=0)
    assert model.alignment_head.family.position_rows == (4 if model_type == "qwen3_vl" else 0)


@pytest.mark.parametrize("model_type", FAMILY_TYPES)
def test_gradients_reach_the_graph_network_projector_and_language_model(request, loader, rows, model_type):
    model, template = loader(request, model_type)
    batch = template.data_collator([template.encode(row) for row in rows])
    model.zero_grad()
    outputs = model(**batch)
    outputs.align_loss.backward()
    assert sum(p.grad.abs().sum() for p in model.mga.parameters() if p.grad is not None) > 0
    assert PROJECTOR_WEIGHT[model_type](model).grad.abs().sum() > 0  # through the image nodes
    assert model.model.language_model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # the text passes
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
        image_id = model.config.image_token_id
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
