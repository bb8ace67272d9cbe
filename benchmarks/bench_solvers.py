"""Graph-matching solver benchmark: time per batch and objective relative to the best found.

Usage:  .venv/bin/python benchmarks/bench_solvers.py [--sizes 8 16 64 256] [--batches N] [--families ...]

Instance families (costs built exactly like the MGA, docs/method.md §3.8, k = 5):
* random:      two independent random node sets; B's structure copied from A (as in the MGA)
* structured:  B = permuted noisy copy of A (noise 0.5), each graph its own kNN
* gaussian:    i.i.d. Gaussian unary/quadratic costs on random kNN graphs (a hard stress test)
Objective gap = (f - f_best) / |f_best| per instance, f_best = best over all solvers run. At
n <= 8 that is the optimum: "optimum" is branch-and-bound run to its proof (checked against the
enumeration "exact" on the first --exact-batches batches). At n = 16 and 64 it includes
"ils-long" and "tabu-long", our two searches with long budgets. References: pygmtools sm /
ipfp / rrwm (numpy backend, dense Lawler K, full permutations, then unprofitable pairs dropped)
and POT (our "fgw"). Also prints the MGA-step timing (b = 6, n = 16: forward + backward solve,
batched) as min / median / max over --step-repeats repetitions.
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
from exgramed_plugin.alignment.solvers.auto import AUTO_SEARCH, search_budget  # noqa: E402


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


STEP_SOLVERS = {  # name in the table -> (solver, options) of blackbox_matching
    "auto (search 0, as in the MGA step)": ("auto", {"search": 0}),
    "auto (its default search)": ("auto", {}),
    "ipfp": ("ipfp", {}),
    "lap": ("lap", {}),
}


FAST_STEP_SOLVERS = ("auto (search 0, as in the MGA step)", "ipfp", "lap")


def mga_step_time(repeats: int, solvers: tuple[str, ...] = FAST_STEP_SOLVERS) -> dict[str, tuple[float, float, float]]:
    """min / median / max ms of one MGA step's solves (b = 6, n = 16: forward + backward) per solver.

    The solvers take turns within each repetition, in rotating order, so a busy machine slows them alike.
    The MGA step runs ``"auto"`` with ``search=0`` (``mga_solver_search``'s default).
    """
    problems = make_instances("random", 6, 16, seed=123)
    unary, quadratic = problems[0].float(), problems[1].float()

    def step(name: str) -> None:
        solver, options = STEP_SOLVERS[name]
        u = unary.clone().requires_grad_(True)
        q = quadratic.clone().requires_grad_(True)
        matching = blackbox_matching(u, q, problems[2], problems[3], solver=solver, solver_options=options)
        hamming_loss(matching).mean().backward()

    times: dict[str, list[float]] = {solver: [] for solver in solvers}
    for solver in solvers:
        step(solver)  # warm-up
    for repeat in range(repeats):
        shift = repeat % len(solvers)  # rotate: the first of a round is slower on a busy machine
        for solver in solvers[shift:] + solvers[:shift]:
            times[solver].append(timed(lambda: step(solver), 1)[1] * 1e3)
    return {solver: (min(t), statistics.median(t), max(t)) for solver, t in times.items()}


LONG_RUN = {"rounds": 200, "patience": 50, "seed": 1}  # "ils-long": twice the rounds, 6x the patience, other kicks
LONG_TABU = 4  # "tabu-long": 4x the tabu iterations and patience of "auto", other tenures (seed 1)


def solvers_for(n: int, pygm: bool) -> list[str]:
    names = ["auto", "ipfp", "lap", "fgw"]
    if n <= 64:
        names += ["tabu", "ils", "bnb"]
    if 8 < n <= 64:
        names += ["ils-long", "tabu-long"]
    if pygm and n <= 64:
        names += ["pygm-sm", "pygm-ipfp"] + (["pygm-rrwm"] if n <= 16 else [])  # rrwm: 3.6 s a batch at 64
    return names


def solve(name: str, problems) -> tuple[torch.Tensor, float]:
    if name.startswith("pygm-"):
        x, elapsed = run_pygm(name, problems)
        return drop_unprofitable(x, *problems), elapsed
    if name == "ils-long":
        return timed(lambda: solve_graph_matching(*problems, solver="ils", **LONG_RUN), 1)
    if name == "tabu-long":
        iterations, patience = search_budget(AUTO_SEARCH, problems[0].shape[1])
        budget = {"iterations": LONG_TABU * iterations, "patience": LONG_TABU * patience, "seed": 1}
        return timed(lambda: solve_graph_matching(*problems, solver="tabu", **budget), 1)
    if name == "optimum":  # proven branch-and-bound: the exact optimum, without enumerating
        return timed(lambda: solve_graph_matching(*problems, solver="bnb", node_budget=10**7), 1)
    repeats = 3 if name in ("ipfp", "lap", "bnb") else 1  # "auto" searches for seconds at n >= 16
    return timed(lambda: solve_graph_matching(*problems, solver=name), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 64, 256])
    parser.add_argument("--batches", type=int, default=None,
                        help="batches of 6 per (family, n); default 10 at n <= 8, 7 at 16 and 64, 3 (of 1) at 256")
    parser.add_argument("--exact-batches", type=int, default=2, help="batches also solved by enumeration at n <= 8")
    parser.add_argument("--families", nargs="+", default=["random", "structured", "gaussian"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step-repeats", type=int, default=300)
    parser.add_argument("--no-pygm", action="store_true")
    parser.add_argument("--skip", nargs="+", default=[], metavar="SOLVER",
                        help="leave these rows out (and out of the best-of-all reference), e.g. tabu-long")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    if args.step_repeats:
        searched = "auto (its default search)"  # ~1 s a step: a few repetitions, after the fast ones
        repeats = {solver: args.step_repeats for solver in FAST_STEP_SOLVERS} | {searched: max(3, args.step_repeats // 100)}
        timings = mga_step_time(args.step_repeats) | mga_step_time(repeats[searched], (searched,))
        for solver, (low, median, high) in timings.items():
            print(f"MGA step (b=6, n=16, k=5, forward + backward solve, {repeats[solver]} reps), {solver}: "
                  f"min {low:.2f} ms, median {median:.2f} ms, max {high:.2f} ms")

    print()
    print("| family | n | instances | solver | ms / batch | mean gap | max gap | within 1% |")
    print("|" + "---|" * 8)
    checked = 0
    for family in args.families:
        for n in args.sizes:
            batch = 6 if n <= 64 else 1
            batches = args.batches or (10 if n <= 8 else 7 if n <= 64 else 3)
            names = [name for name in solvers_for(n, not args.no_pygm) if name not in args.skip]
            values: dict[str, list[torch.Tensor]] = {}
            times: dict[str, list[float]] = {}
            for seed in range(batches):
                problems = make_instances(family, batch, n, seed=1000 * n + seed)
                extra = ["optimum"] if n <= 8 else []
                if n <= 8 and seed < args.exact_batches:
                    extra.append("exact")
                for name in names + extra:
                    x, elapsed = solve(name, problems)
                    values.setdefault(name, []).append(matching_objective(x, *problems))
                    times.setdefault(name, []).append(elapsed)
            if "exact" in values:  # the proven optimum must be the enumerated one
                enumerated = torch.cat(values["exact"])
                proven = torch.cat(values["optimum"])[: len(enumerated)]
                assert torch.allclose(enumerated, proven, atol=1e-9), (enumerated, proven)
                checked += len(enumerated)
            stacked = {name: torch.cat(v) for name, v in values.items() if name != "exact"}
            best = torch.stack(list(stacked.values())).min(dim=0).values
            for name, value in stacked.items():
                gap = (value - best) / best.abs().clamp_min(1e-9)
                print(
                    f"| {family} | {n} | {len(value)} | {name} | {1e3 * statistics.median(times[name]):.2f} | "
                    f"{100 * gap.mean():.2f}% | {100 * gap.max():.2f}% | {100 * (gap <= 0.01).double().mean():.0f}% |"
                )
            sys.stdout.flush()
    if checked:
        print(f"\n'optimum' (proven branch-and-bound) equals the enumeration 'exact' on all {checked} instances checked.")


if __name__ == "__main__":
    main()
