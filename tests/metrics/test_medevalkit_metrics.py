"""MedEvalKit's VQA convention: each expected value derived by hand from MedEvalKit's code (commit 9b12e3b,
utils/utils.py and the cal_metrics of VQA_RAD.py / SLAKE.py / PATH_VQA.py), quirks and corrected values."""

from __future__ import annotations

import math
import sys

import pytest

from exgramed_plugin.metrics import medevalkit_metrics as mek

# ``rouge`` package: f = 2 p r / (p + r + 1e-8) (rouge_score.f_r_p_rouge_n).
ROUGE_EPS = 1e-8


def _rouge_f(p: float, r: float) -> float:
    return 2 * p * r / (p + r + ROUGE_EPS)


# --- extraction --------------------------------------------------------------------------------


def test_extract_boxed_content_last_box_nested_braces_and_none() -> None:
    # rfind finds the last "\boxed{"; depth counts the inner "{...}"; the closing brace at depth -1 ends it.
    assert mek.extract_boxed_content(r"\boxed{a} so \boxed{ left {upper} lobe }.") == "left {upper} lobe"
    # never closed -> the literal string "None"; no box -> "None"
    assert mek.extract_boxed_content(r"\boxed{left lung") == "None"
    assert mek.extract_boxed_content("left lung") == "None"


def test_extract_tag_spans_and_fallbacks() -> None:
    # get_content_between_a_b: " x " + " " then "y" + " " -> " x  y " -> strip -> "x  y"
    assert mek.extract("<answer> x </answer> and <answer>y</answer>", "answer") == "x  y"
    assert mek.extract("no tag here", "answer") == "no tag here"  # hard=True: whole text
    assert mek.extract(None, "judge") == ""


def test_parse_response_leading_space_quirk_and_corrected() -> None:
    # lower -> "answer: left lung"; "answer:" matches -> split -> " left lung" (space kept)
    assert mek.parse_response("Answer: Left lung") == " left lung"
    assert mek.parse_response_corrected("Answer: Left lung") == "left lung"
    # "answer is" is tried before "answer:" -> ": left lung"; corrected strips space and ":"
    assert mek.parse_response("The answer is: left lung") == ": left lung"
    assert mek.parse_response_corrected("The answer is: left lung") == "left lung"
    # "**answer**:" first -> " liver"; then "**answer**" no longer occurs
    assert mek.parse_response("**Answer**: Liver") == " liver"


def test_parse_response_boxed_none_quirk() -> None:
    # "boxed" occurs, no "\boxed{" -> extract_boxed_content gives "None" -> answer "None" (not lowered again)
    assert mek.parse_response("The unboxed region") == "None"
    assert mek.parse_response_corrected("The unboxed region") == "the unboxed region"
    assert mek.parse_response(r"\boxed{Yes}") == "yes"


def test_cal_metrics_extraction_prefers_boxed_then_answer_tag() -> None:
    assert mek.cal_metrics_response(r"think... \boxed{Left Lung}") == "Left Lung"
    assert mek.cal_metrics_response("<think>t</think><answer>Liver</answer>") == "Liver"
    assert mek.cal_metrics_response("Liver") == "Liver"


# --- closed judgements --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "response", "faithful", "corrected"),
    [
        # 'yes' in "yes, it is normal" and 'no' in "normal": XOR false -> wrong; words {yes, it, is, normal}
        ("yes", "Yes, it is normal", False, True),
        # 'no' in "not sure" (substring), 'yes' absent -> XOR true, "no" in it -> right; words lack "no"
        ("no", "Not sure", True, False),
        # "know" contains "no"
        ("no", "I don't know", True, False),
        # "yes." -> periods removed -> "yes"
        ("yes", "Yes.", True, True),
        # both words present: XOR false in both
        ("yes", "yes or no", False, False),
    ],
)
def test_judge_judgement_substring_quirk(answer: str, response: str, faithful: bool, corrected: bool) -> None:
    assert mek.judge_judgement(answer, response) is faithful
    assert mek.judge_judgement_corrected(answer, response) is corrected


def test_judge_close_end_vqa_exact_match_quirks() -> None:
    # parse -> " left lung" (leading space) != "left lung"
    assert mek.judge_close_end_vqa("Left Lung", "Answer: left lung") is False
    assert mek.judge_close_end_vqa_corrected("Left Lung", "Answer: left lung") is True
    # periods deleted from the response only: "25 cm" != "2.5 cm"
    assert mek.judge_close_end_vqa("2.5 cm", "2.5 cm") is False
    assert mek.judge_close_end_vqa_corrected("2.5 cm", "2.5 cm") is True
    assert mek.judge_close_end_vqa("CT", "ct.") is True


# --- open metrics -------------------------------------------------------------------------------


def test_calculate_f1_return_order_and_bare_zero() -> None:
    # sets {left, lung, mass} vs {left, lung}: common 2 -> precision 2/3, recall 1, f1 = 2(2/3)/(5/3) = 0.8
    assert mek.calculate_f1("left lung mass", "left lung") == pytest.approx((0.8, 2 / 3, 1.0))
    assert mek.calculate_f1("liver", "spleen") == (0, 0, 0)
    result = mek.calculate_f1("   ", "liver")
    assert result == 0 and not isinstance(result, tuple)  # a bare 0: the caller cannot unpack it
    assert mek.precision_recall_f1_corrected("left lung mass", "left lung") == pytest.approx((2 / 3, 1.0, 0.8))
    assert mek.precision_recall_f1_corrected("   ", "liver") == (0.0, 0.0, 0.0)


def test_tokenize_splits_on_single_spaces_and_periods() -> None:
    assert mek.tokenize("Left  lung.") == ["left", "", "lung", "."]


def test_bleu_cumulative_uniform_weights() -> None:
    # hyp [left, lung, mass], ref [left, lung]: p1 = 2/3, p2 = 1/2 (only (left, lung) matches), BP = 1
    assert mek.bleu("left lung mass", "left lung", 1) == pytest.approx(2 / 3)
    assert mek.bleu("left lung mass", "left lung", 2) == pytest.approx(math.sqrt(2 / 3 * 1 / 2))
    # p3 = 0/1 -> nltk method0 puts sys.float_info.min: (2/3 * 1/2 * min) ** (1/3)
    assert mek.bleu("left lung mass", "left lung", 3) == pytest.approx((1 / 3 * sys.float_info.min) ** (1 / 3))
    # no unigram overlap -> 0
    assert mek.bleu("spleen", "liver", 1) == 0.0


def test_rouge_f_scores() -> None:
    scores = mek.rouge("Left lung mass", "left lung")[0]
    # rouge-1: unigram sets 3 vs 2, overlap 2 -> p 2/3, r 1
    assert scores["rouge-1"]["f"] == pytest.approx(_rouge_f(2 / 3, 1.0), rel=1e-12)
    # rouge-2: bigram sets 2 vs 1, overlap 1 -> p 1/2, r 1
    assert scores["rouge-2"]["f"] == pytest.approx(_rouge_f(0.5, 1.0), rel=1e-12)
    # rouge-l (summary level): union LCS 2, m = 2 ref words, n = 3 hyp words
    assert scores["rouge-l"]["f"] == pytest.approx(_rouge_f(2 / 3, 1.0), rel=1e-12)


def test_judge_open_end_vqa_swapped_names_and_corrected() -> None:
    faithful = mek.judge_open_end_vqa("left lung", "left lung mass")
    # calculate_f1 -> (0.8, 2/3, 1.0) unpacked as precision, recall, f1
    assert (faithful["precision"], faithful["recall"], faithful["f1"]) == pytest.approx((0.8, 2 / 3, 1.0))
    assert faithful["em"] == 0.0
    corrected = mek.judge_open_end_vqa_corrected("left lung", "left lung mass")
    assert (corrected["precision"], corrected["recall"], corrected["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))


def test_empty_parsed_answer_crashes_like_medevalkit() -> None:
    # "answer:" -> parse -> "" -> rouge: hyp [] -> ValueError("Hypothesis is empty.")
    with pytest.raises(mek.MedEvalKitCrash, match="Hypothesis is empty"):
        mek.judge_open_end_vqa("liver", "answer:")
    # " " -> rouge gets one empty sentence (fine), calculate_f1 -> bare 0 -> unpacking raises
    with pytest.raises(mek.MedEvalKitCrash, match="bare 0"):
        mek.judge_open_end_vqa("liver", " ")
    corrected = mek.judge_open_end_vqa_corrected("liver", "answer:")
    assert corrected["rouge1"] == 0.0 and corrected["f1"] == 0.0 and corrected["em"] == 0.0


# --- per-dataset cal_metrics flow ------------------------------------------------------------------


def test_question_kind_per_dataset() -> None:
    # vqa_rad / pathvqa: by the answer, whatever answer_type says
    assert mek.question_kind(" Yes ", "OPEN", "vqa_rad") == "closed"
    assert mek.question_kind("left", "CLOSED", "pathvqa") == "open"
    # slake: by answer_type
    assert mek.question_kind("left", "CLOSED", "slake") == "closed"
    assert mek.question_kind("yes", "OPEN", "slake") == "open"
    with pytest.raises(ValueError, match="vqa_rad, slake, pathvqa.*'rad'"):
        mek.question_kind("yes", "CLOSED", "rad")


def test_score_question_vqa_rad_open_leading_space() -> None:
    score = mek.score_question("Answer: Right lung", "Right lung", "OPEN", "vqa_rad")
    # lower/strip -> "answer: right lung" -> parse -> " right lung" != "right lung"
    assert (score.kind, score.compared, score.correct) == ("open", " right lung", False)
    fixed = mek.score_question_corrected("Answer: Right lung", "Right lung", "OPEN", "vqa_rad")
    assert (fixed.compared, fixed.correct) == ("right lung", True)


def test_score_question_slake_capitalised_yes_uses_exact_match() -> None:
    # SLAKE: answer "Yes" is not in ["yes", "no"] -> judge_close_end_vqa -> "yes, there is" != "yes"
    assert mek.score_question("Yes, there is", "Yes", "CLOSED", "slake").correct is False
    # corrected: "yes" after lower -> judge_judgement (whole words) -> right
    assert mek.score_question_corrected("Yes, there is", "Yes", "CLOSED", "slake").correct is True
    # lower-case gt: judge_judgement in both
    assert mek.score_question("Yes, there is", "yes", "CLOSED", "slake").correct is True


def test_score_question_records_crash_with_partial_metrics() -> None:
    score = mek.score_question("Answer:", "liver", "OPEN", "vqa_rad")
    assert score.crash is not None and "Hypothesis is empty" in score.crash
    assert score.correct is False and score.metrics["bleu1"] == 0.0 and "rouge1" not in score.metrics


def _four_scores(dataset: str) -> list[mek.QuestionScore]:
    # q0 closed right, q1 closed wrong ("not sure" vs "yes"), q2 open exact, q3 open "left lung mass"
    return [
        mek.score_question("yes", "yes", "CLOSED", dataset),
        mek.score_question("not sure", "yes", "CLOSED", dataset),
        mek.score_question("liver", "liver", "OPEN", dataset),
        mek.score_question("left lung mass", "left lung", "OPEN", dataset),
    ]


def test_aggregate_headline_accuracy() -> None:
    metrics = mek.aggregate(_four_scores("vqa_rad"), "vqa_rad")
    # (closed right 1 + open em 1) / 4
    assert metrics["accuracy"] == pytest.approx(50.0)
    assert metrics["closed_accuracy"] == pytest.approx(50.0)
    assert metrics["exact_match"] == pytest.approx(50.0)
    # reported "precision" = mean F1: ("liver": 1, "left lung mass": 0.8) -> 90; "recall" = mean P: (1 + 2/3)/2
    assert metrics["precision"] == pytest.approx(90.0)
    assert metrics["open_recall"] == pytest.approx((1 + 2 / 3) / 2 * 100)
    assert metrics["f1"] == pytest.approx(100.0)  # = mean recall
    # bleu1: "liver" 1, "left lung mass" 2/3
    assert metrics["bleu_1"] == pytest.approx((1 + 2 / 3) / 2 * 100)
    assert "open_judge_accuracy" not in metrics


def test_aggregate_crash_and_empty_type() -> None:
    scores = [mek.score_question("answer:", "liver", "OPEN", "vqa_rad"),
              mek.score_question("liver", "liver", "OPEN", "vqa_rad")]
    metrics = mek.aggregate(scores, "vqa_rad")
    assert metrics["accuracy"] == pytest.approx(50.0)
    assert metrics["closed_accuracy"] is None  # MedEvalKit: ZeroDivisionError
    assert metrics["rouge_1"] is None and metrics["f1"] is None  # never reached by MedEvalKit
    assert metrics["bleu_1"] == pytest.approx(50.0)
    corrected = mek.aggregate([mek.score_question_corrected("answer:", "liver", "OPEN", "vqa_rad"),
                               mek.score_question_corrected("liver", "liver", "OPEN", "vqa_rad")],
                              "vqa_rad", corrected=True)
    assert corrected["f1"] == pytest.approx(50.0)


def test_aggregate_llm_judge_bookkeeping_per_dataset() -> None:
    scores = _four_scores("vqa_rad")
    assert mek.judged_questions(scores, "vqa_rad") == [2, 3]
    assert mek.judged_questions(scores, "slake") == [0, 1, 2, 3]
    assert mek.judged_questions(scores, "slake", corrected=True) == [2, 3]
    # VQA_RAD: closed right 1 (rule) + judged open right 1 (q2 yes, q3 no) -> 2/4
    vqa_rad = mek.aggregate(scores, "vqa_rad", verdicts={2: True, 3: False})
    assert (vqa_rad["accuracy"], vqa_rad["closed_accuracy"], vqa_rad["open_judge_accuracy"]) == (50.0, 50.0, 50.0)
    # SLAKE judges all: closed right = rule 1 + judged 2 = 3 (of 2!), open 1 -> (3 + 1) / 4
    slake = mek.aggregate(scores, "slake", verdicts={0: True, 1: True, 2: True, 3: False})
    assert (slake["accuracy"], slake["closed_accuracy"]) == (100.0, 150.0)
    # PATH_VQA resets closed right to 0: accuracy = judged open right 1 / 4
    path = mek.aggregate(scores, "pathvqa", verdicts={2: True, 3: False})
    assert (path["accuracy"], path["closed_accuracy"]) == (25.0, 0.0)
    # corrected: closed by rule, open by the judge -> 2/4 for every dataset
    for dataset in ("slake", "pathvqa"):
        fixed = mek.aggregate(scores, dataset, verdicts={2: True, 3: False}, corrected=True)
        assert (fixed["accuracy"], fixed["closed_accuracy"]) == (50.0, 50.0)


def test_judge_prompt_and_verdict() -> None:
    content = mek.get_compare_messages("Where?", "right lobe", "left lobe")[0]["content"]
    assert "The question is: Where?\n\nThe standard answer: left lobe\n\nThe user's answer: right lobe" in content
    assert "<judge>{0/1}</judge>" in content  # f-string "{{0/1}}"
    assert mek.judge_verdict("<think>same</think>\n<judge>0</judge>") is True
    assert mek.judge_verdict("<judge> 0 </judge>") is True  # spans are stripped
    assert mek.judge_verdict("<judge>1</judge>") is False
    assert mek.judge_verdict("0") is True  # no tag: extract returns the whole text
    assert mek.judge_verdict(None) is False  # a failed request counts as incorrect
