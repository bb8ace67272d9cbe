"""The pieces of the data-efficiency bed: the small tokenizer and the stage-0 tower."""

from __future__ import annotations

import pytest
import torch

# ---------------------------------------------------------------------------------------------- tokenizer
pytest.importorskip("easy_vqa")


@pytest.fixture(scope="module")
def tokenizer():
    from exgramed_plugin.commands.experiment.tokenizer import build_experiment_tokenizer
    return build_experiment_tokenizer()


def test_tokenizer_is_small_and_llama_shaped(tokenizer):
    from transformers import LlamaTokenizerFast

    from exgramed_plugin.common.tokens import ADDED_TOKENS
    assert isinstance(tokenizer, LlamaTokenizerFast)
    assert 300 <= len(tokenizer) <= 2000
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    assert tokenizer.bos_token == tokenizer.eos_token == "</s>" and tokenizer.pad_token == "[PAD]"
    size = len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(list(ADDED_TOKENS)) == list(range(size - 4, size))
    # every easy-vqa answer is one token (after the word-boundary marker)
    for answer in ("yes", "no", "red", "teal", "circle", "rectangle", "triangle"):
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode(answer, add_special_tokens=False)) == [f"▁{answer}"]
    # text outside the corpus still encodes (byte fallback) and decodes back
    text = "Zebra 42 ü"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_template_prompt_round_trips(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from exgramed_plugin.data.conversation import (SEPARATOR, SYSTEM_PROMPT, Segment, image_block,
                                                   postprocess_response, tokenize_segments, training_segments)
    messages = [{"role": "user", "content": 'is there a red shape? (Answer with either "Yes" or "No").\n<image>'},
                {"role": "assistant", "content": "yes"}]
    segments = training_segments(messages, SYSTEM_PROMPT, image_block(16))
    ids, labels = tokenize_segments(tokenizer, segments, bos_token_id=tokenizer.bos_token_id)
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "</s>"
    assert tokens.count("<im_patch>") == 16 and tokens.count("<im_start>") == tokens.count("<im_end>") == 1
    assert tokens.index("<im_end>") == tokens.index("<im_start>") + 17
    assert [t for t, label in zip(tokens, labels) if label != -100] == ["▁yes", f"\n{SEPARATOR}"]
    text = "".join(s.text for s in segments)
    # every character survives; like the LLaMA tokenizer of the tiny checkpoints, each text chunk
    # after an added token gets the dummy-prefix "▁" (a space in the decoded text)
    assert tokenizer.decode(ids[1:]) == text.replace("<im_end>", "<im_end> ")
    pytest.importorskip("wordllama")
    from exgramed_plugin.tiny_checkpoints.exgra_med import build_tokenizer
    llama = build_tokenizer()
    llama_ids, llama_labels = tokenize_segments(llama, segments, bos_token_id=llama.bos_token_id)
    assert llama.decode(llama_ids[1:]) == tokenizer.decode(ids[1:])
    assert len(ids) < len(llama_ids) and sum(label != -100 for label in labels) == 2
    # the inference prompt (v0 style) ends in "Assistant:"; a generated answer decodes and is cut at ###
    prompt, _ = tokenize_segments(tokenizer, training_segments(messages[:1], SYSTEM_PROMPT, image_block(16))
                                  + [Segment("Assistant:")], bos_token_id=tokenizer.bos_token_id)
    assert tokenizer.convert_ids_to_tokens(prompt[-1]) == "▁Assistant:"
    answer = tokenizer.encode(" yes\n### Human:", add_special_tokens=False)
    assert postprocess_response(tokenizer.decode(answer, skip_special_tokens=True), "clean") == "yes"
    # saved and loaded as a checkpoint tokenizer: same ids
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenize_segments(loaded, segments, bos_token_id=loaded.bos_token_id) == (ids, labels)
    assert len(loaded) == len(tokenizer) and loaded.pad_token_id == tokenizer.pad_token_id


# ---------------------------------------------------------------------------------------------- stage 0


def test_image_labels_agree_with_the_questions():
    from exgramed_plugin.commands.experiment.easy_vqa_data import _questions, image_labels
    labels = image_labels("train")
    assert len(labels) > 3000
    for question, answer, image_id in _questions("train")[:2000]:
        if image_id in labels and question == "what color is the shape?":
            assert labels[image_id][1] == answer
        if image_id in labels and question == "what shape is present?":
            assert labels[image_id][0] == answer




def test_stage0_probe_beats_chance_on_held_out_images_and_is_cached(tmp_path):
    from exgramed_plugin.commands.experiment.vision_pretrain import Stage0Settings, pretrain_vision_tower
    settings = Stage0Settings(max_train_images=1500, heldout_images=300, max_test_images=300, epochs=20,
                              learning_rate=5e-3)  # ~20 s; shape ~57 %, colour ~99 % held out
    path, report = pretrain_vision_tower(tmp_path, settings)
    probe, random_probe = report["linear_probe"], report["linear_probe_random_tower"]
    assert probe["shape"]["heldout"] > 100 / 3 + 10  # chance: 1/3
    assert probe["colour"]["heldout"] > 100 / 8 + 50  # chance: 1/8
    assert probe["colour"]["heldout"] > random_probe["colour"]["heldout"]
    assert report["images"] == {"train": 1500, "heldout": 300, "test": 300}
    modified = path.stat().st_mtime_ns
    again_path, again = pretrain_vision_tower(tmp_path, settings)
    assert again == report and again_path.stat().st_mtime_ns == modified


def test_checkpoint_carries_the_stage0_tower(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    from exgramed_plugin.tiny_checkpoints.exgra_med import make_tiny_checkpoint
    from exgramed_plugin.commands.experiment.vision_pretrain import Stage0Settings, build_tower
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    settings = Stage0Settings(vision_hidden_size=32, vision_layers=2, seed=5)
    tower = build_tower(settings)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(tmp_path / "tower.safetensors"))
    out = make_tiny_checkpoint(tmp_path / "ckpt", tokenizer=tokenizer, vision_tower_weights=tmp_path / "tower.safetensors",
                               image_size=64, patch_size=16, vision_hidden_size=32, vision_layers=2, seed=1)
    model = ExGraMedForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.im_patch_token_id == tokenizer.convert_tokens_to_ids("<im_patch>")
    assert model.config.num_image_tokens == 16
    saved = load_file(str(tmp_path / "tower.safetensors"))
    for name, value in model.model.vision_tower.state_dict().items():
        if name in saved:
            assert torch.equal(value, saved[name]), name
