"""Cells from a GPU user's own runs of the same design (docs/experiments.md, "The same protocol on GPUs").

At real scale the cells are ``swift sft`` runs (stage 2 per arm on nested subsets of the
pre-training data made by ``exgramed subset --seed BLOCK``, then one fine-tuning recipe on one
downstream file); ``--score-cell`` scores one resulting checkpoint the way the miniature scores its
cells (likelihood-ranked answers through the one scorer: the candidates of ``--candidates`` for
open questions, yes / no for closed ones) and writes the cell into ``--out``, where
``--summarize-only`` gives the preregistered analysis and the table. :func:`check_nested` refuses
pre-training files of one block that are not nested by id.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...common.jsonio import read_json, read_json_or_jsonl
from .easy_vqa_data import file_sha256
from .scoring import likelihood_accuracy, load_test_items


def add_score_cell_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--score-cell (a GPU user's checkpoint as a cell of --out)")
    group.add_argument("--model", default=None, help="the fine-tuned checkpoint of the cell")
    group.add_argument("--zero-shot-model", default=None, help="its stage-2 checkpoint (the zero-shot endpoint)")
    group.add_argument("--model-type", dest="model_type", default=None, help="swift model type (default: inferred)")
    group.add_argument("--template", default=None, help="swift template (default: the model type's)")
    group.add_argument("--test", type=Path, default=None, help="VQA test file (conversations, answer_type, image)")
    group.add_argument("--candidates", type=Path, default=None,
                       help="candidate.json: the options of every OPEN question (exgramed build-candidates)")
    group.add_argument("--finetune-data", type=Path, default=None, help="the downstream file every cell fine-tuned on")
    group.add_argument("--pretrain-data", type=Path, default=None, help="the cell's stage-2 file (nesting is checked)")
    group.add_argument("--block", type=int, default=None, help="the cell's block (its subset seed)")
    group.add_argument("--fraction", type=float, default=None, help="the cell's pre-training fraction")
    group.add_argument("--arm", default=None, help="the cell's arm (none, mga, lm-long, ...)")


REQUIRED = ("model", "test", "candidates", "finetune_data", "block", "fraction", "arm")
SCORE_CELL_OPTIONS = (*REQUIRED, "zero_shot_model", "model_type", "template", "pretrain_data")


def check_arguments(args: argparse.Namespace) -> None:
    missing = [f"--{name.replace('_', '-')}" for name in REQUIRED if getattr(args, name) is None]
    if missing:
        raise ValueError(f"--score-cell needs {', '.join(missing)}")
    for name in ("test", "candidates", "finetune_data", "pretrain_data"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            raise ValueError(f"--{name.replace('_', '-')} {path}: no such file")


def _ids(path: Path) -> set[str]:
    return {str(row.get("id")) for _, row in read_json_or_jsonl(path)}


def check_nested(files: Mapping[float, Path], block: int) -> None:
    """The pre-training files of one block by fraction: each smaller one's ids inside the next."""
    ordered = sorted(files.items())
    for (small, small_path), (large, large_path) in zip(ordered, ordered[1:]):
        outside = _ids(small_path) - _ids(large_path)
        if outside:
            raise ValueError(f"--pretrain-data: block {block}'s {small} subset {small_path} is not inside its {large} "
                             f"subset {large_path} ({len(outside)} ids outside, e.g. {sorted(outside)[:3]}); make them "
                             "with exgramed subset and one --seed per block")


def score_cell(args: argparse.Namespace, earlier_cells: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The cell's result: its endpoints and the files it used (``earlier_cells``: the folder's cells, for nesting)."""
    from ...eval.predict import load_engine

    if args.pretrain_data is not None:
        files = {float(c["fraction"]): Path(c["pretrain_data"]) for c in earlier_cells
                 if c["block"] == args.block and c.get("pretrain_data")}
        check_nested({**files, args.fraction: args.pretrain_data.resolve()}, args.block)
    candidates = read_json(args.candidates)
    candidates = candidates["0"] if isinstance(candidates, dict) else candidates

    def options(row: Mapping[str, Any], question: str) -> list[str]:
        return [str(c) for c in candidates] if str(row.get("answer_type", "")).upper() == "OPEN" else ["yes", "no"]

    kinds = [str(row.get("answer_type", "")).upper() for row in read_json(args.test)]
    items = load_test_items(args.test, options)
    open_items = [item for item, kind in zip(items, kinds) if kind == "OPEN"]
    closed_items = [item for item, kind in zip(items, kinds) if kind != "OPEN"]
    scores: dict[str, Any] = {}
    for name, model in (("zero_shot_score", args.zero_shot_model), ("primary_score", args.model)):
        if model is None:
            scores[name] = None
            continue
        engine = load_engine(model, model_type=args.model_type, template=args.template)
        scores[name] = likelihood_accuracy(engine.model, engine.template, open_items)["accuracy"]
        if name == "primary_score":
            scores["closed_score"] = (likelihood_accuracy(engine.model, engine.template, closed_items)["accuracy"]
                                      if closed_items else None)
    return {"block": args.block, "fraction": args.fraction, "arm": args.arm,
            "finetune_data_sha256": file_sha256(args.finetune_data), "test_sha256": file_sha256(args.test),
            "pretrain_data": None if args.pretrain_data is None else str(args.pretrain_data.resolve()),
            "model": args.model, "zero_shot_model": args.zero_shot_model, **scores, "generated_average": None,
            "test_items": {"open": len(open_items), "closed": len(closed_items)},
            "pretrain": {"steps": None}, "finetune": {"steps": None}}
