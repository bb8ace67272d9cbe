"""One MGA step on a large (global) graph: the code of an older commit against this tree's, same run.

Usage:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_global_graph.py [--sizes 128 256 512 1024]
            [--repeats 2] [--old 89ccc2b] [--split 2]

A step is the forward and backward of ``MultiGraphAlignment`` (width 64, kNN k = 5, the default solver
as the training step runs it, no dropout) on a graph of N nodes, as every process runs it with
``mga_global_graph`` when N = per-device batch x processes. The old code is the ``exgramed_plugin``
folder of commit ``--old`` (``git archive`` into a temporary folder). Every measurement is its own
process with one thread (its peak memory is its own), old and new interleaved (old, new, new, old,
...); each builds the module and the nodes from the same seeds, runs one warm-up step and one timed
step, and saves its matchings, loss and gradients, which the table compares between old and new.
Times are medians over ``--repeats`` processes, wall and CPU (CPU time shows a process's own work
when other jobs share the machine).
``--split W``: the new code again, W processes over gloo, each solving its block of the six
problems (the time of rank 0; on a machine with fewer than W free cores the processes share them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 64


def _step_inputs(nodes: int):
    import torch

    from exgramed_plugin.alignment import MultiGraphAlignment
    generator = torch.Generator().manual_seed(0)
    mga = MultiGraphAlignment(in_features=WIDTH, dropout=0.0)
    for parameter in mga.parameters():
        parameter.data = 0.1 * torch.randn(parameter.shape, generator=generator)
    features = [torch.randn(nodes, WIDTH, generator=generator, requires_grad=True) for _ in range(3)]
    return mga, features


def _timed_step(mga, features, seed: int, **kwargs) -> tuple[dict, dict]:
    """Wall and CPU seconds of one step (CPU time shows a process's own work on a shared machine)."""
    import torch
    mga.zero_grad(set_to_none=True)
    for z in features:
        z.grad = None
    start, start_cpu = time.perf_counter(), time.process_time()
    out = mga(*features, generator=torch.Generator().manual_seed(seed), **kwargs)
    out.loss.backward()
    times = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - start_cpu}
    return times, {"matchings": out.matchings, "loss": out.loss.detach(),
                   "grads": [z.grad for z in features] + [p.grad for p in mga.parameters()]}


def run_one(nodes: int, out: str) -> None:
    """One process, one thread: a warm-up step, then the timed step; prints its JSON line."""
    import torch
    torch.set_num_threads(1)
    mga, features = _step_inputs(nodes)
    _timed_step(mga, features, seed=100)
    times, result = _timed_step(mga, features, seed=1)
    torch.save(result, out)
    print(json.dumps({**times, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _split_worker(rank: int, world: int, port: int, nodes: int, out: str) -> None:
    import torch
    from torch import distributed as dist

    from exgramed_plugin.alignment import ProblemSplit
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    mga, features = _step_inputs(nodes)
    split = ProblemSplit.over_processes()
    _timed_step(mga, features, seed=100, split=split)
    dist.barrier()
    times, result = _timed_step(mga, features, seed=1, split=split)
    if rank == 0:
        torch.save(result, out)
        Path(out + ".json").write_text(json.dumps(times))
    dist.destroy_process_group()


def run_split(nodes: int, world: int, out: str) -> None:
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_split_worker, args=(world, port, nodes, out), nprocs=world, join=True)
    print(Path(out + ".json").read_text())


def _extract(commit: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "exgramed_plugin"], check=True,
                             capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _measure(tree: Path, nodes: int, out: Path, split: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    mode = ["--split-one", str(split)] if split else []
    command = [sys.executable, __file__, "--one", str(nodes), "--out", str(out), *mode]
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    return json.loads(result.stdout.strip().splitlines()[-1])


def _compare(old_path: Path, new_path: Path) -> tuple[bool, float]:
    """Whether the matchings are identical, and the largest gradient difference relative to its gradient."""
    import torch
    old, new = torch.load(old_path), torch.load(new_path)
    same = torch.equal(old["matchings"], new["matchings"]) and torch.equal(old["loss"], new["loss"])
    worst = 0.0
    for a, b in zip(old["grads"], new["grads"]):
        worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)))
    return same, worst


def _listed(runs: list[dict]) -> str:
    return ", ".join(f"{run['seconds']:.2f}" for run in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--old", default="89ccc2b")
    parser.add_argument("--split", type=int, default=0, help="also time the new code split over this many processes")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--split-one", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        (run_split(args.one, args.split_one, args.out) if args.split_one else run_one(args.one, args.out))
        return
    with tempfile.TemporaryDirectory() as scratch:
        old_tree = _extract(args.old, Path(scratch) / "old")
        trees = {"old": old_tree, "new": ROOT}
        split_header = f" split over {args.split}: rank 0 wall / CPU s |" if args.split else ""
        print(f"| nodes | {args.old} wall s (runs) | this tree wall s (runs) | old / new wall | CPU s old / new | "
              f"peak RSS old / new (MiB) | same matchings and loss | largest gradient difference |{split_header}")
        print("|" + "---|" * (9 if args.split else 8), flush=True)
        for nodes in args.sizes:
            runs = {"old": [], "new": []}
            peaks = {"old": 0.0, "new": 0.0}
            for repeat in range(args.repeats):
                for name in (("old", "new") if repeat % 2 == 0 else ("new", "old")):
                    result = _measure(trees[name], nodes, Path(scratch) / f"{name}.pt")
                    runs[name].append(result)
                    peaks[name] = max(peaks[name], result["peak_rss_mib"])
            same, worst = _compare(Path(scratch) / "old.pt", Path(scratch) / "new.pt")
            wall = {name: statistics.median(r["seconds"] for r in runs[name]) for name in runs}
            cpu = {name: statistics.median(r["cpu_seconds"] for r in runs[name]) for name in runs}
            row = (f"| {nodes} | {wall['old']:.2f} ({_listed(runs['old'])}) | {wall['new']:.2f} ({_listed(runs['new'])}) | "
                   f"{wall['old'] / wall['new']:.2f}x | {cpu['old']:.2f} / {cpu['new']:.2f} | {peaks['old']:.0f} / "
                   f"{peaks['new']:.0f} | {'yes' if same else 'NO'} | {worst:.1e} |")
            if args.split:
                split = _measure(ROOT, nodes, Path(scratch) / "split.pt", split=args.split)
                split_same, _ = _compare(Path(scratch) / "new.pt", Path(scratch) / "split.pt")
                row += (f" {split['seconds']:.2f} / {split['cpu_seconds']:.2f} "
                        f"({'same result' if split_same else 'DIFFERENT'}) |")
            print(row, flush=True)


if __name__ == "__main__":
    main()
