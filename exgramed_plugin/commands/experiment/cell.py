"""One cell of the grid, in this process: pre-training (the arm), fine-tuning (the same for every
cell), then the endpoints.

1. stage 2 on the block's pre-training rows of the fraction, in the block's batches: the arm's loss
   (:func:`.protocol.arm_settings`; ``lm-long`` puts each row's extended conversation next to its
   short one in the step);
2. the zero-shot endpoint: likelihood-ranked accuracy on the open test items right after stage 2;
3. fine-tuning: plain LM loss on the downstream rows in the block's batches, from the stage-2
   weights (the alignment module dropped, as ``swift sft`` loading a stage-2 checkpoint without
   MGA would);
4. the endpoints: likelihood-ranked accuracy on the open items (primary) and on the closed items,
   generated answers scored by ``eval-vqa`` (original metrics), and the image dependence of the
   generated answers.

``python -m exgramed_plugin.commands.experiment.cell SPEC RESULT`` runs :func:`run_cell` on a spec written
by the command; the command starts one such process per cell (its own settings, its own log).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...common.jsonio import read_json, write_json
from .protocol import Budget, arm_settings

# the spec's fields that name files the cell reads
INPUT_FIELDS = ("checkpoint", "pretrain", "pretrain_batches", "downstream", "finetune_batches", "test_open",
                "test_closed", "candidates")

logger = logging.getLogger(__name__)


@dataclass
class CellSpec:
    """Everything a cell reads; written as JSON for the worker process."""

    block: int
    fraction: float
    arm: str
    checkpoint: str
    pretrain: str
    pretrain_batches: str
    downstream: str
    finetune_batches: str
    test_open: str
    test_closed: str
    candidates: str
    out_dir: str
    budget: dict[str, Any] = field(default_factory=dict)


def long_conversation(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its extended answers in place of its answers (``lm-long``'s second row)."""
    extended = iter(row["extended_answers"])
    messages = [dict(m, content=next(extended)) if m["role"] == "assistant" else dict(m) for m in row["messages"]]
    return {"id": f"{row['id']}-long", "messages": messages, "images": row["images"]}


def stage2_batches(rows: list[dict[str, Any]], schedule: list[list[int]], arm: str) -> list[list[dict[str, Any]]]:
    """The block's batches of rows for an arm: ``lm-long`` adds each row's long conversation."""
    if arm == "lm-long":
        short = [{key: value for key, value in row.items() if key != "extended_answers"} for row in rows]
        return [[short[i] for i in batch] + [long_conversation(rows[i]) for i in batch] for batch in schedule]
    return [[rows[i] for i in batch] for batch in schedule]


def standard_rows(path: str) -> list[dict[str, Any]]:
    """A training file's rows as swift's dataset would hold them (our preprocessor)."""
    from ...data.formats import row_to_standard
    return [row_to_standard(row, path) for row in read_json(path)]


def _stage_summary(log: list[dict[str, float]]) -> dict[str, Any]:
    from .loop import tail_mean
    keys = sorted({key for entry in log for key in entry})
    return {"steps": len(log), **{f"{key}_tail": tail_mean(log, key) for key in keys}}


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Run one cell (module doc); writes ``choices.json`` and ``predictions.jsonl`` into its folder."""
    import torch

    from .easy_vqa_data import file_sha256
    from .loop import Recipe, load_stage, train
    from .scoring import generate_answers, likelihood_accuracy, load_test_items

    budget = Budget(**spec.budget)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    recipe = Recipe(budget.learning_rate)

    start = time.perf_counter()
    stage2 = load_stage(spec.checkpoint, arm_settings(spec.arm, budget.alpha), seed=spec.block,
                        train_vision_tower=budget.train_vision_tower)
    batches = stage2_batches(standard_rows(spec.pretrain), read_json(spec.pretrain_batches), spec.arm)
    timings["load_s"] = time.perf_counter() - start  # the first load imports swift
    start = time.perf_counter()
    stage2_log = train(stage2, batches, recipe, seed=spec.block)
    weights = {name: value for name, value in stage2.model.state_dict().items() if not name.startswith("model.mga.")}
    del stage2
    timings["pretrain_s"] = time.perf_counter() - start

    start = time.perf_counter()
    finetune = load_stage(spec.checkpoint, arm_settings("none", budget.alpha), seed=spec.block,
                          train_vision_tower=budget.train_vision_tower)
    finetune.model.load_state_dict(weights)
    open_items, closed_items = load_test_items(spec.test_open), load_test_items(spec.test_closed)
    zero_shot = likelihood_accuracy(finetune.model, finetune.template, open_items)
    timings["zero_shot_s"] = time.perf_counter() - start

    start = time.perf_counter()
    downstream = standard_rows(spec.downstream)
    finetune_log = train(finetune, [[downstream[i] for i in batch] for batch in read_json(spec.finetune_batches)],
                         recipe, seed=spec.block)
    timings["finetune_s"] = time.perf_counter() - start

    start = time.perf_counter()
    primary = likelihood_accuracy(finetune.model, finetune.template, open_items)
    closed = likelihood_accuracy(finetune.model, finetune.template, closed_items)
    timings["score_s"] = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        predictions = generate_answers(finetune.model, finetune.template, [spec.test_open, spec.test_closed],
                                       out / "predictions.jsonl", max_new_tokens=budget.max_new_tokens)
    generated = _generated_metrics(spec, out, predictions)
    timings["generate_s"] = time.perf_counter() - start
    write_json(out / "choices.json", {"zero_shot": zero_shot["choices"], "open": primary["choices"],
                                      "closed": closed["choices"]})
    return {"block": spec.block, "fraction": spec.fraction, "arm": spec.arm,
            "finetune_data_sha256": file_sha256(spec.downstream),
            "pretrain_data_sha256": file_sha256(spec.pretrain),
            "pretrain_batches_sha256": file_sha256(spec.pretrain_batches),
            "finetune_batches_sha256": file_sha256(spec.finetune_batches),
            "primary_score": primary["accuracy"], "zero_shot_score": zero_shot["accuracy"],
            "closed_score": closed["accuracy"], "test_items": {"open": primary["n"], "closed": closed["n"]},
            **generated, "pretrain": _stage_summary(stage2_log), "finetune": _stage_summary(finetune_log),
            "timings": timings}


def _generated_metrics(spec: CellSpec, out: Path, predictions: Path) -> dict[str, Any]:
    """``eval-vqa``'s metrics of the generated answers (open and closed items in one file)."""
    from ...eval.eval_vqa import evaluate_vqa
    from .diagnostics import image_dependence

    test = out / "test_all.json"
    write_json(test, read_json(spec.test_open) + read_json(spec.test_closed))
    report = evaluate_vqa(test, predictions, spec.candidates)
    dependence = image_dependence(test, predictions)
    test.unlink()
    return {"generated_average": report.original["average"], "original": report.original, "strict": report.strict,
            "image_dependence": dependence}


def main(argv: list[str] | None = None) -> int:
    """``SPEC RESULT``: run the cell of ``SPEC`` (JSON), write its result to ``RESULT``."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spec = CellSpec(**read_json(argv[0]))
    for name in INPUT_FIELDS:
        if not Path(getattr(spec, name)).exists():
            raise FileNotFoundError(f"{argv[0]}: {name} {getattr(spec, name)} does not exist")
    started = time.perf_counter()
    result = run_cell(spec)
    result["timings"]["cell_s"] = time.perf_counter() - started
    write_json(argv[1], result, indent=1)
    logger.info("cell %s", json.dumps({k: result[k] for k in ("block", "fraction", "arm", "primary_score")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

