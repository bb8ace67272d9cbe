"""Checkpoints saved by the code before the one-head refactor still load and give the same numbers.

``before_one_head/`` holds a tiny full ``exgra_med`` checkpoint with its graph network and a LoRA
adapter over it (graph network in ``modules_to_save``), written by ``before_one_head/make_fixture.py``
at the commit in ``made_by.json``, with the logits and align loss of one fixed training batch.
"""

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).resolve().parent / "before_one_head"


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixture", FIXTURE / "make_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_full_and_lora_checkpoints_reproduce_their_logits_and_align_loss():
    from peft import PeftModel

    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    make = _fixture_module()
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model = ExGraMedForCausalLM.from_pretrained(FIXTURE / "full")
    batch = make.fixed_batch(model.config)
    logits, align = make.run(model, batch)
    torch.testing.assert_close(logits, expected["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(align.reshape(1), expected["align_loss"], rtol=0, atol=1e-6)

    adapted = PeftModel.from_pretrained(ExGraMedForCausalLM.from_pretrained(FIXTURE / "full"), FIXTURE / "lora")
    lora_logits, lora_align = make.run(adapted, batch)
    torch.testing.assert_close(lora_logits, expected["lora_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(lora_align.reshape(1), expected["lora_align_loss"], rtol=0, atol=1e-6)
    assert not torch.allclose(lora_logits, logits, atol=1e-3)  # the adapter is not a no-op


def test_a_batch_without_the_templates_image_bookkeeping_gives_the_same_align_loss():
    # exgra_med has a fixed token count per image: a hand-built batch may leave the counts out (one sample per row)
    from peft import PeftModel

    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    make = _fixture_module()
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    model = PeftModel.from_pretrained(ExGraMedForCausalLM.from_pretrained(FIXTURE / "full"), FIXTURE / "lora")
    batch = {key: value for key, value in make.fixed_batch(model.config).items()
             if key not in ("mga_image_tokens", "mga_images_per_sample")}
    _, align = make.run(model, batch)
    torch.testing.assert_close(align.reshape(1), expected["lora_align_loss"], rtol=0, atol=1e-6)
