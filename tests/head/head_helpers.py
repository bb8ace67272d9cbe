"""Shared by the alignment-head tests: the rows, loading a built-in model with the head, recording
the nodes its graph network receives, and the independent per-sample references.

Image reference: the model's own ``get_image_features`` on each image alone (the template's image
preprocessing), mean over its tokens, then over the row's images. Text reference: a plain
language-model forward of that sample alone (BOS first if the tokenizer has one), mean over tokens.
"""

from __future__ import annotations

import torch
from PIL import Image


def _image(path, width: int, height: int, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (width, height), colour).save(path)
    return str(path)


def alignment_rows(folder) -> list[dict]:
    """A two-image row (images of different sizes and aspect ratios), a text-only row and a one-image row."""
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


def load_with_head(checkpoint, model_type: str, **mga):
    """A built-in model loaded through swift with MGA on (``mga``: settings), its template in training mode."""
    from swift.model import get_model_processor
    from swift.template import get_template

    from exgramed_plugin.head.families import FAMILIES
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


def recorded_nodes(model, batch):
    """Run the training forward and record the three node sets the graph network receives."""
    seen = {}
    network = model.alignment_head.family.network_of(model)
    original = network.forward

    def record(z_image, z_text, z_extended, **kwargs):
        seen.update(image=z_image.detach(), text=z_text.detach(), extended=z_extended.detach())
        return original(z_image, z_text, z_extended, **kwargs)

    network.forward = record
    try:
        outputs = model(**batch)
    finally:
        del network.forward
    return outputs, seen


def image_features(model, model_type: str, media) -> torch.Tensor:
    """Independent: the model's own ``get_image_features`` on one image's pixel values, ``[tokens, hidden]``."""
    vision, config = model.model, model.config
    with torch.no_grad():
        if model_type == "exgra_med":  # the projector outputs [images, tokens, hidden]
            features = vision.get_image_features(media["pixel_values"])
            return features.reshape(-1, features.shape[-1])
        if model_type in ("qwen2_5_vl", "qwen3_vl"):  # per-image tuple (Qwen3-VL: DeepStack is not the LM input)
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


def reference_image_node(model, model_type: str, template, row) -> torch.Tensor:
    """Mean of each image's features (encoded alone, the template's preprocessing), then over the images."""
    nodes = []
    for path in row["images"]:
        template.set_mode("transformers")  # the same image preprocessing, without the training inputs
        try:
            encoded = template.encode({"messages": [{"role": "user", "content": "<image>x"}], "images": [path]})
        finally:
            template.set_mode("train")
        nodes.append(image_features(model, model_type, encoded).mean(dim=0))
    return torch.stack(nodes).mean(dim=0)


def zero_reference(model, model_type: str, template) -> torch.Tensor:
    """A black 32x32 image through the model's image processor and get_image_features, mean over its tokens
    (``exgra_med``: an all-zero pixel tensor, as the original)."""
    if model_type == "exgra_med":
        size = model.config.vision_config.image_size
        return image_features(model, model_type, {"pixel_values": torch.zeros(1, 3, size, size)}).mean(dim=0)
    media = template.processor.image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")
    return image_features(model, model_type, media).mean(dim=0)


def reference_text_node(model, tokenizer, texts) -> torch.Tensor:
    """Independent: a plain language-model forward of that sample alone (BOS first if any), mean over its tokens."""
    from exgramed_plugin.data.conversation import merge_answers
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    ids = bos + tokenizer.encode(merge_answers(texts), add_special_tokens=False)
    with torch.no_grad():
        decoder = model.model if model.config.model_type == "exgra_med" else model.model.language_model
        hidden = decoder(input_ids=torch.tensor([ids])).last_hidden_state
    return hidden[0].mean(dim=0)


def assert_nodes_match_references(model, model_type: str, template, rows, seen, atol: float = 1e-5) -> None:
    """Each row's recorded image / text / extended node against its independent reference."""
    zero = zero_reference(model, model_type, template)
    for index, row in enumerate(rows):
        expected = reference_image_node(model, model_type, template, row) if row["images"] else zero
        torch.testing.assert_close(seen["image"][index], expected, atol=atol, rtol=0)
        answers = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        torch.testing.assert_close(seen["text"][index], reference_text_node(model, template.tokenizer, answers),
                                   atol=atol, rtol=0)
        torch.testing.assert_close(seen["extended"][index],
                                   reference_text_node(model, template.tokenizer, row["extended_answers"]),
                                   atol=atol, rtol=0)
