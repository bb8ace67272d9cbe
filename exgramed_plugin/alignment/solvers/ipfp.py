"""Solver ``"ipfp"``: integer projected fixed point (Leordeanu et al. 2009) from the LAP, then local search."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .lap import _lap_into
from .local_search import _local_search_arrays
from .problem import GraphMatchingProblem, _unary_array
from .tables import _bilinear, _gradient_entries, _gradients, _Tables


def _summed_gradient_entries(tables: _Tables, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G1 + G2`` at a discrete matching as flat ``[b, n * m]`` positions and the costs added there."""
    n, m = tables.n, tables.m
    target, values = _gradient_entries(tables, assignment)
    return target % (n * m) + (target // (2 * n * m)) * (n * m), values  # [b, 2, n m] -> [b, n m]


def _summed_gradient(tables: _Tables, assignment: np.ndarray) -> np.ndarray:
    """``G1 + G2`` ``[b, n * m]`` at a discrete matching (see :func:`_gradients`)."""
    b, n, m = tables.b, tables.n, tables.m
    position, values = _summed_gradient_entries(tables, assignment)
    return np.bincount(position, values, minlength=b * n * m).astype(np.float64, copy=False).reshape(b, n * m)


def _at(values: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """``<values, onehot(assignment)>`` ``[..., b]`` for ``values`` ``[b, n * m]`` and assignments
    ``[..., b, n]`` (unassigned rows add 0)."""
    b, n = assignment.shape[-2:]
    m = values.shape[1] // max(1, n)
    picked = values[np.arange(b)[:, None], np.arange(n) * m + np.maximum(assignment, 0)]
    return np.where(assignment >= 0, picked, 0.0).sum(axis=-1)


def solve_ipfp(
    problem: GraphMatchingProblem,
    max_iter: int = 20,
    patience: int = 2,
    local_search: bool = True,
    local_search_iter: int | None = None,
) -> Tensor:
    """IPFP from the LAP solution, keeping the best discrete iterate, then local search.

    The continuous iterate ``x`` is kept as weights of the discrete matchings it combines (one per
    iteration), never as an ``[n, m]`` array: the line search's slope and curvature are then lookups
    (:func:`_bilinear`) and the gradient ``c + G(x)``, which the LAP needs, is the only dense
    ``[n, m]`` work of an iteration (``G`` is linear: ``G(x + t (b - x)) = (1 - t) G(x) + t G(b)``,
    with ``b`` always discrete). A problem whose line search found no descent direction keeps its
    iterate, so its LAP is not solved again (solving it again would return the same ``b``). Patience
    counts per problem, so a problem stops when *its* best iterate went stale: its answer does not
    depend on the batch.
    """
    b, n, m = problem.shape
    assignment = np.full((b, n), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return torch.from_numpy(assignment)
    tables = problem.tables()
    unary = _unary_array(problem)
    flat_unary = unary.reshape(b, n * m)
    _lap_into(unary, assignment, range(b))
    best_assignment = assignment.copy()
    best_value = _at(flat_unary, assignment) + _bilinear(tables, assignment, assignment)
    if problem.quadratic.shape[1] and problem.quadratic.shape[2]:
        best_value = _iterate(tables, flat_unary, assignment, best_assignment, best_value, max_iter, patience)
    if local_search:
        budget = local_search_iter if local_search_iter is not None else 4 * max(n, m)
        best_assignment = _local_search_arrays(tables, unary, best_assignment, budget,
                                               gradients=_gradients(tables, best_assignment))
    return torch.from_numpy(best_assignment)


def _iterate(tables: _Tables, flat_unary: np.ndarray, start: np.ndarray, best_assignment: np.ndarray,
             best_value: np.ndarray, max_iter: int, patience: int) -> np.ndarray:
    """The IPFP iterations from the discrete ``start``; updates ``best_assignment`` in place, returns the best values.

    ``x = sum_k weights[:, k] onehot(points[k])``; ``pair[:, k, l] = <G1(points[l]), points[k]>``.
    """
    b, n, m = tables.b, tables.n, tables.m
    tolerance = 1e-9 * (1.0 + np.abs(flat_unary).max(axis=1))
    points = np.empty((max_iter + 1, b, n), dtype=np.int64)  # the first ``len(weights[0])`` are in use
    points[0] = start
    weights = np.ones((b, 1))
    pair = _bilinear(tables, start, start)[:, None, None]
    summed = _summed_gradient(tables, start)  # G1 + G2 at x
    candidate = start.copy()
    active: list[int] = list(range(b))
    stale = np.zeros(b, dtype=np.int64)
    for _ in range(max_iter):
        gradient = flat_unary + summed
        _lap_into(gradient.reshape(b, n, m), candidate, active)
        used = points[:weights.shape[1]]
        into = _bilinear(tables, used, candidate).T  # [b, K] <G1(candidate), points[k]>
        out_of = _bilinear(tables, candidate, used).T  # [b, K] <G1(points[k]), candidate>
        own = _bilinear(tables, candidate, candidate)
        value = _at(flat_unary, candidate) + own
        better = value < best_value - tolerance
        np.copyto(best_value, value, where=better)
        np.copyto(best_assignment, candidate, where=better[:, None])
        stale = np.where(better, 0, stale + 1)
        slope = _at(gradient, candidate) - (weights * _at(gradient, used).T).sum(axis=1)  # <gradient, b - x>
        descending = (slope < -tolerance) & (stale < patience)
        if not descending.any():
            break
        active = np.flatnonzero(descending).tolist()
        # <G1(b) - G1(x), b - x>
        curvature = own - (weights * into).sum(axis=1) - (weights * out_of).sum(axis=1)
        curvature += np.einsum("pk,pkl,pl->p", weights, pair, weights)
        step = np.where(curvature > 0, np.minimum(-slope / (2 * np.maximum(curvature, 1e-300)), 1.0), 1.0)
        step[~descending] = 0.0
        # G(x + t (b - x)) = (1 - t) G(x) + t G(b), G(b) sparse
        summed *= (1.0 - step)[:, None]
        position, values = _summed_gradient_entries(tables, candidate)
        np.add.at(summed.reshape(-1), position, values * step[position // (n * m)])
        weights = np.concatenate([weights * (1.0 - step[:, None]), step[:, None]], axis=1)
        pair = np.concatenate([np.concatenate([pair, into[:, :, None]], axis=2),
                               np.concatenate([out_of, own[:, None]], axis=1)[:, None, :]], axis=1)
        points[weights.shape[1] - 1] = candidate
    return best_value
