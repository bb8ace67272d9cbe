"""Solver ``"bnb"``: branch-and-bound over partial matchings, exact unless its node budget runs out.

Rows are decided one at a time (a free column or "unassigned"), breadth-first and for the whole
batch at once: a level of every problem is expanded and bounded in one set of numpy calls, so the
per-node cost is arithmetic, not Python. With ``f(x) = c.x + 1/2 x^T M x`` (``M`` the symmetric
pair matrix), a node that fixed the rows before ``r`` has cost ``g`` and adds
``F_u = sum_{v fixed} M_uv`` to each future entry ``u``. Every future-future pair is split half to
each end and bounded by its most negative value, so ``l_u = c_u + F_u + 1/2 sum_{k >= r} min_l
M_{u,(k,l)}`` and the node's bound is ``g + max(sum_rows min(0, min_j l), sum_columns min(0,
min_i l))`` (taken columns excluded). A node whose bound does not beat the incumbent by more than
the tolerance is dropped. Leaving all later rows unassigned is feasible, so every node's ``g`` is
also a candidate incumbent. Budgets count per problem, so a batch gives what its problems give
one by one; a problem whose next level would pass its budget stops there, keeping the best
matching seen (never worse than the incumbent it was given).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from .ipfp import solve_ipfp
from .problem import GraphMatchingProblem, _unary_array

logger = logging.getLogger(__name__)

BNB_NODE_BUDGET = 20_000  # nodes per problem (tens of ms per problem when it is used up)
BNB_MAX_ENTRIES = 400  # n * m above which the dense pair matrix is not built (20 x 20: 1.3 MB)
_MAX_COLUMNS = 62  # taken columns are bits of an int64


def fits_branch_and_bound(n: int, m: int) -> bool:
    """Whether :func:`branch_and_bound` takes an ``n x m`` problem (small enough for dense pairs)."""
    return 0 < n * m <= BNB_MAX_ENTRIES and m <= _MAX_COLUMNS


def pair_matrices(problem: GraphMatchingProblem, order: np.ndarray) -> np.ndarray:
    """Dense symmetric ``M`` ``[b, n, m, n, m]``: ``f(x) = c.x + 1/2 x^T M x``.

    ``order`` ``[b, n]``: row ``i`` of the result is row ``order[p, i]`` of problem ``p``. Pairs
    of entries sharing a row or a column are zero: prepare_problem folded or dropped the
    self-loop terms that would couple them.
    """
    b, n, m = problem.shape
    size = n * m
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[None, :].repeat(b, axis=0), axis=1)
    src_a = np.take_along_axis(rank, problem.src_a.numpy(), axis=1)
    dst_a = np.take_along_axis(rank, problem.dst_a.numpy(), axis=1)
    first = src_a[:, :, None] * m + problem.src_b.numpy()[:, None, :]
    second = dst_a[:, :, None] * m + problem.dst_b.numpy()[:, None, :]
    offset = (size * size) * np.arange(b)[:, None, None]
    index = np.concatenate([(first * size + second + offset).reshape(-1), (second * size + first + offset).reshape(-1)])
    values = problem.quadratic.numpy().reshape(-1)
    pair = np.bincount(index, np.concatenate([values, values]), minlength=b * size * size)
    return pair.astype(np.float64, copy=False).reshape(b, n, m, n, m)


def _row_order(problem: GraphMatchingProblem) -> np.ndarray:
    """Rows by decreasing pair-cost mass ``[b, n]``: deciding them first moves the bound the most."""
    b, n, _ = problem.shape
    mass = np.abs(problem.quadratic.numpy().astype(np.float64, copy=False)).sum(axis=2)  # [b, E1]
    ends = np.concatenate([problem.src_a.numpy(), problem.dst_a.numpy()], axis=1) + n * np.arange(b)[:, None]
    weight = np.bincount(ends.reshape(-1), np.concatenate([mass, mass], axis=1).reshape(-1), minlength=b * n)
    return np.argsort(-weight.reshape(b, n), axis=1, kind="stable")


def assignment_values(unary: np.ndarray, pair: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """``f`` ``[b]`` of assignments ``[b, n]`` (``-1`` unassigned) from the dense pair matrices."""
    b, n, _ = unary.shape
    valid = assignment >= 0
    column = np.where(valid, assignment, 0)
    rows = np.arange(n)
    linear = np.take_along_axis(unary, column[:, :, None], axis=2)[:, :, 0]
    quadratic = pair[np.arange(b)[:, None, None], rows[:, None], column[:, :, None], rows, column[:, None, :]]
    both = valid[:, :, None] & valid[:, None, :]
    return (linear * valid).sum(axis=1) + 0.5 * (quadratic * both).sum(axis=(1, 2))


def branch_and_bound(
    problem: GraphMatchingProblem, incumbent: np.ndarray, node_budget: int = BNB_NODE_BUDGET
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search every problem from the feasible ``incumbent`` ``[b, n]``.

    Returns the best assignments found ``[b, n]``, which of them are proven optimal (the search
    finished within the budget) and the nodes each problem created (root included, never above
    ``node_budget``).
    """
    b, n, m = problem.shape
    if not fits_branch_and_bound(n, m):
        raise ValueError(f"branch-and-bound needs 0 < n * m <= {BNB_MAX_ENTRIES}, m <= {_MAX_COLUMNS}; got {n} x {m}")
    unary = _unary_array(problem)
    order = _row_order(problem)
    c = np.take_along_axis(unary, order[:, :, None], axis=1)
    pair = pair_matrices(problem, order)
    # base[p, r, i, j] = c + 1/2 sum_{k >= r} min_l M[(i, j), (k, l)]: l_u without the fixed part
    base = np.zeros((b, n + 1, n, m))
    base[:, :n] = 0.5 * np.cumsum(pair.min(axis=4)[..., ::-1], axis=3)[..., ::-1].transpose(0, 3, 1, 2)
    base += c[:, None]
    best = np.take_along_axis(np.asarray(incumbent, dtype=np.int64), order, axis=1)
    best_value = assignment_values(c, pair, best)
    tolerance = 1e-9 * (1.0 + np.abs(unary).max(axis=(1, 2), initial=0.0))
    created = np.ones(b, dtype=np.int64)
    exhausted = np.zeros(b, dtype=bool)
    bits = 1 << np.arange(m + 1)  # column m ("unassigned") is never taken
    owner = np.arange(b)  # problem of each node; nodes stay grouped by problem
    assign = np.full((b, n), -1, dtype=np.int64)
    used = np.zeros(b, dtype=np.int64)  # bit mask of taken columns
    cost = np.zeros(b)
    fixed = np.zeros((b, n, m))  # F on the future rows only
    for row in range(n):
        choice = (used[:, None] & bits) == 0
        children = np.bincount(owner, choice.sum(axis=1), minlength=b).astype(np.int64)
        over = created + children > node_budget
        if over.any():
            exhausted |= over & (children > 0)
            choice[over[owner]] = False
            logger.debug("branch-and-bound: node budget %d reached at row %d of %d", node_budget, row, n)
            children[over] = 0
        created += children
        parent, column = np.nonzero(choice)  # column m: the row stays unassigned
        if not len(parent):
            break
        problem_of = owner[parent]
        assigned = column < m
        child_cost = cost[parent]
        child_fixed = fixed[parent, 1:]
        if assigned.any():
            chosen, picked = np.flatnonzero(assigned), column[assigned]
            child_cost[chosen] += c[problem_of[chosen], row, picked] + fixed[parent[chosen], 0, picked]
            child_fixed[chosen] += pair[problem_of[chosen], row, picked, row + 1 :]
        child_used = used[parent] | np.take(bits, column) * assigned
        child_assign = assign[parent]
        child_assign[:, row] = np.where(assigned, column, -1)
        # leaving every later row unassigned is feasible: each child is also a candidate answer
        bar = (best_value - tolerance)[problem_of]
        for p in np.unique(problem_of[child_cost < bar]).tolist():
            mine = np.flatnonzero(problem_of == p)
            index = mine[child_cost[mine].argmin()]
            best[p], best_value[p] = child_assign[index], child_cost[index]
        if row + 1 == n:
            break
        entry = child_fixed + base[problem_of, row + 1, row + 1 :]
        np.copyto(entry, np.inf, where=((child_used[:, None] & bits[:m]) != 0)[:, None, :])
        by_row = np.minimum(entry.min(axis=2), 0.0).sum(axis=1)
        by_column = np.minimum(entry.min(axis=1), 0.0).sum(axis=1)
        keep = np.flatnonzero(child_cost + np.maximum(by_row, by_column) < (best_value - tolerance)[problem_of])
        owner, assign, used = problem_of[keep], child_assign[keep], child_used[keep]
        cost, fixed = child_cost[keep], child_fixed[keep]
    result = np.empty_like(best)
    np.put_along_axis(result, order, best, axis=1)
    return result, ~exhausted, created


def solve_branch_and_bound(problem: GraphMatchingProblem, node_budget: int = BNB_NODE_BUDGET) -> Tensor:
    """Branch-and-bound from the ``"ipfp"`` answer, which it keeps where the budget runs out.

    Problems too large for the dense pair matrix (:func:`fits_branch_and_bound`) get ``"ipfp"``.
    """
    incumbent = solve_ipfp(problem).numpy()
    _, n, m = problem.shape
    if not fits_branch_and_bound(n, m):
        return torch.from_numpy(incumbent)
    assignment, _, _ = branch_and_bound(problem, incumbent, node_budget)
    return torch.from_numpy(assignment)
