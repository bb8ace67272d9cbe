"""The exgra_med swift template on the tiny checkpoint: image tokens, labels, inference prompt, errors."""

import pytest
import torch
from PIL import Image

from conftest import DATA_TEMPLATES
from exgramed_plugin.settings import parse_settings

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")
IMAGE = str(DATA_TEMPLATES / "images" / "mri_head.png")


@pytest.fixture(scope="module")
def template(registered, tiny_checkpoint):
    from swift.model import get_processor
    from swift.template import get_template
    processor = get_processor(str(tiny_checkpoint))
    return get_template(processor)


def _encode(template, mode, row):
    template.set_mode(mode)
    return template.encode(row)


def _row(question="What is shown?\n<image>", answer="mri", images=(IMAGE,)):
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "images": list(images)}


def test_template_is_selected_from_the_model_type(template):
    assert template.template_meta.template_type == "exgra_med"


def test_training_encoding_has_one_image_block_and_answer_labels(template):
    encoded = _encode(template, "train", _row())
    ids, labels = encoded["input_ids"], encoded["labels"]
    tok = template.tokenizer
    patch, start, end = (tok.convert_tokens_to_ids(t) for t in ("<im_patch>", "<im_start>", "<im_end>"))
    num_tokens = template.config.num_image_tokens
    assert num_tokens == (56 // 14) ** 2 == 16
    s = ids.index(start)
    assert ids[s + 1:s + 1 + num_tokens] == [patch] * num_tokens and ids[s + 1 + num_tokens] == end
    assert ids.count(patch) == num_tokens
    assert tok.decode([t for t in labels if t != -100]) == "mri\n###"
    assert encoded["pixel_values"].shape == (1, 3, 56, 56)
    text = tok.decode(ids, skip_special_tokens=False)
    assert text.startswith("</s> " + SYSTEM + "\n\n### Human: What is shown?")


def test_inference_encoding_is_the_simple_prompt_without_the_answer(template):
    encoded = _encode(template, "transformers", _row())
    tok = template.tokenizer
    text = tok.decode(encoded["input_ids"], skip_special_tokens=True)
    assert text.endswith("###Human: What is shown?\n ###") or text.endswith("###Human: What is shown?\n###")
    assert "mri" not in text and encoded.get("labels") is None
    assert "###Human: Hi!###Assistant: Hi there!  How can I help you today?" in text


def test_inference_v0_prompt_style_ends_with_assistant(template, monkeypatch):
    # the environment channel, parsed into the settings a template is made with
    monkeypatch.setattr(template, "settings", parse_settings({"EXGRAMED_PROMPT_STYLE": "v0"}).template)
    encoded = _encode(template, "transformers", _row())
    text = template.tokenizer.decode(encoded["input_ids"], skip_special_tokens=True)
    assert text.endswith("\n### Assistant:") and "mri" not in text


def test_two_images_and_multi_turn(template):
    row = {"messages": [{"role": "user", "content": "<image>\n<image>\nCompare."},
                        {"role": "assistant", "content": "Same."},
                        {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}],
           "images": [IMAGE, IMAGE]}
    encoded = _encode(template, "train", row)
    patch = template.tokenizer.convert_tokens_to_ids("<im_patch>")
    assert encoded["input_ids"].count(patch) == 32 and encoded["pixel_values"].shape[0] == 2
    # "▁Yes" carries the space of ": Yes"; decoding two separate runs joins them with it.
    assert template.tokenizer.decode([t for t in encoded["labels"] if t != -100]) == "Same.\n### Yes.\n###"


def test_text_only_row(template):
    encoded = _encode(template, "train", {"messages": [{"role": "user", "content": "Hi"},
                                                       {"role": "assistant", "content": "Hello."}]})
    assert "pixel_values" not in encoded
    assert template.tokenizer.decode([t for t in encoded["labels"] if t != -100]) == "Hello.\n###"


def test_tag_image_mismatch_is_an_error(template):
    row = _row(question="<image><image>What?")
    with pytest.raises(ValueError, match="2 <image> tag"):
        _encode(template, "train", row)


def test_collator_pads_and_concatenates_pixels(template):
    template.set_mode("train")
    batch = [template.encode(_row()), template.encode(_row(answer="a longer answer here"))]
    collated = template.data_collator(batch)
    assert collated["input_ids"].shape[0] == 2 and collated["pixel_values"].shape == (2, 3, 56, 56)
    assert (collated["labels"] != -100).sum() > 0


def test_decode_cuts_at_separator(template, monkeypatch):
    tok = template.tokenizer
    ids = tok.encode(" Assistant: yes\n### Human: next", add_special_tokens=False)
    assert template.decode_generate_ids(ids) == "Assistant: yes"
    monkeypatch.setattr(template, "settings", parse_settings({"EXGRAMED_RESPONSE_MODE": "clean"}).template)
    assert template.decode_generate_ids(ids) == "yes"


def test_model_forward_on_template_batch(registered, tiny_checkpoint, template):
    from swift.model import get_model_processor
    model, _ = get_model_processor(str(tiny_checkpoint), torch_dtype=torch.float32)
    template.set_mode("train")
    batch = template.data_collator([template.encode(_row()), template.encode(_row(question="Organ?\n<image>"))])
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.image_hidden_states.shape == (2, 16, 64)
    Image.open(IMAGE).verify()
