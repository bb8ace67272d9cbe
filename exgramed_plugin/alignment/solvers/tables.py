"""Flat numpy lookup tables shared by the solver loops, and the sparse objective pieces built on them.

Every quadratic term is evaluated only at *discrete* matchings, where it is sparse:
``O(E_A * max in/out-degree of B)`` work instead of ``O(E_A * E_B)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .problem import GraphMatchingProblem


@dataclass(frozen=True)
class _Tables:
    """Index tables over the whole batch with every per-problem offset pre-added.

    The solver loops then cost a fixed, small number of numpy calls per iteration whatever
    ``b`` is (per-call overhead, not arithmetic, dominates at MGA sizes). Gradient part: list
    ``(p * 2 + h) * (m+1) + j`` (``list_start``/``list_length`` into ``list_edges``) holds B's
    edges entering (``h = 0``) or leaving (``h = 1``) node ``j`` of problem ``p`` (``j = m``:
    none, so an unassigned row contributes nothing), ``list_columns`` the flat ``[2, n, m]``
    column each writes to. Lists are ragged (no padding): kNN in-degrees vary a lot. Pair part:
    ``pair_ids`` maps a B node pair ``(j, l)`` to its canonical edge id, ``pair_values`` holds
    the costs with duplicate B edges summed.
    """

    b: int
    n: int
    m: int
    list_start: np.ndarray  # [b * 2(m+1)]
    list_length: np.ndarray  # [b * 2(m+1)]
    list_edges: np.ndarray  # [b * 2 * E2] edge id inside its problem
    list_columns: np.ndarray  # [b * 2 * E2]
    pivot: np.ndarray  # [b * E1 * 2] flat row whose partner picks the list (G1: dst_a, G2: src_a)
    shift: np.ndarray  # [b * E1 * 2] list offset of (problem, half)
    value_base: np.ndarray  # [b * E1 * 2] offset of (problem, A edge) into ``quadratic``
    row_base: np.ndarray  # [b * E1 * 2] flat output offset of (problem, half, row)
    quadratic: np.ndarray  # [b * E1 * E2]
    src_a: np.ndarray  # [b * E1] flat row index p * n + src
    dst_a: np.ndarray  # [b * E1]
    pair_base: np.ndarray  # [2 * b * E1] offset p * (m+1)^2 into ``pair_ids`` (twice: forward, backward)
    pair_value_base: np.ndarray  # [2 * b * E1] offset of (problem, A edge) into ``pair_values``
    pair_slot: np.ndarray  # [2 * b * E1] flat [2, b, n, n] index of (problem, src, dst)
    pair_ids: np.ndarray  # [b * (m+1)^2], -1: no such B edge
    pair_values: np.ndarray  # [b * E1 * E2]
    canonical: np.ndarray  # [b, E2] canonical id of each B edge (itself unless duplicated)
    reverse_a: np.ndarray  # [b * E1] id inside its problem of the A edge dst -> src, -1 if none
    simple_a: bool  # A has no duplicate edges and no self loops (a kNN graph): see :func:`_pair_terms`

    def take(self, index: np.ndarray) -> _Tables:
        """Tables of the problems at ``index`` (repeats allowed) that share this batch's cost arrays.

        Copies for parallel searches then cost index arrays only, not ``E1 * E2`` costs each.
        """
        index = np.asarray(index, dtype=np.int64)
        old, b, n, m = self.b, len(index), self.n, self.m
        e1 = self.src_a.size // old if old else 0
        e2 = self.list_edges.size // (2 * old) if old else 0
        moved = np.arange(b) - index  # new minus old problem position

        def blocks(array: np.ndarray, width: int, offset: int = 0) -> np.ndarray:
            picked = array.reshape(old, width)[index]
            return (picked + (moved * offset)[:, None]).reshape(-1) if offset else picked.reshape(-1)

        def halves(array: np.ndarray, offset: int = 0, half_offset: tuple[int, int] = (0, 0)) -> np.ndarray:
            picked = array.reshape(2, old, e1)[:, index]
            picked = picked + (moved * offset)[None, :, None]
            picked[1] += half_offset[1] - half_offset[0]
            return picked.reshape(-1)

        return _Tables(
            b=b,
            n=n,
            m=m,
            list_start=blocks(self.list_start, 2 * (m + 1), 2 * e2),
            list_length=blocks(self.list_length, 2 * (m + 1)),
            list_edges=blocks(self.list_edges, 2 * e2),
            list_columns=blocks(self.list_columns, 2 * e2),
            pivot=blocks(self.pivot, 2 * e1, n),
            shift=blocks(self.shift, 2 * e1, 2 * (m + 1)),
            value_base=blocks(self.value_base, 2 * e1),
            row_base=blocks(self.row_base, 2 * e1, 2 * n * m),
            quadratic=self.quadratic,
            src_a=blocks(self.src_a, e1, n),
            dst_a=blocks(self.dst_a, e1, n),
            pair_base=halves(self.pair_base, (m + 1) ** 2),
            pair_value_base=halves(self.pair_value_base),
            pair_slot=halves(self.pair_slot, n * n, (old * n * n, b * n * n)),
            pair_ids=blocks(self.pair_ids, (m + 1) ** 2),
            pair_values=self.pair_values,
            canonical=self.canonical[index],
            reverse_a=blocks(self.reverse_a, e1),
            simple_a=self.simple_a,
        )

    def pair_index(self) -> _PairIndex:
        """The pair part of these tables (shared arrays)."""
        return _PairIndex(self.b, self.n, self.m, self.src_a, self.dst_a, self.pair_base[: self.src_a.size],
                          self.pair_ids, self.canonical, self.pair_values is not self.quadratic)

    @staticmethod
    def build(problem: GraphMatchingProblem) -> _Tables:
        b, n, m = problem.shape
        src_a, dst_a = problem.src_a.numpy(), problem.dst_a.numpy()
        src_b, dst_b = problem.src_b.numpy(), problem.dst_b.numpy()
        e1, e2 = src_a.shape[1], src_b.shape[1]
        problems = np.arange(b)[:, None]
        pairs = _PairIndex.build(src_a, dst_a, src_b, dst_b, n, m)

        # incidence lists of both halves of all problems at once: key (p, h, node)
        keys = np.concatenate([dst_b, src_b + (m + 1)], axis=1) + 2 * (m + 1) * problems
        written = np.concatenate([src_b, n * m + dst_b], axis=1)  # G1 column src_b, G2 dst_b
        keys, written = keys.reshape(-1), written.reshape(-1)
        order = np.argsort(keys, kind="stable")
        degree = np.bincount(keys, minlength=b * 2 * (m + 1))

        # float32 or float64 costs, read as they are: every sum of them is taken in float64 (bincount)
        quadratic = np.ascontiguousarray(problem.quadratic.numpy()).reshape(-1)
        edge_rows = np.arange(b * e1) * e2
        if not pairs.duplicates:
            coalesced = quadratic  # no duplicate B edges (kNN graphs): nothing to sum
        else:
            slots = (edge_rows.reshape(b, e1, 1) + pairs.canonical.reshape(b, 1, e2)).reshape(-1)
            coalesced = np.bincount(slots, quadratic, minlength=b * e1 * e2)
        slot = (n * n * problems + src_a * n + dst_a).reshape(-1)
        return _Tables(
            b=b,
            n=n,
            m=m,
            list_start=np.cumsum(degree) - degree,
            list_length=degree,
            list_edges=order % e2 if e2 else order,
            list_columns=written[order],
            pivot=(np.stack([dst_a, src_a], axis=2) + n * problems[:, :, None]).reshape(-1),
            shift=np.tile(np.array([0, m + 1]), b * e1) + 2 * (m + 1) * np.arange(b).repeat(2 * e1),
            value_base=edge_rows.repeat(2),
            row_base=(np.stack([src_a, dst_a], axis=2) * m + 2 * n * m * problems[:, :, None]).reshape(-1),
            quadratic=quadratic,
            src_a=pairs.src_a,
            dst_a=pairs.dst_a,
            pair_base=np.tile(pairs.pair_base, 2),
            pair_value_base=np.tile(edge_rows, 2),
            pair_slot=np.concatenate([slot, slot + b * n * n]),
            pair_ids=pairs.pair_ids,
            pair_values=coalesced,
            canonical=pairs.canonical,
            **_reverse_edges(src_a, dst_a, n),
        )


def _reverse_edges(src_a: np.ndarray, dst_a: np.ndarray, n: int) -> dict:
    """``reverse_a`` and ``simple_a`` of :class:`_Tables` from A's edge ends ``[b, E1]``."""
    b, e1 = src_a.shape
    key = (src_a * n + dst_a + n * n * np.arange(b)[:, None]).reshape(-1)
    order = np.argsort(key, kind="stable")
    simple = bool((src_a != dst_a).all()) and bool((np.diff(key[order]) != 0).all())
    wanted = (dst_a * n + src_a + n * n * np.arange(b)[:, None]).reshape(-1)
    found = np.minimum(np.searchsorted(key[order], wanted), max(0, key.size - 1))
    hit = key[order][found] == wanted if key.size else np.zeros(0, dtype=bool)
    reverse = np.where(hit, order[found] % max(1, e1), -1)
    return {"reverse_a": reverse, "simple_a": simple}


@dataclass(frozen=True)
class _PairIndex:
    """Which B edge joins each B node pair, over a batch: all the black-box gradient needs (no costs).

    ``pair_ids[pair_base[a] + j * (m+1) + l]`` is the canonical id (its first edge) of the B edge
    ``j -> l`` of A edge ``a``'s problem, ``-1`` where there is none (``j`` or ``l`` = ``m``: unassigned).
    """

    b: int
    n: int
    m: int
    src_a: np.ndarray  # [b * E1] flat row p * n + src
    dst_a: np.ndarray  # [b * E1]
    pair_base: np.ndarray  # [b * E1] offset p * (m+1)^2 into ``pair_ids``
    pair_ids: np.ndarray  # [b * (m+1)^2]
    canonical: np.ndarray  # [b, E2] canonical id of each B edge (itself unless duplicated)
    duplicates: bool  # some B edges join the same node pair

    @staticmethod
    def build(src_a: np.ndarray, dst_a: np.ndarray, src_b: np.ndarray, dst_b: np.ndarray, n: int, m: int) -> _PairIndex:
        """From the edge ends ``[b, E]`` of both graphs."""
        b, e1 = src_a.shape
        e2 = src_b.shape[1]
        problems = np.arange(b)[:, None]
        key = (src_b * (m + 1) + dst_b + (m + 1) ** 2 * problems).reshape(-1)
        ids = np.full(b * (m + 1) ** 2, -1, dtype=np.int64)
        edge_ids = np.tile(np.arange(e2), b)
        ids[key] = edge_ids
        canonical = ids[key]
        duplicates = not (canonical == edge_ids).all()
        if duplicates:  # the first of the edges that join a pair stands for them all
            ids.fill(e2)
            np.minimum.at(ids, key, edge_ids)
            ids[ids == e2] = -1
            canonical = ids[key]
        return _PairIndex(
            b=b, n=n, m=m,
            src_a=(src_a + n * problems).reshape(-1),
            dst_a=(dst_a + n * problems).reshape(-1),
            pair_base=((m + 1) ** 2 * problems).repeat(e1, axis=1).reshape(-1),
            pair_ids=ids,
            canonical=canonical.reshape(b, e2),
            duplicates=duplicates,
        )


@lru_cache(maxsize=64)
def _offsets(b: int, n: int, m: int) -> tuple[np.ndarray, ...]:
    """Flat row offsets into ``[b, n, m]``, ``[b, n, m+1]``, ``[b, n, n+1]``, ``[b, m+1]``, ``[b, n+1]`` arrays,
    and the swap mask (``inf`` on and below the diagonal); all read-only."""
    rows = np.arange(b * n).reshape(b, n)
    problems = np.arange(b)[:, None]
    order_penalty = np.where(np.triu(np.ones((n, n), dtype=bool), 1), 0.0, np.inf)  # each swap once
    tables = (rows * m, rows * (m + 1), (rows * (n + 1))[:, :, None], problems * (m + 1), problems * (n + 1), order_penalty)
    for table in tables:
        table.flags.writeable = False
    return tables


def _gradients(tables: _Tables, assignment: np.ndarray) -> np.ndarray:
    """``G = [G1, G2]`` ``[b, 2, n * m]`` at a discrete matching: ``grad = c + G1 + G2``, ``quad(x) = <G1, x>``.

    ``G1[i, j] = sum_{a: src=i} sum_{b: src=j} q_ab x[dst_a, dst_b]`` and
    ``G2[i, j] = sum_{a: dst=i} sum_{b: dst=j} q_ab x[src_a, src_b]``. At a discrete ``x`` only
    the B edges entering (leaving) the node matched to ``dst_a`` (``src_a``) contribute, so the
    work is ``E1 x max degree`` instead of ``E1 x E2``.
    """
    b, n, m = tables.b, tables.n, tables.m
    target, values = _gradient_entries(tables, assignment)
    gradients = np.bincount(target, values, minlength=b * 2 * n * m)
    return gradients.astype(np.float64, copy=False).reshape(b, 2, n * m)  # bincount of nothing is int


def _gradient_entries(tables: _Tables, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_gradients` before it is summed: flat ``[b, 2, n * m]`` positions and the costs added there."""
    m = tables.m
    matched = assignment.reshape(-1) % (m + 1)  # -1 -> m: list m is empty
    lists = np.take(matched, tables.pivot)
    lists += tables.shift
    length = np.take(tables.list_length, lists)
    end = np.cumsum(length)
    # entry e of the concatenated lists reads list_edges[start of its list + rank in its list]
    position = np.arange(end[-1] if len(end) else 0) + np.repeat(np.take(tables.list_start, lists) - end + length, length)
    edges = np.take(tables.list_edges, position)
    edges += np.repeat(tables.value_base, length)
    target = np.take(tables.list_columns, position)
    target += np.repeat(tables.row_base, length)
    return target, np.take(tables.quadratic, edges)


def _bilinear(tables: _Tables, rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``<G1(columns), rows>`` ``[..., b]`` for discrete assignments ``[..., b, n]`` (broadcast):
    ``sum_a q[a, B edge r(src_a) -> c(dst_a)]``.

    ``quad(x) = <G1(x), x>`` is the bilinear form on the diagonal; IPFP's line search needs it between
    the matchings its iterate combines, one lookup per A edge instead of a pass over ``[n, m]``.
    """
    b, m = tables.b, tables.m
    rows, columns = np.broadcast_arrays(rows, columns)
    lead = rows.shape[:-2]
    count = int(np.prod(lead, dtype=np.int64))
    half = tables.src_a.size
    if not (half and tables.pair_values.size):  # no edge pairs
        return np.zeros((*lead, b))
    j = np.take(rows.reshape(count, -1) % (m + 1), tables.src_a, axis=1)
    l = np.take(columns.reshape(count, -1) % (m + 1), tables.dst_a, axis=1)
    ids = np.take(tables.pair_ids, j * (m + 1) + l + tables.pair_base[:half])
    values = np.take(tables.pair_values, ids + tables.pair_value_base[:half])  # id -1 reads a wrong entry ...
    values = np.where(ids < 0, 0.0, values)  # ... which is cleared here
    bins = np.arange(count)[:, None] * b + np.arange(half) // (half // b)  # (pair, problem), edges in order
    sums = np.bincount(bins.reshape(-1), values.reshape(-1), minlength=count * b)
    return sums.astype(np.float64, copy=False).reshape(*lead, b)


def _objective_values(tables: _Tables, unary: np.ndarray, assignment: np.ndarray) -> np.ndarray:
    """Objective ``[b]`` of discrete assignments ``[b, n]``: ``<c + G1, x>`` (see :func:`_gradients`)."""
    b, n, m = unary.shape
    rows = np.flatnonzero(assignment.reshape(-1) >= 0)
    entries = rows * m + assignment.reshape(-1)[rows]  # flat [b, n, m] index of each matched pair
    values = unary.reshape(-1)[entries] + _gradients(tables, assignment)[:, 0].reshape(-1)[entries]
    return np.bincount(rows // n, values, minlength=b).astype(np.float64, copy=False)


def _pair_terms(tables: _Tables, assignment: np.ndarray) -> tuple[np.ndarray, ...]:
    """The nonzero entries of :func:`_pair_coefficients`' matrices, equal to them bit for bit, when A is simple.

    Returns ``(problem, i, k, same, both)`` over the positions ``(i, k)`` of A's edges and of the
    reverses that are not edges themselves: everywhere else both matrices are zero. Each entry is
    summed in the dense code's order, ``same = h[i, k] + h[k, i]``, ``both = (same + c[i, k]) + c[k, i]``.
    """
    b, n, m = tables.b, tables.n, tables.m
    half = tables.src_a.size
    e1 = half // max(1, b)
    if not (half and tables.pair_values.size):
        return tuple(np.zeros(0, dtype=dtype) for dtype in (np.int64, np.int64, np.int64, np.float64, np.float64))
    matched = assignment.reshape(-1) % (m + 1)
    j, l = np.take(matched, tables.src_a), np.take(matched, tables.dst_a)
    ids = np.take(tables.pair_ids, np.concatenate([j * (m + 1) + l, l * (m + 1) + j]) + tables.pair_base)
    values = np.take(tables.pair_values, ids + tables.pair_value_base).astype(np.float64)
    values[ids < 0] = 0.0
    along, crossed = values[:half], values[half:]  # h[i, k] and c[i, k] of A edge i -> k
    problem = np.arange(half) // e1
    has_reverse = tables.reverse_a >= 0
    reverse = np.where(has_reverse, tables.reverse_a + problem * e1, 0)
    same = along + np.where(has_reverse, along[reverse], 0.0)
    both = same + crossed
    both += np.where(has_reverse, crossed[reverse], 0.0)
    lonely = ~has_reverse  # position (k, i): h[k, i] = c[k, i] = 0
    rows, columns = tables.src_a - problem * n, tables.dst_a - problem * n
    return (np.concatenate([problem, problem[lonely]]), np.concatenate([rows, columns[lonely]]),
            np.concatenate([columns, rows[lonely]]), np.concatenate([same, along[lonely]]),
            np.concatenate([both, along[lonely] + crossed[lonely]]))


def _pair_coefficients(tables: _Tables, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[b, n, n]`` matrices ``M[i, k] = W((i, p_i), (k, p_k))`` and ``M + N``, ``N[i, k] = W((i, p_k), (k, p_i))``.

    ``W(u, v)`` is the coefficient of ``x_u x_v`` in the objective. Only A's edges ``i -> k``
    contribute, so both come from one lookup per A edge (zero where a row is unassigned).
    """
    b, n, m = tables.b, tables.n, tables.m
    if not tables.pair_values.size:  # no edge pairs
        zeros = np.zeros((b, n, n))
        return zeros, zeros
    matched = assignment.reshape(-1) % (m + 1)
    j, l = np.take(matched, tables.src_a), np.take(matched, tables.dst_a)
    # B edges p_i -> p_k (same) and p_k -> p_i (crossed), then their costs for each A edge
    ids = np.take(tables.pair_ids, np.concatenate([j * (m + 1) + l, l * (m + 1) + j]) + tables.pair_base)
    values = np.take(tables.pair_values, ids + tables.pair_value_base)  # id -1 reads a wrong entry ...
    values[ids < 0] = 0.0  # ... which is cleared here
    half = np.bincount(tables.pair_slot, values, 2 * b * n * n).astype(np.float64, copy=False)
    half_same, half_crossed = half[: b * n * n].reshape(b, n, n), half[b * n * n :].reshape(b, n, n)
    same = half_same + half_same.transpose(0, 2, 1)
    both = same + half_crossed
    both += half_crossed.transpose(0, 2, 1)
    return same, both
