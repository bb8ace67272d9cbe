"""The tiny random ``qwen2_5_vl`` checkpoint: Qwen2.5-VL's token ids and chat format, loading and answering in swift."""

import json

import pytest
import torch

from conftest import DATA_TEMPLATES

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

    from exgramed_plugin import cli
    out = tmp_path / "q"
    assert cli.main(["make-tiny", str(out), "--model-type", "qwen2_5_vl", "--hidden-size", "32"]) == 2
    assert "--hidden-size" in capsys.readouterr().err and not out.exists()
    assert cli.main(["make-tiny", str(out), "--model_type", "qwen2_5_vl"]) == 0
    assert "--model_type qwen2_5_vl --template qwen2_5_vl" in capsys.readouterr().out
    ours, reference = load_file(out / "model.safetensors"), load_file(tiny_qwen2_5_vl / "model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)  # seeded: same weights every build
    assert json.loads((out / "tokenizer.json").read_text()) == json.loads((tiny_qwen2_5_vl / "tokenizer.json")
                                                                          .read_text())
