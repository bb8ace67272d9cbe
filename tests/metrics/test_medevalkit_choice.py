"""MedEvalKit's multiple-choice judge and MMMU scoring against the hand-worked verdict table
(tests/metrics/medevalkit_choice_cases.json): every case was worked out by hand from the cited MedEvalKit
lines, the similarities with Python's difflib."""

import json
import random
from pathlib import Path

import pytest

from exgramed_plugin.metrics import medevalkit_choice as mc
from exgramed_plugin.metrics import mmmu_metrics as mmmu

CASES = json.loads((Path(__file__).parent / "medevalkit_choice_cases.json").read_text(encoding="utf-8"))


def expand(value):
    """The table's shorthand: {"repeat": s, "times": n} and lists concatenated."""
    if isinstance(value, list):
        return "".join(expand(part) for part in value)
    if isinstance(value, dict):
        return value["repeat"] * value["times"]
    return value


def _case_id(case):
    return f"{case['quirk'] or case['rule']}: {expand(case['response'])[:30]!r} -> {case['answer' if 'answer' in case else 'gold']}"


@pytest.mark.parametrize("case", CASES["multiple_choice"], ids=_case_id)
def test_multiple_choice_verdicts(case):
    reply = mc.scorer_reply(case["benchmark"], expand(case["response"]))
    assert mc.judge_multi_choice(case["choices"], case["answer"], reply) is case["faithful"]
    assert mc.judge_multi_choice_corrected(case["choices"], case["answer"], reply) is case["corrected"]


@pytest.mark.parametrize("case", CASES["mmmu"], ids=_case_id)
def test_mmmu_verdicts(case):
    for corrected, expected in ((False, case["faithful"]), (True, case["corrected"])):
        verdict, _ = mmmu.judge(expand(case["response"]), question_type=case["question_type"], options=case["options"],
                                gold=case["gold"], split=case["split"], rng=random.Random(mmmu.RANDOM_SEED),
                                corrected=corrected)
        assert verdict is expected


def test_every_quirk_has_three_cases_and_every_case_cites_a_line():
    for quirks, cases in ((mc.QUIRKS, CASES["multiple_choice"]), (mmmu.QUIRKS, CASES["mmmu"])):
        for quirk in quirks:
            if quirk == "first_image_only":  # a prompt setting: tests/data/test_mc_benchmarks.py
                continue
            assert sum(case["quirk"] == quirk for case in cases) >= 3, quirk
        assert all(case["cites"] and case["why"] for case in cases)
        assert {case["quirk"] for case in cases} - {None} <= set(quirks)


def test_multiple_choice_prompt_is_medevalkit_verbatim():
    # question_formats.py L5-13: f-string with a leading newline and "Options: " with a trailing space.
    assert mc.get_multiple_choice_prompt("Which organ?", ["A. Liver", "B. Lung"]) == (
        "\nQuestion: Which organ?\nOptions: \nA. Liver\nB. Lung\n"
        "Answer with the option's letter from the given choices directly.")


def test_mmmu_prompt_is_medevalkit_verbatim():
    # utils/MMMU/data_utils.py L149-160 and L171-180 (REASONING "False").
    assert mmmu.construct_prompt("What is <image 1>?", ["a", "b"], "multiple-choice") == (
        "\nWhat is <image 1>?\n\n(A) a\n(B) b\n\n\n        Answer with the option's letter from the given choices "
        "directly.")
    assert mmmu.construct_prompt("How many?", [], "open") == (
        "\nHow many?\n\n        Answer the question using a single word or phrase.")


def test_mmmu_random_letters_follow_one_seeded_stream_in_question_order():
    """MedEvalKit seeds Python's generator with 42 before a benchmark: the n-th unparsable reply gets the
    n-th draw of that stream, whatever the other questions were."""
    rng = random.Random(mmmu.RANDOM_SEED)
    reference = random.Random(42)
    letters = ["A", "B", "C", "D"]
    expected = [reference.choice(letters) for _ in range(5)]
    drawn = [mmmu.parse_multi_choice_response("no idea at all here", letters, mmmu.index2ans(["w", "x", "y", "z"]),
                                              rng) for _ in range(5)]
    assert drawn == expected
