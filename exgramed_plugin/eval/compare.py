"""`exgramed compare`: several models' answers to the same questions in one table, with paired bootstrap CIs.

Why: "model A beats model B by 1.5 points" on a few hundred VQA-RAD questions may be noise. Every
answers file is scored with ``eval_vqa.evaluate_vqa`` (original, strict and, with ``--dataset``,
MedEvalKit's conventions), or, when the questions file is a multiple-choice ``questions.jsonl`` written
by ``exgramed eval`` (rows with ``mc_question``), with ``multiple_choice.score_choices`` (MedEvalKit and
corrected, one "all" row each); then 95 % percentile-bootstrap intervals are drawn from one seeded
``numpy.random.Generator``: each resample draws questions with replacement and is applied to every
model alike (paired), so the intervals of the differences to the first model are narrow where the
models fail on the same questions.

A separate subcommand rather than ``exgramed report --compare``: ``report`` is about one swift
training run and requires ``--run``; a comparison needs the question file and several answer files
instead. The Markdown/HTML rendering is the report's (``report.ReportDocument``), so both look alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exgramed_plugin.common.jsonio import print_summary, read_json_or_jsonl, write_json
from exgramed_plugin.metrics import medevalkit_metrics as mek
from exgramed_plugin.metrics import multiple_choice as choice
from exgramed_plugin.eval.eval_vqa import (
    VQAReport,
    evaluate_vqa,
    id_pairing_problems,
    load_answers,
    load_vqa_questions,
)
from exgramed_plugin.eval.report import ReportDocument

ANSWER_TYPES: tuple[str, ...] = ("closed", "open", "all")
DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class ConventionColumns:
    """Where a convention's per-question score, its question type and its "all" rule are found.

    ``closed`` / ``open`` are per_question columns of eval-vqa; ``kind`` is None when the type is the
    file's answer_type (original, strict) or the column holding MedEvalKit's own split; ``all_rule``:
    "average" = (open mean + closed mean) / 2 (the papers' number for run_eval.py), "pooled" = the
    mean over all questions (MedEvalKit's accuracy).
    """

    closed: str
    open: str
    kind: str | None
    all_rule: str
    description: str


CONVENTIONS: dict[str, ConventionColumns] = {
    "original": ConventionColumns("original_closed_hit", "original_recall", None, "average",
                                  "run_eval.py: closed = yes/no accuracy, open = recall, all = (open + closed)/2"),
    "strict": ConventionColumns("strict_closed_hit", "strict_recall", None, "average",
                                "strict: closed = answer begins with gt, open = recall on word sets, all = "
                                "(open + closed)/2"),
    "medevalkit": ConventionColumns("medevalkit_correct", "medevalkit_correct", "medevalkit_kind", "pooled",
                                    "MedEvalKit: closed = judge rule, open = exact match, all = right / all "
                                    "(its own open/closed split; no LLM judge)"),
    "medevalkit_corrected": ConventionColumns(
        "medevalkit_corrected_correct", "medevalkit_corrected_correct", "medevalkit_corrected_kind", "pooled",
        "MedEvalKit with its bugs fixed, same columns"),
}


@dataclass(frozen=True)
class ScoreArrays:
    """One model under one convention: per-question score and closed/open masks, in question order."""

    values: np.ndarray
    closed: np.ndarray
    open: np.ndarray
    all_rule: str


def _question_type(row: dict[str, Any], columns: ConventionColumns) -> str:
    return str(row[columns.kind]) if columns.kind else str(row["answer_type"]).lower()


def score_arrays(report: VQAReport, convention: str) -> ScoreArrays:
    """The per-question scores of ``convention`` as arrays (0-1 per question)."""
    columns = CONVENTIONS[convention]
    kinds = [_question_type(row, columns) for row in report.per_question]
    values = [float(row[columns.closed] if kind == "closed" else row[columns.open])
              for row, kind in zip(report.per_question, kinds)]
    return ScoreArrays(np.asarray(values, dtype=float), np.asarray([k == "closed" for k in kinds]),
                       np.asarray([k == "open" for k in kinds]), columns.all_rule)


def type_mask(scores: ScoreArrays, answer_type: str) -> np.ndarray:
    """The questions of ``answer_type`` ("all": every question) under this convention."""
    if answer_type == "closed":
        return scores.closed
    if answer_type == "open":
        return scores.open
    return np.ones_like(scores.closed)


def _masked_mean(values: np.ndarray, mask: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """×100 mean of ``values`` over the masked questions of each row of ``draws`` (NaN where none)."""
    weights = mask[draws].astype(float)
    counts = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (values[draws] * weights).sum(axis=-1) / counts * 100, np.nan)


def statistic(scores: ScoreArrays, answer_type: str, draws: np.ndarray) -> np.ndarray:
    """The convention's number for ``answer_type`` on each resample (rows of question indices)."""
    if answer_type == "all" and scores.all_rule == "average":
        return (_masked_mean(scores.values, scores.open, draws) + _masked_mean(scores.values, scores.closed,
                                                                               draws)) / 2
    return _masked_mean(scores.values, type_mask(scores, answer_type), draws)


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _interval(point: float, samples: np.ndarray) -> dict[str, float | None]:
    tail = (1 - CONFIDENCE) / 2 * 100
    finite = samples[~np.isnan(samples)]
    low, high = np.percentile(finite, [tail, 100 - tail]) if finite.size else (np.nan, np.nan)
    return {"value": _none_if_nan(point), "low": _none_if_nan(low), "high": _none_if_nan(high)}


def check_same_questions(question_ids: Sequence[str], pred_paths: Sequence[str | Path], gt_path: str | Path) -> None:
    """Every answers file must answer exactly the questions of ``gt_path``; else an error naming the
    file and its missing / extra / duplicated ids (a few of them and their count)."""
    for path in pred_paths:
        answer_ids = [answer.id for answer in load_answers(path)]
        problems = id_pairing_problems(question_ids, answer_ids, answer="answer",
                                       missing="no answer for", extra="answers to questions not in the gt for")
        if problems:
            raise ValueError(f"{path}: answers another question set than {gt_path}: " + "; ".join(problems))


def compare_models(gt_path: str | Path, pred_paths: Sequence[str | Path], labels: Sequence[str] | None = None, *,
                   dataset: str | None = None, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Score every answers file and bootstrap the conventions' numbers; returns the comparison dict.

    ``results[convention][answer_type][label]`` and ``differences[...][label]`` (label minus the
    first model, same resamples) hold ``value``, ``low``, ``high`` (×100; None where the type has no
    question).
    """
    if len(pred_paths) < 1:
        raise ValueError("compare needs at least one answers file")
    labels = list(labels) if labels else [Path(p).name.split(".")[0] for p in pred_paths]
    if len(labels) != len(pred_paths):
        raise ValueError(f"{len(labels)} label(s) for {len(pred_paths)} answers file(s)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels} (use --labels)")
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    rows = [row for _, row in read_json_or_jsonl(gt_path)]
    if rows and all(choice.ROW_FIELD in row for row in rows):
        check_same_questions([str(row["id"]) for row in rows], pred_paths, gt_path)
        by_convention, benchmark = choice_score_arrays(rows, pred_paths)
        answer_types: tuple[str, ...] = ("all",)
        descriptions = {c: CHOICE_CONVENTIONS[c] for c in by_convention}
        dataset = dataset or benchmark
    else:
        questions = load_vqa_questions(gt_path)
        check_same_questions([q.id for q in questions], pred_paths, gt_path)
        reports = [evaluate_vqa(gt_path, path, dataset=dataset) for path in pred_paths]
        conventions = [c for c in CONVENTIONS if dataset is not None or not c.startswith("medevalkit")]
        by_convention = {c: [score_arrays(report, c) for report in reports] for c in conventions}
        answer_types = ANSWER_TYPES
        descriptions = {c: CONVENTIONS[c].description for c in conventions}
    n_questions = len(next(iter(by_convention.values()))[0].values) if by_convention else 0
    if n_questions == 0:
        raise ValueError(f"{gt_path}: no question to compare on")
    draws = np.random.default_rng(seed).integers(0, n_questions, size=(resamples, n_questions))
    everything = np.arange(n_questions)
    results: dict[str, Any] = {}
    differences: dict[str, Any] = {}
    for convention, arrays in by_convention.items():
        results[convention], differences[convention] = {}, {}
        for answer_type in answer_types:
            points = [statistic(a, answer_type, everything) for a in arrays]
            samples = [statistic(a, answer_type, draws) for a in arrays]
            results[convention][answer_type] = {
                label: {**_interval(point, sample), "n": int(type_mask(a, answer_type).sum())}
                for label, a, point, sample in zip(labels, arrays, points, samples)}
            differences[convention][answer_type] = {
                label: _interval(point - points[0], sample - samples[0])
                for label, point, sample in zip(labels[1:], points[1:], samples[1:])}
    return {
        "gt": str(gt_path), "dataset": dataset, "questions": n_questions, "resamples": resamples, "seed": seed,
        "confidence": CONFIDENCE,
        "models": [{"label": label, "path": str(path)} for label, path in zip(labels, pred_paths)],
        "conventions": descriptions, "answer_types": list(answer_types),
        "results": results, "differences": differences,
    }


CHOICE_CONVENTIONS = {
    "medevalkit": "MedEvalKit's multiple-choice judge @ 9b12e3b, quirks included: all = right / all",
    "medevalkit_corrected": "the same judge with its bugs fixed (docs/evaluation.md)",
}


def choice_score_arrays(rows: Sequence[dict[str, Any]], pred_paths: Sequence[str | Path]
                        ) -> tuple[dict[str, list[ScoreArrays]], str]:
    """Per convention, each answers file's 0/1 verdicts on ``exgramed eval``'s multiple-choice questions,
    and the benchmark; a convention with a question MedEvalKit cannot score (MMMU's test split) is left out."""
    infos = [json.loads(row[choice.ROW_FIELD]) for row in rows]
    benchmarks = {info["benchmark"] for info in infos}
    if len(benchmarks) != 1:
        raise ValueError(f"questions of several benchmarks {sorted(benchmarks)}: compare one benchmark at a time")
    benchmark = benchmarks.pop()
    split = infos[0]["split"]
    reports = [choice.score_choices(benchmark, split, rows, {a.id: a.text for a in load_answers(path)})
               for path in pred_paths]
    none = np.zeros(len(rows), dtype=bool)
    arrays: dict[str, list[ScoreArrays]] = {}
    for convention in CHOICE_CONVENTIONS:
        verdicts = [[row[f"{convention}_correct"] for row in report.per_question] for report in reports]
        if any(v is None for values in verdicts for v in values):
            continue
        arrays[convention] = [ScoreArrays(np.asarray(values, dtype=float), none, none, "pooled")
                              for values in verdicts]
    return arrays, benchmark


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _cell(entry: dict[str, Any]) -> str:
    if entry["value"] is None:
        return "n/a"
    if entry["low"] is None:
        return f"{entry['value']:.2f}"
    return f"{entry['value']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def plot_comparison(comparison: dict[str, Any], out: Path) -> Path:
    """One panel per convention: closed / open / all bars per model, 95 % intervals as error bars."""
    from matplotlib.figure import Figure

    conventions = list(comparison["results"])
    labels = [m["label"] for m in comparison["models"]]
    figure = Figure(figsize=(4.2 * len(conventions), 4), dpi=100, layout="constrained")
    width = 0.8 / len(labels)
    for panel, convention in enumerate(conventions):
        axes = figure.add_subplot(1, len(conventions), panel + 1)
        answer_types = comparison.get("answer_types", ANSWER_TYPES)
        for index, label in enumerate(labels):
            entries = [comparison["results"][convention][t][label] for t in answer_types]
            values = [e["value"] if e["value"] is not None else 0.0 for e in entries]
            errors = [[v - (e["low"] if e["low"] is not None else v) for v, e in zip(values, entries)],
                      [(e["high"] if e["high"] is not None else v) - v for v, e in zip(values, entries)]]
            xs = [i + (index - (len(labels) - 1) / 2) * width for i in range(len(answer_types))]
            axes.bar(xs, values, width=width, yerr=errors, capsize=3, label=label)
        axes.set_xticks(range(len(answer_types)), list(answer_types))
        axes.set_ylim(0, 105)
        axes.set_title(convention)
        axes.set_ylabel("%")
        axes.grid(axis="y", alpha=0.3)
        if panel == 0:
            axes.legend(fontsize=8)
    figure.savefig(out)
    return out


@dataclass(frozen=True)
class CompareFiles:
    markdown: Path
    html: Path
    json: Path
    plot: Path


def write_comparison(comparison: dict[str, Any], out_dir: str | Path) -> CompareFiles:
    """``compare.md``, ``compare.html``, ``compare.json`` and ``compare.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = CompareFiles(out / "compare.md", out / "compare.html", out / "compare.json", out / "compare.png")
    labels = [m["label"] for m in comparison["models"]]
    doc = ReportDocument()
    doc.heading("Model comparison", 1)
    doc.para(f"{comparison['questions']} questions of {comparison['gt']}"
             + (f" (benchmark {comparison['dataset']})" if comparison["dataset"] else "")
             + f". Values ×100 with {comparison['confidence']:.0%} percentile-bootstrap intervals: "
             f"{comparison['resamples']} resamples of the questions, seed {comparison['seed']}, the same "
             "resamples for every model.")
    answer_types = comparison.get("answer_types", ANSWER_TYPES)
    rows = [[convention, answer_type, *(_cell(by_type[answer_type][label]) for label in labels)]
            for convention, by_type in comparison["results"].items() for answer_type in answer_types]
    doc.table(["convention", "answer type", *labels], rows)
    if len(labels) > 1:
        doc.heading(f"Difference to {labels[0]} (paired)")
        rows = [[convention, answer_type, *(_cell(by_type[answer_type][label]) for label in labels[1:])]
                for convention, by_type in comparison["differences"].items() for answer_type in answer_types]
        doc.table(["convention", "answer type", *labels[1:]], rows)
    plot_comparison(comparison, files.plot)
    doc.image(files.plot, "accuracy by convention and answer type, with 95 % intervals")
    doc.heading("Conventions")
    for convention, description in comparison["conventions"].items():
        doc.para(f"{convention}: {description}")
    doc.para("Models: " + "; ".join(f"{m['label']} = {m['path']}" for m in comparison["models"]))
    files.markdown.write_text(doc.markdown(), encoding="utf-8")
    files.html.write_text(doc.html("exgramed model comparison"), encoding="utf-8")
    write_json(files.json, comparison)
    return files


def main(argv: list[str] | None = None) -> int:
    """Entry point: writes the comparison files, prints their paths; returns 2 on input errors."""
    parser = argparse.ArgumentParser(
        prog="exgramed compare",
        description="Compare several models' answers to the same questions (a VQA file, or a multiple-choice "
                    "questions.jsonl of exgramed eval): one table per convention and answer type with paired 95 % "
                    "bootstrap intervals, and a bar chart.")
    parser.add_argument("pred", nargs="+", help="answers JSONL files (question_id/text or id/response), one per model")
    parser.add_argument("--gt", required=True, help="the VQA questions (test_w_options_new.json or swift rows), or "
                                                    "<exgramed eval out>/<benchmark>/questions.jsonl")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--labels", nargs="+", default=None, help="model names (default: the file names)")
    parser.add_argument("--dataset", choices=mek.DATASETS, default=None,
                        help="VQA files: adds the MedEvalKit conventions (its open/closed split is per dataset); "
                             "multiple-choice questions need none")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default 0)")
    args = parser.parse_args(argv)
    try:
        comparison = compare_models(args.gt, args.pred, args.labels, dataset=args.dataset,
                                    resamples=args.resamples, seed=args.seed)
        files = write_comparison(comparison, args.out)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {files.markdown}, {files.html}, {files.json} and {files.plot}")
    print_summary({"markdown": str(files.markdown), "html": str(files.html), "json": str(files.json),
                   "plot": str(files.plot)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
