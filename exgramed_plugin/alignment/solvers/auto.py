"""Solver ``"auto"`` (the default): exact where a proof is cheap, IPFP elsewhere.

1. IPFP with local search (solver ``"ipfp"``, the former default).
2. Small problems (``n * m <= exact_entries``): branch-and-bound from that answer within a node
   budget. MGA-like 8 x 8 costs need tens of nodes, i.i.d. random ones a few thousand, so the
   answer is the proven optimum. Where the budget runs out, iterated local search from the best
   matching seen.
3. Larger problems keep the IPFP answer: the MGA step (n = 16, forward and backward solve) has
   about 2 ms per solve, and neither a proof nor a search that beats IPFP on hard costs fits in
   it (see ``"ils"`` for that search, at 100x the time).

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

EXACT_ENTRIES = 100  # n * m up to which branch-and-bound is tried (10 x 10)
EXACT_BUDGET = 50_000  # nodes per problem


def solve_auto(
    problem: GraphMatchingProblem, exact_entries: int = EXACT_ENTRIES, exact_budget: int = EXACT_BUDGET
) -> Tensor:
    """IPFP; on small problems, branch-and-bound from it, with iterated local search where the budget runs out."""
    _, n, m = problem.shape
    assignment = solve_ipfp(problem).numpy()
    has_pairs = problem.quadratic.shape[1] and problem.quadratic.shape[2]
    if not has_pairs or n * m > exact_entries or not fits_branch_and_bound(n, m):
        return torch.from_numpy(assignment)  # without edge pairs IPFP returned the LAP: the optimum
    assignment, proven, _ = branch_and_bound(problem, assignment, exact_budget)
    open_problems = np.flatnonzero(~proven)
    if len(open_problems):
        assignment[open_problems] = iterated_local_search(problem.take(open_problems), assignment[open_problems])
    return torch.from_numpy(assignment)
