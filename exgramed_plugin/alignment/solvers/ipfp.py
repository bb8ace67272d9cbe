"""Solver ``"ipfp"``: integer projected fixed point (Leordeanu et al. 2009) from the LAP, then local search."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .lap import _lap_into
from .local_search import _local_search_arrays
from .problem import GraphMatchingProblem, _unary_array
from .tables import _gradients


def solve_ipfp(
    problem: GraphMatchingProblem,
    max_iter: int = 20,
    patience: int = 2,
    local_search: bool = True,
    local_search_iter: int | None = None,
) -> Tensor:
    """IPFP from the LAP solution, keeping the best discrete iterate, then local search.

    Continuous iterates are never materialised in the quadratic term: since ``G1``/``G2`` are
    linear, ``G(x + t (b - x)) = (1 - t) G(x) + t G(b)`` with ``b`` always discrete. A problem
    whose line search found no descent direction keeps its iterate, so its LAP is not solved
    again (solving it again would return the same ``b``). Patience counts per problem, so a
    problem stops when *its* best iterate went stale: its answer does not depend on the batch.
    """
    b, n, m = problem.shape
    assignment = np.full((b, n), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return torch.from_numpy(assignment)
    tables = problem.tables()
    unary = _unary_array(problem)
    flat_unary = unary.reshape(b, n * m)
    one_hot = np.eye(m + 1, m)  # row m ("unassigned") is zero
    _lap_into(unary, assignment, range(b))
    x = np.take(one_hot, assignment % (m + 1), axis=0).reshape(b, n * m)
    gradients = _gradients(tables, assignment)
    best_assignment, best_gradients = assignment.copy(), gradients.copy()
    best_value = ((flat_unary + gradients[:, 0]) * x).sum(axis=1)
    tolerance = 1e-9 * (1.0 + np.abs(flat_unary).max(axis=1))
    candidate = assignment
    active: list[int] = list(range(b))
    stale = np.zeros(b, dtype=np.int64)
    if problem.quadratic.shape[1] and problem.quadratic.shape[2]:
        for _ in range(max_iter):
            gradient = flat_unary + gradients[:, 0]
            gradient += gradients[:, 1]
            _lap_into(gradient.reshape(b, n, m), candidate, active)
            xb = np.take(one_hot, candidate % (m + 1), axis=0).reshape(b, n * m)
            candidate_gradients = _gradients(tables, candidate)
            value = ((flat_unary + candidate_gradients[:, 0]) * xb).sum(axis=1)
            better = value < best_value - tolerance
            np.copyto(best_value, value, where=better)
            np.copyto(best_assignment, candidate, where=better[:, None])
            np.copyto(best_gradients, candidate_gradients, where=better[:, None, None])
            stale = np.where(better, 0, stale + 1)
            direction = xb
            direction -= x
            slope = (gradient * direction).sum(axis=1)
            descending = (slope < -tolerance) & (stale < patience)
            if not descending.any():
                break
            active = np.flatnonzero(descending).tolist()
            change = candidate_gradients
            change -= gradients
            curvature = (change[:, 0] * direction).sum(axis=1)
            step = np.where(curvature > 0, np.minimum(-slope / (2 * np.maximum(curvature, 1e-300)), 1.0), 1.0)
            step[~descending] = 0.0
            x += step[:, None] * direction
            gradients += step[:, None, None] * change
    if local_search:
        budget = local_search_iter if local_search_iter is not None else 4 * max(n, m)
        best_assignment = _local_search_arrays(tables, unary, best_assignment, budget, gradients=best_gradients)
    return torch.from_numpy(best_assignment)
