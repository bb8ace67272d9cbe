"""The one non-finite check (scalar loss terms, named by step and term; fp16 skips forgiven until too many
in a row) and the loss scale it and the black-box backward read, whoever applies it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from exgramed_plugin.head.loss_scale import applied_loss_scale
from exgramed_plugin.swift_glue.training_guard import (MAX_CONSECUTIVE_SKIPPED_STEPS, NonFiniteGuard,
                                                       NonFiniteLossError, is_guarded, loss_terms)

NAN, INF = float("nan"), float("inf")


def terms(lm: float, align: float | None = None) -> dict[str, torch.Tensor]:
    values = {"lm": torch.tensor(lm)}
    if align is not None:
        values["align"] = torch.tensor(align)
    return values


def test_bf16_or_fp32_stops_at_the_first_non_finite_term_naming_step_and_term():
    guard = NonFiniteGuard()
    guard.check(terms(2.0, 0.5), step=1, loss_scale=None)
    with pytest.raises(NonFiniteLossError, match=r"^step 2: the align loss is non-finite \(align = inf\)"):
        guard.check(terms(2.0, INF), step=2, loss_scale=None)
    with pytest.raises(NonFiniteLossError, match=r"^step 3: the lm and align losses are non-finite \(lm = nan, "
                                                 r"align = nan\)"):
        guard.check(terms(NAN, NAN), step=3, loss_scale=None)


def test_fp16_skipped_steps_are_forgiven_until_too_many_in_a_row():
    guard = NonFiniteGuard(max_consecutive_skips=3)
    guard.check(terms(NAN), step=1, loss_scale=65536.0)
    guard.check(terms(NAN), step=1, loss_scale=65536.0)  # a second micro-batch of the same step counts once
    guard.check(terms(NAN), step=2, loss_scale=32768.0)
    guard.check(terms(1.0), step=3, loss_scale=16384.0)  # a finite step between: the count starts again
    guard.check(terms(INF), step=4, loss_scale=16384.0)
    guard.check(terms(INF), step=5, loss_scale=8192.0)
    with pytest.raises(NonFiniteLossError, match=r"^step 6: the lm loss is non-finite \(lm = inf\), 3 fp16 steps in a row"):
        guard.check(terms(INF), step=6, loss_scale=4096.0)
    assert MAX_CONSECUTIVE_SKIPPED_STEPS >= 2


def test_only_scalar_terms_are_checked():
    # the old check ran isfinite over the whole B x L x V logits (GBs at peak memory); now: scalars only
    outputs = SimpleNamespace(loss_terms={"lm": torch.tensor(1.0), "align": torch.tensor(0.5)},
                              logits=torch.full((2, 3, 4), NAN))
    assert set(loss_terms(SimpleNamespace(args=None), torch.tensor(1.5), outputs)) == {"lm", "align"}
    NonFiniteGuard().check(loss_terms(None, torch.tensor(1.5), outputs), step=1, loss_scale=None)
    plain = SimpleNamespace(logits=torch.full((2, 3, 4), NAN))
    assert loss_terms(SimpleNamespace(args=SimpleNamespace(loss_type=None)), torch.tensor(1.5), plain) == {
        "lm": torch.tensor(1.5)}
    assert list(loss_terms(SimpleNamespace(args=SimpleNamespace(loss_type="dft")), torch.tensor(1.5), plain)) == [
        "dft"]
    with pytest.raises(RuntimeError):  # a tensor that is not a scalar is refused, not scanned
        NonFiniteGuard().check({"lm": torch.ones(2)}, step=1, loss_scale=None)


def test_runs_the_plugin_takes_part_in_are_guarded(monkeypatch):
    from exgramed_plugin.settings import clear_settings
    qwen = SimpleNamespace(model=SimpleNamespace(model_meta=SimpleNamespace(model_type="qwen2_5_vl")))
    exgra_med = SimpleNamespace(model=SimpleNamespace(model_meta=SimpleNamespace(model_type="exgra_med")))
    assert not is_guarded(qwen) and is_guarded(exgra_med)
    monkeypatch.setenv("MGA_ENABLED", "1")  # --loss_type exgra_mga (alpha 0 included)
    monkeypatch.setenv("MGA_ALPHA", "0")
    clear_settings()
    assert is_guarded(qwen)


def test_amp_grad_scaler_scale_is_read_and_bf16_reads_none():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    assert applied_loss_scale(SimpleNamespace(accelerator=SimpleNamespace(scaler=scaler))) == 2.0 ** 16
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    assert applied_loss_scale(SimpleNamespace(accelerator=SimpleNamespace(scaler=disabled))) is None
    assert applied_loss_scale(SimpleNamespace(accelerator=SimpleNamespace(scaler=None), deepspeed=None)) is None


class FakeDeepSpeedOptimizer:
    """Stands in for DeepSpeed's fp16 optimizers (ZeRO-1/2, ZeRO-3, FP16_Optimizer): ``loss_scale``."""

    def __init__(self, scale: float) -> None:
        self.loss_scale = scale


class FakeDeepSpeedEngine:
    """Stands in for ``deepspeed.DeepSpeedEngine`` (a CUDA-only object): ``fp16_enabled()``, ``optimizer``."""

    def __init__(self, fp16: bool, scale: float) -> None:
        self.optimizer = FakeDeepSpeedOptimizer(scale)
        self._fp16 = fp16

    def fp16_enabled(self) -> bool:
        return self._fp16


def test_the_deepspeed_fakes_match_the_installed_classes():
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.engine import DeepSpeedEngine
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    import inspect
    assert callable(DeepSpeedEngine.fp16_enabled)
    assert "self.optimizer = " in inspect.getsource(DeepSpeedEngine)  # an instance attribute, set in __init__
    for optimizer in (DeepSpeedZeroOptimizer, DeepSpeedZeroOptimizer_Stage3, FP16_Optimizer):
        assert isinstance(optimizer.loss_scale, property), optimizer.__name__


def test_deepspeed_fp16_scale_is_read_where_accelerate_has_no_scaler():
    # Under DeepSpeed accelerator.scaler is None: reading it alone made the MGA gradient 65,536x too small
    trainer = SimpleNamespace(accelerator=SimpleNamespace(scaler=None), deepspeed=FakeDeepSpeedEngine(True, 2.0 ** 16))
    assert applied_loss_scale(trainer) == 2.0 ** 16
    trainer.deepspeed = FakeDeepSpeedEngine(False, 1.0)  # DeepSpeed bf16: nothing scales the loss
    assert applied_loss_scale(trainer) is None
    wrapped = SimpleNamespace(accelerator=SimpleNamespace(
        scaler=None, deepspeed_engine_wrapped=SimpleNamespace(engine=FakeDeepSpeedEngine(True, 1024.0))), deepspeed=None)
    assert applied_loss_scale(wrapped) == 1024.0  # before the trainer records its engine
