"""The pieces of the data-efficiency bed: small tokenizer, stage-0 tower, balanced test set, statistics."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pytest
import torch

from exgramed_plugin.experiment.data_efficiency import (acceptance, paired_difference, pooled_std, summarize,
                                                        t_quantile_975)

# ---------------------------------------------------------------------------------------------- statistics


def test_paired_difference_by_hand():
    # differences 10, 2, 6: mean 6, sample std sqrt((16 + 16 + 0) / 2) = 4,
    # 95 % interval 6 ± t(0.975, 2) * 4 / sqrt(3) = 6 ± 4.303 * 2.3094 = 6 ± 9.9373
    result = paired_difference({0: 50.0, 1: 60.0, 2: 55.0, 7: 99.0}, {0: 40.0, 1: 58.0, 2: 49.0})
    assert result["seeds"] == [0, 1, 2] and result["differences"] == [10.0, 2.0, 6.0]
    assert result["mean"] == pytest.approx(6.0)
    assert result["std"] == pytest.approx(4.0)
    assert result["ci95"] == pytest.approx([6 - 9.9373, 6 + 9.9373], abs=1e-3)


def test_paired_difference_one_pair_has_no_interval():
    result = paired_difference({0: 3.0}, {0: 1.0})
    assert result["mean"] == 2.0 and result["n"] == 1 and all(math.isnan(v) for v in result["ci95"])
    assert paired_difference({}, {0: 1.0})["n"] == 0


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile_975(0)


def _cell(seed, fraction, arm, average, dependence=50.0, matching=None):
    return {"seed": seed, "fraction": fraction, "arm": arm, "image_dependence": dependence,
            "original": {"open_recall": average, "closed_accuracy": average, "average": average},
            "stage2_losses": {} if matching is None else {"matching_accuracy_tail": matching}}


def test_summary_pairs_by_seed_and_acceptance_by_hand():
    cells = [_cell(0, 1.0, "none", 60.0, 80.0), _cell(1, 1.0, "none", 64.0, 60.0),
             _cell(0, 1.0, "mga", 61.0, matching=0.5), _cell(1, 1.0, "mga", 67.0, matching=0.7),
             _cell(0, 0.1, "none", 40.0), _cell(1, 0.1, "none", 42.0)]
    summary = summarize(cells)
    none = summary["1.0"]["none"]
    assert none["average"]["mean"] == 62.0 and none["average"]["std"] == pytest.approx(math.sqrt(8))
    paired = summary["1.0"]["mga"]["paired_vs_none"]["average"]
    assert paired["differences"] == [1.0, 3.0] and paired["mean"] == 2.0
    assert paired["ci95"] == pytest.approx([2 - 12.706 * math.sqrt(2) / math.sqrt(2), 2 + 12.706], abs=1e-3)
    assert summary["1.0"]["mga"]["alignment_accuracy"]["mean"] == pytest.approx(60.0)  # percent
    assert summary["1.0"]["none"]["alignment_accuracy"]["n"] == 0
    assert "paired_vs_none" not in none

    baselines = {"1.0": {"original": {"average": 35.0}}}
    checks = acceptance(summary, baselines)
    assert checks["beats_prior_by_10"] == {"margin": 27.0, "passed": True}
    assert checks["image_dependence_50"] == {"value": 70.0, "passed": True}
    gap = checks["fraction_matters"]
    assert gap["gap"] == 21.0 and gap["pooled_std"] == pytest.approx(pooled_std(math.sqrt(8), math.sqrt(2)))
    assert gap["pooled_std"] == pytest.approx(math.sqrt(5)) and gap["passed"]


# ---------------------------------------------------------------------------------------------- tokenizer
pytest.importorskip("easy_vqa")


@pytest.fixture(scope="module")
def tokenizer():
    from exgramed_plugin.experiment.tokenizer import build_experiment_tokenizer
    return build_experiment_tokenizer()


def test_tokenizer_is_small_and_llama_shaped(tokenizer):
    from transformers import LlamaTokenizerFast

    from exgramed_plugin.modeling.configuration import ADDED_TOKENS
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
    from exgramed_plugin.data.tiny import build_tokenizer
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


# ---------------------------------------------------------------------------------------------- balanced test set


def test_balanced_test_set_has_a_chance_prior(tmp_path):
    from exgramed_plugin.experiment.diagnostics import question_only_baseline
    from exgramed_plugin.experiment.easy_vqa_data import COLORS, SHAPES, prepare_easy_vqa
    data = prepare_easy_vqa(tmp_path, (1.0,), pool_images=400, test_per_answer=1)  # every text in training
    rows = json.loads(data.vqa_test.read_text())
    by_text: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        question = row["conversations"][0]["value"].split(" (Answer")[0].split("\n")[0]
        by_text[question][row["conversations"][1]["value"]] += 1
    assert len(by_text) == 107  # every easy-vqa question text
    for question, counts in by_text.items():
        kinds = {"yes", "no"} if set(counts) <= {"yes", "no"} else set(COLORS) if set(counts) <= set(COLORS) \
            else set(SHAPES)
        assert set(counts) == kinds and set(counts.values()) == {1}, question
    closed = sum(1 for r in rows if r["answer_type"] == "CLOSED")
    assert closed == 2 * 88 and len(rows) - closed == 8 * 8 + 11 * 3
    prior = question_only_baseline(data.fractions[1.0].vqa_train, data.vqa_test, data.candidates, tmp_path / "b")
    assert prior["original"]["closed_accuracy"] == pytest.approx(50.0)
    # open: one answer of each text is the prior's: 8 colour texts x 1/8, 11 shape texts x 1/3
    assert prior["original"]["open_recall"] == pytest.approx(100 * (8 + 11) / 97)


def test_balance_closed_repeats_the_rarer_answer_and_image_first_moves_the_image(tmp_path):
    from exgramed_plugin.experiment.easy_vqa_data import prepare_easy_vqa
    plain = prepare_easy_vqa(tmp_path / "plain", (1.0,), pool_images=100, test_per_answer=1)
    data = prepare_easy_vqa(tmp_path / "balanced", (1.0,), pool_images=100, test_per_answer=1,
                            balance_closed=True, image_first=True)
    before, after = (json.loads(d.fractions[1.0].vqa_train.read_text()) for d in (plain, data))
    assert len({row["id"] for row in after}) == len(after) > len(before)
    assert data.fractions[1.0].num_questions == len(before) and data.fractions[1.0].num_rows == len(after)
    assert [row["id"] for row in after[:len(before)]] == [row["id"] for row in before]  # originals kept, in order
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in after:
        assert row["conversations"][0]["value"].startswith("<image>\n")
        if row["answer_type"] == "CLOSED":
            counts[row["conversations"][0]["value"]][row["conversations"][1]["value"]] += 1
        else:
            assert row["id"] in {r["id"] for r in before}  # open rows are not repeated
    assert all(len(set(c.values())) == 1 for c in counts.values() if len(c) == 2)
    test = json.loads(data.vqa_test.read_text())
    assert len(test) == len(json.loads(plain.vqa_test.read_text()))  # the test set is only re-ordered text
    assert all(row["conversations"][0]["value"].startswith("<image>\n") for row in test)


def test_image_labels_agree_with_the_questions():
    from exgramed_plugin.experiment.easy_vqa_data import _questions, image_labels, non_pool_images, pool_order
    labels = image_labels("train")
    assert len(labels) > 3000
    for question, answer, image_id in _questions("train")[:2000]:
        if image_id in labels and question == "what color is the shape?":
            assert labels[image_id][1] == answer
        if image_id in labels and question == "what shape is present?":
            assert labels[image_id][0] == answer
    outside = non_pool_images(400)
    assert len(outside) == 3600 and not set(outside) & set(pool_order()[:400])


# ---------------------------------------------------------------------------------------------- stage 0


def test_stage0_probe_beats_chance_on_held_out_images_and_is_cached(tmp_path):
    from exgramed_plugin.experiment.vision_pretrain import Stage0Settings, pretrain_vision_tower
    settings = Stage0Settings(max_train_images=2000, heldout_images=300, max_test_images=300, epochs=20,
                              learning_rate=5e-3)  # ~20 s; shape ~57 %, colour ~99 % held out
    path, report = pretrain_vision_tower(tmp_path, settings)
    probe, random_probe = report["linear_probe"], report["linear_probe_random_tower"]
    assert probe["shape"]["heldout"] > 100 / 3 + 10  # chance: 1/3
    assert probe["colour"]["heldout"] > 100 / 8 + 50  # chance: 1/8
    assert probe["colour"]["heldout"] > random_probe["colour"]["heldout"]
    assert report["images"] == {"train": 2000, "heldout": 300, "test": 300}
    modified = path.stat().st_mtime_ns
    again_path, again = pretrain_vision_tower(tmp_path, settings)
    assert again == report and again_path.stat().st_mtime_ns == modified


def test_checkpoint_carries_the_stage0_tower(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    from exgramed_plugin.data.tiny import make_tiny_checkpoint
    from exgramed_plugin.experiment.vision_pretrain import Stage0Settings, build_tower
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
