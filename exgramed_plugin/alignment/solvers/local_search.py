"""Best-improvement local search on discrete matchings (remove / insert-with-eviction / swap moves)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .problem import GraphMatchingProblem, _unary_array
from .tables import _gradients, _offsets, _pair_coefficients, _pair_terms, _Tables


_MOVES = ("remove", "insert", "swap")


def _move_deltas(
    tables: _Tables,
    unary: np.ndarray,
    assignment: np.ndarray,
    live: np.ndarray,
    moves: tuple[str, ...] = _MOVES,
    gradients: np.ndarray | None = None,
) -> np.ndarray:
    """Exact cost change of every move of the ``live`` problems, ``[len(live), moves]``.

    Columns, per kind in ``_MOVES`` order: remove row ``i`` (``n``), insert ``(i, j)`` evicting
    column ``j``'s holder (``n * m``), swap the columns of rows ``i < k`` (``n * n``); a move
    that does nothing or is not feasible costs ``inf``. A move flips a set S of entries with
    signs s (+1 set, -1 clear); at a discrete x its exact cost change is
    ``sum_u s_u g_u + sum_{u<v} s_u s_v W_uv`` with ``g`` the gradient at x and ``W_uv`` the pair
    coefficient (zero for entries sharing a row or a column). ``gradients``: ``G`` at
    ``assignment`` for the whole batch when the caller has it.
    """
    b, n, m = unary.shape
    _, padded_rows, same_rows, inverse_rows, gain_rows, order_penalty = _offsets(b, n, m)
    size = len(live)
    everyone = size == b
    if gradients is None:
        gradients = _gradients(tables, assignment)
    current = assignment if everyone else assignment[live]
    if not everyone:
        gradients = gradients[live]
    padded = np.zeros((size, n, m + 1))  # column m: "unassigned", gradient 0
    gradient = padded[:, :, :m]
    np.add(unary if everyone else unary[live], gradients[:, 0].reshape(size, n, m), out=gradient)
    gradient += gradients[:, 1].reshape(size, n, m)
    matched = current % (m + 1)
    row_index = padded_rows[:size] + matched
    row_gain = np.take(padded, row_index)  # [s, n] g[i, p_i] (0 if free)
    inverse = np.full((size, m + 1), n, dtype=np.int64)  # n: "unassigned"
    np.put(inverse, inverse_rows[:size] + matched, np.arange(n))  # the row ids repeat per problem
    inverse = inverse[:, :m]
    candidates = []
    if "remove" in moves:
        candidates.append(np.where(current >= 0, -row_gain, np.inf))
    sparse = tables.simple_a and ("insert" in moves or "swap" in moves)
    if sparse:  # kNN graphs: the pair coefficients at A's edges only (zero elsewhere), the same values
        terms = _live_pair_terms(tables, assignment, live)
    elif "insert" in moves or "swap" in moves:
        same, both = _pair_coefficients(tables, assignment)
        if not everyone:
            same, both = same[live], both[live]
    if "insert" in moves:
        # set x_ij, clearing row i's and column j's current entries
        gain_of_row = np.zeros((size, n + 1))
        gain_of_row[:, :n] = row_gain
        col_gain = np.take(gain_of_row, gain_rows[:size] + inverse)  # g[inv_j, j]
        delta = padded - row_gain[:, :, None]
        if sparse:  # evicted pair: W((i, j), (k, j's holder k)) for the A-edge neighbours k of i
            problem, i, k, same_values, _ = terms
            held = current[problem, k]
            kept = held >= 0
            delta[problem[kept], i[kept], held[kept]] += same_values[kept]
        else:
            same_padded = np.zeros((size, n, n + 1))
            same_padded[:, :, :n] = same
            delta[:, :, :m] += np.take(same_padded, same_rows[:size] + inverse[:, None, :])  # evicted pair
        delta[:, :, :m] -= col_gain[:, None, :]
        np.put(delta, row_index, np.inf)  # already set (or the "unassigned" column)
        candidates.append(delta[:, :, :m].reshape(size, -1))
    if "swap" in moves:
        exchanged = np.take(padded, padded_rows[:size, :, None] + matched[:, None, :])  # g[i, p_k]
        exchanged -= row_gain[:, :, None]
        delta = exchanged + exchanged.transpose(0, 2, 1)
        if sparse:
            problem, i, k, _, both_values = terms
            delta[problem, i, k] += both_values
        else:
            delta += both
        penalty = np.where(current >= 0, 0.0, np.inf)
        delta += penalty[:, :, None]
        delta += penalty[:, None, :] + order_penalty
        candidates.append(delta.reshape(size, -1))
    return np.concatenate(candidates, axis=1)


def _live_pair_terms(tables: _Tables, assignment: np.ndarray, live: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`_pair_terms` of the ``live`` problems, numbered by their place in ``live``."""
    problem, i, k, same, both = _pair_terms(tables, assignment)
    place = np.full(tables.b, -1, dtype=np.int64)
    place[live] = np.arange(len(live))
    problem = place[problem]
    kept = problem >= 0
    return problem[kept], i[kept], k[kept], same[kept], both[kept]


def _apply_moves(
    assignment: np.ndarray, problems: np.ndarray, index: np.ndarray, m: int, moves: tuple[str, ...] = _MOVES
) -> None:
    """Apply move ``index[q]`` (a column of :func:`_move_deltas`) to problem ``problems[q]``, in place.

    One move per problem (``problems`` distinct), all problems at once.
    """
    n = assignment.shape[1]
    offset = 0
    for kind in moves:
        count = n if kind == "remove" else n * m if kind == "insert" else n * n
        mine = (index >= offset) & (index < offset + count)
        if mine.any():
            chosen, local = problems[mine], index[mine] - offset
            if kind == "remove":
                assignment[chosen, local] = -1
            elif kind == "insert":
                row, column = np.divmod(local, m)
                rows = assignment[chosen]
                rows[rows == column[:, None]] = -1  # evict the column's holder
                rows[np.arange(len(chosen)), row] = column
                assignment[chosen] = rows
            else:
                first, second = np.divmod(local, n)
                held = assignment[chosen, first]
                assignment[chosen, first] = assignment[chosen, second]
                assignment[chosen, second] = held
        offset += count


def _local_search_arrays(
    tables: _Tables,
    unary: np.ndarray,
    assignment: np.ndarray,
    max_iter: int,
    moves: tuple[str, ...] = _MOVES,
    gradients: np.ndarray | None = None,
    problems: np.ndarray | None = None,
) -> np.ndarray:
    """Best-improvement descent over the moves of :func:`_move_deltas`, in place.

    ``gradients``: ``G`` at ``assignment`` when the caller has it. A problem without an improving
    move is at a local minimum and stays there, so later rounds only look at the problems that
    just moved. ``problems``: indices of the problems to search (default all); the others are left
    as they are.
    """
    b, n, m = unary.shape
    moves = tuple(kind for kind in _MOVES if kind in moves)
    tolerance = -1e-9 * (1.0 + np.abs(unary).max(axis=(1, 2), initial=0.0))
    live = np.arange(b) if problems is None else np.asarray(problems, dtype=np.int64)  # may still improve
    for _ in range(max_iter):
        size = len(live)
        if not size:
            break
        stacked = _move_deltas(tables, unary, assignment, live, moves, gradients)
        gradients = None
        where = stacked.argmin(axis=1)
        improving = np.take(stacked, where + np.arange(size) * stacked.shape[1]) < tolerance[live]
        if not improving.any():
            break
        live = live[improving]
        _apply_moves(assignment, live, where[improving], m, moves)
    return assignment


def _local_search(
    problem: GraphMatchingProblem,
    assignment: Tensor,
    max_iter: int,
    moves: tuple[str, ...] = _MOVES,
    gradients: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Tensor front of :func:`_local_search_arrays` (``gradients``: ``(G1, G2)`` at ``assignment``)."""
    b, n, m = problem.shape
    stacked = None if gradients is None else torch.stack(gradients, dim=1).reshape(b, 2, n * m).numpy()
    result = _local_search_arrays(
        problem.tables(), _unary_array(problem), assignment.numpy().copy(), max_iter, moves, stacked
    )
    return torch.from_numpy(result)
