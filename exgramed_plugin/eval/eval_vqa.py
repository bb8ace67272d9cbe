"""`exgramed eval-vqa`: score VQA answers under the original, strict and MedEvalKit conventions, side by side.

Why: users of LLaVA-Med-style code cannot reproduce published numbers because the scoring script is
order-dependent, needs an unreleased candidate file and has substring / prefix / multiplicity quirks
(peers doc §1.2-1.3). Here pairs are matched by id, every quirk of the original is reproduced under
"original", and the corrected numbers are reported under "strict". Recent papers score with
MedEvalKit instead: with ``--dataset`` its convention is reproduced under "medevalkit" (quirks kept)
and "medevalkit_corrected" (its bugs fixed), see ``medevalkit_metrics.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgramed_plugin.common.jsonio import print_summary, read_json, read_json_or_jsonl
from exgramed_plugin.common.openai_client import ChatClient, add_client_arguments, api_key_from_env
from exgramed_plugin.data.formats import DataFormatError
from exgramed_plugin.data.vqa_questions import VQAQuestion, read_vqa_questions
from exgramed_plugin.metrics import medevalkit_metrics as mek
from exgramed_plugin.metrics.vqa_metrics import (
    BLEU_WEIGHTS,
    NormalizedCandidates,
    mean_percent,
    normalize_candidates,
    normalize_word_strict,
    prepare_original,
    score_pair_original,
    score_pair_strict,
)

logger = logging.getLogger(__name__)

ANSWER_TYPES = ("OPEN", "CLOSED")
MAX_IDS_IN_ERROR = 20

# Report key -> (table label, name in the original run_eval.py table or "" if it has none).
METRIC_LABELS: dict[str, tuple[str, str]] = {
    "accuracy": ("Accuracy (closed right + open right)/all", ""),  # MedEvalKit's headline
    "closed_accuracy": ("Closed accuracy", "yes/no accuracy"),
    "open_recall": ("Open recall", "recall"),
    "open_accuracy": ("Open accuracy (candidates)", "open accuracy"),
    "open_judge_accuracy": ("Open accuracy (LLM judge)", ""),
    "average": ("Average (open recall + closed)/2", ""),
    "average_open_accuracy": ("Average (open accuracy + closed)/2", ""),
    "exact_match": ("Exact match", "exact match score"),
    "f1": ("F1", "f1 score"),
    "precision": ("Precision", "precision"),
    "bleu_cumulative_2": ("BLEU-2 cumulative (uniform)", ""),
    "bleu_cumulative_3": ("BLEU-3 cumulative (uniform)", ""),
    "bleu_cumulative_4": ("BLEU-4 cumulative (uniform)", "bleu_score"),
    "bleu_1": ("BLEU-1 (1-gram only)", "bleu_score_1"),
    "bleu_2": ("BLEU-2 (2-gram only)", "bleu_score_2"),
    "bleu_3": ("BLEU-3 (3-gram only)", "bleu_score_3"),
    "bleu_4": ("BLEU-4 (4-gram only)", ""),
    "rouge_1": ("ROUGE-1 F", ""),
    "rouge_2": ("ROUGE-2 F", ""),
    "rouge_l": ("ROUGE-L F", ""),
}

# Report key -> where MedEvalKit's metrics.json holds it. Its precision/recall/f1 hold other values
# (quirk prf_swapped): the "medevalkit" column shows what it reports, "medevalkit_corrected" the
# quantity the row names.
MEDEVALKIT_NAMES: dict[str, str] = {
    "accuracy": "total metrics/acc",
    "closed_accuracy": "close/acc",
    "open_judge_accuracy": "open/acc (LLM judge)",
    "exact_match": "open/em (= open/acc w/o judge)",
    "open_recall": "open/recall (holds precision)",
    "precision": "open/precision (holds F1)",
    "f1": "open/f1 (holds recall)",
    "bleu_1": "open/bleu1",
    "bleu_cumulative_2": "open/bleu2",
    "bleu_cumulative_3": "open/bleu3",
    "bleu_cumulative_4": "open/bleu4",
    "rouge_1": "open/rouge1",
    "rouge_2": "open/rouge2",
    "rouge_l": "open/rougel",
}

METRIC_DEFINITIONS: dict[str, str] = {
    "original": (
        "run_eval.py of the original: gt/pred = normalize_word(x.lower()) (32-period limit, "
        "'Assistant:' kept); closed = gt substring of pred; open recall/precision/f1 with prediction "
        "multiplicity after a second normalisation; exact_match = distinct gt words in pred / pred "
        "word count; open accuracy = closest candidate.json answer equals gt; BLEU = nltk "
        "sentence_bleu without smoothing. All ×100, averaged over the questions of the type."
    ),
    "strict": (
        "Leading 'Assistant:' stripped, single normalisation without the period limit; closed = "
        "prediction begins with the gt words (yes/no: first word equals gt; gt erased by "
        "normalisation such as option 'A': same rule on lower-cased alphanumeric tokens); open "
        "recall/precision/f1 on word sets; exact_match = normalised strings equal; open accuracy "
        "and BLEU as original on the strict strings."
    ),
    "bleu": (
        "bleu_cumulative_4 = weights (.25,.25,.25,.25) (the original 'bleu_score'); bleu_n = "
        "individual n-gram weights, e.g. bleu_2 = (0,1,0,0) (original 'bleu_score_1..3'; bleu_4 "
        "was not printed by the original)."
    ),
    "average": "(open_recall + closed_accuracy) / 2, the per-dataset number the papers report.",
    "medevalkit": (
        "MedEvalKit (commit " + mek.MEDEVALKIT_COMMIT + ") cal_metrics of VQA_RAD/SLAKE/PATH_VQA, quirks kept: "
        "\\boxed{}/<answer> extraction; closed = answer is yes/no (vqa_rad, pathvqa) or answer_type is not "
        "OPEN (slake); closed right by judge_judgement (substring yes/no test) or exact match; open right "
        "= parsed answer == gt (or the LLM judge); accuracy = (closed right + open right) / all; open "
        "BLEU-n cumulative (nltk), ROUGE F (rouge package), precision/recall/f1 as MedEvalKit reports them "
        "(swapped). ×100."
    ),
    "medevalkit_corrected": (
        "medevalkit with its bugs fixed (see medevalkit_quirks): whole-word yes/no test, parsed answer "
        "stripped of whitespace and a leading ':', periods deleted from closed gt answers too, "
        "precision/recall/f1 under their names, 0 instead of a crash for an empty answer, no 'None' for "
        "a stray 'boxed', SLAKE answers lower-cased/stripped first, LLM judge on open questions only."
    ),
}


@dataclass(frozen=True)
class PredictedAnswer:
    """One model answer, keyed by question id (as a string)."""

    id: str
    text: str


@dataclass
class VQAReport:
    """Aggregated (×100) original, strict and (with a dataset) MedEvalKit metrics, counts, per-question rows.

    ``medevalkit_info``: dataset, MedEvalKit's own open/closed counts, crashing ids, judge details.
    """

    original: dict[str, float | None]
    strict: dict[str, float | None]
    counts: dict[str, int]
    per_question: list[dict[str, Any]] = field(default_factory=list)
    sources: dict[str, str | None] = field(default_factory=dict)
    medevalkit: dict[str, float | None] | None = None
    medevalkit_corrected: dict[str, float | None] | None = None
    medevalkit_info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_vqa_questions(path: str | Path) -> list[VQAQuestion]:
    """The questions of a VQA question file (``data.vqa_questions``), images left unread: scoring
    needs only the text.

    Ground truth = the first gpt/assistant turn (the original reads ``conversations[1]``, the same
    turn for these files); a question without one is an error. ``answer_type`` is upper-cased.
    """
    questions = list(read_vqa_questions(path, read_images=False))
    for question in questions:
        if question.answer is None:
            raise DataFormatError(f"{path}, row id={question.question_id!r}: no gpt/assistant turn holding the "
                                  "ground-truth answer")
    return questions


def _original_or_swift(row: dict[str, Any], original: str, swift: str, missing: str) -> Any:
    """The original's column when the row has it, else swift's; ``missing`` is the error otherwise."""
    if original in row:
        return row[original]
    if swift in row:
        return row[swift]
    raise ValueError(missing)


def load_answers(path: str | Path) -> list[PredictedAnswer]:
    """Read answers JSONL: original rows (``question_id``, ``text``) or swift infer rows.

    Swift ``--result_path`` rows carry ``response``; they need an ``id`` column to be paired.
    """
    answers = []
    for position, (_, row) in enumerate(read_json_or_jsonl(path)):
        where = f"{path}: row {position}"
        question_id = _original_or_swift(
            row, "question_id", "id", f"{where}: needs 'question_id' or 'id' to pair it with the ground truth")
        text = _original_or_swift(row, "text", "response", f"{where}: needs 'text' or 'response'")
        answers.append(PredictedAnswer(id=str(question_id), text="" if text is None else str(text)))
    return answers


def load_candidates(path: str | Path) -> list[object]:
    """candidate.json: ``{"0": [answers...]}`` as the original expects; a bare list is accepted."""
    data = read_json(path)
    if isinstance(data, dict):
        if "0" not in data:
            raise ValueError(f"{path}: expected the key '0' holding the candidate answers")
        data = data["0"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: candidate answers must be a list")
    return data


# --------------------------------------------------------------------------------------------------
# Pairing and scoring
# --------------------------------------------------------------------------------------------------


def _id_sample(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_IDS_IN_ERROR])
    more = f", ... ({len(ids) - MAX_IDS_IN_ERROR} more)" if len(ids) > MAX_IDS_IN_ERROR else ""
    return f"{len(ids)} id(s): [{shown}{more}]"


def _duplicates(ids: Sequence[str]) -> list[str]:
    return [i for i, n in Counter(ids).items() if n > 1]


def id_pairing_problems(question_ids: Sequence[str], answer_ids: Sequence[str], *, question: str = "ground-truth",
                        answer: str = "prediction", missing: str = "missing predictions for",
                        extra: str = "predictions without ground truth for") -> list[str]:
    """Duplicated, missing and extra ids between two id lists, as messages listing the ids."""
    problems = []
    for label, ids in ((question, question_ids), (answer, answer_ids)):
        duplicated = _duplicates(ids)
        if duplicated:
            problems.append(f"duplicated {label} {_id_sample(duplicated)}")
    answer_set, question_set = set(answer_ids), set(question_ids)
    missing_ids = [i for i in question_ids if i not in answer_set]
    extra_ids = [i for i in answer_ids if i not in question_set]
    if missing_ids:
        problems.append(f"{missing} {_id_sample(missing_ids)}")
    if extra_ids:
        problems.append(f"{extra} {_id_sample(extra_ids)}")
    return problems


def pair_by_id(
    questions: Sequence[VQAQuestion], answers: Sequence[PredictedAnswer]
) -> list[tuple[VQAQuestion, PredictedAnswer]]:
    """Match answers to questions by id (as strings), in question order.

    Raises ValueError naming duplicated, missing (no prediction) and extra (no ground truth) ids,
    instead of the original's order-dependent ``assert gt_ids == pred_ids``.
    """
    problems = id_pairing_problems([q.id for q in questions], [a.id for a in answers])
    if problems:
        raise ValueError("ground truth and predictions do not match: " + "; ".join(problems))
    answer_by_id = {a.id: a for a in answers}
    return [(q, answer_by_id[q.id]) for q in questions]


def _aggregate(rows: Sequence[dict[str, float]], rows_closed: Sequence[dict[str, float]],
               with_candidates: bool) -> dict[str, float | None]:
    """Average per-question scores (×100) into the report keys."""
    metrics: dict[str, float | None] = {
        "closed_accuracy": mean_percent([r["closed_hit"] for r in rows_closed]),
        "open_recall": mean_percent([r["recall"] for r in rows]),
    }
    if with_candidates:
        metrics["open_accuracy"] = mean_percent([r["open_hit"] for r in rows])
    closed, open_recall = metrics["closed_accuracy"], metrics["open_recall"]
    metrics["average"] = None if closed is None or open_recall is None else (open_recall + closed) / 2
    if with_candidates:
        open_accuracy = metrics["open_accuracy"]
        metrics["average_open_accuracy"] = (
            None if closed is None or open_accuracy is None else (open_accuracy + closed) / 2
        )
    metrics["exact_match"] = mean_percent([r["exact_match"] for r in rows])
    metrics["f1"] = mean_percent([r["f1"] for r in rows])
    metrics["precision"] = mean_percent([r["precision"] for r in rows])
    for name in BLEU_WEIGHTS:
        metrics[name] = mean_percent([r[name] for r in rows])
    return metrics


def _medevalkit_columns(prefix: str, score: mek.QuestionScore) -> dict[str, Any]:
    """Per-question CSV columns of one MedEvalKit score (MedEvalKit's own metric keys)."""
    columns: dict[str, Any] = {f"{prefix}_kind": score.kind, f"{prefix}_compared": score.compared,
                               f"{prefix}_correct": float(score.correct)}
    columns.update({f"{prefix}_{key}": value for key, value in score.metrics.items()})
    return columns


def score_medevalkit(
    pairs: Sequence[tuple[VQAQuestion, PredictedAnswer]], dataset: str, judge: ChatClient | None = None,
    judge_concurrency: int = 8,
) -> tuple[dict[str, float | None], dict[str, float | None], dict[str, Any], list[dict[str, Any]]]:
    """MedEvalKit's metrics (faithful, corrected), its info and per-question columns, in ``pairs`` order.

    With ``judge``, MedEvalKit's LLM-judge prompt goes to that OpenAI-compatible server for the
    questions it judges (``medevalkit_metrics.judged_questions``); the corrected set reuses those
    verdicts for the open questions. A request that fails for good counts as "incorrect", as in
    MedEvalKit, and its id is listed under ``medevalkit_info["judge"]["failed_ids"]``.
    """
    faithful = [mek.score_question(a.text, q.answer, q.answer_type, dataset) for q, a in pairs]
    corrected = [mek.score_question_corrected(a.text, q.answer, q.answer_type, dataset) for q, a in pairs]
    crashed = [pairs[i][0].id for i, score in enumerate(faithful) if score.crash]
    info: dict[str, Any] = {
        "dataset": dataset, "commit": mek.MEDEVALKIT_COMMIT, "total": len(pairs),
        "open": sum(s.kind == "open" for s in faithful), "closed": sum(s.kind == "closed" for s in faithful),
        "crashes": len(crashed), "crashed_ids": crashed,
    }
    if crashed:
        logger.warning("medevalkit: %d open question(s) would make MedEvalKit itself raise (empty parsed "
                       "answer), %s; its ROUGE/precision/recall/F1 are n/a (medevalkit_corrected scores "
                       "them 0)", len(crashed), _id_sample(crashed))
    verdicts: dict[int, bool] | None = None
    corrected_verdicts: dict[int, bool] | None = None
    if judge is not None:
        judged = mek.judged_questions(faithful, dataset)
        requests = [(pairs[i][0].question, faithful[i].judge_response, faithful[i].judge_answer) for i in judged]
        replies, failed = mek.judge_with_client(judge, requests, concurrency=judge_concurrency)
        verdicts = {i: mek.judge_verdict(reply) for i, reply in zip(judged, replies)}
        corrected_verdicts = {i: verdicts[i] for i in mek.judged_questions(corrected, dataset, corrected=True)}
        info["judge"] = {"model": judge.model, "url": judge.url, "requests": len(requests),
                         "failed_ids": [pairs[judged[k]][0].id for k in failed]}
    rows = []
    for i, (score, fixed) in enumerate(zip(faithful, corrected)):
        row = _medevalkit_columns("medevalkit", score)
        row["medevalkit_crash"] = score.crash or ""
        row.update(_medevalkit_columns("medevalkit_corrected", fixed))
        if verdicts is not None:
            row["medevalkit_judge_correct"] = float(verdicts[i]) if i in verdicts else ""
        rows.append(row)
    return (mek.aggregate(faithful, dataset, verdicts=verdicts),
            mek.aggregate(corrected, dataset, verdicts=corrected_verdicts, corrected=True), info, rows)


def evaluate_vqa(
    gt_path: str | Path, pred_path: str | Path, candidate_path: str | Path | None = None, *,
    dataset: str | None = None, judge: ChatClient | None = None, judge_concurrency: int = 8,
) -> VQAReport:
    """Score answers against a VQA ground-truth file; see METRIC_DEFINITIONS for what is computed.

    Questions whose answer_type is neither OPEN nor CLOSED are skipped (as in the original) and
    counted under ``counts["skipped"]``; MedEvalKit is scored on the same questions. ``dataset``
    (vqa_rad, slake, pathvqa) enables the MedEvalKit convention, whose open/closed split is per
    dataset; ``judge`` adds its optional LLM judge (see ``score_medevalkit``).
    """
    if dataset is not None and dataset not in mek.DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(mek.DATASETS)}, got {dataset!r}")
    questions = load_vqa_questions(gt_path)
    answers = load_answers(pred_path)
    pairs = pair_by_id(questions, answers)

    candidates_original: NormalizedCandidates | None = None
    candidates_strict: NormalizedCandidates | None = None
    if candidate_path is not None:
        raw_candidates = load_candidates(candidate_path)
        candidates_original = normalize_candidates(raw_candidates)
        candidates_strict = normalize_candidates(raw_candidates, remove_all_periods=True)

    original_open, original_closed, strict_open, strict_closed = [], [], [], []
    per_question: list[dict[str, Any]] = []
    scored_pairs: list[tuple[VQAQuestion, PredictedAnswer]] = []
    skipped = 0
    for question, answer in pairs:
        if question.answer_type not in ANSWER_TYPES:
            skipped += 1
            continue
        scored_pairs.append((question, answer))
        original = score_pair_original(
            answer.text, question.answer, question.answer_type, candidates_original
        )
        strict = score_pair_strict(
            answer.text, question.answer, question.answer_type, candidates_strict
        )
        if question.answer_type == "OPEN":
            original_open.append(original)
            strict_open.append(strict)
        else:
            original_closed.append(original)
            strict_closed.append(strict)
        row: dict[str, Any] = {
            "id": question.id,
            "answer_type": question.answer_type,
            "question": question.question,
            "gt": question.answer,
            "prediction": answer.text,
            "original_gt_normalized": prepare_original(question.answer),
            "original_prediction_normalized": prepare_original(answer.text),
            "strict_gt_normalized": normalize_word_strict(question.answer),
            "strict_prediction_normalized": normalize_word_strict(answer.text),
        }
        row.update({f"original_{k}": v for k, v in original.items()})
        row.update({f"strict_{k}": v for k, v in strict.items()})
        per_question.append(row)
    if skipped:
        logger.warning("skipped %d question(s) whose answer_type is not OPEN/CLOSED", skipped)
    medevalkit: dict[str, float | None] | None = None
    medevalkit_corrected: dict[str, float | None] | None = None
    medevalkit_info: dict[str, Any] = {}
    if dataset is not None:
        medevalkit, medevalkit_corrected, medevalkit_info, columns = score_medevalkit(
            scored_pairs, dataset, judge, judge_concurrency)
        for row, extra in zip(per_question, columns):
            row.update(extra)

    with_candidates = candidate_path is not None
    return VQAReport(
        original=_aggregate(original_open, original_closed, with_candidates),
        strict=_aggregate(strict_open, strict_closed, with_candidates),
        counts={
            "total": len(pairs),
            "open": len(original_open),
            "closed": len(original_closed),
            "skipped": skipped,
        },
        per_question=per_question,
        sources={
            "gt": str(gt_path),
            "pred": str(pred_path),
            "candidate": None if candidate_path is None else str(candidate_path),
        },
        medevalkit=medevalkit,
        medevalkit_corrected=medevalkit_corrected,
        medevalkit_info=medevalkit_info,
    )


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _format_value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report_conventions(report: VQAReport) -> dict[str, dict[str, float | None]]:
    """The metric sets of a report by convention name, in table order (MedEvalKit only if scored)."""
    conventions = {"original": report.original, "strict": report.strict}
    if report.medevalkit is not None and report.medevalkit_corrected is not None:
        conventions["medevalkit"] = report.medevalkit
        conventions["medevalkit_corrected"] = report.medevalkit_corrected
    return conventions


def _medevalkit_notes(report: VQAReport) -> list[str]:
    info = report.medevalkit_info
    if report.medevalkit is None:
        return [f"medevalkit: not scored (pass --dataset {'|'.join(mek.DATASETS)}: its open/closed split "
                "is per dataset)"]
    notes = [f"medevalkit ({info['dataset']}): open {info['open']}, closed {info['closed']} by its own rule; "
             "its precision/recall/f1 are MedEvalKit's swapped values (precision = F1, recall = precision, "
             "f1 = recall), medevalkit_corrected has each under its name"]
    if info["crashes"]:
        notes.append(f"medevalkit: {info['crashes']} open question(s) would make MedEvalKit raise (empty parsed "
                     f"answer), {_id_sample(info['crashed_ids'])}: ROUGE/precision/recall/F1 n/a")
    judge = info.get("judge")
    if judge:
        notes.append(f"medevalkit LLM judge {judge['model']}: {judge['requests']} request(s), "
                     f"{len(judge['failed_ids'])} failed (counted incorrect, as in MedEvalKit)")
    return notes


def format_report_table(report: VQAReport) -> str:
    """Plain-text table: one row per metric, the conventions side by side (n/a: undefined, -: not part
    of that convention), then notes on MedEvalKit's split, swapped names and crashes."""
    conventions = report_conventions(report)
    with_medevalkit = "medevalkit" in conventions
    header = ("Metric", *conventions, "run_eval.py name", *(("MedEvalKit name",) if with_medevalkit else ()))
    rows = []
    for key, (label, name) in METRIC_LABELS.items():
        if not any(key in metrics for metrics in conventions.values()):
            continue
        values = [_format_value(metrics[key]) if key in metrics else "-" for metrics in conventions.values()]
        rows.append((label, *values, name, *((MEDEVALKIT_NAMES.get(key, ""),) if with_medevalkit else ())))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    text_columns = {0, len(conventions) + 1, len(conventions) + 2}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i in text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    counts = report.counts
    summary = (
        f"questions: {counts['total']} (open {counts['open']}, closed {counts['closed']}, "
        f"skipped {counts['skipped']})"
    )
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([summary, line(header), rule, *(line(r) for r in rows), *_medevalkit_notes(report)])


def write_report(report: VQAReport, json_path: str | Path, csv_path: str | Path) -> None:
    """Write the summary JSON (metrics, counts, definitions) and the per-question CSV."""
    summary = {
        "sources": report.sources,
        "counts": report.counts,
        "original": report.original,
        "strict": report.strict,
        "original_names": {k: name for k, (_, name) in METRIC_LABELS.items() if name},
        "medevalkit": report.medevalkit,
        "medevalkit_corrected": report.medevalkit_corrected,
        "medevalkit_info": report.medevalkit_info,
        "medevalkit_names": MEDEVALKIT_NAMES,
        "medevalkit_quirks": mek.QUIRKS,
        "definitions": METRIC_DEFINITIONS,
    }
    Path(json_path).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_rows_csv(csv_path, report.per_question)


def write_rows_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Per-question rows as CSV; the columns are every key, in first-seen order (empty where a row lacks one)."""
    fieldnames: list[str] = []
    for row in rows:
        fieldnames.extend(key for key in row if key not in fieldnames)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `exgramed eval-vqa` (kept separate so the CLI can reuse it)."""
    parser = argparse.ArgumentParser(
        prog="exgramed eval-vqa",
        description="Score VQA answers with the original ExGra-Med/LLaVA-Med metrics, strict ones and "
                    "(with --dataset) MedEvalKit's.",
    )
    parser.add_argument(
        "--gt", required=True, help="VQA JSON (test_w_options_new.json) or swift rows"
    )
    parser.add_argument(
        "--pred", required=True, help="answers JSONL (question_id/text or id/response)"
    )
    parser.add_argument(
        "--candidate", default=None, help='candidate.json {"0": [...]}, enables open accuracy'
    )
    parser.add_argument(
        "--out-json", default=None, help="default: <pred without extension>.metrics.json"
    )
    parser.add_argument(
        "--out-csv", default=None, help="default: <pred without extension>.per_question.csv"
    )
    parser.add_argument(
        "--dataset", choices=mek.DATASETS, default=None,
        help="benchmark, for MedEvalKit's per-dataset open/closed split (vqa_rad, pathvqa: yes/no answers are "
             "closed; slake: answer_type); without it the medevalkit convention is not scored",
    )
    parser.add_argument(
        "--llm-judge-url", default=None,
        help="OpenAI-compatible server for MedEvalKit's optional LLM judge of open answers (needs --dataset)",
    )
    parser.add_argument("--llm-judge-model", default=mek.DEFAULT_JUDGE_MODEL,
                        help=f"judge model (default {mek.DEFAULT_JUDGE_MODEL}, MedEvalKit's eval.sh)")
    parser.add_argument("--llm-judge-concurrency", type=int, default=8, help="judge requests in flight")
    add_client_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: prints the table, writes JSON + CSV; returns 2 on input errors."""
    args = build_parser().parse_args(argv)
    pred_path = Path(args.pred)
    out_json = Path(args.out_json) if args.out_json else pred_path.with_suffix(".metrics.json")
    out_csv = Path(args.out_csv) if args.out_csv else pred_path.with_suffix(".per_question.csv")
    judge = None
    try:
        if args.llm_judge_url is not None:
            if args.dataset is None:
                raise ValueError("--llm-judge-url needs --dataset (the judge is part of the MedEvalKit convention)")
            judge = ChatClient(base_url=args.llm_judge_url, model=args.llm_judge_model,
                               api_key=api_key_from_env(args.api_key_env), timeout=args.timeout,
                               max_attempts=args.max_attempts, backoff_base=args.backoff)
        report = evaluate_vqa(args.gt, args.pred, args.candidate, dataset=args.dataset, judge=judge,
                              judge_concurrency=args.llm_judge_concurrency)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_report(report, out_json, out_csv)
    print(format_report_table(report))
    print(f"\nwrote {out_json} and {out_csv}")
    print_summary({"metrics": str(out_json), "per_question": str(out_csv), "counts": report.counts, "original": report.original})
    return 0


if __name__ == "__main__":
    sys.exit(main())
