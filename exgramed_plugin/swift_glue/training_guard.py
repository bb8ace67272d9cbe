"""Stop a training run at the first non-finite loss term, and count steps that could not align.

HF's Trainer filters a NaN/inf step loss out of its logged average (``logging_nan_inf_filter``), so
a run whose loss went NaN logs ``loss 0`` with ``grad_norm nan`` and exits 0, its weights ruined.
In every run the plugin takes part in (an ``exgra_med`` model with any loss, ``--loss_type
exgra_mga`` with any model type, alpha 0 included) the one check here stops it instead, naming the
step and the term, before the backward. It looks at the scalar loss terms only (one host sync per
micro-batch, which HF's NaN filter makes anyway), never at the logits. Under fp16 with a dynamic
loss scale (AMP GradScaler, DeepSpeed fp16) a non-finite step is what the scaler skips: it is
forgiven, and only :data:`MAX_CONSECUTIVE_SKIPPED_STEPS` such steps in a row stop the run.
Plain swift runs that merely load the plugin keep swift's behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from swift.trainers import Seq2SeqTrainer
from transformers import TrainerCallback

from ..head.loss_scale import applied_loss_scale
from ..settings import current_settings

logger = logging.getLogger(__name__)
MAX_CONSECUTIVE_SKIPPED_STEPS = 8  # fp16: a scaler halves its scale per skip; 8 skips in a row are no overflow
GUARDED_MODEL_TYPES = ("exgra_med",)
_PATCH_MARK = "_exgramed_guarded"


class NonFiniteLossError(FloatingPointError):
    """A loss term of a training step is NaN or infinite."""


def current_step(trainer: Any) -> int | None:
    """The 1-based number of the optimizer step being computed (None outside a trainer)."""
    state = getattr(trainer, "state", None)
    return None if state is None else int(state.global_step) + 1


def _model_type(trainer: Any) -> str | None:
    meta = getattr(getattr(trainer, "model", None), "model_meta", None) \
        or getattr(getattr(trainer, "template", None), "model_meta", None)
    return getattr(meta, "model_type", None)


def is_guarded(trainer: Any) -> bool:
    """Whether the plugin takes part in this trainer's run (and so guards its loss)."""
    return current_settings().mga.enabled or _model_type(trainer) in GUARDED_MODEL_TYPES


class NonFiniteGuard:
    """The state of one run's check: the last step with a non-finite term and how many in a row."""

    def __init__(self, max_consecutive_skips: int = MAX_CONSECUTIVE_SKIPPED_STEPS) -> None:
        self.max_consecutive_skips = max_consecutive_skips
        self.last_bad_step: int | None = None
        self.consecutive = 0

    def check(self, terms: Mapping[str, torch.Tensor], *, step: int | None, loss_scale: float | None) -> None:
        """Raise :class:`NonFiniteLossError` when a scalar term of ``terms`` is NaN or infinite,
        unless a dynamic fp16 ``loss_scale`` will skip the step (then only after too many in a row)."""
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        finite = torch.isfinite(values).tolist()  # the one host sync
        if all(finite):
            return
        bad = {name: value for name, ok, value in zip(terms, finite, values.tolist()) if not ok}
        found = f"the {' and '.join(bad)} loss{'es are' if len(bad) > 1 else ' is'} non-finite " \
                f"({', '.join(f'{name} = {value:g}' for name, value in bad.items())})"
        where = f"step {step}" if step is not None else "a step"
        if loss_scale is not None:
            if step is None or step != self.last_bad_step:
                follows = step is not None and self.last_bad_step == step - 1
                self.consecutive = self.consecutive + 1 if follows else 1
                self.last_bad_step = step
            if self.consecutive < self.max_consecutive_skips:
                logger.warning("%s: %s under fp16 (loss scale %g): the loss scaler skips this step (%d in a row; %d "
                               "stop the run)", where, found, loss_scale, self.consecutive, self.max_consecutive_skips)
                return
            raise NonFiniteLossError(
                f"{where}: {found}, {self.consecutive} fp16 steps in a row, each skipped by the loss scaler; "
                "training stopped. Check the checkpoint's weights and the learning rate, or train in bfloat16 "
                "(--torch_dtype bfloat16)")
        hint = " (from the alignment's nodes or its graph network)" if "align" in bad else ""
        raise NonFiniteLossError(
            f"{where}: {found}{hint}; training stopped before the optimizer applied it. Check the weights of the "
            "checkpoint (NaN in the vision tower, projector or LLM), the learning rate and fp16 overflow "
            "(try --torch_dtype bfloat16)")


def loss_terms(trainer: Any, loss: torch.Tensor, outputs: Any) -> dict[str, torch.Tensor]:
    """The scalar terms of one micro-batch's loss: ``lm`` and ``align`` as the ``exgra_mga`` loss
    recorded them, else the returned loss under the name of the loss that made it."""
    recorded = getattr(outputs, "loss_terms", None)
    if recorded:
        return dict(recorded)
    loss_type = getattr(getattr(trainer, "args", None), "loss_type", None)
    return {loss_type or "lm": loss}


def install_non_finite_guard() -> None:
    """Wrap swift's ``Seq2SeqTrainer.compute_loss`` with the one check (idempotent)."""
    original = Seq2SeqTrainer.compute_loss
    if getattr(original, _PATCH_MARK, False):
        return

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(self, model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if model.training and is_guarded(self):
            guard = self.__dict__.setdefault("_exgramed_non_finite_guard", NonFiniteGuard())
            guard.check(loss_terms(self, loss, outputs), step=current_step(self), loss_scale=applied_loss_scale(self))
        return (loss, outputs) if return_outputs else loss

    setattr(compute_loss, _PATCH_MARK, True)
    Seq2SeqTrainer.compute_loss = compute_loss


class SkippedAlignmentReport(TrainerCallback):
    """Logs, at the end of training, how many micro-batches had fewer than 2 samples (align_loss 0)."""

    def __init__(self) -> None:
        self.skipped = 0
        self.total = 0

    def count(self, graph_nodes: int) -> None:
        self.total += 1
        if graph_nodes < 2:
            self.skipped += 1

    def on_train_end(self, args, state, control, **kwargs):
        (logger.warning if self.skipped else logger.info)("multi-graph alignment: %d of %d training micro-batch(es) had fewer than 2 samples and "
                    "contributed align_loss 0", self.skipped, self.total)
