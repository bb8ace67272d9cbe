"""The GPU acceptance run: the plugin's GPU-only paths checked in one command (benchmarks/gpu_acceptance.sh).

One line per check, ``CHECK <name> PASS|FAIL|SKIP <detail>``, required checks first, then the optional
ones while the deadline (``--deadline-s``, default 270 s: a lent GPU machine's 5 minutes with room for
its start) allows; last line ``DONE fails=N``. Exit status 1 on a FAIL, or, on a GPU, when a required
check is SKIP. ``--cpu-smoke`` runs every check that can run on a CPU (small sizes; the test suite
runs it); without ``--cpu-smoke`` and without CUDA it stops with status 3. ``--json PATH`` (default
``$OUT/gpu_acceptance.json`` when ``OUT`` is set) keeps every check's numbers.

Checks (required ones marked *):
* ``solver_float32_costs`` *: under bf16 / fp16 autocast the solver gets float32 costs equal to the
  fp32 computation (the graph network may run in low precision; the costs from its output may not);
* ``blackbox_loss_scale`` *: the MGA gradient at loss scale 2^16, divided back, equals the unscaled one;
* ``loss_scale_read`` *: the scale the backward applies, read under AMP (a real GradScaler), DeepSpeed
  fp16 (a fake engine whose attributes are checked on the installed DeepSpeed classes) and bf16 (none);
* ``packed_vs_padded_nodes`` *: text nodes of the packed pass under bf16 / fp16, LLaMA and Qwen2.5-VL
  decoders, within the padded path's error of the fp32 reference;
* ``swift_sft_fp16_zero2`` *: ``swift sft`` with MGA, fp16 under DeepSpeed ZeRO-2, 2 steps; the scale
  the plugin reads equals DeepSpeed's at every step (SKIP naming why where swift / DeepSpeed cannot run);
* ``swift_sft_bf16_full``: ``swift sft`` with MGA, bf16 full training, 2 steps, finite losses;
* ``swift_sft_padding_free_bf16``: the same with ``--padding_free`` (swift asks for flash attention);
* ``padded_vs_padding_free_qwen``: one Qwen2.5-VL step (1 B on a GPU) padded and padding-free: losses;
* ``text_pass_peak_memory_7b``: peak CUDA memory of a 7B-shaped packed text pass (2 layers), fwd + bwd;
* ``mga_step_time``: the MGA step (forward + backward) at 128-1,024 nodes of width 64.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_CUDA_EXIT = 3
SCALE = 2.0 ** 16


@dataclass
class Context:
    device: str
    cpu_smoke: bool
    started: float
    deadline_s: float
    numbers: dict = field(default_factory=dict)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


class Skip(Exception):
    """The check cannot run here; the message says why."""


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Context], str]
    required: bool = False
    estimate_s: float = 10.0  # on a GPU; used by the deadline guard


# -- the alignment core under mixed precision ----------------------------------------------------------

def _nodes(count: int, width: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(count, width, generator=generator).to(device) for _ in range(3)]


def check_solver_float32_costs(ctx: Context) -> str:
    from exgramed_plugin.alignment import MultiGraphAlignment, blackbox
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = blackbox.prepare_problem

    def spy(unary, quadratic, *args, **kwargs):
        seen.append((unary.detach().clone(), quadratic.detach().clone()))
        return original(unary, quadratic, *args, **kwargs)

    # no graph network: it may run in low precision under autocast; what follows it, the costs, may not
    mga = MultiGraphAlignment(in_features=64, use_message_passing=False).to(ctx.device).eval()
    nodes = _nodes(12, 64, ctx.device)
    blackbox.prepare_problem = spy
    try:
        for dtype in (None, torch.bfloat16, torch.float16):
            with torch.autocast(ctx.device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                mga(*nodes, generator=torch.Generator().manual_seed(0))
    finally:
        blackbox.prepare_problem = original
    (unary32, quadratic32), *low = seen
    details = []
    for name, (unary, quadratic) in zip(("bf16", "fp16"), low):
        if unary.dtype != torch.float32 or quadratic.dtype != torch.float32:
            raise AssertionError(f"{name}: costs in {unary.dtype} / {quadratic.dtype}")
        difference = max(float((unary - unary32).abs().max()), float((quadratic - quadratic32).abs().max()))
        if difference > 1e-5:
            raise AssertionError(f"{name}: costs differ from the fp32 computation by {difference:.2e}")
        details.append(f"{name} max|diff| {difference:.1e}")
    return "float32, " + ", ".join(details)


def check_blackbox_loss_scale(ctx: Context) -> str:
    from exgramed_plugin.alignment import MultiGraphAlignment
    gradients = {}
    for scale in (1.0, SCALE):
        torch.manual_seed(0)
        mga = MultiGraphAlignment(in_features=64).to(ctx.device)
        nodes = [z.requires_grad_() for z in _nodes(16, 64, ctx.device)]
        output = mga(*nodes, generator=torch.Generator().manual_seed(1), loss_scale=lambda scale=scale: scale)
        (output.loss * scale).backward()  # what a GradScaler sends back
        gradients[scale] = mga.gnn.conv1.lin_rel.weight.grad / scale
    reference = gradients[1.0]
    difference = float((gradients[SCALE] - reference).abs().max())
    if not reference.abs().sum() > 0 or difference > 1e-6 * max(1.0, float(reference.abs().max())):
        raise AssertionError(f"unscaled vs scaled-and-divided gradients differ by {difference:.2e}")
    return f"scale 2^16 divided back: max|diff| {difference:.1e}"


def check_loss_scale_read(ctx: Context) -> str:
    from exgramed_plugin.head.loss_scale import applied_loss_scale
    amp = torch.amp.GradScaler(ctx.device, init_scale=SCALE)
    if applied_loss_scale(SimpleNamespace(accelerator=SimpleNamespace(scaler=amp))) != SCALE:
        raise AssertionError("AMP GradScaler: not its scale")
    engine = SimpleNamespace(fp16_enabled=lambda: True, optimizer=SimpleNamespace(loss_scale=SCALE / 2))
    deepspeed = SimpleNamespace(accelerator=SimpleNamespace(scaler=None), deepspeed=engine)
    if applied_loss_scale(deepspeed) != SCALE / 2:
        raise AssertionError("DeepSpeed fp16: not the engine's loss scale")
    bf16 = SimpleNamespace(accelerator=SimpleNamespace(scaler=None), deepspeed=None)
    if applied_loss_scale(bf16) is not None:
        raise AssertionError("bf16: a scale where nothing scales the loss")
    try:
        import inspect

        from deepspeed.runtime.engine import DeepSpeedEngine
        from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    except ImportError:
        return "AMP, DeepSpeed fp16 (fake engine; DeepSpeed not installed: attributes unchecked), bf16"
    if not (callable(DeepSpeedEngine.fp16_enabled) and isinstance(DeepSpeedZeroOptimizer.loss_scale, property)
            and "self.optimizer = " in inspect.getsource(DeepSpeedEngine)):
        raise AssertionError("the fake DeepSpeed engine's attributes are not on the installed classes")
    return "AMP, DeepSpeed fp16 (fake engine, attributes on the installed classes), bf16"


# -- text nodes: packed vs padded ------------------------------------------------------------------------

def _decoders(ctx: Context):
    from transformers import LlamaConfig, LlamaModel
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
    hidden, layers = (64, 2) if ctx.cpu_smoke else (1024, 4)
    heads = max(1, hidden // 64)
    common = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=heads, vocab_size=1000, attn_implementation="sdpa")
    torch.manual_seed(0)
    llama = LlamaModel(LlamaConfig(**common))
    head_dim = hidden // heads
    spatial = 3 * (head_dim // 2) // 8
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        **common, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                   "mrope_section": [head_dim // 2 - 2 * spatial, spatial, spatial]}))
    return {"llama": (llama.to(ctx.device).eval(), 0), "qwen2_5_vl": (qwen.to(ctx.device).eval(), 4)}


def _text_batch(ctx: Context, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    longest = 60 if ctx.cpu_smoke else 400
    lengths = torch.randint(longest // 6, longest + 1, (samples,), generator=generator)
    ids = torch.randint(3, 1000, (samples, longest), generator=generator)
    mask = (torch.arange(longest)[None] < lengths[:, None]).long()
    return (ids * mask).to(ctx.device), mask.to(ctx.device)


def check_packed_vs_padded_nodes(ctx: Context) -> str:
    from exgramed_plugin.head.head import AlignmentHead
    from exgramed_plugin.settings import MGASettings
    packed_head = AlignmentHead(MGASettings(enabled=True))
    padded_head = AlignmentHead(MGASettings(enabled=True, text_packing=False))
    ids, mask = _text_batch(ctx, 8 if ctx.cpu_smoke else 32)
    details, numbers = [], {}
    with torch.no_grad():
        for family, (decoder, rows) in _decoders(ctx).items():
            reference = padded_head.text_nodes(decoder, ids, mask, position_rows=rows).float()
            for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                with torch.autocast(ctx.device, dtype=dtype):
                    packed = packed_head.text_nodes(decoder, ids, mask, position_rows=rows).float()
                    padded = padded_head.text_nodes(decoder, ids, mask, position_rows=rows).float()
                errors = [float(((nodes - reference).norm(dim=1) / reference.norm(dim=1)).max())
                          for nodes in (packed, padded)]
                numbers[f"{family}_{name}"] = {"packed_rel_error": errors[0], "padded_rel_error": errors[1]}
                if not errors[0] <= 1.5 * errors[1] + 1e-3:
                    raise AssertionError(f"{family} {name}: packed error {errors[0]:.2e} > padded {errors[1]:.2e}")
                details.append(f"{family} {name} {errors[0]:.1e}/{errors[1]:.1e}")
    ctx.numbers["packed_vs_padded_nodes"] = numbers
    return "packed/padded rel. error vs fp32: " + ", ".join(details)


# -- swift sft with MGA ------------------------------------------------------------------------------------

PROBE_PLUGIN = '''
"""Test-only swift plugin: at each step, the loss scale the plugin reads and the one DeepSpeed applies."""
import json
import os

from swift.callbacks import TrainerCallback, callbacks_map

from exgramed_plugin.head.loss_scale import applied_loss_scale


class LossScaleProbe(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        engine = getattr(self.trainer, "deepspeed", None)
        row = {"step": state.global_step, "plugin": applied_loss_scale(self.trainer),
               "deepspeed": None if engine is None else float(engine.optimizer.loss_scale)}
        with open(os.environ["LOSS_SCALE_PROBE"], "a") as handle:
            handle.write(json.dumps(row) + "\\n")


callbacks_map["loss_scale_probe"] = LossScaleProbe
'''


def _need(module: str, why: str) -> None:
    import importlib.util
    if importlib.util.find_spec(module) is None:
        raise Skip(f"{module} is not installed ({why})")


def _swift_sft(ctx: Context, folder: Path, extra: list[str]) -> list[dict]:
    _need("swift", "carry the ms-swift wheel: see gpu_acceptance.sh")
    from exgramed_plugin.tiny_checkpoints.builtin_vlms import make_tiny_model
    model = folder / "tiny-qwen2_5_vl"
    if not model.is_dir():
        make_tiny_model("qwen2_5_vl", model)
    out = folder / f"out{len(list(folder.glob('out*')))}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "swift.cli.main", "sft", "--external_plugins",
               str(REPO_ROOT / "exgramed_plugin" / "register.py"), "--model", str(model), "--model_type", "qwen2_5_vl",
               "--template", "qwen2_5_vl", "--dataset", str(REPO_ROOT / "data_templates" / "llava_med_instruct.json"),
               "--loss_type", "exgra_mga", "--tuner_type", "full", "--freeze_aligner", "false", "--max_steps", "2",
               "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1", "--logging_steps", "1",
               "--max_length", "512", "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
               "--output_dir", str(out), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        tail = [line for line in result.stderr.splitlines() if line.strip() and "it/s]" not in line][-3:]
        raise AssertionError(f"swift sft exited {result.returncode}: {' | '.join(tail)[-600:]}")
    logs = sorted(out.glob("v*-*/logging.jsonl"))
    rows = [json.loads(line) for line in logs[-1].read_text().splitlines()] if logs else []
    steps = [row for row in rows if "loss" in row and "align_loss" in row]
    if len(steps) != 2 or not all(abs(float(row[key])) < 1e6 for row in steps for key in ("lm_loss", "align_loss")):
        raise AssertionError(f"expected 2 logged steps with finite lm_loss and align_loss, got {steps}")
    return steps


def _gpu_only(ctx: Context, what: str) -> None:
    if ctx.device != "cuda":
        raise Skip(f"{what} needs a GPU")


def check_swift_sft_fp16_zero2(ctx: Context) -> str:
    _gpu_only(ctx, "DeepSpeed fp16 (its CPU accelerator refuses fp16)")
    _need("deepspeed", "carry its sdist and build it with DS_BUILD_OPS=0: see gpu_acceptance.sh")
    with tempfile.TemporaryDirectory() as folder:
        probe_plugin, probe = Path(folder) / "probe.py", Path(folder) / "scales.jsonl"
        probe_plugin.write_text(PROBE_PLUGIN)
        os.environ["LOSS_SCALE_PROBE"] = str(probe)
        steps = _swift_sft(ctx, Path(folder), ["--torch_dtype", "float16", "--deepspeed", "zero2",
                                               "--external_plugins", str(probe_plugin), "--callbacks",
                                               "loss_scale_probe"])
        scales = [json.loads(line) for line in probe.read_text().splitlines()]
    if not scales or any(row["deepspeed"] is None or row["plugin"] != row["deepspeed"] for row in scales):
        raise AssertionError(f"plugin vs DeepSpeed loss scale: {scales}")
    ctx.numbers["swift_sft_fp16_zero2"] = {"steps": steps, "scales": scales}
    return f"losses finite; loss scale read = DeepSpeed's at every step ({scales[-1]['deepspeed']:g})"


def check_swift_sft_bf16_full(ctx: Context) -> str:
    _gpu_only(ctx, "bf16 training")
    with tempfile.TemporaryDirectory() as folder:
        steps = _swift_sft(ctx, Path(folder), ["--torch_dtype", "bfloat16", "--attn_impl", "sdpa"])
    ctx.numbers["swift_sft_bf16_full"] = steps
    return f"2 steps, align_loss {steps[-1]['align_loss']}, lm_loss {steps[-1]['lm_loss']}"


def check_swift_sft_padding_free_bf16(ctx: Context) -> str:
    _gpu_only(ctx, "bf16 training")
    _need("flash_attn", "swift's padding-free training asks for flash attention; its wheel exceeds the 64 MiB carry")
    with tempfile.TemporaryDirectory() as folder:
        steps = _swift_sft(ctx, Path(folder), ["--torch_dtype", "bfloat16", "--attn_impl", "flash_attn",
                                               "--padding_free", "true"])
    ctx.numbers["swift_sft_padding_free_bf16"] = steps
    return f"2 steps, align_loss {steps[-1]['align_loss']}"


# -- sizes and times -----------------------------------------------------------------------------------------

def check_padded_vs_padding_free_qwen(ctx: Context) -> str:
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_step", REPO_ROOT / "benchmarks" / "gpu_step.py")
    gpu_step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_step)
    small = ctx.cpu_smoke
    model, tokenizer = gpu_step.build_qwen2_5_vl(64 if small else 2048, 2 if small else 8, "sdpa",
                                                 vision_depth=2 if small else 8, vision_hidden=32 if small else 640,
                                                 device=ctx.device, gradient_checkpointing=not small,
                                                 initializer_range=0.3 if small else 0.02)
    rows = gpu_step.qwen_samples(model.config, tokenizer, 3 if small else 8, image_size=56 if small else 448)
    losses = {}
    for layout, batch in (("padded", gpu_step.qwen_padded_batch(model, rows, tokenizer.pad_token_id)),
                          ("padding_free", gpu_step.qwen_padding_free_batch(model, rows, flash=False))):
        model.alignment_head.calls = 0
        torch.manual_seed(0)
        inputs = {k: v.to(ctx.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.no_grad(), torch.autocast(ctx.device, dtype=torch.bfloat16, enabled=not small):
            out = gpu_step.qwen_forward(model, inputs)
        losses[layout] = (float(out.loss), float(out.align_loss))
    difference = max(abs(a - b) for a, b in zip(losses["padded"], losses["padding_free"]))
    ctx.numbers["padded_vs_padding_free_qwen"] = {"losses": losses, "difference": difference}
    if difference > (1e-4 if small else 5e-2):
        raise AssertionError(f"padded {losses['padded']} vs padding-free {losses['padding_free']}")
    return f"lm/align padded {losses['padded'][0]:.4f}/{losses['padded'][1]:.4f}, max|diff| {difference:.1e}"


def check_text_pass_peak_memory_7b(ctx: Context) -> str:
    _gpu_only(ctx, "peak CUDA memory")
    from transformers import LlamaConfig, LlamaModel

    from exgramed_plugin.head.head import AlignmentHead
    from exgramed_plugin.settings import MGASettings
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000, attn_implementation="sdpa")
    decoder = LlamaModel(config).to("cuda", torch.bfloat16).train()
    ids, mask = _text_batch(SimpleNamespace(cpu_smoke=False, device="cuda"), 32)
    head = AlignmentHead(MGASettings(enabled=True))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.max_memory_allocated()
    head.text_nodes(decoder, ids, mask).float().sum().backward()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 30
    ctx.numbers["text_pass_peak_memory_7b"] = {"peak_gib_above_weights": peak, "tokens": int(mask.sum())}
    return f"{peak:.2f} GiB above the weights for {int(mask.sum())} tokens (2 layers, hidden 4096, bf16)"


def check_mga_step_time(ctx: Context) -> str:
    from exgramed_plugin.alignment import MultiGraphAlignment
    sizes = (128,) if ctx.cpu_smoke else (128, 256, 512, 1024)
    times = {}
    for nodes in sizes:
        if ctx.elapsed() > ctx.deadline_s - 30:
            break
        mga = MultiGraphAlignment(in_features=64).to(ctx.device)
        inputs = [z.requires_grad_() for z in _nodes(nodes, 64, ctx.device)]
        start = time.perf_counter()
        mga(*inputs, generator=torch.Generator().manual_seed(0)).loss.backward()
        if ctx.device == "cuda":
            torch.cuda.synchronize()
        times[nodes] = time.perf_counter() - start
    ctx.numbers["mga_step_time"] = times
    return ", ".join(f"{n} nodes {t:.2f} s" for n, t in times.items())


CHECKS = (
    Check("solver_float32_costs", check_solver_float32_costs, required=True, estimate_s=5),
    Check("blackbox_loss_scale", check_blackbox_loss_scale, required=True, estimate_s=5),
    Check("loss_scale_read", check_loss_scale_read, required=True, estimate_s=2),
    Check("packed_vs_padded_nodes", check_packed_vs_padded_nodes, required=True, estimate_s=15),
    Check("swift_sft_fp16_zero2", check_swift_sft_fp16_zero2, required=True, estimate_s=60),
    Check("swift_sft_bf16_full", check_swift_sft_bf16_full, estimate_s=45),
    Check("swift_sft_padding_free_bf16", check_swift_sft_padding_free_bf16, estimate_s=45),
    Check("padded_vs_padding_free_qwen", check_padded_vs_padding_free_qwen, estimate_s=40),
    Check("text_pass_peak_memory_7b", check_text_pass_peak_memory_7b, estimate_s=20),
    Check("mga_step_time", check_mga_step_time, estimate_s=60),
)


def run_checks(ctx: Context, checks=CHECKS) -> list[dict]:
    """Run the checks in order, printing one line each; optional ones only while the deadline allows."""
    results = []
    for check in checks:
        if not check.required and ctx.elapsed() + (1 if ctx.cpu_smoke else check.estimate_s) > ctx.deadline_s:
            status, detail = "SKIP", f"deadline: {ctx.elapsed():.0f} s of {ctx.deadline_s:.0f} s used"
        else:
            start = time.perf_counter()
            try:
                status, detail = "PASS", check.run(ctx)
            except Skip as why:
                status, detail = "SKIP", str(why)
            except Exception as error:  # a check that breaks is a failure, reported with its reason
                status, detail = "FAIL", f"{type(error).__name__}: {error}"
            detail += f" [{time.perf_counter() - start:.1f} s]"
        print(f"CHECK {check.name} {status} {detail}", flush=True)
        results.append({"name": check.name, "required": check.required, "status": status, "detail": detail})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_acceptance", description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="run what can run on a CPU, small sizes")
    parser.add_argument("--deadline-s", type=float, default=270.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA device (use --cpu-smoke on a CPU)", file=sys.stderr)
        return NO_CUDA_EXIT
    ctx = Context(device="cpu" if args.cpu_smoke else "cuda", cpu_smoke=args.cpu_smoke, started=time.perf_counter(),
                  deadline_s=args.deadline_s)
    results = run_checks(ctx)
    fails = sum(r["status"] == "FAIL" for r in results)
    required_skipped = [r["name"] for r in results if r["required"] and r["status"] == "SKIP"]
    target = args.json or (Path(os.environ["OUT"]) / "gpu_acceptance.json" if os.environ.get("OUT") else None)
    if target is not None:
        device = torch.cuda.get_device_name(0) if ctx.device == "cuda" else "cpu"
        target.write_text(json.dumps({"device": device, "torch": torch.__version__, "checks": results,
                                      "numbers": ctx.numbers, "wall_s": ctx.elapsed()}, indent=2, default=str))
    print(f"DONE fails={fails}" + (f" required_skipped={','.join(required_skipped)}" if required_skipped else ""))
    return 1 if fails or (ctx.device == "cuda" and required_skipped) else 0


if __name__ == "__main__":
    sys.exit(main())
