"""The tiny random swift checkpoints: Qwen2.5-VL's token ids and chat format, loading and answering in swift; the
qwen3_vl / internvl / llava1_5_hf / gemma3_vision ones loading, encoding 1- and 2-image rows and training a step."""

import json

import pytest
import torch

from conftest import DATA_TEMPLATES, last_summary

IMAGE = str(DATA_TEMPLATES / "images" / "mri_head.png")


@pytest.fixture(scope="module")
def loaded(tiny_qwen2_5_vl):
    from swift.model import get_model_processor
    return get_model_processor(str(tiny_qwen2_5_vl), model_type="qwen2_5_vl", torch_dtype=torch.float32,
                               device_map="cpu")


@pytest.fixture(scope="module")
def engine(tiny_qwen2_5_vl):
    from swift.infer_engine import TransformersEngine
    return TransformersEngine(str(tiny_qwen2_5_vl), model_type="qwen2_5_vl", template_type="qwen2_5_vl",
                              max_batch_size=4, torch_dtype=torch.float32)


def test_loads_through_swift_as_qwen2_5_vl(loaded):
    from transformers import Qwen2_5_VLForConditionalGeneration
    model, processor = loaded
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    assert processor.model_meta.model_type == "qwen2_5_vl"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert model.config.text_config.hidden_size == 64 and model.config.text_config.num_hidden_layers == 2
    assert model.config.vision_config.depth == 2


def test_token_ids_are_the_ones_transformers_and_swift_expect(loaded):
    """Independent references: Qwen2_5_VLConfig's defaults (the real model's ids) and swift's template constants."""
    from swift.template.templates.qwen import Qwen2VLTemplate
    from transformers import Qwen2_5_VLConfig
    model, processor = loaded
    tokenizer = processor.tokenizer
    real = Qwen2_5_VLConfig()
    for token, expected in (("<|image_pad|>", real.image_token_id), ("<|video_pad|>", real.video_token_id),
                            ("<|vision_start|>", real.vision_start_token_id),
                            ("<|vision_end|>", real.vision_end_token_id),
                            ("<|endoftext|>", real.text_config.bos_token_id),
                            ("<|im_end|>", real.text_config.eos_token_id)):
        assert tokenizer.convert_tokens_to_ids(token) == expected, token
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == Qwen2VLTemplate.image_token_id
    assert tokenizer.convert_tokens_to_ids("<|video_pad|>") == Qwen2VLTemplate.video_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 151644
    assert model.config.image_token_id == real.image_token_id
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


def test_byte_level_bpe_round_trips_any_text(loaded):
    _, processor = loaded
    tokenizer = processor.tokenizer
    for text in ("Is there a nodule in the lung?", "Größe: 3 mm — 肺结节 ✓", "  two  spaces\nand a newline"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Trained merges: a word of the corpus is fewer tokens than bytes.
    assert len(tokenizer("pneumothorax", add_special_tokens=False)["input_ids"]) < len("pneumothorax")


def test_chat_template_is_qwen2_5_vl_and_agrees_with_swift(loaded, engine):
    _, processor = loaded
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n<|im_start|>assistant\n")
    # swift's qwen2_5_vl template builds its prompt itself: the same text for a text-only turn.
    from swift.infer_engine import InferRequest
    encoded = engine.template.encode(InferRequest(messages=[{"role": "user", "content": "What is shown?"}]))
    jinja = processor.apply_chat_template([{"role": "user", "content": "What is shown?"}], tokenize=False,
                                          add_generation_prompt=True)
    assert processor.tokenizer.decode(encoded["input_ids"]) == jinja


def test_unused_ids_have_zero_embeddings(loaded):
    model, processor = loaded
    weight = model.get_input_embeddings().weight
    used = sorted(processor.tokenizer.get_vocab().values())
    mask = torch.ones(weight.shape[0], dtype=torch.bool)
    mask[used] = False
    assert weight.shape[0] == 151936
    assert torch.count_nonzero(weight[mask]) == 0
    assert bool((weight[used[:-14]].abs().sum(-1) > 0).all())  # trained tokens are not
    assert model.lm_head.weight.data_ptr() == weight.data_ptr()  # tied, so unused ids score 0


def test_engine_answers_on_cpu_and_batching_changes_nothing(engine):
    from swift.infer_engine import InferRequest, RequestConfig
    questions = ["What modality is this?", "Which organ is shown?", "Is there a mass?"]
    requests = [InferRequest(messages=[{"role": "user", "content": f"<image>{q}"}], images=[IMAGE])
                for q in questions]
    config = RequestConfig(max_tokens=6, temperature=0)
    batched = [r.choices[0].message.content for r in engine.infer(requests, config, use_tqdm=False)]
    single = [engine.infer([r], config, use_tqdm=False)[0].choices[0].message.content for r in requests]
    assert batched == single
    assert all(isinstance(text, str) for text in batched)
    encoded = engine.template.encode(requests[0])
    assert encoded["input_ids"].count(151655) == int(encoded["image_grid_thw"].prod()) // 4  # merge 2x2


def test_cli_builds_the_same_checkpoint_and_refuses_exgra_med_options(tiny_qwen2_5_vl, tmp_path, capsys):
    from safetensors.torch import load_file

    from exgramed_plugin.commands import cli
    out = tmp_path / "q"
    assert cli.main(["make-tiny", str(out), "--model-type", "qwen2_5_vl", "--hidden-size", "32"]) == 2
    assert "--hidden-size" in capsys.readouterr().err and not out.exists()
    assert cli.main(["make-tiny", str(out), "--model_type", "qwen2_5_vl"]) == 0
    printed = capsys.readouterr().out
    assert "--model_type qwen2_5_vl --template qwen2_5_vl" in printed
    assert last_summary(printed) == {"ok": True, "out": str(out), "model_type": "qwen2_5_vl", "template": "qwen2_5_vl"}
    ours, reference = load_file(out / "model.safetensors"), load_file(tiny_qwen2_5_vl / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)  # seeded: same weights every build
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((tiny_qwen2_5_vl / "tokenizer.json")
                                                                          .read_text())


# --- the other tiny types: swift loads them, encodes image rows as its trainer does, and the forward has a loss ---

def _image(name: str, size: tuple[int, int] | None = None):
    from PIL import Image
    image = Image.open(DATA_TEMPLATES / "images" / name).convert("RGB")
    return image.resize(size) if size else image


def _rows(second_image=None) -> list[dict]:
    """A 1-image and a 2-image training row (swift's messages + images format)."""
    second_image = second_image or _image("xray_chest.png")
    return [
        {"messages": [{"role": "user", "content": "<image>What modality is used to take this image?"},
                      {"role": "assistant", "content": "MRI"}], "images": [_image("mri_head.png")]},
        {"messages": [{"role": "user", "content": "<image><image>Which organs are shown?"},
                      {"role": "assistant", "content": "The brain and the chest."}],
         "images": [_image("ct_spine.png"), second_image]},
    ]


def _num_features(output) -> int:
    """Image features ``get_image_features`` returned (per-image tuples/lists or one tensor), as tokens."""
    features = getattr(output, "pooler_output", output)
    if isinstance(features, (list, tuple)):
        return sum(f.reshape(-1, f.shape[-1]).shape[0] for f in features)
    return features.reshape(-1, features.shape[-1]).shape[0]


def _load_encode_train(checkpoint, model_type: str, image_features, second_image=None):
    """Load with swift, encode both rows in train mode, check image tokens == model features, run a loss forward.

    ``image_features(model, encoded)`` calls the model's own ``get_image_features`` on one row's pixel values.
    Returns (model, processor, encoded rows, loss).
    """
    from swift.model import get_model_processor
    from swift.template import get_template

    from exgramed_plugin.tiny_checkpoints.builtin_vlms import TINY_MODEL_TEMPLATES
    model, processor = get_model_processor(str(checkpoint), model_type=model_type, torch_dtype=torch.float32,
                                           device_map="cpu")
    assert processor.model_meta.model_type == model_type
    template = get_template(processor, template_type=TINY_MODEL_TEMPLATES[model_type])
    template.set_mode("train")
    template.model = model  # as swift's sft pipeline does (templates that compute rope indexes need it)
    encoded = [template.encode(row) for row in _rows(second_image)]
    image_token_id = model.config.image_token_id
    with torch.no_grad():
        for row in encoded:
            assert row["input_ids"].count(image_token_id) == _num_features(image_features(model, row)) > 0
            assert all(label == -100 for token, label in zip(row["input_ids"], row["labels"])
                       if token == image_token_id)
    batch = template.data_collator([dict(row) for row in encoded])  # the collator pops keys of the rows
    template.register_post_encode_hook([model])  # what swift's trainer does for multimodal models
    try:
        model.train()
        loss = model(**batch).loss
    finally:
        template.remove_post_encode_hook()
        model.eval()
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None
    return model, processor, encoded, loss


def test_qwen3_vl_loads_encodes_and_trains_in_swift(tiny_qwen3_vl):
    from swift.template.templates.qwen import Qwen3VLTemplate
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    def features(model, row):
        return model.model.get_image_features(row["pixel_values"], image_grid_thw=row["image_grid_thw"])

    model, processor, encoded, _ = _load_encode_train(tiny_qwen3_vl, "qwen3_vl", features)
    assert type(model) is Qwen3VLForConditionalGeneration and type(processor).__name__ == "Qwen3VLProcessor"
    config, real, tokenizer = model.config, Qwen3VLConfig(), processor.tokenizer
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    vision = config.vision_config
    assert (vision.depth, vision.hidden_size, vision.patch_size, vision.spatial_merge_size) == (2, 32, 16, 2)
    assert list(config.vision_config.deepstack_visual_indexes) == [0]
    for token, expected in (("<|image_pad|>", Qwen3VLTemplate.image_token_id), ("<|video_pad|>", real.video_token_id),
                            ("<|vision_start|>", real.vision_start_token_id), ("<|im_start|>", 151644),
                            ("<|vision_end|>", real.vision_end_token_id), ("<think>", 151667)):
        assert tokenizer.convert_tokens_to_ids(token) == expected, token
    assert config.image_token_id == real.image_token_id == 151655
    assert model.get_input_embeddings().weight.shape[0] == real.text_config.vocab_size == 151936
    merge = processor.image_processor.merge_size ** 2  # 48-px images -> 64 px -> 4x4 patches -> 4 tokens
    assert [row["input_ids"].count(151655) for row in encoded] == [
        int(row["image_grid_thw"].prod(-1).sum()) // merge for row in encoded] == [4, 8]


def test_internvl_loads_encodes_and_trains_in_swift(tiny_internvl):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    def features(model, row):
        config = model.config
        return model.model.get_image_features(row["pixel_values"], vision_feature_layer=config.vision_feature_layer,
                                              vision_feature_select_strategy=config.vision_feature_select_strategy)

    # A 2:1 second image: 2 tiles + a thumbnail (max_patches 2), 4 <IMG_CONTEXT> each.
    model, processor, encoded, _ = _load_encode_train(tiny_internvl, "internvl", features,
                                                      second_image=_image("xray_chest.png", (112, 56)))
    assert type(model) is InternVLForConditionalGeneration and type(processor).__name__ == "InternVLProcessor"
    config, tokenizer = model.config, processor.tokenizer
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    assert (config.vision_config.num_hidden_layers, config.vision_config.hidden_size) == (2, 32)
    assert config.image_token_id == InternVLConfig().image_token_id == 151667
    assert tokenizer.convert_tokens_to_ids(["<img>", "</img>", "<IMG_CONTEXT>", "</box>", "<|im_end|>"]) == [
        151665, 151666, 151667, 151673, 151645]
    assert (processor.start_image_token_id, processor.end_image_token_id) == (151665, 151666)
    assert model.get_input_embeddings().weight.shape[0] == 151674 >= max(tokenizer.get_vocab().values()) + 1
    assert [row["pixel_values"].shape[0] for row in encoded] == [1, 1 + 3]
    assert [row["input_ids"].count(151667) for row in encoded] == [4, 16]
    assert [row["input_ids"].count(151665) for row in encoded] == [1, 2]  # <img>...</img> around each image


def test_llava1_5_hf_loads_encodes_and_trains_in_swift(tiny_llava1_5_hf):
    from transformers import LlavaForConditionalGeneration

    def features(model, row):
        config = model.config
        return model.model.get_image_features(row["pixel_values"], vision_feature_layer=config.vision_feature_layer,
                                              vision_feature_select_strategy=config.vision_feature_select_strategy)

    model, processor, encoded, _ = _load_encode_train(tiny_llava1_5_hf, "llava1_5_hf", features)
    assert type(model) is LlavaForConditionalGeneration and type(processor).__name__ == "LlavaProcessor"
    config, tokenizer = model.config, processor.tokenizer
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    assert (config.vision_config.num_hidden_layers, config.vision_config.image_size) == (2, 56)
    assert config.image_token_id == 32000 and config.text_config.pad_token_id == 32001
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"]) == [0, 1, 2, 32000, 32001]
    assert tokenizer.pad_token == "<pad>" and tokenizer.bos_token == "<s>"
    assert model.get_input_embeddings().weight.shape[0] == model.lm_head.weight.shape[0] == 32064
    assert [row["input_ids"].count(32000) for row in encoded] == [16, 32]  # (56 / 14)^2 patches, CLS dropped
    assert encoded[0]["input_ids"][0] == 1  # the template's <s>


def test_gemma3_vision_loads_encodes_and_trains_in_swift(tiny_gemma3_vision):
    from swift.template.templates.gemma import Gemma3VisionTemplate
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig

    def features(model, row):
        return model.model.get_image_features(row["pixel_values"])

    model, processor, encoded, _ = _load_encode_train(tiny_gemma3_vision, "gemma3_vision", features)
    assert type(model) is Gemma3ForConditionalGeneration and type(processor).__name__ == "Gemma3Processor"
    config, real, tokenizer = model.config, Gemma3Config(), processor.tokenizer
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    assert (config.vision_config.num_hidden_layers, config.vision_config.image_size) == (2, 56)
    assert config.mm_tokens_per_image == 4
    text = Gemma3TextConfig()
    for token, expected in (("<pad>", text.pad_token_id), ("<eos>", text.eos_token_id), ("<bos>", text.bos_token_id),
                            ("<start_of_image>", Gemma3VisionTemplate.boi_token_id),
                            ("<start_of_image>", real.boi_token_index), ("<end_of_image>", real.eoi_token_index),
                            ("<image_soft_token>", real.image_token_index), ("<start_of_turn>", 105),
                            ("<end_of_turn>", 106)):
        assert tokenizer.convert_tokens_to_ids(token) == expected, token
    assert model.get_input_embeddings().weight.shape[0] == text.vocab_size == 262208
    assert [row["input_ids"].count(262144) for row in encoded] == [4, 8]
    assert [row["input_ids"].count(255999) for row in encoded] == [1, 2]
    ids = encoded[0]["input_ids"]
    start = ids.index(255999)
    assert ids[start + 1:start + 6] == [262144] * 4 + [256000]  # <start_of_image> 4 soft tokens <end_of_image>
    assert ids[0] == 2 and ids.count(2) == 1  # one <bos>: the template's


def test_tiny_builders_are_seeded_and_the_cli_names_swift_templates(tiny_internvl, tmp_path, capsys):
    from safetensors.torch import load_file

    from exgramed_plugin.commands import cli
    from exgramed_plugin.tiny_checkpoints.builtin_vlms import TINY_MODEL_TEMPLATES, TINY_MODEL_TYPES
    assert set(TINY_MODEL_TEMPLATES) == set(TINY_MODEL_TYPES)
    from swift.template import TEMPLATE_MAPPING
    assert all(template in TEMPLATE_MAPPING for template in TINY_MODEL_TEMPLATES.values())
    out = tmp_path / "i"
    assert cli.main(["make-tiny", str(out), "--model-type", "internvl"]) == 0
    assert "--model_type internvl --template internvl_hf" in capsys.readouterr().out
    ours, reference = load_file(out / "model.safetensors"), load_file(tiny_internvl / "model.safetensors")
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert sum(f.stat().st_size for f in out.iterdir()) < 25e6
