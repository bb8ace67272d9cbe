"""The image-use diagnostics of the data-efficiency experiment, on hand-written VQA files."""

from __future__ import annotations

import json

import pytest

from exgramed_plugin.commands.experiment.diagnostics import image_dependence, question_only_answers, question_only_baseline


def _row(row_id, question, answer, answer_type):
    return {"id": row_id, "image": "x.png", "answer_type": answer_type,
            "conversations": [{"from": "human", "value": f"{question}\n<image>"}, {"from": "gpt", "value": answer}]}


@pytest.fixture()
def files(tmp_path):
    train = [_row("t1", "what color is the shape?", "red", "OPEN"),
             _row("t2", "What  color is the shape?", "red", "OPEN"),  # same question up to case / spaces
             _row("t3", "what color is the shape?", "blue", "OPEN"),
             _row("t4", "what shape is present?", "circle", "OPEN"),
             _row("t5", "is there a red shape?", "no", "CLOSED"),
             _row("t6", "is there a red shape?", "yes", "CLOSED"),  # tie: alphabetical -> "no"
             _row("t7", "is no circle present?", "yes", "CLOSED")]
    test = [_row("q1", "what color is the shape?", "blue", "OPEN"),
            _row("q2", "what color is the shape?", "red", "OPEN"),
            _row("q3", "what is the blue shape?", "triangle", "OPEN"),  # unseen text: most frequent OPEN answer
            _row("q4", "is there a red shape?", "no", "CLOSED"),
            _row("q5", "is there a red shape?", "yes", "CLOSED"),
            _row("q6", "is there a teal shape?", "yes", "CLOSED")]  # unseen: most frequent CLOSED answer
    paths = {name: tmp_path / f"{name}.json" for name in ("train", "test")}
    paths["train"].write_text(json.dumps(train))
    paths["test"].write_text(json.dumps(test))
    paths["candidates"] = tmp_path / "candidate.json"
    paths["candidates"].write_text(json.dumps({"0": ["red", "blue", "circle", "triangle"]}))
    return paths


def test_question_only_answers_by_hand(files):
    assert question_only_answers(files["train"], files["test"]) == {
        "q1": "red", "q2": "red", "q3": "red", "q4": "no", "q5": "no", "q6": "yes"}


def test_question_only_baseline_is_scored_by_eval_vqa(files, tmp_path):
    result = question_only_baseline(files["train"], files["test"], files["candidates"], tmp_path / "out")
    assert result["original"]["open_recall"] == pytest.approx(100 / 3)  # q2 only
    assert result["original"]["closed_accuracy"] == pytest.approx(200 / 3)  # q4, q6


def test_image_dependence_by_hand(files, tmp_path):
    predictions = tmp_path / "pred.jsonl"

    def write(answers):
        predictions.write_text("".join(json.dumps({"id": k, "response": v}) + "\n" for k, v in answers.items()))

    # repeated question texts: "what color is the shape?" (q1, q2) and "is there a red shape?" (q4, q5)
    write({"q1": "red", "q2": "Red ", "q3": "blue", "q4": "no", "q5": "yes", "q6": "no"})
    assert image_dependence(files["test"], predictions) == pytest.approx(50.0)
    write({"q1": "red", "q2": "blue", "q3": "blue", "q4": "no", "q5": "yes", "q6": "no"})
    assert image_dependence(files["test"], predictions) == pytest.approx(100.0)
    write({"q1": "red", "q2": "red", "q3": "blue", "q4": "no", "q5": "no", "q6": "yes"})
    assert image_dependence(files["test"], predictions) == 0.0


def test_image_dependence_needs_complete_predictions(files, tmp_path):
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text(json.dumps({"id": "q1", "response": "red"}) + "\n")
    with pytest.raises(ValueError, match="q2"):
        image_dependence(files["test"], predictions)
