"""Graph-matching solvers for the MGA quadratic assignment problem (method-spec §3.9, §10.5).

Problem (Lawler form, partial matchings allowed, an unassigned node costs 0)::

    minimise_x   sum_ij c_ij x_ij  +  sum_{a=(i1->i2) in E_A} sum_{b=(j1->j2) in E_B} q_ab x_{i1 j1} x_{i2 j2}
    s.t.         x in {0,1}^{n x m},  row sums <= 1,  column sums <= 1

The original used LPMP, which cannot be installed (its sdist has no C++ sources). Here:

* ``"ipfp"`` (default): integer projected fixed point (Leordeanu et al. 2009) started from the
  LAP solution of the unary costs, then a best-improvement local search (remove / insert with
  eviction / swap moves). Every quadratic term is evaluated only at *discrete* matchings, where
  it is sparse: ``O(E_A * max in/out-degree of B)`` work instead of ``O(E_A * E_B)``. Batched in
  torch (float64, CPU), one scipy Hungarian call per problem and iteration.
* ``"lap"``: exact on the unary part only (scipy's Hungarian on ``min(c, 0)``, equivalent to
  dummy nodes), the quadratic costs are ignored.
* ``"fgw"``: POT's fused Gromov-Wasserstein on the graphs' adjacency matrices and the unary
  costs, rounded by a Hungarian step and pruned; a structural reference, not a minimiser of q.
* ``"exact"``: exhaustive enumeration of all partial matchings, for ``n, m <= 8`` (tests).

All solvers take and return batched tensors and never mutate their inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import lru_cache
from collections.abc import Iterable
from typing import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "DEFAULT_SOLVER",
    "SOLVERS",
    "GraphMatchingProblem",
    "prepare_problem",
    "solve_graph_matching",
    "solve_prepared",
    "matching_objective",
    "edge_pair_indicator",
    "solve_lap",
    "solve_ipfp",
    "solve_fgw",
    "solve_exact",
    "register_solver",
]

logger = logging.getLogger(__name__)

DEFAULT_SOLVER = "ipfp"
EXACT_MAX_NODES = 8
_DTYPE = torch.float64
_CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# problem preparation
# --------------------------------------------------------------------------------------------


@dataclass
class GraphMatchingProblem:
    """A batch of ``b`` equal-size problems in float64 on the CPU, plus cached lookup tables.

    Assignments used by the solvers are ``[b, n]`` integer arrays holding the column matched to
    each row, or ``-1`` for an unassigned row. Self loops are folded in (see
    :func:`prepare_problem`), so ``quadratic`` has zero rows/columns for them.
    """

    unary: Tensor  # [b, n, m]
    quadratic: Tensor  # [b, E1, E2]
    src_a: Tensor  # [b, E1]
    dst_a: Tensor  # [b, E1]
    src_b: Tensor  # [b, E2]
    dst_b: Tensor  # [b, E2]
    loop_unary: Tensor | None = None  # self-loop pair costs folded into ``unary``
    _cache: dict = field(default_factory=dict)  # shared by with_unary copies (same graphs and q)

    @property
    def shape(self) -> tuple[int, int, int]:
        b, n, m = self.unary.shape
        return b, n, m

    def with_unary(self, unary: Tensor) -> "GraphMatchingProblem":
        """Same graphs and quadratic costs, new unary costs; the lookup tables are shared."""
        unary64 = unary.detach().to(device=_CPU, dtype=_DTYPE)
        if unary64.shape != self.unary.shape:
            raise ValueError(f"unary must have shape {tuple(self.unary.shape)}, got {tuple(unary64.shape)}")
        if self.loop_unary is not None:
            unary64 = unary64 + self.loop_unary
        return replace(self, unary=unary64)

    def tables(self) -> _Tables:
        """Flat numpy lookup tables for the solver loops, built once per graphs + quadratic costs."""
        tables = self._cache.get("tables")
        if tables is None:
            tables = _Tables.build(self)
            self._cache["tables"] = tables
        return tables


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

    @staticmethod
    def build(problem: GraphMatchingProblem) -> _Tables:
        b, n, m = problem.shape
        src_a, dst_a = problem.src_a.numpy(), problem.dst_a.numpy()
        src_b, dst_b = problem.src_b.numpy(), problem.dst_b.numpy()
        e1, e2 = src_a.shape[1], src_b.shape[1]
        problems = np.arange(b)[:, None]

        # incidence lists of both halves of all problems at once: key (p, h, node)
        keys = np.concatenate([dst_b, src_b + (m + 1)], axis=1) + 2 * (m + 1) * problems
        written = np.concatenate([src_b, n * m + dst_b], axis=1)  # G1 column src_b, G2 dst_b
        keys, written = keys.reshape(-1), written.reshape(-1)
        order = np.argsort(keys, kind="stable")
        degree = np.bincount(keys, minlength=b * 2 * (m + 1))

        quadratic = np.ascontiguousarray(problem.quadratic.numpy()).reshape(-1)
        edge_rows = np.arange(b * e1) * e2
        # canonical id of each B node pair (p, j, l): its first edge, -1 if none
        key = (src_b * (m + 1) + dst_b + (m + 1) ** 2 * problems).reshape(-1)
        ids = np.full(b * (m + 1) ** 2, -1, dtype=np.int64)
        edge_ids = np.tile(np.arange(e2), b)
        ids[key] = edge_ids
        canonical = ids[key]
        if (canonical == edge_ids).all():
            coalesced = quadratic  # no duplicate B edges (kNN graphs): nothing to sum
        else:
            ids.fill(e2)
            np.minimum.at(ids, key, edge_ids)
            ids[ids == e2] = -1
            canonical = ids[key]
            slots = (edge_rows.reshape(b, e1, 1) + canonical.reshape(b, 1, e2)).reshape(-1)
            coalesced = np.bincount(slots, problem.quadratic.numpy().reshape(-1), minlength=b * e1 * e2)
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
            src_a=(src_a + n * problems).reshape(-1),
            dst_a=(dst_a + n * problems).reshape(-1),
            pair_base=np.tile(((m + 1) ** 2 * problems).repeat(e1, axis=1).reshape(-1), 2),
            pair_value_base=np.tile(edge_rows, 2),
            pair_slot=np.concatenate([slot, slot + b * n * n]),
            pair_ids=ids,
            pair_values=coalesced,
            canonical=canonical.reshape(b, e2),
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


def _as_batched_edges(edges: Tensor, batch: int, name: str) -> Tensor:
    if edges.dim() == 2:
        edges = edges.unsqueeze(0).expand(batch, -1, -1)
    if edges.dim() != 3 or edges.shape[0] != batch or edges.shape[1] != 2:
        raise ValueError(f"{name} must have shape [b, 2, E] or [2, E], got {tuple(edges.shape)}")
    return edges.to(device=_CPU, dtype=torch.long)


def batched_inputs(unary: Tensor, quadratic: Tensor, edges_a: Tensor,
                   edges_b: Tensor) -> tuple[bool, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Add the batch dimension to a single problem (``unary`` ``[n, m]``); says whether it did."""
    unbatched = unary.dim() == 2
    if unbatched:
        unary, quadratic = unary.unsqueeze(0), quadratic.unsqueeze(0)
        edges_a = edges_a if edges_a.dim() == 2 else edges_a.unsqueeze(0)
        edges_b = edges_b if edges_b.dim() == 2 else edges_b.unsqueeze(0)
    return unbatched, (unary, quadratic, edges_a, edges_b)


def _float64_cpu(tensor: Tensor) -> Tensor:
    """Detached float64 CPU version, converted by numpy where it can: torch's intra-op threads
    make small conversions slow (and very slow on a busy CPU)."""
    tensor = tensor.detach()
    if tensor.device == _CPU and tensor.dtype in (torch.float16, torch.float32, torch.float64) and not tensor.is_neg():
        return torch.from_numpy(tensor.numpy().astype(np.float64, copy=False))
    return tensor.to(device=_CPU, dtype=_DTYPE)


def prepare_problem(unary: Tensor, quadratic: Tensor, edges_a: Tensor, edges_b: Tensor) -> GraphMatchingProblem:
    """Validate and copy to float64 CPU (the inputs are never modified); fold self loops.

    ``x_ij x_ij = x_ij``: a self loop paired with a self loop is a unary cost; a self loop
    paired with a normal edge couples two entries of one row or column, which is 0 whenever
    the matching is feasible, so those quadratic entries are dropped.
    """
    if unary.dim() != 3:
        raise ValueError(f"unary must have shape [b, n, m], got {tuple(unary.shape)}")
    b, n, m = unary.shape
    edges_a = _as_batched_edges(edges_a, b, "edges_a")
    edges_b = _as_batched_edges(edges_b, b, "edges_b")
    e1, e2 = edges_a.shape[2], edges_b.shape[2]
    if tuple(quadratic.shape) != (b, e1, e2):
        raise ValueError(f"quadratic must have shape [b, E1, E2] = {(b, e1, e2)}, got {tuple(quadratic.shape)}")
    a_nodes, b_nodes = edges_a.numpy(), edges_b.numpy()
    if e1 and (a_nodes.min() < 0 or a_nodes.max() >= n):
        raise ValueError("edges_a holds node indices outside [0, n)")
    if e2 and (b_nodes.min() < 0 or b_nodes.max() >= m):
        raise ValueError("edges_b holds node indices outside [0, m)")
    unary64, quadratic64 = _float64_cpu(unary), _float64_cpu(quadratic)
    if not np.isfinite(unary64.numpy()).all() or not np.isfinite(quadratic64.numpy()).all():
        raise ValueError("graph matching costs contain NaN or infinity")
    src_a, dst_a = edges_a[:, 0].contiguous(), edges_a[:, 1].contiguous()
    src_b, dst_b = edges_b[:, 0].contiguous(), edges_b[:, 1].contiguous()

    loop_unary = None
    if (a_nodes[:, 0] == a_nodes[:, 1]).any() or (b_nodes[:, 0] == b_nodes[:, 1]).any():
        loop_a, loop_b = src_a == dst_a, src_b == dst_b
        both = loop_a[:, :, None] & loop_b[:, None, :]
        flat = (src_a[:, :, None] * m + src_b[:, None, :]).expand(b, e1, e2)
        loop_unary = torch.zeros(b, n * m, dtype=_DTYPE)
        loop_unary.scatter_add_(1, flat.reshape(b, -1), (quadratic64 * both).reshape(b, -1))
        loop_unary = loop_unary.view(b, n, m)
        unary64 = unary64 + loop_unary
        quadratic64 = quadratic64.masked_fill(loop_a[:, :, None] | loop_b[:, None, :], 0.0)
    return GraphMatchingProblem(unary64, quadratic64, src_a, dst_a, src_b, dst_b, loop_unary)


# --------------------------------------------------------------------------------------------
# objective pieces (numpy on the whole batch: a fixed number of calls per evaluation)
# --------------------------------------------------------------------------------------------


def _to_matrix(assignment: Tensor, m: int) -> Tensor:
    return torch.nn.functional.one_hot(assignment + 1, m + 1)[..., 1:].to(_DTYPE)


def _to_assignment(matching: Tensor) -> Tensor:
    """0/1 matching ``[b, n, m]`` -> assignment ``[b, n]`` (``-1`` for an empty row)."""
    value, column = matching.max(dim=-1)
    return torch.where(value > 0.5, column, torch.full_like(column, -1))


def _gradients(tables: _Tables, assignment: np.ndarray) -> np.ndarray:
    """``G = [G1, G2]`` ``[b, 2, n * m]`` at a discrete matching: ``grad = c + G1 + G2``, ``quad(x) = <G1, x>``.

    ``G1[i, j] = sum_{a: src=i} sum_{b: src=j} q_ab x[dst_a, dst_b]`` and
    ``G2[i, j] = sum_{a: dst=i} sum_{b: dst=j} q_ab x[src_a, src_b]``. At a discrete ``x`` only
    the B edges entering (leaving) the node matched to ``dst_a`` (``src_a``) contribute, so the
    work is ``E1 x max degree`` instead of ``E1 x E2``.
    """
    b, n, m = tables.b, tables.n, tables.m
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
    gradients = np.bincount(target, np.take(tables.quadratic, edges), minlength=b * 2 * n * m)
    return gradients.astype(np.float64, copy=False).reshape(b, 2, n * m)  # bincount of nothing is int


def _quadratic_gradients(problem: GraphMatchingProblem, assignment: Tensor) -> tuple[Tensor, Tensor]:
    """``(G1, G2)`` ``[b, n, m]`` tensors (see :func:`_gradients`)."""
    b, n, m = problem.shape
    gradients = torch.from_numpy(_gradients(problem.tables(), assignment.numpy()).reshape(b, 2, n, m))
    return gradients[:, 0], gradients[:, 1]


def edge_pair_indicator(matching: Tensor, edges_a: Tensor, edges_b: Tensor) -> Tensor:
    """``y_ab = x[i1, j1] * x[i2, j2]`` for each edge pair ``a = (i1 -> i2)``, ``b = (j1 -> j2)``.

    ``matching`` ``[b, n, m]``; returns ``[b, E1, E2]`` in the dtype of ``matching``.
    """
    b, n, m = matching.shape
    edges_a = edges_a.expand(b, -1, -1) if edges_a.dim() == 2 else edges_a
    edges_b = edges_b.expand(b, -1, -1) if edges_b.dim() == 2 else edges_b
    flat = matching.reshape(b, n * m)
    ends = []
    for side in (0, 1):
        index = edges_a[:, side, :, None] * m + edges_b[:, side, None, :]
        ends.append(flat.gather(1, index.reshape(b, -1)).view(index.shape))
    return ends[0] * ends[1]


def _pair_indicator_difference(
    problem: GraphMatchingProblem, first: Tensor, second: Tensor, scale: float = 1.0, dtype: type = np.float64
) -> np.ndarray:
    """``scale * (edge_pair_indicator(first) - edge_pair_indicator(second))`` ``[b, E1, E2]`` for 0/1 matchings.

    ``y_ab = 1`` iff B edge ``b`` joins the partners of A edge ``a``'s ends, i.e. ``b`` has the
    canonical id of that node pair: each A edge has at most one such B edge (unless B has
    duplicate edges), so this writes ``b * E1`` entries instead of gathering ``[b, E1, E2]``
    four times (the black-box backward pass calls it every step). ``scale * 1`` is rounded to
    ``dtype`` once, as casting the float64 product would.
    """
    tables = problem.tables()
    b, n, m = problem.shape
    e1, e2 = problem.quadratic.shape[1:]
    ids = []
    for matching in (first, second):
        x = matching.numpy()
        if n and m:
            assignment = np.where(x.max(axis=2) > 0.5, x.argmax(axis=2), -1)
        else:
            assignment = np.full((b, n), -1, dtype=np.int64)
        matched = assignment.reshape(-1) % (m + 1)
        j, l = np.take(matched, tables.src_a), np.take(matched, tables.dst_a)
        ids.append(np.take(tables.pair_ids, j * (m + 1) + l + tables.pair_base[: j.size]))  # -1: no B edge
    if tables.pair_values is not tables.quadratic:  # duplicate B edges: compare with every id
        hits = [tables.canonical[:, None, :] == found.reshape(b, -1, 1) for found in ids]
        return (np.subtract(hits[0], hits[1], dtype=np.float64) * scale).astype(dtype, copy=False)
    result = np.zeros(b * e1 * e2, dtype=dtype)
    value = np.asarray(scale, dtype=np.float64).astype(dtype)
    rows = np.arange(b * e1) * e2
    result[(rows + ids[0])[ids[0] >= 0]] = value
    result[(rows + ids[1])[ids[1] >= 0]] -= value
    return result.reshape(b, e1, e2)


def matching_objective(matching: Tensor, unary: Tensor, quadratic: Tensor, edges_a: Tensor, edges_b: Tensor) -> Tensor:
    """Cost of (possibly fractional) matchings ``[b, n, m]``, by the dense formula; returns ``[b]``."""
    matching = matching.to(quadratic.dtype)
    pairs = edge_pair_indicator(matching, edges_a.to(matching.device), edges_b.to(matching.device))
    return (unary * matching).sum(dim=(1, 2)) + (quadratic * pairs).sum(dim=(1, 2))


# --------------------------------------------------------------------------------------------
# LAP
# --------------------------------------------------------------------------------------------


def _lap_into(cost: np.ndarray, out: np.ndarray, problems: Iterable[int]) -> None:
    """Min-cost partial assignments of the listed problems into ``out`` ``[b, n]`` (others untouched).

    Hungarian on ``min(c, 0)``, then pairs with ``c >= 0`` are dropped: equivalent to padding
    with zero-cost dummy nodes, since any partial matching extends to a full one on
    ``min(c, 0)`` at no extra cost and dropping ``c >= 0`` pairs never costs more.
    """
    b, n, m = cost.shape
    clipped = np.minimum(cost, 0.0)
    for p in problems:
        rows, cols = linear_sum_assignment(clipped[p])
        if len(rows) == n:  # n <= m: every row gets a column
            out[p] = cols
        else:
            out[p] = -1
            out[p, rows] = cols
    # an unassigned row reads some entry; it stays -1 whatever that entry is
    out[np.take(clipped, _offsets(b, n, m)[0] + out) == 0.0] = -1


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


# --------------------------------------------------------------------------------------------
# local search on discrete matchings
# --------------------------------------------------------------------------------------------


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


_MOVES = ("remove", "insert", "swap")


def _local_search_arrays(
    tables: _Tables,
    unary: np.ndarray,
    assignment: np.ndarray,
    max_iter: int,
    moves: tuple[str, ...] = _MOVES,
    gradients: np.ndarray | None = None,
) -> np.ndarray:
    """Best-improvement descent over remove / insert-with-eviction / swap moves, in place.

    A move flips a set S of entries with signs s (+1 set, -1 clear); at a discrete x its exact
    cost change is ``sum_u s_u g_u + sum_{u<v} s_u s_v W_uv`` with ``g`` the gradient at x and
    ``W_uv`` the pair coefficient (zero for entries sharing a row or a column). ``gradients``:
    ``G`` at ``assignment`` when the caller has it. A problem without an improving move is at a
    local minimum and stays there, so later rounds only look at the problems that just moved.
    """
    b, n, m = unary.shape
    moves = tuple(kind for kind in _MOVES if kind in moves)
    tolerance = -1e-9 * (1.0 + np.abs(unary).max(axis=(1, 2), initial=0.0))
    _, padded_rows, same_rows, inverse_rows, gain_rows, order_penalty = _offsets(b, n, m)
    node_ids = np.arange(n)
    live = np.arange(b)  # problems that may still improve
    for _ in range(max_iter):
        if gradients is None:
            gradients = _gradients(tables, assignment)
        size = len(live)
        everyone = size == b
        current = assignment if everyone else assignment[live]
        if not everyone:
            gradients = gradients[live]
        padded = np.zeros((size, n, m + 1))  # column m: "unassigned", gradient 0
        gradient = padded[:, :, :m]
        np.add(unary if everyone else unary[live], gradients[:, 0].reshape(size, n, m), out=gradient)
        gradient += gradients[:, 1].reshape(size, n, m)
        gradients = None
        matched = current % (m + 1)
        row_index = padded_rows[:size] + matched
        row_gain = np.take(padded, row_index)  # [s, n] g[i, p_i] (0 if free)
        inverse = np.full((size, m + 1), n, dtype=np.int64)  # n: "unassigned"
        np.put(inverse, inverse_rows[:size] + matched, node_ids)  # node_ids repeats per problem
        inverse = inverse[:, :m]
        candidates = []
        if "remove" in moves:
            candidates.append(-row_gain)
        if "insert" in moves or "swap" in moves:
            same, both = _pair_coefficients(tables, assignment)
            if not everyone:
                same, both = same[live], both[live]
        if "insert" in moves:
            # set x_ij, clearing row i's and column j's current entries
            gain_of_row = np.zeros((size, n + 1))
            gain_of_row[:, :n] = row_gain
            col_gain = np.take(gain_of_row, gain_rows[:size] + inverse)  # g[inv_j, j]
            same_padded = np.zeros((size, n, n + 1))
            same_padded[:, :, :n] = same
            delta = padded - row_gain[:, :, None]
            delta[:, :, :m] += np.take(same_padded, same_rows[:size] + inverse[:, None, :])  # evicted pair
            delta[:, :, :m] -= col_gain[:, None, :]
            np.put(delta, row_index, np.inf)  # already set (or the "unassigned" column)
            candidates.append(delta[:, :, :m].reshape(size, -1))
        if "swap" in moves:
            exchanged = np.take(padded, padded_rows[:size, :, None] + matched[:, None, :])  # g[i, p_k]
            exchanged -= row_gain[:, :, None]
            delta = exchanged + exchanged.transpose(0, 2, 1)
            delta += both
            penalty = np.where(current >= 0, 0.0, np.inf)
            delta += penalty[:, :, None]
            delta += penalty[:, None, :] + order_penalty
            candidates.append(delta.reshape(size, -1))

        stacked = np.concatenate(candidates, axis=1)
        where = stacked.argmin(axis=1)
        improving = np.take(stacked, where + np.arange(size) * stacked.shape[1]) < tolerance[live]
        if not improving.any():
            break
        sizes = [c.shape[1] for c in candidates]
        for p, index in zip(live[improving].tolist(), where[improving].tolist()):
            row = assignment[p]
            for kind, count in zip(moves, sizes):
                if index >= count:
                    index -= count
                    continue
                if kind == "remove":
                    row[index] = -1
                elif kind == "insert":
                    i, j = divmod(index, m)
                    row[row == j] = -1
                    row[i] = j
                else:
                    i, k = divmod(index, n)
                    row[i], row[k] = row[k], row[i]
                break
        live = live[improving]
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


def _unary_array(problem: GraphMatchingProblem) -> np.ndarray:
    return np.ascontiguousarray(problem.unary.numpy())


# --------------------------------------------------------------------------------------------
# IPFP
# --------------------------------------------------------------------------------------------


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
    again (solving it again would return the same ``b``).
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
    stale = 0
    if problem.quadratic.shape[1] and problem.quadratic.shape[2]:
        for _ in range(max_iter):
            gradient = flat_unary + gradients[:, 0]
            gradient += gradients[:, 1]
            _lap_into(gradient.reshape(b, n, m), candidate, active)
            xb = np.take(one_hot, candidate % (m + 1), axis=0).reshape(b, n * m)
            candidate_gradients = _gradients(tables, candidate)
            value = ((flat_unary + candidate_gradients[:, 0]) * xb).sum(axis=1)
            better = value < best_value - tolerance
            if better.any():
                np.copyto(best_value, value, where=better)
                np.copyto(best_assignment, candidate, where=better[:, None])
                np.copyto(best_gradients, candidate_gradients, where=better[:, None, None])
                stale = 0
            else:
                stale += 1
            direction = xb
            direction -= x
            slope = (gradient * direction).sum(axis=1)
            descending = slope < -tolerance
            if stale >= patience or not descending.any():
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


# --------------------------------------------------------------------------------------------
# FGW (POT)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# exhaustive
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _all_partial_matchings(n: int, m: int) -> Tensor:
    """Every partial matching of an ``n x m`` problem as ``[N, n]`` column ids (``m`` = unassigned)."""
    partial = torch.zeros(1, 0, dtype=torch.long)
    used = torch.zeros(1, dtype=torch.long)  # bit mask of taken columns
    for _ in range(n):
        new_partial = [torch.cat([partial, torch.full((len(partial), 1), m)], dim=1)]
        new_used = [used]
        for column in range(m):
            free = (used >> column) & 1 == 0
            new_partial.append(torch.cat([partial[free], torch.full((int(free.sum()), 1), column)], dim=1))
            new_used.append(used[free] | (1 << column))
        partial, used = torch.cat(new_partial), torch.cat(new_used)
    return partial


def solve_exact(problem: GraphMatchingProblem, chunk_size: int = 1 << 17) -> Tensor:
    """Global optimum by enumerating all partial matchings (``n, m <= 8``; ~1.4M candidates at 8 x 8)."""
    b, n, m = problem.shape
    if max(n, m) > EXACT_MAX_NODES:
        raise ValueError(f'solver "exact" enumerates all matchings and supports n, m <= {EXACT_MAX_NODES}, got {n} x {m}')
    candidates = _all_partial_matchings(n, m)
    result = torch.empty(b, n, dtype=torch.long)
    for p in range(b):
        unary = torch.cat([problem.unary[p], torch.zeros(n, 1, dtype=_DTYPE)], dim=1).reshape(-1)
        # pair costs per A-edge and B-node pair: table[a, j1, j2] = sum of q_ab over b = (j1 -> j2)
        table = torch.zeros(problem.quadratic.shape[1], (m + 1) * (m + 1), dtype=_DTYPE)
        node_pair = problem.src_b[p] * (m + 1) + problem.dst_b[p]
        table.index_add_(1, node_pair, problem.quadratic[p])
        table = table.reshape(-1)
        src_a, dst_a = problem.src_a[p], problem.dst_a[p]
        edge_offset = torch.arange(len(src_a)) * (m + 1) * (m + 1)
        best_value, best_index = float("inf"), 0
        for start in range(0, len(candidates), chunk_size):
            chunk = candidates[start : start + chunk_size]
            value = unary.gather(0, (chunk + torch.arange(n) * (m + 1)).reshape(-1)).view(chunk.shape).sum(1)
            if len(src_a):
                index = edge_offset + chunk[:, src_a] * (m + 1) + chunk[:, dst_a]
                value = value + table.gather(0, index.reshape(-1)).view(index.shape).sum(1)
            chunk_best, chunk_index = value.min(dim=0)
            if float(chunk_best) < best_value:
                best_value, best_index = float(chunk_best), start + int(chunk_index)
        best = candidates[best_index]
        result[p] = torch.where(best == m, -1, best)
    return result


# --------------------------------------------------------------------------------------------
# front door
# --------------------------------------------------------------------------------------------

SolverFn = Callable[..., Tensor]
SOLVERS: dict[str, SolverFn] = {
    "ipfp": solve_ipfp,
    "lap": solve_lap,
    "fgw": solve_fgw,
    "exact": solve_exact,
}


def register_solver(name: str, solver: SolverFn) -> None:
    """Add a solver ``fn(problem: GraphMatchingProblem, **options) -> assignment [b, n]``."""
    SOLVERS[name] = solver


def solve_graph_matching(
    unary: Tensor,
    quadratic: Tensor,
    edges_a: Tensor,
    edges_b: Tensor,
    solver: str = DEFAULT_SOLVER,
    **options,
) -> Tensor:
    """Minimise unary + quadratic cost over partial matchings; returns 0/1 ``[b, n, m]``.

    ``unary`` ``[b, n, m]`` (or ``[n, m]``), ``quadratic`` ``[b, E1, E2]``, ``edges_*``
    ``[b, 2, E]`` or shared ``[2, E]``. Computation is float64 on the CPU whatever the input
    dtype/device; the result comes back in the dtype and on the device of ``unary``.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown graph matching solver {solver!r}; choose one of {sorted(SOLVERS)}")
    unbatched, (unary, quadratic, edges_a, edges_b) = batched_inputs(unary, quadratic, edges_a, edges_b)
    problem = prepare_problem(unary, quadratic, edges_a, edges_b)
    matching = solve_prepared(problem, solver, **options)
    dtype = unary.dtype if unary.is_floating_point() else torch.float32
    matching = matching.to(device=unary.device, dtype=dtype)
    return matching[0] if unbatched else matching


def solve_prepared(problem: GraphMatchingProblem, solver: str = DEFAULT_SOLVER, **options) -> Tensor:
    """Solve an already prepared problem; returns the 0/1 matching ``[b, n, m]`` (float64, CPU)."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown graph matching solver {solver!r}; choose one of {sorted(SOLVERS)}")
    assignment = SOLVERS[solver](problem, **options)
    return _to_matrix(assignment, problem.shape[2])
