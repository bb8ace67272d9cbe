"""Benchmark-level multiple-choice scoring: question rows, accuracy by MedEvalKit's groups, the likelihood
ranking and --eval_metric exgra_mc's numbers, against counts worked out by hand."""

import json

import pytest

from exgramed_plugin.data.mc_benchmarks import ChoiceQuestion
from exgramed_plugin.metrics import multiple_choice as choice

OMNI = [ChoiceQuestion("o1", "omnimedvqa", "Which modality?", ("A. CT", "B. MRI"), "A", ("/x/1.png",),
                       {"question_type": "Modality Recognition", "modality_type": "CT"}),
        ChoiceQuestion("o2", "omnimedvqa", "Abnormal?", ("A. Yes", "B. No"), "B", ("/x/2.png",),
                       {"question_type": "Disease Diagnosis", "modality_type": "CT"}),
        ChoiceQuestion("o3", "omnimedvqa", "Diagnosis?", ("A. Normal", "B. Glaucoma", "C. Cataract"), "B",
                       ("/x/3.png",), {"question_type": "Disease Diagnosis", "modality_type": "Fundus"})]


def _rows(questions, split="test"):
    return [choice.question_row(q, split) for q in questions]


def test_question_row_is_medevalkits_prompt_after_the_image_tag():
    row = choice.question_row(OMNI[0], "test")
    assert row["messages"] == [
        {"role": "user", "content": "<image>\nQuestion: Which modality?\nOptions: \nA. CT\nB. MRI\nAnswer with the "
                                    "option's letter from the given choices directly."},
        {"role": "assistant", "content": "A"}]
    assert json.loads(row["mc_question"]) == {"benchmark": "omnimedvqa", "split": "test", "choices": ["A. CT", "B. MRI"],
                                              "answer": "A", "question_type": "multiple-choice",
                                              "groups": OMNI[0].groups}


def test_accuracy_overall_and_by_group_as_counted_by_hand():
    # o1 "A" right; o2 "" -> faithful option A (quirk empty_reply_is_a), wrong either way (answer B);
    # o3 "(B)" -> faithful difflib: 'a. normal' 0, 'b. glaucoma' 2/14, 'c. cataract' 0 -> B right; corrected B.
    report = choice.score_choices("omnimedvqa", "test", _rows(OMNI), {"o1": "A", "o2": "", "o3": "(B)"})
    faithful = report.summary["medevalkit"]
    assert faithful["overall"] == {"total": 3, "scored": 3, "right": 2, "accuracy": pytest.approx(200 / 3)}
    assert faithful["by_question_type"]["Disease Diagnosis"]["accuracy"] == 50.0
    assert faithful["by_modality_type"] == {"CT": {"total": 2, "scored": 2, "right": 1, "accuracy": 50.0},
                                            "Fundus": {"total": 1, "scored": 1, "right": 1, "accuracy": 100.0}}
    assert [row["medevalkit_correct"] for row in report.per_question] == [True, False, True]
    assert "likelihood" not in report.summary


def test_the_empty_reply_is_right_under_medevalkit_when_the_answer_is_a():
    report = choice.score_choices("omnimedvqa", "test", _rows(OMNI[:1]), {"o1": ""})
    assert report.summary["medevalkit"]["overall"]["accuracy"] == 100.0
    assert report.summary["medevalkit_corrected"]["overall"]["accuracy"] == 0.0


def test_likelihood_picks_the_first_highest_score():
    scores = {"o1": [-1.0, -1.0], "o2": [-5.0, -2.0], "o3": [-3.0, -4.0, -9.0]}  # A (tie), B, A
    report = choice.score_choices("omnimedvqa", "test", _rows(OMNI), {q.id: "x" for q in OMNI}, scores)
    assert [row["likelihood_choice"] for row in report.per_question] == ["A", "B", "A"]
    assert report.summary["likelihood"]["overall"]["accuracy"] == pytest.approx(200 / 3)


def test_mmmu_open_questions_have_no_likelihood_and_the_faithful_test_split_no_number():
    questions = [ChoiceQuestion("m1", "mmmu_med", "Q?", ("a", "b"), "B", ("/x.png",), {"subject": "Pharmacy"}),
                 ChoiceQuestion("m2", "mmmu_med", "How many?", (), "24", ("/x.png",), {"subject": "Pharmacy"}, "open")]
    report = choice.score_choices("mmmu_med", "test", _rows(questions, "test"), {"m1": "B", "m2": "24"},
                                  {"m1": [-2.0, -1.0]})
    assert report.summary["medevalkit"]["overall"]["accuracy"] is None  # MedEvalKit raises on the test split
    assert report.summary["medevalkit_corrected"]["overall"]["accuracy"] == 100.0
    likelihood = report.summary["likelihood"]["overall"]
    assert (likelihood["scored"], likelihood["accuracy"], likelihood["accuracy_scored"]) == (1, None, 100.0)


def test_training_metrics_per_benchmark_and_their_line_up_check():
    rows = _rows(OMNI)
    infos = [json.loads(row["mc_question"]) for row in rows]
    metrics = choice.training_metrics(["A", "", "(B)"], ["A", "B", "B"], infos)
    assert metrics == {"num_questions": 3.0, "medevalkit": pytest.approx(200 / 3),
                       "medevalkit_corrected": pytest.approx(200 / 3),
                       "omnimedvqa_medevalkit": pytest.approx(200 / 3),
                       "omnimedvqa_medevalkit_corrected": pytest.approx(200 / 3)}
    with pytest.raises(ValueError, match=r"do not line up at positions \[0, 1\]"):
        choice.training_metrics(["A", "B", "B"], ["B", "A", "B"], infos)
    with pytest.raises(ValueError, match="3 replies, 2 labels, 3 evaluation rows"):
        choice.training_metrics(["A", "B", "B"], ["A", "B"], infos)
