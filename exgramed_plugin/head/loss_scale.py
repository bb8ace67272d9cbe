"""The loss scale a training step's backward really applies, whoever applies it.

Under fp16 the loss is multiplied by a dynamic scale before the backward: by the AMP GradScaler
(``accelerator.scaler``) in plain and DDP runs, by DeepSpeed's fp16 optimizer
(``engine.optimizer.loss_scale``) under DeepSpeed, where ``accelerator.scaler`` is None. bf16 and
fp32 runs scale nothing. The black-box MGA backward divides the scale out (docs/fidelity.md F14),
and the non-finite guard forgives a step that such a scaler skips; both read it here.
"""

from __future__ import annotations

from typing import Any


def deepspeed_engine(trainer: Any) -> Any | None:
    """The DeepSpeed engine of a trainer (``trainer.deepspeed``, or accelerate's wrapper before the
    trainer records it), None outside DeepSpeed."""
    engine = getattr(trainer, "deepspeed", None)
    if engine is not None:
        return engine
    wrapper = getattr(getattr(trainer, "accelerator", None), "deepspeed_engine_wrapped", None)
    return getattr(wrapper, "engine", None)


def applied_loss_scale(trainer: Any) -> float | None:
    """The factor the backward's loss is multiplied by: the GradScaler's current scale under fp16
    AMP, DeepSpeed's current fp16 loss scale, None when nothing scales the loss (bf16, fp32)."""
    scaler = getattr(getattr(trainer, "accelerator", None), "scaler", None)
    if scaler is not None and scaler.is_enabled():
        return float(scaler.get_scale())
    engine = deepspeed_engine(trainer)
    if engine is not None and engine.fp16_enabled():
        return float(engine.optimizer.loss_scale)
    return None
