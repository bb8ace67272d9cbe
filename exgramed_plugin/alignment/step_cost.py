"""What one MGA step costs on a large graph, for the start-up warning of a large global graph.

With ``mga_global_graph`` every process aligns one graph of per-device batch x processes nodes. The
kNN graphs have k nodes' worth of edges per node, so the quadratic costs grow as the square of the
graph and the solver's LAPs as its cube: a graph of 1,024 nodes costs seconds of CPU per step in
every process, next to a 7B model's ~6 s GPU step, and the time is spent in every step.
"""

from __future__ import annotations

import math

__all__ = ["LARGE_GRAPH_NODES", "MEASURED_STEP_SECONDS", "estimated_step_seconds", "global_graph_warning"]

LARGE_GRAPH_NODES = 512
PROBLEMS = 6
# One MGA step (forward + backward, width 64, kNN k = 5, one process, one thread) by graph size:
# benchmarks/bench_global_graph.py on this project's 2-core CPU (docs/benchmarks.md, "Large global graphs").
MEASURED_STEP_SECONDS = {128: 0.15, 256: 0.53, 512: 2.09, 1024: 7.40}


def estimated_step_seconds(nodes: int, processes: int = 1) -> float:
    """Seconds of one MGA step on a graph of ``nodes``, its six problems split over ``processes``.

    Log-log interpolation in :data:`MEASURED_STEP_SECONDS`, its last slope beyond; a process that
    solves ``ceil(6 / processes)`` of the six problems takes that share of the time (the noise draws
    and the graph network are not split, so this is the lower end).
    """
    sizes = sorted(MEASURED_STEP_SECONDS)
    segments = list(zip(sizes, sizes[1:]))
    low, high = next(((a, b) for a, b in segments if nodes <= b), segments[-1])
    slope = math.log(MEASURED_STEP_SECONDS[high] / MEASURED_STEP_SECONDS[low]) / math.log(high / low)
    seconds = MEASURED_STEP_SECONDS[low] * (max(nodes, 1) / low) ** slope
    return seconds * math.ceil(PROBLEMS / max(1, processes)) / PROBLEMS


def global_graph_warning(per_device: int, processes: int) -> str | None:
    """The start-up warning for a global graph above :data:`LARGE_GRAPH_NODES` nodes, or None."""
    nodes = per_device * processes
    if nodes <= LARGE_GRAPH_NODES:
        return None
    mine = math.ceil(PROBLEMS / max(1, processes))
    return (f"MGA_GLOBAL_GRAPH=1 aligns one graph of {nodes} nodes per step (per_device_train_batch_size "
            f"{per_device} x {processes} processes): its matchings cost about "
            f"{estimated_step_seconds(nodes, processes):.1f} s of CPU per step in every process (each solves "
            f"{mine} of the {PROBLEMS} problems; {estimated_step_seconds(nodes):.1f} s for all six, measured at "
            f"{', '.join(map(str, sorted(MEASURED_STEP_SECONDS)))} nodes on one core, docs/benchmarks.md), next to "
            f"~6 s for a 7B model's GPU step. Above {LARGE_GRAPH_NODES} nodes consider a smaller per-device "
            f"batch or per-device graphs (MGA_GLOBAL_GRAPH=0).")
