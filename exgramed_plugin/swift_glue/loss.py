"""The ``exgra_mga`` loss: LM loss + α · MGA loss, scaled the way swift scales the LM term.

swift (with a ``compute_loss_func``) does not divide the loss by the gradient-accumulation steps and
multiplies it by the number of processes; the LM term is ``sum / num_items_in_batch`` over all
micro-batches and ranks. The alignment term is a per-micro-batch mean, so it is divided by
``GA x processes`` here: summed over the micro-batches and averaged over ranks by DDP it becomes the
mean alignment loss. With ``mga_global_graph`` every rank computes the same global loss and only
its local nodes receive gradients, so the division by the process count is left out.
"""

from __future__ import annotations

import torch
from swift.loss import BaseLoss, loss_map

from ..head.families import unsupported_model_type_error
from ..head.loss_scale import applied_loss_scale
from ..settings import LOSS_TYPE, current_settings
from .training_guard import SkippedAlignmentReport


class ExGraMedAlignmentLoss(BaseLoss):
    """``--loss_type exgra_mga``; logs ``lm_loss``, ``align_loss``, the Hamming terms and the accuracy.

    What it needs of the alignment comes with each step's outputs (the head's ``AlignmentHead.run``):
    the loss, its terms, the head's settings (alpha, global graph) and the step's loss-scale slot,
    which it hands the loss scale the backward applies. It never looks into the model.
    """

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        self.skipped_report = SkippedAlignmentReport()
        self._report_added = False

    def _training(self) -> bool:
        model = getattr(self.trainer, "model", None)
        return bool(getattr(model, "training", True))

    def _amp_loss_scale(self) -> float:
        """The loss scale the backward applies (1 without one): the black-box backward divides it out."""
        scale = applied_loss_scale(self.trainer)
        return 1.0 if scale is None else scale

    def _log(self, name: str, value: torch.Tensor | float) -> None:
        if self.trainer is None or not hasattr(self.trainer, "custom_metrics"):
            return
        mode = "train" if self._training() else "eval"
        if isinstance(value, torch.Tensor):
            value = value.detach().float()
        self.trainer.custom_metrics[mode][name].update(value)

    def __call__(self, outputs, labels, *, num_items_in_batch=None, loss_scale=None, **kwargs):
        from swift.trainers import per_token_loss_func
        token_loss = per_token_loss_func(outputs, labels)
        if loss_scale is not None:
            token_loss = token_loss * loss_scale
        local_items = (labels[:, 1:] != -100).sum()
        lm_loss = token_loss.sum() / local_items.clamp_min(1)
        self._log("lm_loss", lm_loss)
        loss = token_loss.sum() / (local_items if num_items_in_batch is None else num_items_in_batch)
        align_loss = getattr(outputs, "align_loss", None)
        # the terms the non-finite guard checks (training_guard.py), before the backward
        outputs.loss_terms = {"lm": lm_loss} if align_loss is None else {"lm": lm_loss, "align": align_loss}
        if align_loss is None:
            if self._training() and current_settings().mga.active and getattr(outputs, "align_settings", None) is None:
                raise unsupported_model_type_error(getattr(getattr(self.trainer.model, "model_meta", None),
                                                           "model_type", None))
            return loss  # evaluation, or alpha 0 (the LLaVA-Med baseline): the LM term alone
        settings = outputs.align_settings
        slot = getattr(outputs, "align_loss_scale", None)
        if slot is not None:
            slot.source = self._amp_loss_scale  # read when the step's backward runs
        if self._training() and outputs.align_terms and "mga_graph_nodes" in outputs.align_terms:
            if not self._report_added and hasattr(self.trainer, "add_callback"):
                self.trainer.add_callback(self.skipped_report)
                self._report_added = True
            self.skipped_report.count(int(outputs.align_terms["mga_graph_nodes"]))
        self._log("align_loss", align_loss)
        for name, value in (outputs.align_terms or {}).items():
            self._log(name, value)
        if num_items_in_batch is not None:
            accumulation = getattr(self.trainer, "current_gradient_accumulation_steps", None) \
                or self.args.gradient_accumulation_steps
            processes = 1
            if (getattr(self.args, "average_tokens_across_devices", False)
                    and getattr(self.trainer, "model_accepts_loss_kwargs", False) and not settings.global_graph):
                processes = self.trainer.accelerator.num_processes
            align_loss = align_loss / (accumulation * processes)
        return loss + float(settings.alpha) * align_loss.to(loss.device)


def register_exgra_mga_loss() -> None:
    loss_map[LOSS_TYPE] = ExGraMedAlignmentLoss
