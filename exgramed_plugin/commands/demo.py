"""The CPU demo: tiny checkpoint → demo data → ``swift sft`` (stage 2 with MGA, then VQA fine-tuning)
→ ``swift infer`` before and after the fine-tuning → VQA scores and a report.

Training and inference run through swift's own launcher in subprocesses, as a user would type them.
The launcher is started by this interpreter (``python -m swift.cli.main``, what the ``swift`` script
runs), so an installed wheel's environment is used even when no ``swift`` is on PATH. The recipes ship
in the package (``exgramed_plugin/recipes``), so the demo runs from any folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.demo_data import make_demo_data
from ..common.jsonio import read_json, write_json
from ..tiny_checkpoints.exgra_med import make_tiny_checkpoint
from .demo_report import EXPECTATION, PROOF, format_scores, write_demo_report
from .demo_stages import LineProgress, Stages, TrainingProgress
from .paths import RECIPES_DIR, REGISTER_FILE
from ..eval.eval_vqa import VQAReport, evaluate_vqa, write_report
from ..eval.report import find_logging_file, read_logging

logger = logging.getLogger(__name__)
DEMO_RECIPE = RECIPES_DIR / "demo_cpu.yaml"
DEMO_VQA_RECIPE = RECIPES_DIR / "demo_cpu_vqa.yaml"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
STAGE_COUNT = 7


@dataclass(frozen=True)
class DemoResult:
    checkpoint: Path
    data_dir: Path
    stage2_checkpoint: Path
    trained_checkpoint: Path
    predictions_before: Path
    predictions: Path
    metrics_before_json: Path
    metrics_json: Path
    per_question_csv: Path
    report_html: Path
    report_md: Path
    logs_dir: Path


def swift_command(args: Sequence[str]) -> list[str]:
    """``swift <args>`` started by the running interpreter (the environment this package is installed in)."""
    return [sys.executable, "-m", "swift.cli.main", *args]


def last_checkpoint(train_dir: Path) -> Path:
    checkpoints = sorted(train_dir.glob("v*-*/checkpoint-*"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoint written under {train_dir}")
    return checkpoints[-1]


def _result(message: str, *args: object) -> None:
    logger.info("      " + message, *args)


def _train(stages: Stages, title: str, log_name: str, recipe: Path, model: Path, dataset: Path, output_dir: Path,
           max_steps: int | None, keys: tuple[str, ...], cwd: Path) -> Path:
    """``swift sft <recipe>`` with the demo's paths; reports the losses' first and last values.

    A ``max_steps`` shorter than the recipe's logging interval logs at its last step too, so the loss
    curves of a short run have a first and a last point."""
    shutil.rmtree(output_dir, ignore_errors=True)
    recipe_args = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    steps = [] if max_steps is None else ["--max_steps", str(max_steps), "--save_steps", str(max_steps),
                                          "--logging_steps", str(min(int(recipe_args["logging_steps"]), max_steps))]
    command = swift_command(["sft", str(recipe), "--custom_register_path", str(REGISTER_FILE), "--model", str(model),
                             "--dataset", str(dataset), "--output_dir", str(output_dir), *steps])
    planned = max_steps or int(recipe_args["max_steps"])
    log = stages.run(title, command, log_name=log_name, progress=TrainingProgress(output_dir, planned, keys),
                     cwd=cwd, env={**os.environ, **OFFLINE_ENV})
    train = read_logging(find_logging_file(output_dir)).train
    losses = ", ".join(f"{k} {train[k][0][1]:.4f} -> {train[k][-1][1]:.4f}" for k in keys if train.get(k))
    checkpoint = last_checkpoint(output_dir)
    _result("%s; checkpoint %s (log %s)", losses or "no loss logged", checkpoint, log)
    return checkpoint


def _predict(stages: Stages, title: str, log_name: str, checkpoint: Path, vqa_test: Path, predictions: Path,
             prompt_style: str, max_new_tokens: int, cwd: Path) -> Path:
    """``swift infer`` on the demo test split, written in batches so the bar follows it; returns the log."""
    predictions.unlink(missing_ok=True)
    command = swift_command(["infer", "--model", str(checkpoint), "--model_kwargs",
                             json.dumps({"exgramed_prompt_style": prompt_style}), "--val_dataset", str(vqa_test),
                             "--result_path", str(predictions), "--max_new_tokens", str(max_new_tokens),
                             "--temperature", "0", "--max_batch_size", "8", "--write_batch_size", "8"])
    return stages.run(title, command, log_name=log_name, progress=LineProgress(predictions, len(read_json(vqa_test))),
                      cwd=cwd, env={**os.environ, **OFFLINE_ENV})


def _scores(report: VQAReport) -> str:
    values = {k: "n/a" if v is None else f"{v:.2f}" for k, v in report.original.items()}
    return (f"closed accuracy {values['closed_accuracy']}, open recall {values['open_recall']}, average "
            f"{values['average']} on {report.counts['total']} questions, original metrics")


def run_demo(out_dir: str | os.PathLike, *, max_steps: int | None = None, max_new_tokens: int = 16,
             prompt_style: str = "v0", verbose: bool = False) -> DemoResult:
    """Build, train (stage 2 with MGA, then VQA fine-tuning), predict before and after the fine-tuning,
    score and report. Raises :class:`~exgramed_plugin.commands.demo_stages.StageFailed` when a command fails.

    The demo predicts with the training-format prompt (``prompt_style="v0"``): a tiny model trained
    for a minute never sees the original ``simple`` evaluation prompt and answers it with an empty
    string, which would hide whether training changed anything. ``"simple"`` is the faithful choice.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = Stages(out_dir / "logs", STAGE_COUNT, verbose=verbose)

    with stages.in_process("tiny random exgra_med checkpoint", log_name="tiny") as log:
        checkpoint = make_tiny_checkpoint(out_dir / "tiny-exgra-med")
    _result("%s (log %s)", checkpoint, log)
    with stages.in_process("demo data from real medical images shipped in PyPI packages", log_name="data") as log:
        data = make_demo_data(out_dir / "data")
    _result("%d alignment rows, %d VQA train rows, %d test questions in %s (log %s)",
            len(read_json(data.alignment_train)), len(read_json(data.vqa_train)), len(read_json(data.vqa_test)),
            data.root, log)

    stage2_dir, vqa_dir = out_dir / "stage2", out_dir / "vqa"
    stage2 = _train(stages, f"swift sft {DEMO_RECIPE.name}: stage 2 with MGA", "stage2", DEMO_RECIPE, checkpoint,
                    data.alignment_train, stage2_dir, max_steps, ("loss", "lm_loss", "align_loss"), out_dir)
    trained = _train(stages, f"swift sft {DEMO_VQA_RECIPE.name}: VQA fine-tuning", "vqa", DEMO_VQA_RECIPE, stage2,
                     data.vqa_train, vqa_dir, max_steps, ("loss",), out_dir)

    predictions_before = out_dir / "predictions_before.jsonl"
    log = _predict(stages, "swift infer + scores before VQA fine-tuning (stage-2 checkpoint)", "infer_before",
                   stage2, data.vqa_test, predictions_before, prompt_style, max_new_tokens, out_dir)
    before = evaluate_vqa(data.vqa_test, predictions_before, data.candidates)
    metrics_before_json = out_dir / "metrics_before.json"
    write_report(before, metrics_before_json, out_dir / "per_question_before.csv")
    _result("before: %s (log %s)", _scores(before), log)
    predictions = out_dir / "predictions.jsonl"
    log = _predict(stages, f"swift infer after VQA fine-tuning (prompt style {prompt_style})", "infer", trained,
                   data.vqa_test, predictions, prompt_style, max_new_tokens, out_dir)
    _result("answers in %s (log %s)", predictions, log)

    with stages.in_process("scores after VQA fine-tuning and report", log_name="report") as log:
        after = evaluate_vqa(data.vqa_test, predictions, data.candidates)
        metrics_json, per_question_csv = out_dir / "metrics.json", out_dir / "per_question.csv"
        write_report(after, metrics_json, per_question_csv)
        report = write_demo_report(out_dir, stage2_dir=stage2_dir, vqa_dir=vqa_dir, vqa_test=data.vqa_test,
                                   before=before, after=after)
    _result("after: %s; report %s (and .md)", _scores(after), report.html)
    for line in format_scores(before, after).split("\n"):
        logger.info("%s", line)
    logger.info("%s", EXPECTATION)
    logger.info("%s", PROOF)
    result = DemoResult(checkpoint, data.root, stage2, trained, predictions_before, predictions, metrics_before_json,
                        metrics_json, per_question_csv, report.html, report.markdown, stages.logs_dir)
    write_json(out_dir / "demo_result.json", {k: str(v) for k, v in result.__dict__.items()})
    return result
