"""``benchmarks/gpu_step.py``: a clear exit without CUDA, and batches the models accept (CPU, tiny models);
``benchmarks/gpu_acceptance.sh --cpu-smoke``: every check a CPU can run."""

import importlib.util
import itertools
import json
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
@pytest.mark.parametrize("model", ["exgra_med", "qwen2_5_vl"])
def test_exits_with_a_message_without_cuda(tmp_path, model):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    result = subprocess.run([sys.executable, str(SCRIPT), "--steps", "1", "--model", model], env=env,
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == _load_script().NO_CUDA_EXIT, result.stderr[-2000:]
    assert "no CUDA device" in result.stderr
    assert not list(tmp_path.glob("gpu_step*.json"))  # nothing measured, nothing recorded


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


def test_qwen2_5_vl_padded_and_padding_free_batches_give_the_same_losses():
    """The qwen2_5_vl configuration at tiny sizes (fp32, CPU): one padded and one padding-free batch of the same
    samples train the model with the alignment head and give the same lm_loss and align_loss."""
    script = _load_script()
    # std 0.3 (as the tiny checkpoints): at 0.02 the logits are so small that lm_loss is ln(vocab) for any layout
    model, tokenizer = script.build_qwen2_5_vl(64, 2, "sdpa", vision_depth=2, vision_hidden=32, device="cpu",
                                               gradient_checkpointing=False, initializer_range=0.3)
    for module in model.modules():  # deterministic: no dropout in the nodes or the graph network
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    assert model.config.image_token_id == 151655 and model.config.text_config.vocab_size == 151936
    rows = script.qwen_samples(model.config, tokenizer, 3, image_size=56, question_tokens=6, answer_tokens=8,
                               extended_tokens=14)
    assert [r["mga_image_tokens"] for r in rows] == [[4]] * 3  # 56 px: 4 x 4 patches, merged 2 x 2
    lengths = [len(r["input_ids"]) for r in rows]
    padded = script.qwen_padded_batch(model, rows, tokenizer.pad_token_id)
    free = script.qwen_padding_free_batch(model, rows, flash=False)
    assert padded["input_ids"].shape == (3, max(lengths)) and padded["attention_mask"].sum(1).tolist() == lengths
    assert len(set(lengths)) > 1  # the padded layout pads
    assert free["input_ids"].shape == (1, sum(lengths)) and free["position_ids"].shape == (4, 1, sum(lengths))
    assert padded["position_ids"].shape == (3, 3, max(lengths)) and "attention_mask" not in free
    assert padded["mga_text_ids"].shape[0] == 1 and padded["mga_text_lengths"].shape == (6,)
    assert padded["mga_images_per_sample"].tolist() == [1, 1, 1]
    outputs = {}
    for name, batch in (("padded", padded), ("padding_free", free)):
        model.alignment_head.calls = 0  # the same Gumbel noise for both
        outputs[name] = script.qwen_forward(model, batch)
    for out in outputs.values():
        assert torch.isfinite(out.loss) and torch.isfinite(out.align_loss)
        assert out.align_loss.requires_grad
    torch.testing.assert_close(outputs["padding_free"].loss, outputs["padded"].loss, atol=1e-4, rtol=0)
    torch.testing.assert_close(outputs["padding_free"].align_loss, outputs["padded"].align_loss, atol=1e-4, rtol=0)
    # not vacuous: without the text-position row the packed samples attend to each other
    model.alignment_head.calls = 0
    crossing = script.qwen_forward(model, dict(free, position_ids=free["position_ids"][1:]))
    assert abs(float(crossing.loss.detach()) - float(outputs["padded"].loss.detach())) > 1e-3
    # the flash-attn variant carries swift's get_packed_seq_params (sample starts = text position 0)
    flash = script.qwen_padding_free_batch(model, rows, flash=True)
    starts = torch.nonzero(free["position_ids"][0, 0] == 0).flatten().tolist()
    assert flash["cu_seq_lens_q"].tolist() == starts + [sum(lengths)] == [0, *itertools.accumulate(lengths)]
    assert flash["cu_seq_lens_q"].dtype == torch.int32 and torch.equal(flash["cu_seq_lens_k"], flash["cu_seq_lens_q"])
    assert flash["max_length_q"] == flash["max_length_k"] == max(lengths)


@pytest.mark.slow
def test_gpu_acceptance_cpu_smoke_runs_every_check_a_cpu_can(tmp_path):
    """benchmarks/gpu_acceptance.sh --cpu-smoke: one line per check, DONE last, no FAIL (the GPU-only checks SKIP)."""
    script = REPO_ROOT / "benchmarks" / "gpu_acceptance.sh"
    result = subprocess.run(["bash", str(script), "--cpu-smoke", "--json", str(tmp_path / "a.json")],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    lines = result.stdout.strip().splitlines()
    checks = {line.split()[1]: line.split()[2] for line in lines if line.startswith("CHECK ")}
    assert lines[-1] == "DONE fails=0 required_skipped=swift_sft_fp16_zero2", result.stdout + result.stderr[-3000:]
    assert result.returncode == 0  # on a CPU a required SKIP is not a failure
    assert {name for name, status in checks.items() if status == "PASS"} == {
        "solver_float32_costs", "blackbox_loss_scale", "loss_scale_read", "packed_vs_padded_nodes",
        "padded_vs_padding_free_qwen", "mga_step_time"}
    assert set(checks) == {c.name for c in _load_acceptance().CHECKS}
    assert json.loads((tmp_path / "a.json").read_text())["device"] == "cpu"


def _load_acceptance():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", REPO_ROOT / "benchmarks" / "gpu_acceptance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_gpu_acceptance_fails_a_required_skip_only_on_a_gpu(capsys):
    module = _load_acceptance()
    failing = module.Check("broken", lambda ctx: (_ for _ in ()).throw(ValueError("boom")), required=True)
    skipped = module.Check("gpu_only", lambda ctx: module._gpu_only(ctx, "it"), required=True)
    late = module.Check("optional", lambda ctx: "ran", estimate_s=100.0)
    ctx = module.Context(device="cpu", cpu_smoke=False, started=0.0, deadline_s=1.0)
    ctx.started = __import__("time").perf_counter()
    results = module.run_checks(ctx, (failing, skipped, late))
    assert [r["status"] for r in results] == ["FAIL", "SKIP", "SKIP"]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("CHECK broken FAIL ValueError: boom") and "deadline" in printed[2]
