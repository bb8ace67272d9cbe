"""Training-step time and peak memory with multi-graph alignment versus α = 0, in one run.

Usage: python benchmarks/bench_step.py [--hidden 256] [--layers 4] [--batch 16] [--steps 8]

Builds a small random exgra_med model, encodes the demo instruct data with the real ``exgra_med``
template (answers + extended answers), and times forward + backward + AdamW step for three
configurations on the same batches: α = 0 (no MGA module, no extra forward), MGA with the text
passes (``mga_after_de`` true, the original), and MGA on raw token embeddings (``mga_after_de``
false). Prints median step times, the ratios to α = 0, and the peak memory of each configuration
(measured in a child process so that peaks do not mix).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = {"alpha0": dict(mga_enabled=False), "mga": dict(mga_enabled=True, mga_after_de=True),
           "mga_no_de": dict(mga_enabled=True, mga_after_de=False)}


def _batches(checkpoint: str, data_file: str, batch: int, steps: int, mga: bool):
    import exgramed_plugin.register  # noqa: F401
    from swift.model import get_processor
    from swift.template import get_template

    from exgramed_plugin.data.formats import row_to_standard
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    config = ExGraMedConfig.from_pretrained(checkpoint)
    config.mga_enabled = mga
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
    batches = _batches(checkpoint, data_file, batch, steps + 2, config.mga_enabled)
    times = []
    for index, inputs in enumerate(batches):
        start = time.perf_counter()
        out = model(**inputs)
        loss = out.loss + (out.align_loss if out.align_loss is not None else 0.0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((name, statistics.median(times), min(times), peak_mib))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16, help="graph size per device (16 in the original)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)
    from exgramed_plugin.data.demo_data import make_demo_data
    from exgramed_plugin.data.tiny import make_tiny_checkpoint
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
    base = results["alpha0"][1]
    print(f"exgra_med hidden {args.hidden}, {args.layers} layers, batch {args.batch} (one graph of {args.batch} "
          f"nodes), {args.steps} timed steps, torch threads 2")
    print(f"{'configuration':<34}{'median step':>12}{'best step':>11}{'ratio':>8}{'peak RSS':>11}")
    labels = {"alpha0": "alpha = 0 (no MGA)", "mga": "MGA, text passes (after_de true)",
              "mga_no_de": "MGA, token embeddings (after_de false)"}
    for name, (_, median, best, peak) in results.items():
        print(f"{labels[name]:<34}{median * 1000:>10.1f}ms{best * 1000:>9.1f}ms{median / base:>8.3f}{peak:>8.0f}MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
