"""Does a VQA model use the image? Two checks that need no model: a blind baseline and answer spread.

* :func:`question_only_baseline`: answer every test question with the most frequent training answer
  of the same question text (else the most frequent answer of its answer type). A model that
  scores no better than this has learned the language prior of the data set, not the images.
* :func:`image_dependence`: among question texts asked about two or more test images, the percent
  for which the model gave more than one distinct answer. 0 means every answer is a function of the
  question text alone, whatever the accuracy.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ...common.jsonio import write_jsonl
from ...eval.eval_vqa import evaluate_vqa, load_answers, load_vqa_questions, pair_by_id


def _question_key(question: str) -> str:
    return " ".join(question.lower().split())


def question_only_answers(vqa_train: str | Path, vqa_test: str | Path) -> dict[str, str]:
    """``{test id: answer}`` from the training answer counts of each question text (blind)."""
    by_question: dict[str, Counter[str]] = defaultdict(Counter)
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for row in load_vqa_questions(vqa_train):
        by_question[_question_key(row.question)][row.answer] += 1
        by_type[row.answer_type][row.answer] += 1
    answers = {}
    for row in load_vqa_questions(vqa_test):
        counts = by_question.get(_question_key(row.question)) or by_type.get(row.answer_type)
        if not counts:
            raise ValueError(f"{vqa_train}: no training question of type {row.answer_type!r} "
                             f"to answer test item {row.id!r} blindly")
        # most frequent, ties broken alphabetically so the baseline does not depend on file order
        answers[row.id] = min(counts, key=lambda answer: (-counts[answer], answer))
    return answers


def question_only_baseline(vqa_train: str | Path, vqa_test: str | Path, candidates: str | Path,
                           out_dir: str | Path) -> dict[str, Any]:
    """Score :func:`question_only_answers` with ``eval-vqa``; writes ``question_only_answers.jsonl``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "question_only_answers.jsonl"
    answers = question_only_answers(vqa_train, vqa_test)
    write_jsonl(path, ({"id": key, "text": text} for key, text in answers.items()))
    report = evaluate_vqa(vqa_test, path, candidates)
    return {"original": report.original, "strict": report.strict, "answers": str(path)}


def image_dependence(vqa_test: str | Path, predictions: str | Path) -> float | None:
    """Percent of repeated question texts whose answers differ between images (None: no repeats)."""
    answers_by_question: dict[str, list[str]] = defaultdict(list)
    for question, answer in pair_by_id(load_vqa_questions(vqa_test), load_answers(predictions)):
        answers_by_question[_question_key(question.question)].append(_question_key(answer.text))
    repeated = [answers for answers in answers_by_question.values() if len(answers) > 1]
    if not repeated:
        return None
    return 100.0 * sum(len(set(answers)) > 1 for answers in repeated) / len(repeated)
