"""The demo's report: what the VQA fine-tuning changed, on the same test questions.

Why: a score on its own says little about a tiny random model; the same questions answered before and
after fine-tuning, beside the loss curves of both training runs, show that every stage ran and acted
on the model. "Before" is the stage-2 checkpoint, the model the VQA fine-tuning starts from, so the
difference is the fine-tuning's alone. Rendering and plots are ``exgramed report``'s.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common.jsonio import read_json
from ..eval.eval_vqa import VQAReport
from ..eval.report import VQA_KEYS, ImageCell, ReportDocument, find_logging_file, plot_series, read_logging

SCORE_LABELS = {"closed_accuracy": "closed accuracy", "open_recall": "open recall", "average": "average"}
EXPECTATION = ("Expect scores near chance or the answers' prior (a tiny random model trained for minutes on a few "
               "dozen images): the point is not accuracy.")
PROOF = ("What it proves: the pipeline runs end to end: data -> swift sft with MGA -> VQA fine-tuning -> "
         "swift infer -> scores.")


@dataclass(frozen=True)
class DemoReportFiles:
    markdown: Path
    html: Path
    plots: tuple[Path, ...]


def score_rows(before: VQAReport, after: VQAReport) -> list[list[object]]:
    """One row per (model, metric set): closed accuracy, open recall, average."""
    return [[model, metric_set, *(getattr(report, metric_set).get(k) for k in VQA_KEYS)]
            for metric_set in ("original", "strict")
            for model, report in (("before", before), ("after", after))]


def format_scores(before: VQAReport, after: VQAReport) -> str:
    """The before/after scores as a plain-text table for the terminal."""
    header = ["model", "metrics", *SCORE_LABELS.values()]
    rows = [[str(model), str(metric_set), *("n/a" if v is None else f"{v:.2f}" for v in values)]
            for model, metric_set, *values in score_rows(before, after)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in [header, *rows])


def _images_by_id(vqa_test: Path, out_dir: Path) -> dict[str, str]:
    """Question id -> its image, relative to the report's folder (images are relative to their JSON file)."""
    return {str(row["id"]): os.path.relpath(vqa_test.parent / row["image"], out_dir)
            for row in read_json(vqa_test) if row.get("image")}


def _loss_table(name: str, train: dict[str, list[tuple[int, float]]], keys: Sequence[str]) -> list[list[object]]:
    return [[name, key, len(train[key]), train[key][0][1], train[key][-1][1]] for key in keys if train.get(key)]


def write_demo_report(out_dir: Path, *, stage2_dir: Path, vqa_dir: Path, vqa_test: Path, before: VQAReport,
                      after: VQAReport) -> DemoReportFiles:
    """Write ``report.md``, ``report.html`` and the loss plots (PNG) into ``out_dir``."""
    stage2 = read_logging(find_logging_file(stage2_dir)).train
    vqa = read_logging(find_logging_file(vqa_dir)).train
    doc = ReportDocument()
    doc.heading("exgramed demo: before and after VQA fine-tuning", 1)
    doc.para(f"A tiny random exgra_med model, trained with swift sft: stage 2 with multi-graph alignment (MGA), "
             f"then VQA fine-tuning; {after.counts['total']} test questions answered with swift infer by the "
             "stage-2 checkpoint (before) and by the fine-tuned one (after), with the same prompt.")

    doc.heading("Training losses")
    doc.table(["stage", "series", "points", "first", "last"],
              _loss_table("stage 2 (MGA)", stage2, ("loss", "lm_loss", "align_loss"))
              + _loss_table("VQA fine-tuning", vqa, ("loss",)))
    plots = [plot for plot in (
        plot_series(stage2, ("lm_loss", "align_loss"), "stage 2 with MGA", "loss", out_dir / "stage2_losses.png"),
        plot_series(vqa, ("loss",), "VQA fine-tuning", "loss", out_dir / "vqa_loss.png")) if plot]
    for plot in plots:
        doc.image(plot, plot.stem.replace("_", " "))

    doc.heading("Scores before and after VQA fine-tuning")
    doc.table(["model", "metrics", *SCORE_LABELS.values()], score_rows(before, after))
    doc.para("original = the run_eval.py metrics with their quirks; strict = corrected (see `exgramed eval-vqa`). "
             + EXPECTATION)

    doc.heading("Per question")
    images = _images_by_id(vqa_test, out_dir)
    answers_before = {row["id"]: row["prediction"] for row in before.per_question}
    doc.table(["image", "type", "question", "reference", "answer before", "answer after"],
              [[ImageCell(images[row["id"]], row["id"]) if row["id"] in images else "", row["answer_type"],
                row["question"], row["gt"], answers_before.get(row["id"]), row["prediction"]]
               for row in after.per_question])

    files = DemoReportFiles(out_dir / "report.md", out_dir / "report.html", tuple(plots))
    files.markdown.write_text(doc.markdown(), encoding="utf-8")
    files.html.write_text(doc.html("exgramed demo report"), encoding="utf-8")
    return files
