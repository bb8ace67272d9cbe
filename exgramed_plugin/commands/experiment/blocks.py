"""The files a grid's cells read: the shared ones, and those of each block.

Shared (:func:`prepare_shared`): the one downstream training file (byte-identical for every cell;
its sha256 goes into every cell's result), the open and closed test files and ``candidate.json``.
Per block (:func:`prepare_block`): the pre-training file of each fraction (nested subsets of the
block's pool), the pre-training batch schedule of each fraction and the fine-tuning batch schedule
(batches.py; the same for every arm of the block), and the block's checkpoint: the warmed-up
language model, the stage-0 vision tower and a projector drawn with the block's seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...common.jsonio import read_json, write_json
from .batches import distinct_description_batches, shuffled_batches
from .easy_vqa_data import (block_pool, file_sha256, nested_subsets, partition_train_images, write_candidates,
                            write_pretraining_rows, write_test_rows, write_vqa_rows)
from .protocol import Budget, fraction_tag

# parts of a checkpoint a block does not take from the warmed-up one
_BLOCK_OWN_PREFIXES = ("model.vision_tower.", "model.mm_projector.")


@dataclass(frozen=True)
class SharedFiles:
    downstream: Path
    downstream_sha256: str
    test_open: Path
    test_closed: Path
    candidates: Path
    counts: dict[str, Any]


def prepare_shared(root: Path, budget: Budget) -> SharedFiles:
    """Write the downstream, test and candidate files under ``root``."""
    partition = partition_train_images(budget.downstream_images, budget.universe_images)
    downstream = root / "downstream_train.json"
    sha256 = write_vqa_rows(downstream, partition.downstream)
    test_open, test_closed, candidates = root / "test_open.json", root / "test_closed.json", root / "candidate.json"
    counts = {"downstream_images": len(partition.downstream), "downstream_rows": len(read_json(downstream)),
              "universe_images": len(partition.universe), "stage0_candidate_images": len(partition.rest),
              "test_open": write_test_rows(test_open, budget.open_per_answer, closed=False),
              "test_closed": write_test_rows(test_closed, budget.closed_per_answer, closed=True)}
    write_candidates(candidates)
    return SharedFiles(downstream, sha256, test_open, test_closed, candidates, counts)


@dataclass(frozen=True)
class BlockFiles:
    block: int
    checkpoint: Path
    pretrain: dict[float, Path]
    pretrain_batches: dict[float, Path]
    finetune_batches: Path
    counts: dict[str, Any]


def _schedule_seed(block: int, stage: int, fraction: float = 0.0) -> np.random.Generator:
    return np.random.default_rng([block, stage, round(fraction * 1000)])


def prepare_block(root: Path, block: int, budget: Budget, fractions: Sequence[float], *, downstream_rows: int,
                  warm_checkpoint: Path, tokenizer, tower: Path | None) -> BlockFiles:
    """Write block ``block``'s pre-training files and schedules and its checkpoint under ``root``."""
    partition = partition_train_images(budget.downstream_images, budget.universe_images)
    pool = block_pool(partition.universe, budget.pool_images, block)
    pretrain, schedules, counts = {}, {}, {"pool_images": len(pool), "fractions": {}}
    for fraction, images in nested_subsets(pool, fractions).items():
        tag = fraction_tag(fraction)
        pretrain[fraction] = root / f"pretrain_{tag}.json"
        descriptions, sha256 = write_pretraining_rows(pretrain[fraction], images)
        batches = distinct_description_batches(descriptions, budget.pretrain_batch, budget.pretrain_epochs,
                                               _schedule_seed(block, 1, fraction))
        schedules[fraction] = root / f"pretrain_batches_{tag}.json"
        write_json(schedules[fraction], batches)
        counts["fractions"][str(fraction)] = {"images": len(images), "steps": len(batches), "pretrain_sha256": sha256,
                                              "batches_sha256": file_sha256(schedules[fraction])}
    finetune = root / "finetune_batches.json"
    batches = shuffled_batches(downstream_rows, budget.finetune_batch, budget.finetune_epochs, _schedule_seed(block, 2))
    write_json(finetune, batches)
    counts["finetune_steps"] = len(batches)
    checkpoint = block_checkpoint(root / "checkpoint", warm_checkpoint, block, budget, tokenizer, tower)
    return BlockFiles(block, checkpoint, pretrain, schedules, finetune, counts)


def block_checkpoint(out: Path, warm_checkpoint: Path, block: int, budget: Budget, tokenizer,
                     tower: Path | None) -> Path:
    """A checkpoint with the warmed-up language model, the stage-0 tower and a projector drawn with ``block``."""
    from safetensors.torch import load_file, save_file

    from ...tiny_checkpoints.exgra_med import make_tiny_checkpoint

    make_tiny_checkpoint(out, tokenizer=tokenizer, vision_tower_weights=tower, image_size=budget.image_size,
                         patch_size=budget.patch_size, vision_hidden_size=budget.vision_hidden_size,
                         vision_layers=budget.vision_layers, hidden_size=budget.hidden_size,
                         num_layers=budget.num_layers, seed=block)
    weights = load_file(str(out / "model.safetensors"))
    warm = load_file(str(warm_checkpoint / "model.safetensors"))
    for name in weights:
        if not name.startswith(_BLOCK_OWN_PREFIXES):
            weights[name] = warm[name]
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out
