"""One batch of matching problems split over the processes that all hold it (the global graph).

With ``mga_global_graph`` every process builds the same graph and the same six problems; solving all
six on every process made the solver's time follow the global batch. Here process ``rank`` solves a
contiguous block of them and one all-reduce gives every process every answer, so each process
computes the loss and the gradient of the whole batch as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

from .solvers import _to_assignment, _to_matrix

__all__ = ["ProblemSplit"]


@dataclass(frozen=True)
class ProblemSplit:
    """Process ``rank`` of ``world`` (in ``group``) solves the block :meth:`owned` of a batch."""

    rank: int
    world: int
    group: Any = None

    @classmethod
    def over_processes(cls, group: Any = None) -> ProblemSplit:
        """The split over the processes of ``group`` (default: the default process group)."""
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def owned(self, batch: int) -> range:
        """The problems this process solves: blocks of ``ceil(batch / world)`` in rank order."""
        block = -(-batch // self.world)
        start = min(batch, self.rank * block)
        return range(start, min(batch, start + block))

    def share(self, owned_matching: Tensor, batch: int, device: torch.device) -> Tensor:
        """Every problem's 0/1 matching ``[batch, n, m]`` (float64, CPU) from each process's own block.

        One all-reduce of the assignments (column + 1 per row, 0 where another process answers) on
        ``device`` (the nodes' device: NCCL reduces CUDA tensors only).
        """
        _, n, m = owned_matching.shape
        rows = self.owned(batch)
        assignment = torch.zeros(batch, n, dtype=torch.long, device=device)
        assignment[rows.start:rows.stop] = _to_assignment(owned_matching).to(device) + 1
        dist.all_reduce(assignment, group=self.group)
        return _to_matrix(assignment.cpu() - 1, m)
