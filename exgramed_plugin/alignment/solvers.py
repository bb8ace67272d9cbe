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

    Assignments used by the solvers are ``[b, n]`` long tensors holding the column matched to
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
    _cache: dict = field(default_factory=dict)

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

    def gradient_tables(self) -> dict[str, Tensor]:
        """Tables for the sparse evaluation of the quadratic gradient at discrete matchings.

        Rows ``0..m`` of ``edges`` list B's edges entering each node (row ``m``: none), rows
        ``m+1..2m+1`` the edges leaving it; ``columns`` holds the G column each listed edge
        writes to (``src_b`` for G1, ``dst_b`` for G2). Pads point at a zero cost column.
        """
        tables = self._cache.get("gradient")
        if tables is None:
            b, n, m = self.shape
            e1, e2 = self.quadratic.shape[1:]
            in_lists = _incidence_lists(self.dst_b, m)
            out_lists = _incidence_lists(self.src_b, m)
            width = max(in_lists.shape[2], out_lists.shape[2])
            in_lists = torch.nn.functional.pad(in_lists, (0, width - in_lists.shape[2]), value=e2)
            out_lists = torch.nn.functional.pad(out_lists, (0, width - out_lists.shape[2]), value=e2)
            pad = torch.zeros(b, 1, dtype=torch.long)
            in_cols = torch.cat([self.src_b, pad], dim=1).gather(1, in_lists.view(b, -1)).view_as(in_lists)
            out_cols = torch.cat([self.dst_b, pad], dim=1).gather(1, out_lists.view(b, -1)).view_as(out_lists)
            shift = torch.tensor([0, m + 1])[None, None, :] + (torch.arange(b) * 2 * (m + 1))[:, None, None]
            tables = {
                "edges": torch.cat([in_lists, out_lists], 1).reshape(b * 2 * (m + 1), width),
                "columns": torch.cat([in_cols, out_cols], 1).reshape(b * 2 * (m + 1), width),
                # G1 reads the list of the partner of dst_a, G2 that of the partner of src_a
                "pivot": torch.stack([self.dst_a, self.src_a], dim=2).reshape(b, 2 * e1),
                "shift": shift.expand(b, e1, 2).reshape(b, 2 * e1),
                # flat row offset of each (edge a, half) into the stacked [G1 | G2] output
                "row_base": torch.stack([self.src_a * m, n * m + self.dst_a * m], dim=2)[..., None],
                "quadratic_padded": torch.cat([self.quadratic, torch.zeros(b, e1, 1, dtype=_DTYPE)], dim=2),
            }
            self._cache["gradient"] = tables
        return tables

    def pair_tables(self) -> tuple[Tensor, Tensor]:
        """``(edge_id_b [b, (m+1)^2], coalesced [b, E1, E2 + 1])`` for pair-coefficient lookups.

        ``edge_id_b[j * (m+1) + l]`` is the id of B's edge ``j -> l`` (``E2`` if absent or if an
        end is the "unassigned" index ``m``); duplicate B edges have their costs summed.
        """
        tables = self._cache.get("pair")
        if tables is None:
            b, n, m = self.shape
            e1, e2 = self.quadratic.shape[1:]
            key = self.src_b * (m + 1) + self.dst_b
            ids = torch.full((b, (m + 1) * (m + 1)), e2, dtype=torch.long)
            ids.scatter_reduce_(1, key, torch.arange(e2).expand(b, -1), reduce="amin", include_self=True)
            canonical = ids.gather(1, key)
            coalesced = torch.zeros(b, e1, e2 + 1, dtype=_DTYPE)
            coalesced.scatter_add_(2, canonical[:, None, :].expand(b, e1, e2), self.quadratic)
            tables = (ids, coalesced)
            self._cache["pair"] = tables
        return tables


def _incidence_lists(node_of_edge: Tensor, num_nodes: int) -> Tensor:
    """``[b, num_nodes + 1, max_degree]`` edge ids per node, padded with ``E`` (row ``num_nodes`` empty)."""
    b, num_edges = node_of_edge.shape
    degree = torch.zeros(b, num_nodes + 1, dtype=torch.long)
    degree.scatter_add_(1, node_of_edge, torch.ones_like(node_of_edge))
    max_degree = max(int(degree.max()), 1)
    order = torch.sort(node_of_edge, dim=1, stable=True).indices
    sorted_nodes = node_of_edge.gather(1, order)
    start = torch.cumsum(degree, dim=1) - degree
    rank = torch.arange(num_edges).expand(b, -1) - start.gather(1, sorted_nodes)
    table = torch.full((b, num_nodes + 1, max_degree), num_edges, dtype=torch.long)
    table.view(b, -1).scatter_(1, sorted_nodes * max_degree + rank, order)
    return table


def _as_batched_edges(edges: Tensor, batch: int, name: str) -> Tensor:
    if edges.dim() == 2:
        edges = edges.unsqueeze(0).expand(batch, -1, -1)
    if edges.dim() != 3 or edges.shape[0] != batch or edges.shape[1] != 2:
        raise ValueError(f"{name} must have shape [b, 2, E] or [2, E], got {tuple(edges.shape)}")
    return edges.to(device=_CPU, dtype=torch.long)


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
    if e1 and (int(edges_a.min()) < 0 or int(edges_a.max()) >= n):
        raise ValueError("edges_a holds node indices outside [0, n)")
    if e2 and (int(edges_b.min()) < 0 or int(edges_b.max()) >= m):
        raise ValueError("edges_b holds node indices outside [0, m)")
    unary64 = unary.detach().to(device=_CPU, dtype=_DTYPE)
    quadratic64 = quadratic.detach().to(device=_CPU, dtype=_DTYPE)
    if not bool(torch.isfinite(unary64).all()) or not bool(torch.isfinite(quadratic64).all()):
        raise ValueError("graph matching costs contain NaN or infinity")
    src_a, dst_a = edges_a[:, 0].contiguous(), edges_a[:, 1].contiguous()
    src_b, dst_b = edges_b[:, 0].contiguous(), edges_b[:, 1].contiguous()

    loop_unary = None
    loop_a, loop_b = src_a == dst_a, src_b == dst_b
    if bool(loop_a.any()) or bool(loop_b.any()):
        both = loop_a[:, :, None] & loop_b[:, None, :]
        flat = (src_a[:, :, None] * m + src_b[:, None, :]).expand(b, e1, e2)
        loop_unary = torch.zeros(b, n * m, dtype=_DTYPE)
        loop_unary.scatter_add_(1, flat.reshape(b, -1), (quadratic64 * both).reshape(b, -1))
        loop_unary = loop_unary.view(b, n, m)
        unary64 = unary64 + loop_unary
        quadratic64 = quadratic64.masked_fill(loop_a[:, :, None] | loop_b[:, None, :], 0.0)
    return GraphMatchingProblem(unary64, quadratic64, src_a, dst_a, src_b, dst_b, loop_unary)


# --------------------------------------------------------------------------------------------
# objective pieces
# --------------------------------------------------------------------------------------------


def _to_matrix(assignment: Tensor, m: int) -> Tensor:
    return torch.nn.functional.one_hot(assignment + 1, m + 1)[..., 1:].to(_DTYPE)


def _to_assignment(matching: Tensor) -> Tensor:
    """0/1 matching ``[b, n, m]`` -> assignment ``[b, n]`` (``-1`` for an empty row)."""
    value, column = matching.max(dim=-1)
    return torch.where(value > 0.5, column, torch.full_like(column, -1))


def _quadratic_gradients(problem: GraphMatchingProblem, assignment: Tensor) -> tuple[Tensor, Tensor]:
    """``G1, G2`` at a discrete matching, with ``grad = c + G1 + G2`` and ``quad(x) = <G1, x>``.

    ``G1[i, j] = sum_{a: src=i} sum_{b: src=j} q_ab x[dst_a, dst_b]`` and
    ``G2[i, j] = sum_{a: dst=i} sum_{b: dst=j} q_ab x[src_a, src_b]``. At a discrete ``x`` only
    the B edges entering (leaving) the node matched to ``dst_a`` (``src_a``) contribute, so the
    work is ``E1 x max degree`` instead of ``E1 x E2``.
    """
    b, n, m = problem.shape
    e1 = problem.src_a.shape[1]
    tables = problem.gradient_tables()
    matched = assignment.remainder(m + 1)  # -1 -> m: row m of the lists is empty
    rows = (matched.gather(1, tables["pivot"]) + tables["shift"]).view(-1)  # [b * E1 * 2]
    edges = tables["edges"].index_select(0, rows).view(b, e1, -1)
    columns = tables["columns"].index_select(0, rows).view(b, e1, 2, -1)
    values = tables["quadratic_padded"].gather(2, edges)
    out = torch.zeros(b, 2 * n * m, dtype=_DTYPE)
    out.scatter_add_(1, (tables["row_base"] + columns).view(b, -1), values.view(b, -1))
    return out[:, : n * m].view(b, n, m), out[:, n * m :].view(b, n, m)


def _discrete_objective(problem: GraphMatchingProblem, x: Tensor, g1: Tensor) -> Tensor:
    return ((problem.unary + g1) * x).sum(dim=(1, 2))


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


def matching_objective(matching: Tensor, unary: Tensor, quadratic: Tensor, edges_a: Tensor, edges_b: Tensor) -> Tensor:
    """Cost of (possibly fractional) matchings ``[b, n, m]``, by the dense formula; returns ``[b]``."""
    matching = matching.to(quadratic.dtype)
    pairs = edge_pair_indicator(matching, edges_a.to(matching.device), edges_b.to(matching.device))
    return (unary * matching).sum(dim=(1, 2)) + (quadratic * pairs).sum(dim=(1, 2))


# --------------------------------------------------------------------------------------------
# LAP
# --------------------------------------------------------------------------------------------


def _partial_lap(cost: Tensor) -> Tensor:
    """Min-cost partial assignment per problem: Hungarian on ``min(c, 0)``, keep ``c < 0``.

    Equivalent to padding with zero-cost dummy nodes: any partial matching extends to a full
    one on ``min(c, 0)`` at no extra cost, and dropping ``c >= 0`` pairs never costs more.
    """
    b, n, m = cost.shape
    values = cost.numpy()
    assignment = np.full((b, n), -1, dtype=np.int64)
    for p in range(b):
        rows, cols = linear_sum_assignment(np.minimum(values[p], 0.0))
        keep = values[p, rows, cols] < 0
        assignment[p, rows[keep]] = cols[keep]
    return torch.from_numpy(assignment)


def solve_lap(problem: GraphMatchingProblem) -> Tensor:
    """Exact minimiser of the unary part only (quadratic costs ignored)."""
    return _partial_lap(problem.unary)


# --------------------------------------------------------------------------------------------
# local search on discrete matchings
# --------------------------------------------------------------------------------------------


def _assigned_pair_coefficients(problem: GraphMatchingProblem, assignment: Tensor) -> tuple[Tensor, Tensor]:
    """``[b, n, n]`` matrices ``M[i, k] = W((i, p_i), (k, p_k))`` and ``N[i, k] = W((i, p_k), (k, p_i))``.

    ``W(u, v)`` is the coefficient of ``x_u x_v`` in the objective. Only A's edges ``i -> k``
    contribute, so both come from one gather per A edge (zero where a row is unassigned).
    """
    b, n, m = problem.shape
    ids, coalesced = problem.pair_tables()
    matched = assignment.remainder(m + 1)
    j = matched.gather(1, problem.src_a)
    l = matched.gather(1, problem.dst_a)
    forward = ids.gather(1, j * (m + 1) + l)  # B edge p_i -> p_k
    backward = ids.gather(1, l * (m + 1) + j)  # B edge p_k -> p_i
    values = coalesced.gather(2, torch.stack([forward, backward], dim=2))  # [b, E1, 2]
    half = torch.zeros(b, n * n, 2, dtype=_DTYPE)
    index = (problem.src_a * n + problem.dst_a)[:, :, None].expand(b, -1, 2)
    half.scatter_add_(1, index, values)
    half = half.view(b, n, n, 2)
    same, crossed = half[..., 0], half[..., 1]
    return same + same.transpose(1, 2), crossed + crossed.transpose(1, 2)


_MOVES = ("remove", "insert", "swap")


def _local_search(
    problem: GraphMatchingProblem,
    assignment: Tensor,
    max_iter: int,
    moves: tuple[str, ...] = _MOVES,
    gradients: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Best-improvement descent over remove / insert-with-eviction / swap moves.

    A move flips a set S of entries with signs s (+1 set, -1 clear); at a discrete x its exact
    cost change is ``sum_u s_u g_u + sum_{u<v} s_u s_v W_uv`` with ``g`` the gradient at x and
    ``W_uv`` the pair coefficient (zero for entries sharing a row or a column). ``gradients``:
    ``(G1, G2)`` at ``assignment`` when the caller has them.
    """
    b, n, m = problem.shape
    assignment = assignment.clone()
    rows_of = assignment.numpy()  # shares memory: moves are applied in place
    moves = tuple(kind for kind in _MOVES if kind in moves)
    tolerance = -1e-9 * (1.0 + problem.unary.abs().amax(dim=(1, 2)))
    upper = torch.arange(n)[:, None] < torch.arange(n)[None, :]
    node_ids = torch.arange(n).expand(b, -1)
    padded = torch.zeros(b, n, m + 1, dtype=_DTYPE)  # column m: "unassigned", gradient 0
    for _ in range(max_iter):
        g1, g2 = gradients if gradients is not None else _quadratic_gradients(problem, assignment)
        gradients = None
        padded[:, :, :m] = problem.unary + g1 + g2
        matched = assignment.remainder(m + 1)
        inverse = torch.full((b, m + 1), n, dtype=torch.long)  # row n: "unassigned"
        inverse.scatter_(1, matched, node_ids)
        inverse = inverse[:, :m]
        row_gain = padded.gather(2, matched[:, :, None])  # [b, n, 1] g[i, p_i] (0 if free)
        col_gain = torch.cat([padded[:, :, :m], torch.zeros(b, 1, m, dtype=_DTYPE)], 1).gather(1, inverse[:, None, :])
        same, crossed = _assigned_pair_coefficients(problem, assignment)

        candidates = []
        if "remove" in moves:
            candidates.append(-row_gain[:, :, 0])
        if "insert" in moves:
            # set x_ij, clearing row i's and column j's current entries
            evicted = torch.nn.functional.pad(same, (0, 1)).gather(2, inverse[:, None, :].expand(b, n, m))
            delta = padded - row_gain
            delta[:, :, :m] += evicted - col_gain
            delta.scatter_(2, matched[:, :, None], float("inf"))  # already set (or "unassigned" column)
            candidates.append(delta[:, :, :m].reshape(b, -1))
        if "swap" in moves:
            exchanged = padded.gather(2, matched[:, None, :].expand(b, n, n))  # g[i, p_k]
            delta = exchanged + exchanged.transpose(1, 2) - row_gain - row_gain.transpose(1, 2) + same + crossed
            assigned = assignment >= 0
            valid = assigned[:, :, None] & assigned[:, None, :] & upper
            candidates.append(delta.masked_fill(~valid, float("inf")).reshape(b, -1))

        best, where = torch.cat(candidates, dim=1).min(dim=1)
        improving = best < tolerance
        if not bool(improving.any()):
            break
        sizes = [c.shape[1] for c in candidates]
        for p, index in zip(improving.nonzero().flatten().tolist(), where[improving].tolist()):
            row = rows_of[p]
            for kind, size in zip(moves, sizes):
                if index >= size:
                    index -= size
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
    return assignment


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
    linear, ``G(x + t (b - x)) = (1 - t) G(x) + t G(b)`` with ``b`` always discrete.
    """
    b, n, m = problem.shape
    unary = problem.unary
    assignment = _partial_lap(unary)
    x = _to_matrix(assignment, m)
    g1, g2 = _quadratic_gradients(problem, assignment)
    best_assignment, best_g1, best_g2 = assignment, g1, g2
    best_value = _discrete_objective(problem, x, g1)
    tolerance = 1e-9 * (1.0 + unary.abs().amax(dim=(1, 2)))
    stale = 0
    if problem.quadratic.shape[1] and problem.quadratic.shape[2]:
        for _ in range(max_iter):
            gradient = unary + g1 + g2
            candidate = _partial_lap(gradient)
            xb = _to_matrix(candidate, m)
            g1b, g2b = _quadratic_gradients(problem, candidate)
            value = _discrete_objective(problem, xb, g1b)
            better = value < best_value - tolerance
            best_value = torch.where(better, value, best_value)
            best_assignment = torch.where(better[:, None], candidate, best_assignment)
            best_g1 = torch.where(better[:, None, None], g1b, best_g1)
            best_g2 = torch.where(better[:, None, None], g2b, best_g2)
            stale = 0 if bool(better.any()) else stale + 1
            direction = xb - x
            slope = (gradient * direction).sum(dim=(1, 2))
            active = slope < -tolerance
            if not bool(active.any()) or stale >= patience:
                break
            curvature = ((g1b - g1) * direction).sum(dim=(1, 2))
            step = torch.where(curvature > 0, (-slope / (2 * curvature.clamp_min(1e-300))).clamp(0.0, 1.0), 1.0)
            step = torch.where(active, step, 0.0)[:, None, None]
            x = x + step * direction
            g1 = g1 + step * (g1b - g1)
            g2 = g2 + step * (g2b - g2)
    if local_search:
        budget = local_search_iter if local_search_iter is not None else 4 * max(n, m)
        best_assignment = _local_search(problem, best_assignment, budget, gradients=(best_g1, best_g2))
    return best_assignment


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
    unbatched = unary.dim() == 2
    if unbatched:
        unary, quadratic = unary.unsqueeze(0), quadratic.unsqueeze(0)
        edges_a = edges_a if edges_a.dim() == 2 else edges_a.unsqueeze(0)
        edges_b = edges_b if edges_b.dim() == 2 else edges_b.unsqueeze(0)
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
