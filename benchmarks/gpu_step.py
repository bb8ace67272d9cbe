"""One training step of a mid-size exgra_med with MGA on CUDA, in bf16 and in fp16: times, memory.

Usage (on a machine with a CUDA GPU; writes ``$OUT/gpu_step.json`` when ``OUT`` is set):

    python benchmarks/gpu_step.py [--hidden 2048] [--layers 8] [--batch 8] [--steps 3] [--json PATH]

Builds a random-weight exgra_med (LLaMA, ``--hidden`` wide, ``--layers`` deep; CLIP-L-sized vision
tower at 224 px, 256 image tokens; MGA module) with the real LLaMA tokenizer, and synthetic batches
of the shape the ``exgra_med`` template produces (image block + question + answer, and the merged
answers / extended answers of the alignment). For each precision it times forward + backward +
AdamW step (after one warm-up step), with ``torch.autocast`` and, for fp16, a ``GradScaler`` whose
current scale is handed to the MGA black-box backward (``model.mga_loss_scale``), as the
``exgra_mga`` loss does under swift. Attention: flash-attn 2 when importable, else sdpa.

Without CUDA it prints why and exits with status 3 (nothing is measured on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

NO_CUDA_EXIT = 3


def _attention_implementation() -> str:
    try:
        import flash_attn  # noqa: F401
        return "flash_attention_2"
    except ImportError:
        return "sdpa"


def build_model(hidden: int, layers: int, attn: str):
    """Random mid-size exgra_med on CUDA in fp32 master weights (autocast does the mixed precision)."""
    import torch

    from exgramed_plugin.data.tiny import build_tokenizer
    from exgramed_plugin.modeling.configuration import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN, \
        ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    tokenizer = build_tokenizer()
    config = ExGraMedConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=int(hidden * 2.6875) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128), max_position_embeddings=2048,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768),
        im_patch_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PATCH_TOKEN),
        im_start_token_id=tokenizer.convert_tokens_to_ids(IMAGE_START_TOKEN),
        im_end_token_id=tokenizer.convert_tokens_to_ids(IMAGE_END_TOKEN),
        mga_enabled=True, architectures=["ExGraMedForCausalLM"])
    config._attn_implementation = attn
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = ExGraMedForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.model.vision_tower.requires_grad_(False)  # --freeze_vit, the recipes' default
    model.gradient_checkpointing_enable()
    return model.train(), tokenizer


def make_batch(config, tokenizer, batch: int, answer_tokens: int = 96, extended_tokens: int = 160):
    """Shapes of an exgra_med training batch: <im_start> 256 x <im_patch> <im_end> + text; MGA texts."""
    import torch
    generator = torch.Generator().manual_seed(1)
    image_block = [config.im_start_token_id] + [config.im_patch_token_id] * config.num_image_tokens + \
        [config.im_end_token_id]
    question = torch.randint(100, 30000, (48,), generator=generator).tolist()
    answer = torch.randint(100, 30000, (answer_tokens,), generator=generator).tolist()
    ids = [tokenizer.bos_token_id] + question[:8] + image_block + question[8:] + answer
    input_ids = torch.tensor([ids] * batch)
    labels = input_ids.clone()
    labels[:, :len(ids) - len(answer)] = -100
    size = config.vision_config.image_size
    pixel_values = torch.randn(batch, 3, size, size, generator=generator)
    text_len = max(answer_tokens, extended_tokens) + 1
    text_ids = torch.full((2 * batch, text_len), config.pad_token_id)
    text_mask = torch.zeros(2 * batch, text_len, dtype=torch.long)
    for row in range(2 * batch):
        length = (answer_tokens if row < batch else extended_tokens) + 1
        text_ids[row, :length] = torch.randint(100, 30000, (length,), generator=generator)
        text_mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values": pixel_values, "mga_text_ids": text_ids, "mga_text_mask": text_mask}


def run_precision(model, batch: dict, dtype_name: str, steps: int) -> dict:
    import torch
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
    if dtype_name == "bf16" and not torch.cuda.is_bf16_supported():
        return {"skipped": "bf16 is not supported by this GPU"}
    scaler = torch.amp.GradScaler("cuda", enabled=dtype_name == "fp16")
    # the black-box backward divides the incoming (scaled) gradient by the current scale
    model.mga_loss_scale = (lambda: float(scaler.get_scale())) if scaler.is_enabled() else None
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    inputs = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype):
            out = model(**inputs)
            loss = out.loss + model.config.mga_alpha * out.align_loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step > 0:  # step 0 is the warm-up (allocator, kernels, cuBLAS handles)
            times.append(time.perf_counter() - start)
        losses.append({"lm_loss": float(out.loss.detach()), "align_loss": float(out.align_loss.detach())})
    del optimizer
    return {"median_step_s": statistics.median(times), "min_step_s": min(times), "steps": steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "losses": losses,
            "final_loss_scale": float(scaler.get_scale()) if scaler.is_enabled() else None,
            "finite": all(v == v and abs(v) < 1e6 for row in losses for v in row.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="per-device batch = MGA graph size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (after 1 warm-up)")
    parser.add_argument("--json", type=Path, default=None,
                        help="result file (default $OUT/gpu_step.json if OUT is set)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA device (torch.cuda.is_available() is False): nothing measured; run it on a GPU "
              "machine", file=sys.stderr)
        return NO_CUDA_EXIT
    attn = _attention_implementation()
    model, tokenizer = build_model(args.hidden, args.layers, attn)
    batch = make_batch(model.config, tokenizer, args.batch)
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
        "attention": attn, "hidden": args.hidden, "layers": args.layers, "batch": args.batch,
        "sequence_length": int(batch["input_ids"].shape[1]), "image_tokens": model.config.num_image_tokens,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "gradient_checkpointing": True,
    }
    for precision in ("bf16", "fp16"):
        result[precision] = run_precision(model, batch, precision, args.steps)
    print(json.dumps(result, indent=2))
    target = args.json or (Path(os.environ["OUT"]) / "gpu_step.json" if os.environ.get("OUT") else None)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        print(f"written to {target}")
    ok = all(result[p].get("finite", True) for p in ("bf16", "fp16"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
