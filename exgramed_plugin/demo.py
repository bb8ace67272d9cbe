"""The CPU demo: tiny checkpoint → demo data → ``swift sft`` → ``swift infer`` → VQA scores.

Everything runs through swift's own launchers in subprocesses, exactly as a user would type them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .data.demo_data import make_demo_data
from .data.jsonio import read_jsonl, write_json
from .data.tiny import make_tiny_checkpoint
from .eval.eval_vqa import evaluate_vqa, format_report_table, write_report

logger = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent
REGISTER_FILE = PACKAGE_DIR / "register.py"
DEMO_RECIPE = PACKAGE_DIR.parent / "recipes" / "demo_cpu.yaml"
DEMO_VQA_RECIPE = PACKAGE_DIR.parent / "recipes" / "demo_cpu_vqa.yaml"
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class DemoResult:
    checkpoint: Path
    data_dir: Path
    stage2_checkpoint: Path
    trained_checkpoint: Path
    predictions: Path
    metrics_json: Path
    per_question_csv: Path


def swift_executable() -> str:
    """The ``swift`` launcher next to the running interpreter (the one this package is installed in)."""
    candidate = Path(sys.executable).parent / "swift"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("swift")
    if found is None:
        raise FileNotFoundError("the `swift` command (ms-swift) is not installed in this environment")
    return found


def run_swift(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    """Run ``swift <args>``; its progress bars go straight to the terminal."""
    command = [swift_executable(), *args]
    logger.info("$ %s", " ".join(command))
    env = {**os.environ, **OFFLINE_ENV, **(env or {})}
    completed = subprocess.run(command, cwd=cwd, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"`swift {args[0]}` failed with exit code {completed.returncode}")


def last_checkpoint(train_dir: Path) -> Path:
    checkpoints = sorted(train_dir.glob("v*-*/checkpoint-*"), key=lambda p: p.stat().st_mtime)
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoint written under {train_dir}")
    return checkpoints[-1]


def _train(recipe: Path, fallback_args: list[str], overrides: list[str], cwd: Path) -> None:
    args = ["sft", str(recipe)] if recipe.is_file() else ["sft", *fallback_args]
    run_swift(args + ["--custom_register_path", str(REGISTER_FILE), *overrides], cwd=cwd)


def _log_losses(train_dir: Path, keys: tuple[str, ...]) -> None:
    logs = sorted(train_dir.glob("v*-*/logging.jsonl"))
    if not logs:
        return
    for _, row in read_jsonl(logs[-1]):
        if "loss" in row and "global_step/max_steps" in row:
            logger.info("  step %-7s %s", row["global_step/max_steps"],
                        "  ".join(f"{k} {row[k]:.4f}" for k in keys if k in row))


_CPU_ARGS = ["--tuner_type", "full", "--torch_dtype", "float32", "--learning_rate", "0.002", "--dataloader_num_workers",
             "0", "--check_model", "false", "--strict", "true", "--model_type", "exgra_med", "--template", "exgra_med",
             "--save_only_model", "true", "--max_length", "512"]


def run_demo(out_dir: str | os.PathLike, *, max_steps: int | None = None, max_new_tokens: int = 16,
             prompt_style: str = "v0") -> DemoResult:
    """Build, train (stage 2 with MGA, then VQA fine-tuning), predict and score.

    The demo predicts with the training-format prompt (``prompt_style="v0"``): a tiny model trained
    for a minute never sees the original ``simple`` evaluation prompt and answers it with an empty
    string, which would hide whether training changed anything. ``"simple"`` is the faithful choice.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = 6
    logger.info("[1/%d] tiny random exgra_med checkpoint", stages)
    checkpoint = make_tiny_checkpoint(out_dir / "tiny-exgra-med")
    logger.info("[2/%d] demo data from real medical images shipped in PyPI packages", stages)
    data = make_demo_data(out_dir / "data")
    steps = [] if max_steps is None else ["--max_steps", str(max_steps), "--save_steps", str(max_steps)]

    logger.info("[3/%d] swift sft: stage 2 with multi-graph alignment (recipe %s)", stages, DEMO_RECIPE.name)
    stage2_dir = out_dir / "stage2"
    shutil.rmtree(stage2_dir, ignore_errors=True)
    _train(DEMO_RECIPE, [*_CPU_ARGS, "--loss_type", "exgra_mga", "--max_steps", "30", "--per_device_train_batch_size",
                         "4", "--logging_steps", "5"],
           ["--model", str(checkpoint), "--dataset", str(data.alignment_train), "--output_dir", str(stage2_dir), *steps],
           out_dir)
    _log_losses(stage2_dir, ("loss", "lm_loss", "align_loss", "matching_accuracy"))
    stage2 = last_checkpoint(stage2_dir)

    logger.info("[4/%d] swift sft: VQA fine-tuning (recipe %s)", stages, DEMO_VQA_RECIPE.name)
    vqa_dir = out_dir / "vqa"
    shutil.rmtree(vqa_dir, ignore_errors=True)
    _train(DEMO_VQA_RECIPE, [*_CPU_ARGS, "--max_steps", "120", "--per_device_train_batch_size", "8",
                             "--logging_steps", "10"],
           ["--model", str(stage2), "--dataset", str(data.vqa_train), "--output_dir", str(vqa_dir), *steps], out_dir)
    _log_losses(vqa_dir, ("loss",))
    trained = last_checkpoint(vqa_dir)

    logger.info("[5/%d] swift infer on the demo test split (prompt style %s)", stages, prompt_style)
    predictions = out_dir / "predictions.jsonl"
    predictions.unlink(missing_ok=True)
    run_swift(["infer", "--model", str(trained), "--model_kwargs", json.dumps({"exgramed_prompt_style": prompt_style}),
               "--val_dataset", str(data.vqa_test), "--result_path", str(predictions), "--max_new_tokens",
               str(max_new_tokens), "--temperature", "0", "--max_batch_size", "8"], cwd=out_dir)
    logger.info("[6/%d] VQA scores (original and strict metrics)", stages)
    report = evaluate_vqa(data.vqa_test, predictions, data.candidates)
    metrics_json, per_question_csv = out_dir / "metrics.json", out_dir / "per_question.csv"
    write_report(report, metrics_json, per_question_csv)
    logger.info("\n%s", format_report_table(report))
    result = DemoResult(checkpoint, data.root, stage2, trained, predictions, metrics_json, per_question_csv)
    write_json(out_dir / "demo_result.json", {k: str(v) for k, v in result.__dict__.items()})
    return result
