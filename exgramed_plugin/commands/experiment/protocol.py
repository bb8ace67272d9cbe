"""The design of the data-efficiency miniature: its budget, arms, blocks and cell names.

A **cell** is one (block, pre-training fraction, arm): pre-training (stage 2) on the fraction of the
block's pool, then fine-tuning on the one downstream set, then the test. A **block** fixes what
every arm of it shares: its pool and nested subsets, its batch schedules, the initial weights of
the projector (the language model's warm-up and the vision tower are shared by every block). Grid
blocks are numbered from 0; the gate's pilot blocks from :data:`PILOT_BLOCK_BASE`, so that no
pilot block is ever a grid block.

Arms (stage 2 only; fine-tuning is the same plain LM recipe for every cell):

* ``none``: LM loss (``mga_alpha`` 0), LLaVA-Med;
* ``mga``: LM loss + alpha x the multi-graph alignment loss, ExGra-Med;
* ``lm-long``: LM loss on each row's short *and* extended conversation in the same step, no
  alignment: the same text ``mga`` sees, so a gain of ``mga`` over it is not "more text";
* ``infonce`` / ``siglip``: LM loss + alpha x a pairwise contrastive loss on the same nodes
  (exploratory extras).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

ARMS = ("none", "mga", "lm-long", "infonce", "siglip")
FRACTIONS = (0.1, 0.4, 1.0)
PILOT_BLOCK_BASE = 1000
PRIMARY_CONTRAST = "mga-none@0.1"


@dataclass(frozen=True)
class Budget:
    """Everything that sets what a cell does and costs; identical for every arm, fraction and block.

    Pre-training runs ``pretrain_epochs`` over the fraction's images (so 10 % gets 10 % of the
    steps); fine-tuning runs ``finetune_epochs`` over the one downstream set.
    """

    downstream_images: int = 100
    universe_images: int = 1200
    pool_images: int = 400
    pretrain_epochs: int = 6
    pretrain_batch: int = 8
    finetune_epochs: int = 2
    finetune_batch: int = 16
    learning_rate: float = 2e-3
    alpha: float = 1.0
    open_per_answer: int = 12
    closed_per_answer: int = 2
    max_new_tokens: int = 6
    warmup_steps: int = 300
    hidden_size: int = 64
    num_layers: int = 2
    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 3
    stage0_epochs: int = 60
    stage0_images: int | None = None  # None: every stage-0 image (smoke runs: fewer)
    train_vision_tower: bool = False


FULL = Budget()
QUICK = Budget(downstream_images=20, universe_images=200, pool_images=40, pretrain_epochs=1, finetune_epochs=1,
               open_per_answer=1, closed_per_answer=1, warmup_steps=10, stage0_epochs=2, stage0_images=300)


def budget_key(budget: Budget) -> str:
    """A short digest of the budget: cells of one grid share it."""
    return hashlib.sha256(json.dumps(asdict(budget), sort_keys=True).encode()).hexdigest()[:16]


def budget_changes(budget: Budget, base: Budget = FULL) -> dict[str, Any]:
    """The fields where ``budget`` differs from ``base`` (how a tried budget is named)."""
    return {name: value for name, value in asdict(budget).items() if getattr(base, name) != value}


def arm_settings(arm: str, alpha: float) -> dict[str, Any]:
    """The stage-2 ``--model_kwargs`` of an arm: ``none`` and ``lm-long`` train no alignment module."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    if arm in ("none", "lm-long"):
        return {"mga_alpha": 0}
    return {"mga_alpha": alpha, "mga_objective": arm}


def fraction_tag(fraction: float) -> str:
    return f"{round(fraction * 100):03d}"


def cell_name(block: int, fraction: float, arm: str) -> str:
    return f"block{block:04d}_frac{fraction_tag(fraction)}_{arm}"
