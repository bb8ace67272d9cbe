"""Black-box differentiation of the graph-matching solver (docs/method.md §3.10, §10.4).

Forward: ``x = solver(c, q)``. Backward (Vlastelica, Paulus et al., ICLR 2020)::

    c' = c + lambda * dL/dx ,   q' = q                 (nothing flows into the edge-pair mask)
    x' = solver(c', q')
    dL/dc = -(x - x') / lambda ,   dL/dq = -(y(x) - y(x')) / lambda,   y_ab = x_{i1 j1} x_{i2 j2}

Loss scaling: under fp16 AMP the incoming ``dL/dx`` is multiplied by the scaler's factor s.
The original perturbs with it anyway, so its step size depends on s and its returned gradient
is ``{0, +-1/lambda}`` whatever s is (then divided by s at unscale time). With ``loss_scale``
given (and ``fidelity=False``) the true gradient ``dL/dx / s`` is used for the perturbation and
the result is multiplied back by s, so after unscaling the update equals the unscaled one.
``fidelity=True`` reproduces the original (ignores ``loss_scale``, divides by ``lambda + 1e-8``).
"""

from __future__ import annotations

from typing import Any, Callable, Union

import numpy as np
import torch
from torch import Tensor

from .solvers import (
    DEFAULT_SOLVER,
    GraphMatchingProblem,
    _pair_indicator_difference,
    _sparse_pair_indicator_difference,
    batched_inputs,
    edge_pair_index,
    prepare_problem,
    solve_prepared,
)
from .split import ProblemSplit

__all__ = ["BlackboxMatching", "blackbox_matching", "LossScale"]

LossScale = Union[float, Tensor, Callable[[], float], None]
_FIDELITY_EPSILON = 1e-8  # the original divides by (lambda + 1e-8)
_NUMPY_FLOATS = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


def _resolve_loss_scale(loss_scale: LossScale) -> float:
    if loss_scale is None:
        return 1.0
    value = loss_scale() if callable(loss_scale) else loss_scale
    value = float(value.item() if isinstance(value, Tensor) else value)
    if not value > 0.0 or value != value or value == float("inf"):
        raise ValueError(f"loss_scale must be a positive finite number, got {value}")
    return value


class BlackboxMatching(torch.autograd.Function):
    """``matching = solver(unary, quadratic)`` with the λ-perturbation backward (see module doc).

    ``apply(unary [b,n,m], quadratic [b,E1,E2], edges_a [b,2,E1], edges_b [b,2,E2], solver,
    lambda_val, loss_scale, fidelity, solver_options, split, sparse_quadratic_grad)``; prefer
    :func:`blackbox_matching`.
    """

    @staticmethod
    def forward(ctx, unary, quadratic, edges_a, edges_b, solver, lambda_val, loss_scale, fidelity, solver_options,
                split, sparse_quadratic_grad):
        rows = range(unary.shape[0]) if split is None else split.owned(unary.shape[0])
        own = slice(rows.start, rows.stop)
        problem = None
        if split is None or len(rows):
            problem = prepare_problem(unary[own], quadratic[own], edges_a[own], edges_b[own])
        ctx.problem = problem  # reused by the backward solve: same graphs and quadratic costs
        ctx.own, ctx.split, ctx.shape = own, split, tuple(unary.shape)
        ctx.solver, ctx.solver_options = solver, solver_options
        ctx.lambda_val = float(lambda_val)
        ctx.loss_scale = loss_scale
        ctx.fidelity = bool(fidelity)
        ctx.sparse_quadratic_grad = bool(sparse_quadratic_grad)
        ctx.edges = (edges_a, edges_b)  # for the quadratic gradient of every problem
        ctx.matching64 = _solve_shared(ctx, problem, unary.device)
        ctx.unary_meta = (unary.dtype, unary.device)
        ctx.quadratic_meta = (quadratic.dtype, quadratic.device)
        return ctx.matching64.to(device=unary.device, dtype=unary.dtype)

    @staticmethod
    def backward(ctx, grad_matching):
        need_unary, need_quadratic = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_unary or need_quadratic):
            return (None,) * 11
        problem, matching = ctx.problem, ctx.matching64
        if ctx.fidelity:
            scale, denominator = 1.0, ctx.lambda_val + _FIDELITY_EPSILON
        else:
            scale, denominator = _resolve_loss_scale(ctx.loss_scale), ctx.lambda_val
        grad = grad_matching.detach().to(device="cpu", dtype=torch.float64) / scale
        if bool((grad == 0).all()):  # the same on every process of a split: they all hold the same loss
            perturbed = matching  # the solver is deterministic: same costs, same solution
        else:
            if problem is not None:
                # problem.unary holds c (plus folded self-loop costs, which with_unary re-adds)
                base = problem.unary if problem.loop_unary is None else problem.unary - problem.loop_unary
                problem = problem.with_unary(base + ctx.lambda_val * grad[ctx.own])
            perturbed = _solve_shared(ctx, problem, ctx.unary_meta[1])
        grad_unary = grad_quadratic = None
        if need_unary:
            grad_unary = (-(matching - perturbed) / denominator * scale).to(*_flip(ctx.unary_meta))
        if need_quadratic:
            # y(x) - y(x') in {-1, 0, 1}: scaling it equals -(y - y') / denominator * scale
            dtype, device = ctx.quadratic_meta
            factor = -1.0 / denominator * scale
            pairs = ctx.problem.pair_index() if ctx.split is None else edge_pair_index(*ctx.edges, *ctx.shape[1:])
            if ctx.sparse_quadratic_grad:
                grad_quadratic = _sparse_pair_indicator_difference(pairs, matching, perturbed, factor, dtype).to(device)
            elif device.type == "cpu" and dtype in _NUMPY_FLOATS:
                grad_quadratic = torch.from_numpy(
                    _pair_indicator_difference(pairs, matching, perturbed, factor, _NUMPY_FLOATS[dtype])
                )
            else:
                difference = _pair_indicator_difference(pairs, matching, perturbed, factor)
                grad_quadratic = torch.from_numpy(difference).to(device=device, dtype=dtype)
        ctx.problem = ctx.matching64 = ctx.edges = None
        return grad_unary, grad_quadratic, None, None, None, None, None, None, None, None, None


def _solve_shared(ctx, problem: GraphMatchingProblem | None, device: torch.device) -> Tensor:
    """The matchings ``[b, n, m]`` (float64, CPU) of every problem: this process's solved, the others'
    received when the batch is split (``problem`` None: this process solves none of them)."""
    b, n, m = ctx.shape
    if problem is None:
        owned = torch.zeros(0, n, m, dtype=torch.float64)
    else:
        owned = solve_prepared(problem, ctx.solver, **ctx.solver_options)
    return owned if ctx.split is None else ctx.split.share(owned, b, device)


def _flip(meta: tuple[torch.dtype, torch.device]) -> tuple[torch.device, torch.dtype]:
    dtype, device = meta
    return device, dtype


def blackbox_matching(
    unary: Tensor,
    quadratic: Tensor,
    edges_a: Tensor,
    edges_b: Tensor,
    solver: str = DEFAULT_SOLVER,
    lambda_val: float = 80.0,
    loss_scale: LossScale = None,
    fidelity: bool = False,
    solver_options: dict[str, Any] | None = None,
    split: ProblemSplit | None = None,
    sparse_quadratic_grad: bool = False,
) -> Tensor:
    """Differentiable (black-box) graph matching; shapes as :func:`solve_graph_matching`.

    ``loss_scale``: the AMP loss scale the incoming gradient carries (a number, a 0-d tensor
    or a callable such as ``scaler.get_scale``, read at backward time); ignored when
    ``fidelity=True``, which mimics the original's loss-scale-unaware backward. ``solver_options``:
    keyword arguments of the solver for the forward and the backward solve (``{"search": 0}``:
    ``"auto"`` without its search, as the MGA training step runs it). ``split``: every process of
    the split passes the same problems and solves only its block of them (:class:`ProblemSplit`),
    in forward and in backward; the costs of the other problems are not read.
    ``sparse_quadratic_grad``: the quadratic costs' gradient as a sparse COO tensor (at most two
    entries per A edge) instead of a dense ``[b, E1, E2]`` one, for a consumer that takes it (the
    MGA's :func:`~exgramed_plugin.alignment.costs.edge_costs`; pass the costs batched, as a view's
    backward takes no sparse gradient).
    """
    if not lambda_val > 0:
        raise ValueError(f"lambda_val must be > 0, got {lambda_val}")
    unbatched, (unary, quadratic, edges_a, edges_b) = batched_inputs(unary, quadratic, edges_a, edges_b)
    b = unary.shape[0]
    edges_a = edges_a.expand(b, -1, -1) if edges_a.dim() == 2 else edges_a
    edges_b = edges_b.expand(b, -1, -1) if edges_b.dim() == 2 else edges_b
    matching = BlackboxMatching.apply(unary, quadratic, edges_a, edges_b, solver, lambda_val, loss_scale, fidelity,
                                      dict(solver_options or {}), split, sparse_quadratic_grad)
    return matching[0] if unbatched else matching
