"""Forward + backward of MultiGraphAlignment at the original width (d = 4096).

Usage:  .venv/bin/python benchmarks/bench_mga.py [--batch-sizes 16 64 256] [--dim 4096] [--repeats 3]

Each batch size runs in a fresh subprocess so that the peak resident memory (ru_maxrss) it
prints belongs to that size alone; "peak extra" subtracts the RSS measured after building the
module and the inputs. Times are the median of ``--repeats`` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(batch: int, dim: int, repeats: int, solver: str, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    from exgramed_plugin.alignment import MultiGraphAlignment

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mga = MultiGraphAlignment(in_features=dim, solver=solver)
    nodes = [torch.randn(batch, dim, requires_grad=True) for _ in range(3)]
    generator = torch.Generator().manual_seed(0)
    base = _rss_mib()

    def step():
        mga.zero_grad(set_to_none=True)
        for z in nodes:
            z.grad = None
        start = time.perf_counter()
        out = mga(*nodes, generator=generator)
        middle = time.perf_counter()
        out.loss.backward()
        end = time.perf_counter()
        return middle - start, end - middle, out

    step()
    forward, backward = [], []
    for _ in range(repeats):
        f, b, out = step()
        forward.append(f)
        backward.append(b)
    return {
        "batch": batch,
        "dim": dim,
        "solver": solver,
        "forward_s": statistics.median(forward),
        "backward_s": statistics.median(backward),
        "peak_rss_mib": _rss_mib(),
        "peak_extra_mib": _rss_mib() - base,
        "loss": float(out.loss),
        "accuracy": float(out.matching_accuracy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--solver", default="ipfp")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.dim, args.repeats, args.solver, args.threads)))
        return
    print("| B | d | solver | forward (s) | backward (s) | total (s) | peak RSS (MiB) | peak extra (MiB) |")
    print("|" + "---|" * 8)
    for batch in args.batch_sizes:
        command = [sys.executable, __file__, "--one", str(batch), "--dim", str(args.dim), "--repeats",
                   str(args.repeats), "--solver", args.solver, "--threads", str(args.threads)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        total = result["forward_s"] + result["backward_s"]
        print(
            f"| {batch} | {args.dim} | {args.solver} | {result['forward_s']:.3f} | {result['backward_s']:.3f} | "
            f"{total:.3f} | {result['peak_rss_mib']:.0f} | {result['peak_extra_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
