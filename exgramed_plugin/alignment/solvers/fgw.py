"""Solver ``"fgw"``: POT's fused Gromov-Wasserstein, a structural reference (not a minimiser of q)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .local_search import _local_search
from .problem import GraphMatchingProblem


def solve_fgw(problem: GraphMatchingProblem, alpha: float = 0.5) -> Tensor:
    """POT fused Gromov-Wasserstein on symmetrised adjacencies + unary costs, rounded.

    FGW's structure term compares adjacency entries, so the *values* of the quadratic costs
    are not used; the rounding (Hungarian on the plan, then dropping pairs while that lowers
    the true objective) makes the result feasible and comparable.
    """
    import ot  # optional at import time of this module

    b, n, m = problem.shape
    assignment = torch.full((b, n), -1, dtype=torch.long)
    for p in range(b):
        adjacency_a = np.zeros((n, n))
        adjacency_a[problem.src_a[p].numpy(), problem.dst_a[p].numpy()] = 1.0
        adjacency_b = np.zeros((m, m))
        adjacency_b[problem.src_b[p].numpy(), problem.dst_b[p].numpy()] = 1.0
        adjacency_a = np.maximum(adjacency_a, adjacency_a.T)
        adjacency_b = np.maximum(adjacency_b, adjacency_b.T)
        cost = problem.unary[p].numpy()
        plan = ot.gromov.fused_gromov_wasserstein(
            cost - cost.min(), adjacency_a, adjacency_b, ot.unif(n), ot.unif(m), loss_fun="square_loss", alpha=alpha
        )
        rows, cols = linear_sum_assignment(-np.asarray(plan))
        assignment[p, torch.from_numpy(rows)] = torch.from_numpy(cols).long()
    return _local_search(problem, assignment, max_iter=n + 1, moves=("remove",))
