"""Solver ``"ils"``: iterated local search, many random kicks of the best matching at once.

Local search stops in the first local minimum; on hard (e.g. i.i.d. random) costs that is often
several percent above the optimum. Each round makes ``parallel`` copies of every problem's best
matching, kicks each copy differently (``strength`` rows moved to random columns, evicting
their holders, or left unassigned: large kicks, 10 rows at n = 16, escape far more often than
2-3), descends from all copies in the same numpy calls (the per-call
overhead, not arithmetic, dominates at these sizes) and keeps the best copy if it improves.
Kicks come from a generator with a fixed seed and copy ``r`` of round ``t`` is kicked the same
way in every problem, whatever the batch: a problem's answer depends on the problem and the seed
only. A problem stops once its rounds without improvement reach ``patience`` and the number of
rounds it took to find its best: easy problems stop early, problems that keep improving go on.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .ipfp import solve_ipfp
from .local_search import _local_search_arrays
from .problem import GraphMatchingProblem, _unary_array
from .tables import _objective_values

ILS_ROUNDS = 100
ILS_PATIENCE = 8
ILS_COPY_ROWS = 512  # kicked copies per problem and round: this many rows over n (at least 4)
ILS_STRENGTH = 10  # rows moved by one kick (at most n): large kicks escape the rugged landscapes
ILS_SEED = 0


def _kicks(generator: np.random.Generator, copies: int, n: int, m: int, strength: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, targets)`` ``[copies, strength]``: distinct rows and distinct targets (``m``: unassigned)."""
    rows = np.argsort(generator.random((copies, n)), axis=1)[:, :strength]
    targets = np.argsort(generator.random((copies, m + 1)), axis=1)[:, :strength]
    return rows, targets


def iterated_local_search(
    problem: GraphMatchingProblem,
    assignment: np.ndarray,
    rounds: int = ILS_ROUNDS,
    patience: int = ILS_PATIENCE,
    parallel: int | None = None,
    strength: int = ILS_STRENGTH,
    seed: int = ILS_SEED,
) -> np.ndarray:
    """Improve the feasible ``assignment`` ``[b, n]``; returns a new array.

    ``parallel``: kicked copies per problem and round, by default ``max(4, 512 // n)`` (32 at
    n = 16): many copies are nearly free while per-call overhead dominates, not at n = 64.
    """
    b, n, m = problem.shape
    best = np.array(assignment, dtype=np.int64)
    live = np.arange(b)
    if n == 0 or m == 0 or b == 0:
        return best
    parallel = parallel or max(4, ILS_COPY_ROWS // max(n, m))
    tables, unary = problem.tables(), _unary_array(problem)
    best_value = _objective_values(tables, unary, best)
    tolerance = 1e-9 * (1.0 + np.abs(unary).max(axis=(1, 2), initial=0.0))
    copy_tables, copy_unary = tables.take(np.arange(b).repeat(parallel)), np.repeat(unary, parallel, axis=0)
    stale = np.zeros(b, dtype=np.int64)  # rounds since the last improvement
    found_at = np.zeros(b, dtype=np.int64)  # round of the last improvement
    generator = np.random.default_rng(seed)
    size = min(strength, n, m + 1)
    descent = 4 * max(n, m)
    replica = np.arange(parallel)
    for round_index in range(1, rounds + 1):
        if not len(live):
            break
        rows, targets = _kicks(generator, parallel, n, m, size)  # the same for every problem
        virtual = (live[:, None] * parallel + replica).reshape(-1)
        kicked = np.repeat(best[live], parallel, axis=0)
        for step in range(size):
            row, target = np.tile(rows[:, step], len(live)), np.tile(targets[:, step], len(live))
            kicked[kicked == target[:, None]] = -1  # evict; target m matches no row
            kicked[np.arange(len(kicked)), row] = np.where(target < m, target, -1)
        candidate = np.full((b * parallel, n), -1, dtype=np.int64)
        candidate[virtual] = kicked
        candidate = _local_search_arrays(copy_tables, copy_unary, candidate, descent, problems=virtual)
        value = _objective_values(copy_tables, copy_unary, candidate).reshape(b, parallel)[live]
        winner = value.argmin(axis=1)  # lowest copy index on ties
        found = value[np.arange(len(live)), winner]
        better = found < best_value[live] - tolerance[live]
        improved = live[better]
        best[improved] = candidate[improved * parallel + winner[better]]
        best_value[improved] = found[better]
        stale[live] += 1
        stale[improved], found_at[improved] = 0, round_index
        live = live[stale[live] < np.maximum(patience, found_at[live])]
    return best


def solve_ils(
    problem: GraphMatchingProblem,
    rounds: int = ILS_ROUNDS,
    patience: int = ILS_PATIENCE,
    parallel: int | None = None,
    strength: int = ILS_STRENGTH,
    seed: int = ILS_SEED,
) -> Tensor:
    """Iterated local search from the ``"ipfp"`` answer."""
    start = solve_ipfp(problem).numpy()
    return torch.from_numpy(iterated_local_search(problem, start, rounds, patience, parallel, strength, seed))
