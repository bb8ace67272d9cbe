"""Stop a training run at the first non-finite loss, and count steps that could not align.

HF's Trainer filters a NaN/inf step loss out of its logged average (``logging_nan_inf_filter``), so
a run whose loss went NaN logs ``loss 0`` with ``grad_norm nan`` and exits 0, its weights ruined.
The plugin stops instead, naming the step and the term.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """A loss term of a training step is NaN or infinite."""


def current_step(trainer: Any) -> int | None:
    """The 1-based number of the optimizer step being computed (None outside a trainer)."""
    state = getattr(trainer, "state", None)
    return None if state is None else int(state.global_step) + 1


def check_finite(term: str, value: torch.Tensor, trainer: Any, what: str = "loss") -> None:
    """Raise :class:`NonFiniteLossError` when ``value`` (one loss term, or the tensor it is computed
    from, named by ``what``) is not finite."""
    finite = torch.isfinite(value.detach())
    if bool(finite.all()):
        return
    step = current_step(trainer)
    where = f"step {step}" if step is not None else "a step"
    if value.numel() == 1:
        found = f"is {value.detach().float().item()}"
    else:
        found = f"is non-finite: {int((~finite).sum())} NaN/inf value(s) in its {what}"
    raise NonFiniteLossError(
        f"{where}: the {term} loss {found} (non-finite); training stopped before the "
        "optimizer applied it. Check the weights of the checkpoint (NaN in the projector or the LLM), the learning "
        "rate and fp16 overflow (try --torch_dtype bfloat16)")


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
