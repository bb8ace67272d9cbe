"""Training-step time, peak memory and token census with multi-graph alignment versus α = 0, in one run.

Usage: python benchmarks/bench_step.py [--hidden 256] [--layers 4] [--batch 16] [--steps 8]

Builds a small random exgra_med model, encodes the demo instruct data with the real ``exgra_med``
template (answers + extended answers), and times forward + backward + AdamW step for four
configurations on the same batches: α = 0 (no MGA module, no extra forward), MGA with the text
passes padded to one ``[2B, L]`` batch (``mga_text_packing`` false, the layout before packing),
MGA with the packed text passes (the default), and MGA on raw token embeddings (``mga_after_de``
false). Prints median step times (wall, and the process's CPU time, steadier when others share the
machine), the ratios to α = 0, the peak memory of each configuration
(measured in a child process so that peaks do not mix) and, per configuration, the real tokens and
the computed token positions of the main forward and of the text passes (per step): the real
tokens are the floor of the method's work.

Then the census alone (token counts, no model) of batches with very uneven lengths and of a
7B-shaped configuration, so that the gain on a GPU can be estimated from tokens.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = {"alpha0": dict(mga_enabled=False),
           "mga_padded": dict(mga_enabled=True, mga_after_de=True, mga_text_packing=False),
           "mga": dict(mga_enabled=True, mga_after_de=True),
           "mga_no_de": dict(mga_enabled=True, mga_after_de=False)}
LABELS = {"alpha0": "alpha = 0 (no MGA)", "mga_padded": "MGA, text passes padded [2B, L]",
          "mga": "MGA, text passes packed", "mga_no_de": "MGA, token embeddings (after_de false)"}
# A LLaMA-7B decoder (LLaVA-Med v1) and CLIP-L/14 at 224 px: 256 <im_patch> + <im_start>/<im_end>.
LLAMA_7B = SimpleNamespace(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                           num_key_value_heads=32, _attn_implementation="sdpa")
IMAGE_BLOCK_TOKENS = 258


def census(inputs: dict, config) -> tuple[int, int, int, int]:
    """(main real, main computed, text real, text computed) token positions of one batch."""
    from exgramed_plugin.head.text_packing import text_layout
    main = (int(inputs["attention_mask"].sum()), inputs["input_ids"].numel())
    if not config.mga_enabled:
        return (*main, 0, 0)
    packed = "mga_text_lengths" in inputs
    lengths = (inputs["mga_text_lengths"] if packed else inputs["mga_text_mask"].sum(dim=1)).tolist()
    if not config.mga_after_de:
        return (*main, sum(lengths), 0)  # the token embeddings are pooled, no decoder pass
    computed = text_layout(lengths, config).computed if packed else inputs["mga_text_ids"].numel()
    return (*main, sum(lengths), computed)


def _batches(checkpoint: str, data_file: str, batch: int, steps: int, fields: dict):
    import exgramed_plugin.register  # noqa: F401
    from swift.model import get_processor
    from swift.template import get_template

    from exgramed_plugin.data.formats import row_to_standard
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    config = ExGraMedConfig.from_pretrained(checkpoint)
    for key, value in fields.items():
        setattr(config, key, value)
    template = get_template(get_processor(checkpoint))
    template.config = config
    template.set_mode("train")
    rows = [row_to_standard(r, data_file) for r in json.loads(Path(data_file).read_text())]
    encoded = [template.encode(r) for r in rows]
    out = []
    for step in range(steps):
        chunk = [encoded[(step * batch + i) % len(encoded)] for i in range(batch)]
        out.append(template.data_collator(chunk))
    return out


def _measure(name: str, checkpoint: str, data_file: str, batch: int, steps: int, queue) -> None:
    import torch
    torch.set_num_threads(2)
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(checkpoint)
    for key, value in CONFIGS[name].items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = ExGraMedForCausalLM.from_pretrained(checkpoint, config=config).train()
    model.model.vision_tower.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batches = _batches(checkpoint, data_file, batch, steps + 2, CONFIGS[name])
    counts = [census(inputs, model.config) for inputs in batches]
    times, cpu_times = [], []
    for index, inputs in enumerate(batches):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = model(**inputs)
        loss = out.loss + (out.align_loss if out.align_loss is not None else 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_step = tuple(sum(c[i] for c in counts) / len(counts) for i in range(4))
    queue.put((name, statistics.median(times), min(times), statistics.median(cpu_times), peak_mib, per_step))


def _ratio(computed: float, real: float) -> str:
    return f"{computed / real:.2f}" if real and computed else "-"


def uneven_lengths(batch: int, seed: int) -> list[int]:
    """Merged answers then merged extended answers of one batch with very uneven lengths.

    Log-normal, sigma 1 (a factor e either side of the median), medians 12 and 120 tokens,
    clipped to [2, 2048]: most answers are short and a few extended answers are 10x the median.
    """
    rng = random.Random(seed)
    answers = [min(2048, max(2, round(rng.lognormvariate(math.log(12), 1.0)))) for _ in range(batch)]
    extended = [min(2048, max(2, round(rng.lognormvariate(math.log(120), 1.0)))) for _ in range(batch)]
    return answers + extended


def instruct_7b_batch(batch: int, seed: int) -> tuple[list[int], list[int]]:
    """Token counts (main sequences, text-pass sequences) of a LLaVA-Med-instruct-shaped batch.

    Assumed shapes (no LLaVA-Med data is on this machine; the arguments of the distributions are
    guesses, stated here so the estimate can be redone with real counts): 1-4 turns; questions
    log-normal around 15 tokens, answers around 60 tokens (sigma 0.7); an extended answer 1.5-3x its
    answer; a main sequence = BOS + system prompt (38) + image block (258) + turns (8 tokens of
    ``### Human:`` / ``### Assistant:`` each), at most 2048.
    """
    rng = random.Random(seed)
    main, answers, extended = [], [], []
    for _ in range(batch):
        turns = rng.randint(1, 4)
        questions = [round(rng.lognormvariate(math.log(15), 0.5)) for _ in range(turns)]
        replies = [round(rng.lognormvariate(math.log(60), 0.7)) for _ in range(turns)]
        main.append(min(2048, 1 + 38 + IMAGE_BLOCK_TOKENS + sum(questions) + sum(replies) + 8 * turns))
        answers.append(1 + sum(replies) + turns)
        extended.append(round(answers[-1] * rng.uniform(1.5, 3.0)))
    return main, answers + extended


def _text_census(name: str, lengths: list[int], config) -> str:
    from exgramed_plugin.head.text_packing import text_layout
    real = sum(lengths)
    padded = len(lengths) * max(lengths)
    buckets = text_layout(lengths, config)
    return (f"  {name}: real {real}, padded [2B, L] {padded} ({_ratio(padded, real)}), packed sdpa "
            f"{buckets.rows} x {buckets.width} = {buckets.computed} "
            f"({_ratio(buckets.computed, real)}), "
            f"packed flash-attn varlen {real} (1.00)")


def print_census(batch: int, tiny_config) -> None:
    """Token census without a model: uneven batches on the bench model, and a 7B-shaped step."""
    print(f"\ntext-pass census, batches of {batch} with very uneven lengths (computed positions, ratio to real):")
    for seed in range(3):
        print(_text_census(f"seed {seed}", uneven_lengths(batch, seed), tiny_config))
    print(f"\n7B-shaped census (hidden 4096, 32 layers, {IMAGE_BLOCK_TOKENS - 2} image tokens, batch {batch}, "
          "LLaVA-Med-instruct-shaped lengths, see instruct_7b_batch):")
    for seed in range(3):
        main, lengths = instruct_7b_batch(batch, seed)
        main_computed = batch * max(main)
        print(f"  seed {seed}: main forward real {sum(main)}, computed {main_computed} "
              f"({_ratio(main_computed, sum(main))})")
        print(_text_census("  text passes", lengths, LLAMA_7B))
        padded = len(lengths) * max(lengths)
        # a 7B position's linear layers dwarf its attention and the 32k head: time ~ decoder positions
        print(f"    step estimate from positions, MGA / alpha = 0: padded "
              f"{(main_computed + padded) / main_computed:.2f}, packed (flash varlen) "
              f"{(main_computed + sum(lengths)) / main_computed:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="graph size per device (16 in the original)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    from exgramed_plugin.data.demo_data import make_demo_data
    from exgramed_plugin.tiny_checkpoints.exgra_med import make_tiny_checkpoint
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(make_tiny_checkpoint(Path(tmp) / "model", hidden_size=args.hidden, num_layers=args.layers))
        data_file = str(make_demo_data(Path(tmp) / "data").alignment_train)
        context = mp.get_context("spawn")
        results = {}
        for name in CONFIGS:
            queue = context.Queue()
            process = context.Process(target=_measure, args=(name, checkpoint, data_file, args.batch, args.steps,
                                                             queue))
            process.start()
            results[name] = queue.get()
            process.join()
        tiny_config = _tiny_decoder_config(checkpoint)
    base, cpu_base = results["alpha0"][1], results["alpha0"][3]
    print(f"exgra_med hidden {args.hidden}, {args.layers} layers, batch {args.batch} (one graph of {args.batch} "
          f"nodes), {args.steps} timed steps, torch threads 2; ratios to alpha = 0 of the median wall step and of "
          "the median CPU time of a step (the process's own, steadier on a shared machine)")
    print(f"{'configuration':<40}{'median step':>12}{'best step':>11}{'ratio':>7}{'median cpu':>12}{'ratio':>7}"
          f"{'peak RSS':>10}   main real/computed   text real/computed")
    for name, (_, median, best, cpu, peak, (main_real, main_computed, text_real, text_computed)) in results.items():
        print(f"{LABELS[name]:<40}{median * 1000:>10.1f}ms{best * 1000:>9.1f}ms{median / base:>7.3f}"
              f"{cpu * 1000:>10.1f}ms{cpu / cpu_base:>7.3f}{peak:>7.0f}MiB"
              f"   {main_real:>5.0f}/{main_computed:<5.0f} ({_ratio(main_computed, main_real)})"
              f"   {text_real:>5.0f}/{text_computed:<5.0f} ({_ratio(text_computed, text_real)})")
    print_census(args.batch, tiny_config)
    return 0


def _tiny_decoder_config(checkpoint: str):
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    config = ExGraMedConfig.from_pretrained(checkpoint)
    config._attn_implementation = "sdpa"  # what the bench model runs on the CPU
    return config


if __name__ == "__main__":
    sys.exit(main())
