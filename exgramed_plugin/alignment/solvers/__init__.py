"""Graph-matching solvers for the MGA quadratic assignment problem (docs/method.md §3.9, §10.5).

The original used LPMP, which cannot be installed (its sdist has no C++ sources). The problem
is in :mod:`.problem`; each solver has its own module, and this one is the registry:

* ``"auto"`` (default): IPFP, then on small problems (n * m <= 100) branch-and-bound from it,
  exact within its node budget; on larger ones up to 64 x 64, tabu search and then iterated local
  search from it (``search=0``, the MGA training step's default: the IPFP answer) (:mod:`.auto`).
* ``"ipfp"``: integer projected fixed point from the LAP, then local search (:mod:`.ipfp`).
* ``"tabu"``: tabu search from the IPFP answer (:mod:`.tabu`).
* ``"ils"``: iterated local search from the IPFP answer, many kicked restarts (:mod:`.restarts`).
* ``"bnb"``: branch-and-bound from the IPFP answer, within a node budget (:mod:`.branch_and_bound`).
* ``"lap"``: exact on the unary part only, the quadratic costs ignored (:mod:`.lap`).
* ``"fgw"``: POT's fused Gromov-Wasserstein, a structural reference (:mod:`.fgw`).
* ``"exact"``: exhaustive enumeration, for tests (:mod:`.exact`).

All solvers take a :class:`GraphMatchingProblem` and return assignments ``[b, n]`` (column per
row, ``-1`` unassigned); they never mutate their inputs, and each problem's answer depends on
that problem only (not on its batch).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .auto import solve_auto
from .branch_and_bound import branch_and_bound, solve_branch_and_bound
from .exact import solve_exact
from .fgw import solve_fgw
from .ipfp import solve_ipfp
from .lap import solve_lap
from .local_search import _local_search  # noqa: F401  (used by benchmarks/bench_solvers.py)
from .problem import (  # noqa: F401  (private names: used by blackbox.py, the tests and the benchmark)
    GraphMatchingProblem,
    _pair_indicator_difference,
    _quadratic_gradients,
    _sparse_pair_indicator_difference,
    _to_assignment,
    _to_matrix,
    batched_inputs,
    edge_pair_index,
    edge_pair_indicator,
    matching_objective,
    prepare_problem,
)
from .restarts import iterated_local_search, solve_ils
from .tabu import solve_tabu, tabu_search

__all__ = [
    "DEFAULT_SOLVER",
    "SOLVERS",
    "GraphMatchingProblem",
    "prepare_problem",
    "batched_inputs",
    "solve_graph_matching",
    "solve_prepared",
    "matching_objective",
    "edge_pair_indicator",
    "solve_auto",
    "solve_ipfp",
    "solve_ils",
    "solve_tabu",
    "solve_branch_and_bound",
    "solve_lap",
    "solve_fgw",
    "solve_exact",
    "branch_and_bound",
    "iterated_local_search",
    "tabu_search",
    "register_solver",
]

DEFAULT_SOLVER = "auto"
BATCH_ENTRIES = 1 << 20  # n * m entries of the problems solved together (b = 6 up to 408 nodes)

SolverFn = Callable[..., Tensor]
SOLVERS: dict[str, SolverFn] = {
    "auto": solve_auto,
    "ipfp": solve_ipfp,
    "tabu": solve_tabu,
    "ils": solve_ils,
    "bnb": solve_branch_and_bound,
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
    """Solve an already prepared problem; returns the 0/1 matching ``[b, n, m]`` (float64, CPU).

    Large batches are solved a few problems at a time (:data:`BATCH_ENTRIES`): a solver's answer to a
    problem does not depend on its batch, and the solvers' ``[b, n, m]`` work arrays stay small
    enough for the allocator to reuse them (above 32 MB glibc maps every new array afresh, and the
    page faults of zeroing it cost more than the arithmetic at 1,024 nodes).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown graph matching solver {solver!r}; choose one of {sorted(SOLVERS)}")
    b, n, m = problem.shape
    per_part = max(1, BATCH_ENTRIES // max(1, n * m))
    if b <= per_part:
        assignment = SOLVERS[solver](problem, **options)
    else:
        parts = [problem.part(start, min(b, start + per_part)) for start in range(0, b, per_part)]
        assignment = torch.cat([SOLVERS[solver](part, **options) for part in parts])
    return _to_matrix(assignment, m)
