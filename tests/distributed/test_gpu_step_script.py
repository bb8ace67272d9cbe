"""``benchmarks/gpu_step.py``: a clear exit without CUDA, and batches the model accepts (CPU, tiny model)."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_step.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_exits_with_a_message_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1"], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == _load_script().NO_CUDA_EXIT, result.stderr[-2000:]
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "gpu_step.json").exists()  # nothing measured, nothing recorded


def test_synthetic_batch_trains_the_model_with_mga(tiny_checkpoint, tiny_tokenizer):
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    script = _load_script()
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled = True
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config).train()
    batch = script.make_batch(model.config, tiny_tokenizer, batch=3, answer_tokens=12, extended_tokens=20)
    assert batch["mga_text_ids"].shape[0] == 6
    out = model(**batch)
    assert torch.isfinite(out.loss) and torch.isfinite(out.align_loss)
    (out.loss + out.align_loss).backward()
    assert model.model.mga.gnn.conv1.lin_rel.weight.grad is not None
