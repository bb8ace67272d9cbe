"""Solver ``"auto"`` (the default): exact where a proof is cheap, IPFP and a search elsewhere.

1. IPFP with local search (solver ``"ipfp"``).
2. Small problems (``n * m <= exact_entries``): branch-and-bound from that answer within a node
   budget. MGA-like 8 x 8 costs need tens of nodes, i.i.d. random ones a few thousand, so the
   answer is the proven optimum. Where the budget runs out, iterated local search from the best
   matching seen.
3. Larger problems with edge pairs, up to ``n * m <= search_entries`` (64 x 64): tabu search from
   the IPFP answer (``search`` iterations per node at 16 nodes, more above: :func:`search_budget`),
   then iterated local search from the tabu answer
   (``search=0``: the IPFP answer). IPFP stops in the first local minimum, several percent above
   the optimum where the quadratic term matters; tabu search gets most of the way fast, the kicked
   restarts finish (together better than either alone at 16 and at 64 nodes, and faster than the
   restarts alone). That costs 0.3-2 s per batch of six 16-node problems; the MGA training step has
   about 2 ms per solve, so it runs ``search=0`` unless ``mga_solver_search`` says otherwise.

Every step treats each problem on its own, so a batch gives what its problems give one by one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .branch_and_bound import branch_and_bound, fits_branch_and_bound
from .ipfp import solve_ipfp
from .problem import GraphMatchingProblem
from .restarts import iterated_local_search
from .tabu import TABU_ITERATIONS, TABU_PATIENCE, tabu_search

EXACT_ENTRIES = 100  # n * m up to which branch-and-bound is tried (10 x 10)
EXACT_BUDGET = 50_000  # nodes per problem
AUTO_SEARCH = TABU_ITERATIONS  # tabu iterations per node above EXACT_ENTRIES
SEARCH_ENTRIES = 64 * 64  # n * m up to which the search runs (it costs O(n^3): minutes per problem at 256)


def search_budget(search: int, size: int) -> tuple[int, int]:
    """Tabu ``(iterations, patience)`` of ``"auto"``: ``search`` per node at 16 nodes, growing as
    ``size^2 / 16`` above (at 64 nodes 100 per node stalled at 60 % of i.i.d. gaussian problems
    within 1 % of the best found, 400 per node reached 95 %)."""
    iterations = search * size * max(1, size // 16)
    return iterations, iterations * TABU_PATIENCE // TABU_ITERATIONS


def solve_auto(
    problem: GraphMatchingProblem,
    exact_entries: int = EXACT_ENTRIES,
    exact_budget: int = EXACT_BUDGET,
    search: int = AUTO_SEARCH,
    search_entries: int = SEARCH_ENTRIES,
) -> Tensor:
    """IPFP; on small problems branch-and-bound from it, elsewhere tabu search (``search`` iterations
    per node) and iterated local search from it."""
    if search < 0:
        raise ValueError(f"search must be >= 0 tabu iterations per node, got {search}")
    _, n, m = problem.shape
    assignment = solve_ipfp(problem).numpy()
    if not (problem.quadratic.shape[1] and problem.quadratic.shape[2]):
        return torch.from_numpy(assignment)  # without edge pairs IPFP returned the LAP: the optimum
    size = max(n, m)
    if n * m > exact_entries or not fits_branch_and_bound(n, m):
        if search and n * m <= search_entries:
            iterations, patience = search_budget(search, size)
            assignment = iterated_local_search(problem, tabu_search(problem, assignment, iterations, patience))
        return torch.from_numpy(assignment)
    assignment, proven, _ = branch_and_bound(problem, assignment, exact_budget)
    open_problems = np.flatnonzero(~proven)
    if len(open_problems):
        assignment[open_problems] = iterated_local_search(problem.take(open_problems), assignment[open_problems])
    return torch.from_numpy(assignment)
