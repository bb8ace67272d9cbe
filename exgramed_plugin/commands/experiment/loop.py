"""The miniature's training stages in this process: swift's model, template and ``exgra_mga`` loss,
stepped the way ``swift sft`` (the Hugging Face Trainer) steps them.

Why: a ``swift sft`` run spends seconds starting up and about 0.10 s per step on the miniature's
model against about 0.04 s here, and a cell runs three stages; the grid of the preregistered
protocol fits its time budget only in process. What is the same as ``swift sft --tuner_type full
--freeze_vit true --torch_dtype float32 --weight_decay 0 --lr_scheduler_type cosine``:

* the model and processor come from swift's ``get_model_processor`` (the plugin's loader), the
  template from ``get_template`` (the plugin's ``exgra_med`` template, training mode, swift's
  collator), the loss is :class:`~exgramed_plugin.swift_glue.loss.ExGraMedAlignmentLoss` called
  as swift's trainer calls it (labels taken out of the batch, ``num_items_in_batch`` = the label
  tokens after the shift);
* fused ``torch.optim.AdamW`` (betas 0.9 / 0.95, eps 1e-8: swift's defaults), the linear-warmup cosine schedule with
  ``ceil(warmup_ratio x steps)`` warm-up steps, gradient clipping to norm 1, in the Trainer's order
  (backward, clip, optimizer step, schedule step, zero the gradients);
* the vision tower frozen, everything else trained.

A test runs 20 steps both ways on the same batches and checks per-step losses and final weights
within 1e-4 (tests/commands/experiment/test_loop_matches_swift.py); ``swift sft`` needs
``--gradient_accumulation_steps 1`` for that (its default accumulates up to 16 rows per step). The
GNN of MGA applies dropout from torch's global generator, so :func:`train` seeds it as swift's
trainer does; everything else draws from seeded generators.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...settings import LOSS_TYPE, parse_settings, use_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """The optimizer settings of one stage; where the miniature sets nothing, ``swift sft``'s defaults
    (its ``adam_beta2`` is 0.95, not the Trainer's 0.999)."""

    learning_rate: float
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = 1e-8


class _StepValues:
    """What the loss logs in one step (swift keeps a running metric; one value per step here)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def update(self, value: Any) -> None:
        self.values.append(float(value.mean()) if isinstance(value, torch.Tensor) else float(value))


@dataclass
class _LoopTrainer:
    """The attributes of swift's trainer that the ``exgra_mga`` loss reads, for one process and
    no gradient accumulation: the model, the metrics it logs into, the accumulation count."""

    model: torch.nn.Module
    custom_metrics: dict[str, dict[str, _StepValues]] = field(
        default_factory=lambda: {"train": defaultdict(_StepValues), "eval": defaultdict(_StepValues)})
    current_gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class _LoopArgs:
    gradient_accumulation_steps: int = 1
    average_tokens_across_devices: bool = False


@dataclass
class Stage:
    """A model ready to train: the model, its template (training mode) and the loss."""

    model: torch.nn.Module
    template: Any
    loss: Any
    trainer: _LoopTrainer


def load_stage(checkpoint: str | Path, model_kwargs: Mapping[str, Any], *, seed: int,
               train_vision_tower: bool = False) -> Stage:
    """Load ``checkpoint`` through swift with ``model_kwargs`` (``mga_alpha``, ``mga_objective``, ...)
    as ``swift sft --loss_type exgra_mga --model_kwargs`` would apply them. Weights the checkpoint
    lacks (the graph network of a first MGA stage) are drawn with ``seed``."""
    from ...swift_glue import register_all
    register_all()  # the exgra_med model type, template and loss
    from swift.model import get_model_processor
    from swift.template import get_template

    from ...swift_glue.loss import ExGraMedAlignmentLoss

    use_settings(parse_settings({}, model_kwargs, loss_type=LOSS_TYPE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, processor = get_model_processor(str(checkpoint), torch_dtype=torch.float32, device_map="cpu")
    for parameter in model.model.vision_tower.parameters():
        parameter.requires_grad_(train_vision_tower)
    template = get_template(processor)
    template.set_mode("train")
    trainer = _LoopTrainer(model)
    return Stage(model, template, ExGraMedAlignmentLoss(_LoopArgs(), trainer), trainer)


def train(stage: Stage, batches: Sequence[Sequence[dict[str, Any]]], recipe: Recipe, *,
          seed: int) -> list[dict[str, float]]:
    """One optimizer step per batch of standard rows (``messages``, ``images``, ``extended_answers``);
    returns per step the loss, the gradient norm before clipping and what the loss logged
    (``lm_loss``, ``align_loss``, ``matching_accuracy``, ...)."""
    from transformers import get_cosine_schedule_with_warmup

    model, template = stage.model, stage.template
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, betas=recipe.adam_betas,
                                  eps=recipe.adam_epsilon, weight_decay=recipe.weight_decay, fused=True)
    steps = len(batches)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(recipe.warmup_ratio * steps), steps)
    metrics = stage.trainer.custom_metrics["train"]
    log: list[dict[str, float]] = []
    # The graph network's dropout draws from the global generator: seeded as swift's trainer leaves it
    # at its first step (its seed, then the one draw of the DataLoader iterator's base seed).
    torch.manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_()
    for rows in batches:
        batch = template.data_collator([template.encode(row) for row in rows])
        labels = batch.pop("labels")
        outputs = model(**batch)
        loss = stage.loss(outputs, labels, num_items_in_batch=(labels[:, 1:] != -100).sum())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        entry = {"loss": float(loss.detach()), "grad_norm": float(grad_norm)}
        for name in list(metrics):
            entry[name] = metrics[name].values[-1]
        metrics.clear()
        log.append(entry)
    model.eval()
    return log


def tail_mean(log: Sequence[Mapping[str, float]], key: str) -> float | None:
    """Mean of ``key`` over the last quarter of the steps that logged it (less noisy than the last step)."""
    values = [entry[key] for entry in log if key in entry]
    if not values:
        return None
    tail = values[-max(1, len(values) // 4):]
    return sum(tail) / len(tail)
