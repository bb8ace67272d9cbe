"""One training step of a mid-size model with MGA on CUDA: times, memory (exgra_med or Qwen2.5-VL).

Usage (on a machine with a CUDA GPU; writes ``$OUT/gpu_step.json``, or for ``--model qwen2_5_vl``
``$OUT/gpu_step_qwen2_5_vl.json``, when ``OUT`` is set):

    python benchmarks/gpu_step.py [--hidden 2048] [--layers 8] [--batch 8] [--steps 3] [--json PATH]
    python benchmarks/gpu_step.py --model qwen2_5_vl [--hidden 2048] [--layers 8] [--batch 8] [--steps 3]
        [--vision-depth 8] [--vision-hidden 640] [--image-size 448] [--seed 0] [--json PATH]

``--model exgra_med`` (default): builds a random-weight exgra_med (LLaMA, ``--hidden`` wide,
``--layers`` deep; CLIP-L-sized vision tower at 224 px, 256 image tokens; MGA module) with the real
LLaMA tokenizer, and synthetic batches of the shape the ``exgra_med`` template produces (image block
+ question + answer, and the merged answers / extended answers of the alignment). For each precision
it times forward + backward + AdamW step (after one warm-up step), with ``torch.autocast`` and, for
fp16, a ``GradScaler`` whose current scale is handed to the MGA black-box backward
(the step's ``outputs.align_loss_scale``), as the ``exgra_mga`` loss does under swift. Attention: flash-attn 2 when
importable, else sdpa.

``--model qwen2_5_vl``: the model-independent alignment head (exgramed_plugin/head/builtin.py) on
swift's built-in Qwen2.5-VL. A random-weight ``Qwen2_5_VLForConditionalGeneration`` (text
``--hidden`` x ``--layers``, heads of 128, one KV head per 8, intermediate 5.375 x hidden as in
Qwen2.5-VL-3B, the real 151936-row tied vocabulary and special-token ids from the project's
offline tokenizer; vision tower ``--vision-depth`` x ``--vision-hidden``, patch 14, spatial merge
2, window attention; ViT blocks frozen, merger trainable as with ``--freeze_aligner false``;
gradient checkpointing) with the head attached (``MGASettings(enabled=True)``, packed text passes).
Batches are what swift's ``qwen2_5_vl`` template (plus the plugin's mixin) would give the model:
system turn, ``<|vision_start|>`` + ``(image_size/28)**2`` image tokens (448 px: 256) +
``<|vision_end|>``, question, assistant answer (labelled, with ``<|im_end|>``), M-RoPE positions
from ``get_rope_index``, and the ``mga_*`` keys (``mga_text_ids`` [1, T], ``mga_text_lengths``
[2B], ``mga_image_tokens``, ``mga_images_per_sample``, ``mga_input_ids``); the image features are
merged into ``inputs_embeds`` inside the timed step, as swift's ``_post_encode`` does. It times
forward + backward + AdamW step in bf16 autocast (fp32 master weights, no loss scaling), after one
warm-up step, for two layouts of the same samples, each from the same initial weights, Gumbel noise
and dropout RNG (so that the two warm-up steps' losses agree up to bf16 rounding):

* ``padded``: ``[B, L]`` right-padded, attention mask, 3-row M-RoPE positions;
* ``padding_free``: one ``[1, sum L]`` row, 4-row positions (text positions first, restarting per
  sample); with flash-attn also ``cu_seq_lens_q/k`` and ``max_length_q/k`` as swift's
  ``get_packed_seq_params`` gives them (attention ``flash_attention_2``), else sdpa (the mask
  built from the text positions).

Per layout: median / min step seconds, peak CUDA memory, lm_loss and align_loss (``lm_loss`` /
``align_loss``: the warm-up step's; ``losses``: every step's), tokens (non-padding) and the sequence
shape, plus ``warmup_step_difference`` of the two layouts; under the ``"qwen2_5_vl"`` key of the
JSON, next to device / torch / attention / sizes / parameters. The exgra_med output is unchanged.

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

    from exgramed_plugin.tiny_checkpoints.exgra_med import build_tokenizer
    from exgramed_plugin.common.tokens import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
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
        if scaler.is_enabled():  # the black-box backward divides the incoming (scaled) gradient by the current scale
            out.align_loss_scale.source = lambda: float(scaler.get_scale())
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


# -- Qwen2.5-VL with the model-independent alignment head ------------------------------------------

QWEN_SYSTEM = "You are a helpful assistant."  # swift's qwen2_5_vl default system turn
QWEN_LAYOUTS = ("padded", "padding_free")


def build_qwen2_5_vl(hidden: int, layers: int, attn: str, *, vision_depth: int = 8, vision_hidden: int = 640,
                     device: str = "cuda", gradient_checkpointing: bool = True, seed: int = 0,
                     initializer_range: float = 0.02):
    """Random Qwen2.5-VL (real token ids and vocabulary) with the alignment head, fp32 weights on ``device``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from exgramed_plugin.tiny_checkpoints.builtin_vlms import QWEN2_5_VL_SPECIAL_TOKENS, QWEN2_5_VL_VOCAB_SIZE, \
        build_qwen2_5_vl_tokenizer
    from exgramed_plugin.head.builtin import attach_alignment_head
    from exgramed_plugin.settings import MGASettings
    tokenizer = build_qwen2_5_vl_tokenizer()
    ids = {token: token_id for token_id, token in QWEN2_5_VL_SPECIAL_TOKENS}
    heads = max(1, hidden // 128)
    head_dim = hidden // heads
    spatial = 3 * (head_dim // 2) // 8  # M-RoPE sections (t, h, w) sum to head_dim / 2: Qwen2.5-VL's 16, 24, 24
    vision_heads = max(1, vision_hidden // 80)  # Qwen2.5-VL's ViT: 1280 wide, 16 heads of 80
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=QWEN2_5_VL_VOCAB_SIZE, hidden_size=hidden,
                         intermediate_size=int(hidden * 5.375) // 64 * 64 or 2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=max(1, heads // 8),
                         max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [head_dim // 2 - 2 * spatial, spatial, spatial]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True, use_cache=False,
                         initializer_range=initializer_range),
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 27 // 10,
                           num_heads=vision_heads, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                           window_size=112, out_hidden_size=hidden, tokens_per_second=2,
                           fullatt_block_indexes=[i for i in range(vision_depth)  # real: 7, 15, 23, 31 of 32
                                                  if i % 8 == 7 or i == vision_depth - 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True, attn_implementation=attn, initializer_range=initializer_range,
        architectures=["Qwen2_5_VLForConditionalGeneration"])
    processing = dict(min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28, patch_size=14, merge_size=2,
                      temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**processing), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(**processing))
    with torch.random.fork_rng(devices=[]):  # weights (graph network included) from `seed` only
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
        attach_alignment_head(model, "qwen2_5_vl", MGASettings(enabled=True), processor)
    visual = model.model.visual
    visual.requires_grad_(False)  # --freeze_vit ...
    visual.merger.requires_grad_(True)  # ... --freeze_aligner false: the image nodes' merger trains
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.train(), tokenizer


def qwen_samples(config, tokenizer, batch: int, *, image_size: int = 448, question_tokens: int = 48,
                 answer_tokens: int = 96, extended_tokens: int = 160, seed: int = 1) -> list[dict]:
    """``batch`` encoded training rows as swift's qwen2_5_vl template (+ the plugin's mixin) gives them.

    One ``image_size`` square image each (``image_grid_thw`` (1, s/14, s/14), its flattened patches
    as ``pixel_values``), question and answer of random ordinary tokens, answers (and extended
    answers) shrinking with the sample index so that the padded layout pads.
    """
    import torch

    from exgramed_plugin.tiny_checkpoints.builtin_vlms import QWEN2_5_VL_SPECIAL_TOKENS
    vision = config.vision_config
    grid = image_size // vision.patch_size
    if image_size % vision.patch_size or grid % vision.spatial_merge_size:
        raise ValueError(f"image size {image_size} is not a multiple of patch x merge = "
                         f"{vision.patch_size * vision.spatial_merge_size} px")
    image_tokens = grid * grid // vision.spatial_merge_size ** 2
    patch_values = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    generator = torch.Generator().manual_seed(seed)
    words = torch.tensor(sorted(i for i in tokenizer.get_vocab().values() if i < QWEN2_5_VL_SPECIAL_TOKENS[0][0]))

    def draw(n: int) -> list[int]:
        return words[torch.randint(len(words), (n,), generator=generator)].tolist()

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    before_image = encode(f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    after_image = encode("<|vision_end|>")
    before_answer = encode("<|im_end|>\n<|im_start|>assistant\n")
    end = encode("<|im_end|>")
    rows = []
    for index in range(batch):
        shrink = index / max(1, batch - 1) / 2  # 0 .. 1/2
        answer = draw(max(1, round(answer_tokens * (1 - shrink))))
        extended = answer + draw(max(1, round((extended_tokens - answer_tokens) * (1 - shrink))))
        prompt = before_image + [config.image_token_id] * image_tokens + after_image + \
            draw(max(1, question_tokens - index % 4)) + before_answer
        rows.append({"input_ids": prompt + answer + end, "labels": [-100] * len(prompt) + answer + end,
                     "pixel_values": torch.randn(grid * grid, patch_values, generator=generator),
                     "image_grid_thw": torch.tensor([[1, grid, grid]]),
                     "merged_answer_ids": answer, "extended_answer_ids": extended, "mga_image_tokens": [image_tokens]})
    return rows


def qwen_alignment_keys(rows: list[dict]) -> dict:
    """The batch's ``mga_*`` keys, packed (collate_alignment_inputs with the default mga_text_packing)."""
    import torch
    sequences = [r["merged_answer_ids"] for r in rows] + [r["extended_answer_ids"] for r in rows]
    return {"mga_text_ids": torch.tensor([[t for s in sequences for t in s]]),
            "mga_text_lengths": torch.tensor([len(s) for s in sequences]),
            "mga_image_tokens": torch.tensor([n for r in rows for n in r["mga_image_tokens"]]),
            "mga_images_per_sample": torch.tensor([len(r["mga_image_tokens"]) for r in rows])}


def _rope_positions(model, input_ids, image_grid_thw, attention_mask=None):
    """Qwen2.5-VL's 3-row M-RoPE positions ``[3, B, L]`` (``get_rope_index``, as swift's template calls it)."""
    import torch
    token_types = (input_ids == model.config.image_token_id).to(torch.int32)
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(input_ids, token_types, image_grid_thw=image_grid_thw,
                                                  attention_mask=attention_mask)
    return positions


def qwen_padded_batch(model, rows: list[dict], pad_token_id: int) -> dict:
    """``[B, L]`` right-padded, attention mask, 3-row positions; pixel values of every image in order."""
    import torch
    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.tensor([r["input_ids"] + [pad_token_id] * (length - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (length - len(r["labels"])) for r in rows])
    attention_mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (length - len(r["input_ids"])) for r in rows])
    grid = torch.cat([r["image_grid_thw"] for r in rows])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": _rope_positions(model, input_ids, grid, attention_mask),
            "pixel_values": torch.cat([r["pixel_values"] for r in rows]), "image_grid_thw": grid,
            **qwen_alignment_keys(rows)}


def qwen_padding_free_batch(model, rows: list[dict], *, flash: bool) -> dict:
    """One ``[1, sum L]`` row, 4-row positions (text positions first, restarting per sample); with ``flash``
    also swift's ``get_packed_seq_params`` (``cu_seq_lens_q/k`` int32, ``max_length_q/k``)."""
    import torch
    positions = [torch.cat([torch.arange(len(r["input_ids"]))[None, None],
                            _rope_positions(model, torch.tensor([r["input_ids"]]), r["image_grid_thw"])])
                 for r in rows]
    batch = {"input_ids": torch.tensor([[t for r in rows for t in r["input_ids"]]]),
             "labels": torch.tensor([[t for r in rows for t in r["labels"]]]),
             "position_ids": torch.cat(positions, dim=2),
             "pixel_values": torch.cat([r["pixel_values"] for r in rows]),
             "image_grid_thw": torch.cat([r["image_grid_thw"] for r in rows]), **qwen_alignment_keys(rows)}
    if flash:
        lengths = torch.tensor([len(r["input_ids"]) for r in rows])
        cu = torch.cat([torch.zeros(1, dtype=torch.int32), lengths.cumsum(0).to(torch.int32)])
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=int(lengths.max()),
                     max_length_k=int(lengths.max()))
    return batch


def qwen_forward(model, batch: dict):
    """The training forward swift runs: image features merged into ``inputs_embeds`` (``_post_encode``), the
    input ids handed to the head as ``mga_input_ids``; returns the outputs (``loss``, ``align_loss``)."""
    import torch
    inputs = dict(batch)
    input_ids = inputs.pop("input_ids")
    pixel_values, grid = inputs.pop("pixel_values"), inputs.pop("image_grid_thw")
    embeds = model.model.language_model.embed_tokens(input_ids)
    features = model.model.get_image_features(pixel_values, grid)
    features = getattr(features, "pooler_output", features)
    if isinstance(features, (list, tuple)):
        features = torch.cat(list(features))
    mask = (input_ids == model.config.image_token_id)[..., None].expand_as(embeds)
    embeds = embeds.masked_scatter(mask, features.to(embeds.dtype))
    return model(inputs_embeds=embeds, mga_input_ids=input_ids, use_cache=False, **inputs)


def _real_tokens(batch: dict) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


def run_qwen_layout(model, batch: dict, steps: int) -> dict:
    """bf16-autocast forward + backward + AdamW steps of one layout (step 0: warm-up, not timed)."""
    import torch
    if not torch.cuda.is_bf16_supported():
        return {"skipped": "bf16 is not supported by this GPU"}
    alpha = model.alignment_head.settings.alpha
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
    inputs = {k: v.cuda(non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for step in range(steps + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = qwen_forward(model, inputs)
            loss = out.loss + alpha * out.align_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step > 0:
            times.append(time.perf_counter() - start)
        losses.append({"lm_loss": float(out.loss.detach()), "align_loss": float(out.align_loss.detach())})
    del optimizer
    return {"median_step_s": statistics.median(times), "min_step_s": min(times), "steps": steps,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
            "lm_loss": losses[0]["lm_loss"], "align_loss": losses[0]["align_loss"], "losses": losses,
            "tokens": _real_tokens(batch), "sequence_shape": list(batch["input_ids"].shape),
            "finite": all(v == v and abs(v) < 1e6 for row in losses for v in row.values())}


def run_qwen(args, attn: str) -> tuple[dict, dict]:
    """Both layouts of the same samples, each from the same initial weights, alignment noise and dropout RNG."""
    import torch
    model, tokenizer = build_qwen2_5_vl(args.hidden, args.layers, attn, vision_depth=args.vision_depth,
                                        vision_hidden=args.vision_hidden, seed=args.seed)
    rows = qwen_samples(model.config, tokenizer, args.batch, image_size=args.image_size)
    batches = {"padded": qwen_padded_batch(model, rows, tokenizer.pad_token_id),
               "padding_free": qwen_padding_free_batch(model, rows, flash=attn == "flash_attention_2")}
    initial = {name: value.detach().cpu().clone() for name, value in model.state_dict().items()}
    vision = model.config.vision_config
    result = {"vision_depth": vision.depth, "vision_hidden": vision.hidden_size, "image_size": args.image_size,
              "image_tokens": int(rows[0]["mga_image_tokens"][0]), "alpha": model.alignment_head.settings.alpha}
    for layout in QWEN_LAYOUTS:
        model.load_state_dict(initial)
        model.alignment_head.calls = 0  # the same Gumbel noise for both layouts ...
        torch.manual_seed(args.seed)  # ... and the same dropout masks (the graph network's dropout)
        torch.cuda.empty_cache()
        result[layout] = run_qwen_layout(model, batches[layout], args.steps)
    if all("lm_loss" in result[layout] for layout in QWEN_LAYOUTS):
        result["warmup_step_difference"] = {
            key: abs(result["padded"][key] - result["padding_free"][key]) for key in ("lm_loss", "align_loss")}
    summary = {"parameters": sum(p.numel() for p in model.parameters()),
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    return summary, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="per-device batch = MGA graph size")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per precision (after 1 warm-up)")
    parser.add_argument("--json", type=Path, default=None,
                        help="result file (default $OUT/gpu_step.json, for qwen2_5_vl $OUT/gpu_step_qwen2_5_vl.json, "
                             "if OUT is set)")
    parser.add_argument("--model", choices=("exgra_med", "qwen2_5_vl"), default="exgra_med",
                        help="exgra_med (bf16 and fp16) or swift's Qwen2.5-VL with the alignment head (bf16, padded "
                             "and padding-free)")
    parser.add_argument("--vision-depth", type=int, default=8, help="qwen2_5_vl: ViT blocks")
    parser.add_argument("--vision-hidden", type=int, default=640, help="qwen2_5_vl: ViT width (heads of 80)")
    parser.add_argument("--seed", type=int, default=0, help="qwen2_5_vl: weights and the RNG of each layout")
    parser.add_argument("--image-size", type=int, default=448,
                        help="qwen2_5_vl: square image side in px, a multiple of 28 (448: 256 image tokens)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    if not torch.cuda.is_available():
        print("gpu_step: no CUDA device (torch.cuda.is_available() is False): nothing measured; run it on a GPU "
              "machine", file=sys.stderr)
        return NO_CUDA_EXIT
    attn = _attention_implementation()
    if args.model == "qwen2_5_vl":
        return _main_qwen(args, attn)
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


def _write_result(result: dict, target: Path | None) -> None:
    print(json.dumps(result, indent=2))
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        print(f"written to {target}")


def _main_qwen(args, attn: str) -> int:
    import torch
    summary, qwen = run_qwen(args, attn)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
              "model": "qwen2_5_vl", "attention": attn, "hidden": args.hidden, "layers": args.layers,
              "batch": args.batch, **summary, "gradient_checkpointing": True, "precision": "bf16",
              "qwen2_5_vl": qwen}
    default = Path(os.environ["OUT"]) / "gpu_step_qwen2_5_vl.json" if os.environ.get("OUT") else None
    _write_result(result, args.json or default)
    return 0 if all(qwen[layout].get("finite", True) for layout in QWEN_LAYOUTS) else 1


if __name__ == "__main__":
    sys.exit(main())
