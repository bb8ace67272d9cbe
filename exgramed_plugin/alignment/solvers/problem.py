"""The graph-matching problem: validated CPU inputs, assignment <-> matching, objective pieces.

Problem (Lawler form, partial matchings allowed, an unassigned node costs 0)::

    minimise_x   sum_ij c_ij x_ij  +  sum_{a=(i1->i2) in E_A} sum_{b=(j1->j2) in E_B} q_ab x_{i1 j1} x_{i2 j2}
    s.t.         x in {0,1}^{n x m},  row sums <= 1,  column sums <= 1
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from .tables import _gradients, _PairIndex, _Tables

_DTYPE = torch.float64
_CPU = torch.device("cpu")


@dataclass
class GraphMatchingProblem:
    """A batch of ``b`` equal-size problems on the CPU, plus cached lookup tables.

    ``unary`` is float64; ``quadratic`` float64 or float32 as given (float32 costs are not copied: the
    MGA's are the step's largest tensor), and every sum of its entries is taken in float64, so a
    solver's answer does not depend on which. Assignments used by the solvers are ``[b, n]`` integer
    arrays holding the column matched to each row, or ``-1`` for an unassigned row. Self loops are
    folded in (see :func:`prepare_problem`), so ``quadratic`` has zero rows/columns for them.
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

    def take(self, index: np.ndarray) -> "GraphMatchingProblem":
        """The problems at ``index`` (repeats allowed), e.g. the unsolved ones, or copies of each
        for several independent searches in the same numpy calls; new lookup tables."""
        rows = torch.from_numpy(np.asarray(index, dtype=np.int64))

        def pick(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.index_select(0, rows)

        return GraphMatchingProblem(
            pick(self.unary), pick(self.quadratic), pick(self.src_a), pick(self.dst_a),
            pick(self.src_b), pick(self.dst_b), pick(self.loop_unary),
        )

    def part(self, start: int, stop: int) -> "GraphMatchingProblem":
        """Problems ``start:stop``, as views (no copy); their lookup tables are cached with this batch's,
        so :meth:`with_unary` copies of it share them too."""
        cache = self._cache.setdefault(("part", start, stop), {})

        def view(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor[start:stop]

        return GraphMatchingProblem(
            view(self.unary), view(self.quadratic), view(self.src_a), view(self.dst_a),
            view(self.src_b), view(self.dst_b), view(self.loop_unary), cache,
        )

    def pair_index(self) -> _PairIndex:
        """Which B edge joins each node pair (for :func:`_pair_indicator_difference`)."""
        tables = self._cache.get("tables")
        if tables is not None:
            return tables.pair_index()
        b, n, m = self.shape
        return _PairIndex.build(self.src_a.numpy(), self.dst_a.numpy(), self.src_b.numpy(), self.dst_b.numpy(), n, m)

    def tables(self) -> _Tables:
        """Flat numpy lookup tables for the solver loops, built once per graphs + quadratic costs."""
        tables = self._cache.get("tables")
        if tables is None:
            tables = _Tables.build(self)
            self._cache["tables"] = tables
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


def _exact_cpu(tensor: Tensor) -> Tensor:
    """Detached CPU version: float32 and float64 as they are (a float32 tensor on the CPU is not
    copied), other dtypes in float64; every value kept exactly."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor.detach().to(device=_CPU).resolve_neg()
    return _float64_cpu(tensor)


def _float64_cpu(tensor: Tensor) -> Tensor:
    """Detached float64 CPU version, converted by numpy where it can: torch's intra-op threads
    make small conversions slow (and very slow on a busy CPU)."""
    tensor = tensor.detach()
    if tensor.device == _CPU and tensor.dtype in (torch.float16, torch.float32, torch.float64) and not tensor.is_neg():
        return torch.from_numpy(tensor.numpy().astype(np.float64, copy=False))
    return tensor.to(device=_CPU, dtype=_DTYPE)


def _all_finite(values: np.ndarray) -> bool:
    """No NaN or infinity, without a boolean array the size of the costs (min and max propagate NaN)."""
    return not values.size or bool(np.isfinite(values.min()) and np.isfinite(values.max()))


def prepare_problem(unary: Tensor, quadratic: Tensor, edges_a: Tensor, edges_b: Tensor) -> GraphMatchingProblem:
    """Validate and bring to the CPU (the inputs are never modified); fold self loops.

    ``unary`` becomes float64; ``quadratic`` keeps float32 or float64 (see :class:`GraphMatchingProblem`).

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
    unary64, quadratic_cpu = _float64_cpu(unary), _exact_cpu(quadratic)
    if not (_all_finite(unary64.numpy()) and _all_finite(quadratic_cpu.numpy())):
        raise ValueError("graph matching costs contain NaN or infinity")
    src_a, dst_a = edges_a[:, 0].contiguous(), edges_a[:, 1].contiguous()
    src_b, dst_b = edges_b[:, 0].contiguous(), edges_b[:, 1].contiguous()

    loop_unary = None
    if (a_nodes[:, 0] == a_nodes[:, 1]).any() or (b_nodes[:, 0] == b_nodes[:, 1]).any():
        quadratic64 = quadratic_cpu.to(_DTYPE)
        loop_a, loop_b = src_a == dst_a, src_b == dst_b
        both = loop_a[:, :, None] & loop_b[:, None, :]
        flat = (src_a[:, :, None] * m + src_b[:, None, :]).expand(b, e1, e2)
        loop_unary = torch.zeros(b, n * m, dtype=_DTYPE)
        loop_unary.scatter_add_(1, flat.reshape(b, -1), (quadratic64 * both).reshape(b, -1))
        loop_unary = loop_unary.view(b, n, m)
        unary64 = unary64 + loop_unary
        quadratic_cpu = quadratic64.masked_fill(loop_a[:, :, None] | loop_b[:, None, :], 0.0)
    return GraphMatchingProblem(unary64, quadratic_cpu, src_a, dst_a, src_b, dst_b, loop_unary)



def edge_pair_index(edges_a: Tensor, edges_b: Tensor, n: int, m: int) -> _PairIndex:
    """Which B edge joins each node pair, from the graphs alone (``[b, 2, E]`` edges of ``n`` / ``m`` nodes)."""
    edges_a = edges_a.detach().to(device=_CPU, dtype=torch.long).numpy()
    edges_b = edges_b.detach().to(device=_CPU, dtype=torch.long).numpy()
    return _PairIndex.build(edges_a[:, 0], edges_a[:, 1], edges_b[:, 0], edges_b[:, 1], n, m)


def _to_matrix(assignment: Tensor, m: int) -> Tensor:
    return torch.nn.functional.one_hot(assignment + 1, m + 1)[..., 1:].to(_DTYPE)


def _to_assignment(matching: Tensor) -> Tensor:
    """0/1 matching ``[b, n, m]`` -> assignment ``[b, n]`` (``-1`` for an empty row)."""
    value, column = matching.max(dim=-1)
    return torch.where(value > 0.5, column, torch.full_like(column, -1))


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
    pairs: _PairIndex, first: Tensor, second: Tensor, scale: float = 1.0, dtype: type = np.float64
) -> np.ndarray:
    """``scale * (edge_pair_indicator(first) - edge_pair_indicator(second))`` ``[b, E1, E2]`` for 0/1 matchings.

    ``y_ab = 1`` iff B edge ``b`` joins the partners of A edge ``a``'s ends, i.e. ``b`` has the
    canonical id of that node pair: each A edge has at most one such B edge (unless B has
    duplicate edges), so this writes ``b * E1`` entries instead of gathering ``[b, E1, E2]``
    four times (the black-box backward pass calls it every step). ``scale * 1`` is rounded to
    ``dtype`` once, as casting the float64 product would.
    """
    b, e1, e2 = pairs.b, pairs.src_a.size // max(1, pairs.b), pairs.canonical.shape[1]
    ids = [_partner_edges(pairs, matching) for matching in (first, second)]
    if pairs.duplicates:  # duplicate B edges: compare with every id
        hits = [pairs.canonical[:, None, :] == found.reshape(b, -1, 1) for found in ids]
        return (np.subtract(hits[0], hits[1], dtype=np.float64) * scale).astype(dtype, copy=False)
    result = np.zeros(b * e1 * e2, dtype=dtype)
    value = np.asarray(scale, dtype=np.float64).astype(dtype)
    rows = np.arange(b * e1) * e2
    result[(rows + ids[0])[ids[0] >= 0]] = value
    result[(rows + ids[1])[ids[1] >= 0]] -= value
    return result.reshape(b, e1, e2)


def _sparse_pair_indicator_difference(pairs: _PairIndex, first: Tensor, second: Tensor, scale: float,
                                      dtype: torch.dtype) -> Tensor:
    """:func:`_pair_indicator_difference` as a sparse COO tensor (at most two entries per A edge): the
    dense ``[b, E1, E2]`` one is the size of the quadratic costs, mostly zeros."""
    b, e1, e2 = pairs.b, pairs.src_a.size // max(1, pairs.b), pairs.canonical.shape[1]
    if pairs.duplicates:
        dense = _pair_indicator_difference(pairs, first, second, scale, np.float64)
        return torch.from_numpy(dense).to(dtype).to_sparse()
    value = torch.tensor(scale, dtype=torch.float64).to(dtype)
    indices, values = [], []
    for ids, sign in zip((_partner_edges(pairs, first), _partner_edges(pairs, second)), (1.0, -1.0)):
        rows = np.flatnonzero(ids >= 0)
        indices.append(np.stack([rows // e1, rows % e1, ids[rows]]))
        values.append(torch.full((len(rows),), sign, dtype=dtype) * value)
    index = torch.from_numpy(np.concatenate(indices, axis=1))
    return torch.sparse_coo_tensor(index, torch.cat(values), (b, e1, e2), check_invariants=False).coalesce()


def _partner_edges(pairs: _PairIndex, matching: Tensor) -> np.ndarray:
    """``[b * E1]``: the canonical id of the B edge joining the partners of each A edge's ends, -1 if none."""
    b, n, m = pairs.b, pairs.n, pairs.m
    x = matching.numpy()
    if n and m:
        assignment = np.where(x.max(axis=2) > 0.5, x.argmax(axis=2), -1)
    else:
        assignment = np.full((b, n), -1, dtype=np.int64)
    matched = assignment.reshape(-1) % (m + 1)
    j, l = np.take(matched, pairs.src_a), np.take(matched, pairs.dst_a)
    return np.take(pairs.pair_ids, j * (m + 1) + l + pairs.pair_base)


def matching_objective(matching: Tensor, unary: Tensor, quadratic: Tensor, edges_a: Tensor, edges_b: Tensor) -> Tensor:
    """Cost of (possibly fractional) matchings ``[b, n, m]``, by the dense formula; returns ``[b]``."""
    matching = matching.to(quadratic.dtype)
    pairs = edge_pair_indicator(matching, edges_a.to(matching.device), edges_b.to(matching.device))
    return (unary * matching).sum(dim=(1, 2)) + (quadratic * pairs).sum(dim=(1, 2))


def _unary_array(problem: GraphMatchingProblem) -> np.ndarray:
    return np.ascontiguousarray(problem.unary.numpy())
