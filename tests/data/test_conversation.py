"""Prompt formats and label masks against strings written by hand from docs/method.md §2."""

import pytest

from exgramed_plugin.data.conversation import (Segment, check_turns, image_block, inference_prompt,
                                               postprocess_response, tokenize_segments, training_segments)

SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")
IMG = "<im_start><im_patch><im_patch><im_end>"
QUESTION = 'Is there evidence of an aortic aneurysm? (Answer with either "Yes" or "No").\n<image>'


def _trained_text(segments):
    return "".join(s.text for s in segments if s.trainable)


def test_image_block_counts_patches():
    assert image_block(2) == IMG
    assert image_block(3, use_im_start_end=False) == "<im_patch><im_patch><im_patch>"


@pytest.mark.parametrize("messages, expected, trained", [
    pytest.param(
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "no"}],
        SYSTEM + "\n\n### Human: Is there evidence of an aortic aneurysm? (Answer with either \"Yes\" or "
        "\"No\").\n<im_start><im_patch><im_patch><im_end>\n### Assistant: no\n### ",
        "no\n###",
        id="single_turn_vqa"),
    pytest.param(
        [{"role": "user", "content": "<image>\nWhat is shown?"}, {"role": "assistant", "content": "A CT."},
         {"role": "user", "content": "Which organ?"}, {"role": "assistant", "content": "The liver."}],
        SYSTEM + "\n\n### Human: <im_start><im_patch><im_patch><im_end>\nWhat is shown?\n### Assistant: A CT."
        "\n### Human: Which organ?\n### Assistant: The liver.\n### ",
        "A CT.\n###The liver.\n###",
        id="multi_turn_masks_each_answer_and_its_separator"),
])
def test_training_text(messages, expected, trained):
    segments = training_segments(messages, SYSTEM, IMG)
    assert "".join(s.text for s in segments) == expected
    assert _trained_text(segments) == trained


def test_inference_prompt_is_the_simple_template():
    messages = [{"role": "user", "content": "<image>\nWhat is shown?  "}]
    expected = (SYSTEM + "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: What is shown?\n"
                "<im_start><im_patch><im_patch><im_end>###")
    assert inference_prompt(messages, SYSTEM, IMG) == expected


def test_inference_prompt_multi_turn_history_and_text_only():
    messages = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
                {"role": "user", "content": "Bye"}]
    expected = (SYSTEM + "###Human: Hi!###Assistant: Hi there!  How can I help you today?\n###Human: Hello###"
                "Assistant: Hi.###Human: Bye###")
    assert inference_prompt(messages, SYSTEM, IMG) == expected


@pytest.mark.parametrize("messages, message", [
    ([{"role": "assistant", "content": "x"}], "expected 'user'"),
    ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}], "expected 'assistant'"),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}], "empty answer"),
    ([], "no turns"),
])
def test_check_turns_rejects(messages, message):
    with pytest.raises(ValueError, match=message):
        check_turns(messages, context="row 7")


def test_labels_cover_exactly_the_answer_and_separator(tiny_tokenizer):
    messages = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "no"}]
    segments = training_segments(messages, SYSTEM, IMG)
    input_ids, labels = tokenize_segments(tiny_tokenizer, segments, bos_token_id=tiny_tokenizer.bos_token_id)
    assert input_ids[0] == 2 and labels[0] == -100  # BOS is </s> in the LLaVA-Med lineage
    trained = [t for t in labels if t != -100]
    assert tiny_tokenizer.decode(trained) == "no\n###"
    # the trained tokens are one contiguous run right before the final "▁" (trailing space)
    first = labels.index(trained[0])
    assert labels[first:first + len(trained)] == trained and len(labels) == first + len(trained) + 1


def test_chunks_are_encoded_separately_around_added_tokens(tiny_tokenizer):
    text = "Question?\n" + IMG + "\n### Assistant: yes\n### "
    input_ids, _ = tokenize_segments(tiny_tokenizer, [Segment(text)], bos_token_id=None)
    encode = lambda s: tiny_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = tiny_tokenizer.convert_tokens_to_ids
    expected = encode("Question?\n") + [ids("<im_start>"), ids("<im_patch>"), ids("<im_patch>"), ids("<im_end>")] \
        + encode("\n### Assistant: yes\n### ")
    assert input_ids == expected


def test_legacy_tokenization_strips_whitespace_around_added_tokens(tiny_tokenizer):
    # docs/method.md §2.5: "<im_end>\n### Assistant:" -> <im_end>, "▁###", "▁Ass", "istant", ":" and
    # "…question\n<im_start>" loses the "\n"; "<im_end>###" -> <im_end>, "▁###".
    text = "question\n<im_start><im_patch><im_end>\n### Assistant:"
    ids, _ = tokenize_segments(tiny_tokenizer, [Segment(text)], bos_token_id=2, strip_around_special=True)
    assert tiny_tokenizer.convert_ids_to_tokens(ids) == [
        "</s>", "▁question", "<im_start>", "<im_patch>", "<im_end>", "▁###", "▁Ass", "istant", ":"]
    ids, _ = tokenize_segments(tiny_tokenizer, [Segment("q\n<im_start><im_patch><im_end>###")], bos_token_id=None,
                               strip_around_special=True)
    assert tiny_tokenizer.convert_ids_to_tokens(ids)[-2:] == ["<im_end>", "▁###"]
    ids, _ = tokenize_segments(tiny_tokenizer, [Segment(text)], bos_token_id=None, strip_around_special=False)
    assert "<0x0A>" in tiny_tokenizer.convert_ids_to_tokens(ids)[:3]


@pytest.mark.parametrize("raw, mode, expected", [
    (" Assistant: yes\n### Human", "original", "Assistant: yes"),
    (" Assistant: yes\n### Human", "clean", "yes"),
    (" Assistant: yes\n### Human", "raw", " Assistant: yes\n### Human"),
    ("no stop word here ", "original", "no stop word here"),
])
def test_postprocess_response(raw, mode, expected):
    assert postprocess_response(raw, mode) == expected
