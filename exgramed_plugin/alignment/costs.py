"""The perturbed costs of the MGA's matching problems (docs/method.md §3.8), built without dense temporaries.

unary ``0.5 - S - G`` and quadratic ``0.25 - 0.5 T - 0.5 H``: ``S`` node and ``T`` edge cosine
affinities, ``G`` ``[B, B]`` and ``H`` ``[b, E, E]`` Gumbel(0, scale) noise from one generator, ``G``
first. The quadratic costs are the step's largest tensor (E = k B edges: 630 MB for b = 6 at B = 1,024),
and the dense formula made seven more of its size (float64 noise and its temporaries, the affinities,
a float64 copy for the solver). Here they are written once, in float32 on the CPU where the solver
reads them, one problem at a time, with the noise drawn in chunks in the same order from the same
generator: the same values, bit for bit, as the dense formula.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor

__all__ = ["gumbel_noise", "edge_costs", "NOISE_CHUNK"]

NOISE_CHUNK = 1 << 20  # float64 noise values drawn and transformed at a time (8 MB)
_CPU = torch.device("cpu")


def _gumbel_from_uniform_(uniform: Tensor, scale: float) -> Tensor:
    """``-scale * log(-log(u))`` in place on float64 uniforms (clamped away from 0 and 1)."""
    tiny = torch.finfo(torch.float64).tiny
    return uniform.clamp_(tiny, 1.0 - 1e-16).log_().neg_().log_().mul_(-scale)


def gumbel_noise(shape: tuple[int, ...], scale: float, generator: torch.Generator | None) -> Tensor:
    """Gumbel(0, scale) samples in float64 from ``generator`` (on the generator's device)."""
    device = generator.device if generator is not None else _CPU
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=device)
    return _gumbel_from_uniform_(uniform, scale)


class _NoiseStream:
    """The float64 Gumbel draws of one ``[b, E, E]`` tensor, in its element order, a chunk at a time."""

    def __init__(self, generator: torch.Generator | None, scale: float) -> None:
        device = generator.device if generator is not None else _CPU
        self.generator, self.scale = generator, scale
        self.buffer = torch.empty(NOISE_CHUNK, dtype=torch.float64, device=device)

    def subtract_half(self, costs: Tensor) -> None:
        """``costs -= 0.5 * H`` with the next ``costs.numel()`` draws (``H`` rounded to float32 first)."""
        flat = costs.view(-1)
        for start in range(0, flat.numel(), NOISE_CHUNK):
            part = flat[start:start + NOISE_CHUNK]
            noise = _gumbel_from_uniform_(self.buffer[:part.numel()].uniform_(generator=self.generator), self.scale)
            part.sub_(noise.to(device=part.device, dtype=torch.float32), alpha=0.5)  # 0.5 H: exact

    def skip(self, count: int) -> None:
        """Draw and drop ``count`` values: another process perturbs those costs (there is no skip-ahead)."""
        for start in range(0, count, NOISE_CHUNK):
            self.buffer[:min(NOISE_CHUNK, count - start)].uniform_(generator=self.generator)


def _affinity_dtype(features: Tensor) -> torch.dtype:
    """The dtype ``features @ features.T`` has here: autocast's where it is on (as the dense formula had)."""
    device_type = features.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return features.dtype


class _EdgeCosts(torch.autograd.Function):
    """``0.25 - 0.5 * feats_a[p] @ feats_b[p]^T - 0.5 * H[p]`` ``[b, E1, E2]``, float32 on the CPU."""

    @staticmethod
    def forward(ctx, feats_a, feats_b, scale, generator, solved):
        b, e1, _ = feats_a.shape
        e2 = feats_b.shape[1]
        costs = torch.empty(b, e1, e2, dtype=torch.float32, device=_CPU)
        noise = _NoiseStream(generator, scale)
        dtype = _affinity_dtype(feats_a)
        in_place = dtype == torch.float32 and feats_a.device == _CPU  # T written straight into the costs
        for p in range(b):
            if p not in solved:
                noise.skip(e1 * e2)
                continue
            if in_place:
                torch.matmul(feats_a[p], feats_b[p].T, out=costs[p]).mul_(-0.5).add_(0.25)
            else:  # T in the dtype autocast gives it, or on the features' device
                costs[p].copy_((feats_a[p] @ feats_b[p].T).mul_(-0.5).add_(0.25))
            noise.subtract_half(costs[p])
        ctx.save_for_backward(feats_a, feats_b)
        ctx.affinity_dtype = dtype
        return costs

    @staticmethod
    def backward(ctx, grad_costs):
        feats_a, feats_b = ctx.saved_tensors
        dtype = ctx.affinity_dtype
        if grad_costs.is_sparse:
            return (*_sparse_feature_gradients(grad_costs, feats_a, feats_b, dtype), None, None, None)
        grad_a, grad_b = torch.empty_like(feats_a), torch.empty_like(feats_b)
        for p in range(feats_a.shape[0]):
            # dL/dT = -0.5 dL/dq; scaling by a power of two commutes with every rounding
            grad = grad_costs[p].to(device=feats_a.device, dtype=dtype)
            grad_a[p] = (grad @ feats_b[p].to(dtype)).mul_(-0.5)
            grad_b[p] = (grad.T @ feats_a[p].to(dtype)).mul_(-0.5)
        return grad_a, grad_b, None, None, None


def _sparse_feature_gradients(grad_costs: Tensor, feats_a: Tensor, feats_b: Tensor,
                              dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``-0.5 dL/dq @ feats_b`` and ``-0.5 dL/dq^T @ feats_a`` from the sparse cost gradient (a few
    entries per edge, as the black-box backward gives it), without the dense ``[b, E1, E2]`` products."""
    grad = grad_costs.coalesce()
    problem, edge_a, edge_b = grad.indices().to(feats_a.device)
    values = grad.values().to(device=feats_a.device, dtype=dtype)[:, None]
    grad_a = torch.zeros(feats_a.shape, dtype=dtype, device=feats_a.device)
    grad_a.index_put_((problem, edge_a), values * feats_b[problem, edge_b].to(dtype), accumulate=True)
    grad_b = torch.zeros(feats_b.shape, dtype=dtype, device=feats_b.device)
    grad_b.index_put_((problem, edge_b), values * feats_a[problem, edge_a].to(dtype), accumulate=True)
    return grad_a.mul_(-0.5).to(feats_a.dtype), grad_b.mul_(-0.5).to(feats_b.dtype)


def edge_costs(feats_a: Tensor, feats_b: Tensor, scale: float, generator: torch.Generator | None,
               solved: Collection[int] | None = None) -> Tensor:
    """Perturbed quadratic costs ``[b, E1, E2]`` (float32, CPU) of unit edge features ``[b, E1, d]``, ``[b, E2, d]``.

    Equal, bit for bit, to ``0.25 - 0.5 * feats_a @ feats_b.transpose(1, 2) - 0.5 *
    gumbel_noise((b, E1, E2), scale, generator).float()`` (on one thread; the generator advances the
    same way); differentiable in both feature sets. ``solved``: the problems whose costs this process
    needs (default all); the others' noise is drawn and dropped, so the generator ends where it would,
    and their costs are left unset.
    """
    solved = range(feats_a.shape[0]) if solved is None else solved
    return _EdgeCosts.apply(feats_a, feats_b, scale, generator, frozenset(solved))
