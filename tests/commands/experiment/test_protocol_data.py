"""The data of the protocol: disjoint images, nested subsets, one downstream file, the test items,
extended answers from question and answer alone, the warm-up text, the batch schedules."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from exgramed_plugin.commands.experiment.batches import distinct_description_batches, shuffled_batches

# ---------------------------------------------------------------------------------------------- batches (no data)


def test_no_description_repeats_in_a_batch_and_every_row_once_per_epoch():
    rng = np.random.default_rng(0)
    descriptions = [int(k) for k in rng.integers(0, 24, size=400)]  # 24 descriptions, as (shape, colour)
    schedule = distinct_description_batches(descriptions, 8, 3, np.random.default_rng(5))
    for batch in schedule:
        assert len({descriptions[i] for i in batch}) == len(batch)
    assert Counter(i for batch in schedule for i in batch) == Counter({i: 3 for i in range(400)})
    sizes = [len(batch) for batch in schedule]
    assert sum(size < 8 for size in sizes) <= 3 * 2 and len(schedule) <= 3 * (400 // 8 + 2)
    assert schedule == distinct_description_batches(descriptions, 8, 3, np.random.default_rng(5))  # seeded
    assert schedule != distinct_description_batches(descriptions, 8, 3, np.random.default_rng(6))
    ten_percent = distinct_description_batches(descriptions[:40], 8, 3, np.random.default_rng(5))
    assert len(ten_percent) == pytest.approx(len(schedule) / 10, abs=3)  # same epochs: ~10 % of the steps


def test_a_batch_is_short_only_when_descriptions_run_out():
    # 3 rows of "a", 1 of "b": batches of 2 can hold "a" and "b" once, then "a" alone twice
    schedule = distinct_description_batches(["a", "a", "a", "b"], 2, 1, np.random.default_rng(0))
    assert sorted(len(batch) for batch in schedule) == [1, 1, 2]


def test_shuffled_batches_cover_each_epoch():
    schedule = shuffled_batches(10, 4, 2, np.random.default_rng(0))
    assert [len(b) for b in schedule] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(schedule[:3], [])) == list(range(10)) == sorted(sum(schedule[3:], []))


pytest.importorskip("easy_vqa")

# ---------------------------------------------------------------------------------------------- easy-vqa data


def test_partition_pools_and_nested_subsets_are_disjoint_from_the_test_split():
    from exgramed_plugin.commands.experiment.easy_vqa_data import block_pool, nested_subsets, partition_train_images
    partition = partition_train_images(100, 1600)
    downstream, universe, rest = map(set, (partition.downstream, partition.universe, partition.rest))
    assert len(downstream) == 100 and len(universe) == 1600 and len(downstream | universe | rest) == 4000
    assert not downstream & universe and not (downstream | universe) & rest
    pools = {block: block_pool(partition.universe, 400, block) for block in (0, 1, 1000)}
    assert all(set(pool) <= universe and len(set(pool)) == 400 for pool in pools.values())
    assert len(set(pools[0]) & set(pools[1])) < 200  # each block draws its own pool
    assert block_pool(partition.universe, 400, 0) == pools[0]
    subsets = nested_subsets(pools[0], (0.1, 0.4, 1.0))
    assert [len(subsets[f]) for f in (0.1, 0.4, 1.0)] == [40, 160, 400]
    assert set(subsets[0.1]) < set(subsets[0.4]) < set(subsets[1.0])
    with pytest.raises(ValueError, match="fraction"):
        nested_subsets(pools[0], (0.0, 1.0))


def test_test_items(tmp_path):
    from exgramed_plugin.commands.experiment.easy_vqa_data import COLORS, SHAPES, _questions, answer_options, test_indices
    test = _questions("test")
    open_items = test_indices(test, 12, closed=False, seed=0)
    assert len(open_items) >= 1000  # the issue's >= 1,000 open items
    per = Counter((test[i][0], test[i][1]) for i in open_items)
    assert max(per.values()) == 12 and all(test[i][1] not in ("yes", "no") for i in open_items)
    available = Counter((q, a) for q, a, _ in test if a not in ("yes", "no"))
    assert all(per[key] == min(12, count) for key, count in available.items())  # all where fewer exist
    closed = test_indices(test, 2, closed=True, seed=0)
    assert Counter(test[i][1] for i in closed) == {"yes": 176, "no": 176}
    assert answer_options("what color is the circle?") == COLORS
    assert answer_options("what is the red shape?") == SHAPES
    assert answer_options("is no circle present?") == ("yes", "no")


def test_extended_answers_add_no_image_fact():
    """Written from the question and answer alone: every colour / shape word of an extended answer
    is in the question or the answer, and the same (question, answer) always gives the same text."""
    from exgramed_plugin.commands.experiment.easy_vqa_data import COLORS, SHAPES, _questions, extend_answer
    words = set(COLORS) | set(SHAPES)
    for split in ("train", "test"):
        for question, answer, _ in _questions(split):
            extended = extend_answer(question, answer)
            found = set(re.findall(r"[a-z]+", extended.lower())) & words
            assert found <= set(re.findall(r"[a-z]+", f"{question} {answer}")), (question, answer, extended)
            assert extended.lower().startswith(answer)


def test_warmup_text_holds_no_easy_vqa_question_and_no_answer_prior():
    from exgramed_plugin.commands.experiment.easy_vqa_data import COLORS, SHAPES, _questions
    from exgramed_plugin.commands.experiment.warmup import warmup_rows, warmup_turns
    questions = {q for split in ("train", "test") for q, _, _ in _questions(split)}
    turns = warmup_turns()
    assert not {q for q, _ in turns} & questions
    assert not any(q in text for text, _ in turns for q in questions)
    answers = Counter(a for _, a in turns)
    assert len({answers[c] for c in COLORS}) == 1 and len({answers[s] for s in SHAPES}) == 1
    assert answers["yes"] == answers["no"]
    rows = warmup_rows(5, seed=0)
    assert all(row["images"] == [] and len(row["messages"]) == 8 for row in rows)


def test_shared_and_block_files(tmp_path):
    from exgramed_plugin.commands.experiment.blocks import prepare_shared
    from exgramed_plugin.commands.experiment.easy_vqa_data import (extend_answer, file_sha256, image_labels,
                                                          write_pretraining_rows)
    from exgramed_plugin.commands.experiment.protocol import QUICK
    first, second = prepare_shared(tmp_path / "a", QUICK), prepare_shared(tmp_path / "b", QUICK)
    assert first.downstream.read_bytes() == second.downstream.read_bytes()
    assert first.downstream_sha256 == file_sha256(second.downstream)
    train_images = {row["image"] for row in json.loads(first.downstream.read_text())}
    test_images = {row["image"] for path in (first.test_open, first.test_closed)
                   for row in json.loads(path.read_text())}
    assert all("/train/" in image for image in train_images) and all("/test/" in image for image in test_images)
    descriptions, sha256 = write_pretraining_rows(tmp_path / "p.json", [3, 5])
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [row["id"] for row in rows] == ["align-0003", "align-0005"] and sha256 == file_sha256(tmp_path / "p.json")
    assert descriptions == [image_labels("train")[3], image_labels("train")[5]]
    for row in rows:
        questions = [turn["value"].replace("<image>\n", "") for turn in row["conversations"][::2]]
        answers = [turn["value"] for turn in row["conversations"][1::2]]
        assert [turn["value"] for turn in row["conversations_long"][1::2]] == [
            extend_answer(q, a) for q, a in zip(questions, answers)]


def test_lm_long_puts_the_extended_conversation_in_the_same_step():
    from exgramed_plugin.commands.experiment.cell import long_conversation, stage2_batches
    row = {"id": "r", "images": ["x.png"], "extended_answers": ["Red. The shape is red.", "Yes. It is."],
           "messages": [{"role": "user", "content": "<image>\nwhat color is the shape?"},
                        {"role": "assistant", "content": "red"},
                        {"role": "user", "content": "is there a red shape?"}, {"role": "assistant", "content": "yes"}]}
    assert [m["content"] for m in long_conversation(row)["messages"]] == [
        "<image>\nwhat color is the shape?", "Red. The shape is red.", "is there a red shape?", "Yes. It is."]
    other = dict(row, id="s")
    mga = stage2_batches([row, other], [[1, 0]], "mga")
    assert [r["id"] for r in mga[0]] == ["s", "r"] and "extended_answers" in mga[0][0]
    long = stage2_batches([row, other], [[1, 0]], "lm-long")
    assert [r["id"] for r in long[0]] == ["s", "r", "s-long", "r-long"]
    assert all("extended_answers" not in r for r in long[0])
