"""Graph-matching solver benchmark: time per batch and objective relative to the best found.

Usage:  .venv/bin/python benchmarks/bench_solvers.py [--sizes 8 16 64 256] [--seeds 2] [--threads 2]

Instance families (costs built exactly like the MGA, method-spec §3.8, k = 5):
* random:      two independent random node sets; B's structure copied from A (as in the MGA)
* structured:  B = permuted noisy copy of A (noise 0.5), each graph its own kNN
* gaussian:    i.i.d. Gaussian unary/quadratic costs on random kNN graphs (a hard stress test)
Objective gap = (f - f_best) / |f_best| per instance, f_best = best over all solvers run
("exact" where n <= 8). References: pygmtools sm / ipfp / rrwm (numpy backend, dense
Lawler K, full permutations, then unprofitable pairs dropped) and POT (our "fgw").
Also prints the MGA-step timing (b = 6, n = 16: forward + backward solve, batched).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exgramed_plugin.alignment import (  # noqa: E402
    blackbox_matching,
    hamming_loss,
    knn_graph,
    matching_objective,
    prepare_problem,
    solve_graph_matching,
)
from exgramed_plugin.alignment.solvers import _local_search, _to_assignment  # noqa: E402


def _gumbel(gen, *shape):
    return -0.05 * torch.log(-torch.log(torch.rand(*shape, generator=gen, dtype=torch.float64).clamp(1e-300, 1.0)))


def make_instances(family: str, batch: int, n: int, seed: int, k: int = 5, d: int = 32):
    gen = torch.Generator().manual_seed(seed)
    unary, quadratic, edges_a, edges_b = [], [], [], []
    for _ in range(batch):
        if family == "gaussian":
            ea = knn_graph(torch.randn(n, 4, generator=gen), k)
            eb = knn_graph(torch.randn(n, 4, generator=gen), k)
            unary.append(0.5 * torch.randn(n, n, generator=gen, dtype=torch.float64) - 0.2)
            quadratic.append(0.5 * torch.randn(ea.shape[1], eb.shape[1], generator=gen, dtype=torch.float64))
        else:
            xa = torch.randn(n, d, generator=gen, dtype=torch.float64)
            if family == "random":
                xb = torch.randn(n, d, generator=gen, dtype=torch.float64)
                ea = eb = knn_graph(xa, k)
            else:
                xb = xa[torch.randperm(n, generator=gen)] + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64)
                ea, eb = knn_graph(xa, k), knn_graph(xb, k)
            fa = F.normalize(xa[ea[0]] - xa[ea[1]], dim=1)
            fb = F.normalize(xb[eb[0]] - xb[eb[1]], dim=1)
            unary.append(0.5 - F.normalize(xa, dim=1) @ F.normalize(xb, dim=1).T - _gumbel(gen, n, n))
            quadratic.append(0.25 - 0.5 * fa @ fb.T - 0.5 * _gumbel(gen, ea.shape[1], eb.shape[1]))
        edges_a.append(ea)
        edges_b.append(eb)
    return torch.stack(unary), torch.stack(quadratic), torch.stack(edges_a), torch.stack(edges_b)


def lawler_affinity(unary, quadratic, edges_a, edges_b):
    """pygmtools' K (maximise vec(X)^T K vec(X), column-major vec) equal to minus our cost."""
    b, n, m = unary.shape
    K = torch.zeros(b, n * m, n * m, dtype=torch.float64)
    for p in range(b):
        K[p].diagonal().copy_(-unary[p].T.reshape(-1))
        u = (edges_b[p, 0][None, :] * n + edges_a[p, 0][:, None]).reshape(-1)
        v = (edges_b[p, 1][None, :] * n + edges_a[p, 1][:, None]).reshape(-1)
        values = -0.5 * quadratic[p].reshape(-1)
        K[p].index_put_((u, v), values, accumulate=True)
        K[p].index_put_((v, u), values, accumulate=True)
    return K.numpy()


def drop_unprofitable(matching, unary, quadratic, edges_a, edges_b):
    problem = prepare_problem(unary, quadratic, edges_a, edges_b)
    assignment = _to_assignment(matching)
    kept = _local_search(problem, assignment, max_iter=matching.shape[1] + 1, moves=("remove",))
    return torch.nn.functional.one_hot(kept + 1, matching.shape[2] + 1)[..., 1:].double()


def run_pygm(name, problems):
    import pygmtools as pygm

    pygm.set_backend("numpy")
    unary = problems[0]
    b, n, m = unary.shape
    K = lawler_affinity(*problems)
    # sm / rrwm assume K >= 0; adding a constant changes every full permutation's score by
    # the same amount (pygmtools always returns full permutations), so the problem is unchanged
    K = K - K.min(axis=(1, 2), keepdims=True)
    n1 = n2 = None
    start = time.perf_counter()
    if name == "pygm-sm":
        X = pygm.hungarian(pygm.sm(K, n1, n2, n, m))
    elif name == "pygm-rrwm":
        X = pygm.hungarian(pygm.rrwm(K, n1, n2, n, m))
    else:
        X = pygm.ipfp(K, n1, n2, n, m)
    elapsed = time.perf_counter() - start
    return torch.from_numpy(X).double(), elapsed


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def mga_step_time(repeats: int = 50) -> dict[str, float]:
    problems = make_instances("random", 6, 16, seed=123)
    unary, quadratic = problems[0].float(), problems[1].float()
    result = {}
    for solver in ("ipfp", "lap"):
        def step():
            u = unary.clone().requires_grad_(True)
            q = quadratic.clone().requires_grad_(True)
            hamming_loss(blackbox_matching(u, q, problems[2], problems[3], solver=solver)).mean().backward()

        step()
        _, best = timed(step, repeats)
        times = [timed(step, 1)[1] for _ in range(repeats)]
        result[solver] = (best * 1e3, statistics.median(times) * 1e3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 64, 256])
    parser.add_argument("--seeds", type=int, default=2, help="batches per (family, n)")
    parser.add_argument("--families", nargs="+", default=["random", "structured", "gaussian"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pygm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    steps = mga_step_time()
    for solver, (best, median) in steps.items():
        print(f"MGA step (b=6, n=16, k=5, forward + backward solve), solver={solver}: best {best:.2f} ms, median {median:.2f} ms")

    header = f"| family | n | b | solver | ms / batch | mean gap | max gap | within 1% |"
    print()
    print(header)
    print("|" + "---|" * 8)
    for family in args.families:
        for n in args.sizes:
            batch = 6 if n <= 64 else 1
            seeds = args.seeds if n < 256 else max(args.seeds, 3)
            solvers = ["ipfp", "lap", "fgw"]
            if n <= 8:
                solvers.append("exact")
            pygm_names = [] if args.no_pygm or n > 64 else ["pygm-sm", "pygm-ipfp", "pygm-rrwm"]
            values: dict[str, list[torch.Tensor]] = {s: [] for s in solvers + pygm_names}
            times: dict[str, list[float]] = {s: [] for s in solvers + pygm_names}
            for seed in range(seeds):
                problems = make_instances(family, batch, n, seed=1000 * n + seed)
                for solver in solvers:
                    repeats = 1 if solver in ("exact", "fgw") else 3
                    x, elapsed = timed(lambda: solve_graph_matching(*problems, solver=solver), repeats)
                    values[solver].append(matching_objective(x, *problems))
                    times[solver].append(elapsed)
                for name in pygm_names:
                    x, elapsed = run_pygm(name, problems)
                    x = drop_unprofitable(x, *problems)
                    values[name].append(matching_objective(x, *problems))
                    times[name].append(elapsed)
            stacked = {s: torch.cat(v) for s, v in values.items()}
            best = torch.stack(list(stacked.values())).min(dim=0).values
            for solver, value in stacked.items():
                gap = (value - best) / best.abs().clamp_min(1e-9)
                print(
                    f"| {family} | {n} | {batch} | {solver} | {1e3 * statistics.median(times[solver]):.2f} | "
                    f"{100 * gap.mean():.2f}% | {100 * gap.max():.2f}% | {100 * (gap <= 0.01).double().mean():.0f}% |"
                )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
