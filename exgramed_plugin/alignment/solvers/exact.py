"""Solver ``"exact"``: exhaustive enumeration of all partial matchings, the reference for tests (n, m <= 8)."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .problem import _DTYPE, GraphMatchingProblem

EXACT_MAX_NODES = 8


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
        table.index_add_(1, node_pair, problem.quadratic[p].to(_DTYPE))
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

