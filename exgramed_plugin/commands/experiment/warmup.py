"""The language model's text-only warm-up: made once, shared by every block and cell.

The paper's models start from a pre-trained LLM (LLaVA-Med from Vicuna); a random tiny LM spends its
first hundreds of steps learning the conversation format and the vocabulary, which drowns what
pre-training with or without alignment adds. The warm-up teaches the format and the words without
any image and without any easy-vqa question: every row is a conversation in the ``exgra_med``
training format about colour and shape *words* whose answer is in the question text (naming a word
of a kind, copying the colour or shape a sentence names, saying whether a sentence names a word).
So it carries no image fact and no answer prior of the test questions: every colour, shape and
yes / no is an answer equally often. A test checks that no warm-up text holds an easy-vqa question.

:func:`warm_up_checkpoint` trains a checkpoint's language model on it in process (:mod:`.loop`) and
caches the result by its settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...common.jsonio import read_json, write_json
from .easy_vqa_data import COLORS, SHAPES

logger = logging.getLogger(__name__)
WARMUP_FILE = "warmup.json"
TURNS_PER_ROW = 4


def warmup_turns() -> list[tuple[str, str]]:
    """Every (question, answer) of the warm-up, each colour / shape / yes / no answering equally often."""
    turns: list[tuple[str, str]] = []
    for colour in COLORS:
        turns += [("name a colour.", colour)] * len(SHAPES)
    for shape in SHAPES:
        turns += [("name a shape.", shape)] * len(COLORS)
    for colour in COLORS:
        for shape in SHAPES:
            turns.append((f"the {shape} here is {colour}. which colour does the sentence name?", colour))
            turns.append((f"a {colour} {shape} is drawn. which shape does the sentence name?", shape))
            other_shape = SHAPES[(SHAPES.index(shape) + 1) % len(SHAPES)]
            other_colour = COLORS[(COLORS.index(colour) + 1) % len(COLORS)]
            turns.append((f"a {colour} {shape} is drawn. does the sentence name a {shape}?", "yes"))
            turns.append((f"a {colour} {shape} is drawn. does the sentence name a {other_shape}?", "no"))
            turns.append((f"a {colour} {shape} is drawn. does the sentence name the colour {colour}?", "yes"))
            turns.append((f"a {colour} {shape} is drawn. does the sentence name the colour {other_colour}?", "no"))
    return turns


def warmup_rows(num_rows: int, seed: int) -> list[dict[str, Any]]:
    """``num_rows`` text-only conversations of :data:`TURNS_PER_ROW` turns drawn from :func:`warmup_turns`."""
    turns = warmup_turns()
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_rows):
        picked = rng.choice(len(turns), size=TURNS_PER_ROW, replace=False).tolist()
        messages = []
        for turn in picked:
            question, answer = turns[turn]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"warmup-{index:05d}", "messages": messages, "images": []})
    return rows


@dataclass(frozen=True)
class WarmupSettings:
    """Everything the warm-up depends on besides the checkpoint (part of the cache key)."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 2e-3
    rows: int = 4000
    seed: int = 0


def _key(checkpoint: Path, settings: WarmupSettings) -> str:
    weights = hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()
    described = json.dumps({"weights": weights, **asdict(settings)}, sort_keys=True)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def warm_up_checkpoint(checkpoint: str | Path, out_dir: str | Path,
                       settings: WarmupSettings) -> tuple[Path, dict[str, Any]]:
    """Train the language model of ``checkpoint`` on the warm-up text (vision tower frozen; the
    projector gets no gradient from text-only rows); the result is a checkpoint in ``out_dir``,
    reused when its settings and starting weights match. Returns ``(checkpoint, report)``."""
    from .loop import Recipe, load_stage, tail_mean, train

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    report_path = out_dir / WARMUP_FILE
    key = _key(checkpoint, settings)
    if report_path.is_file() and read_json(report_path).get("key") == key:
        logger.info("warm-up: reusing %s", out_dir)
        return out_dir, read_json(report_path)
    shutil.rmtree(out_dir, ignore_errors=True)
    stage = load_stage(checkpoint, {"mga_alpha": 0}, seed=settings.seed)
    rows = warmup_rows(settings.rows, settings.seed)
    rng = np.random.default_rng(settings.seed)
    batches = [[rows[i] for i in rng.choice(len(rows), size=settings.batch_size, replace=False).tolist()]
               for _ in range(settings.steps)]
    log = train(stage, batches, Recipe(settings.learning_rate), seed=settings.seed)
    stage.model.save_pretrained(out_dir)
    stage.template.processor.save_pretrained(out_dir)
    report = {"key": key, "settings": asdict(settings), "first_loss": log[0]["loss"],
              "last_loss": tail_mean(log, "loss")}
    write_json(report_path, report, indent=1)
    logger.info("warm-up: %d steps, loss %.3f -> %.3f", settings.steps, report["first_loss"], report["last_loss"])
    return out_dir, report
