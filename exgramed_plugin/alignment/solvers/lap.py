"""Solver ``"lap"``: exact on the unary part only (scipy's Hungarian), the quadratic costs ignored."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .problem import GraphMatchingProblem
from .tables import _offsets


def _lap_into(cost: np.ndarray, out: np.ndarray, problems: Iterable[int]) -> None:
    """Min-cost partial assignments of the listed problems into ``out`` ``[b, n]`` (others untouched).

    Hungarian on ``min(c, 0)``, then pairs with ``c >= 0`` are dropped: equivalent to padding
    with zero-cost dummy nodes, since any partial matching extends to a full one on
    ``min(c, 0)`` at no extra cost and dropping ``c >= 0`` pairs never costs more.
    """
    b, n, m = cost.shape
    clipped = np.minimum(cost, 0.0)
    listed = np.fromiter(problems, dtype=np.int64)
    for p in listed.tolist():
        rows, cols = linear_sum_assignment(clipped[p])
        if len(rows) == n:  # n <= m: every row gets a column
            out[p] = cols
        else:
            out[p] = -1
            out[p, rows] = cols
    # an unassigned row reads some entry; it stays -1 whatever that entry is
    dropped = np.take(clipped, _offsets(b, n, m)[0] + out) == 0.0
    if len(listed) < b:  # the other problems are left untouched
        dropped &= np.isin(np.arange(b), listed)[:, None]
    out[dropped] = -1


def _partial_lap(cost: Tensor) -> Tensor:
    """:func:`_lap_into` on a float64 tensor ``[b, n, m]``; returns ``[b, n]`` long."""
    values = np.ascontiguousarray(cost.numpy())
    assignment = np.full(values.shape[:2], -1, dtype=np.int64)
    if values.shape[2]:
        _lap_into(values, assignment, range(values.shape[0]))
    return torch.from_numpy(assignment)


def solve_lap(problem: GraphMatchingProblem) -> Tensor:
    """Exact minimiser of the unary part only (quadratic costs ignored)."""
    return _partial_lap(problem.unary)
