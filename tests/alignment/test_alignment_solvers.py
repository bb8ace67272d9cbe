"""Graph-matching solvers against an independent brute force and the dense objective."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from exgramed_plugin.alignment import (
    SOLVERS,
    edge_pair_indicator,
    knn_graph,
    matching_objective,
    prepare_problem,
    solve_graph_matching,
)
from exgramed_plugin.alignment.solvers import (
    _pair_indicator_difference,
    _quadratic_gradients,
)


def mga_instances(batch, n, seed, noise=1.0, k=5, d=16, shared_structure=True):
    """Costs built like the MGA (§3.8) on a noisy, permuted copy of random node features."""
    gen = torch.Generator().manual_seed(seed)
    unary, quadratic, edges_a, edges_b = [], [], [], []

    def gumbel(*shape):
        return -0.05 * torch.log(-torch.log(torch.rand(*shape, generator=gen, dtype=torch.float64)))

    for _ in range(batch):
        xa = torch.randn(n, d, generator=gen, dtype=torch.float64)
        xb = xa[torch.randperm(n, generator=gen)] + noise * torch.randn(n, d, generator=gen, dtype=torch.float64)
        ea = knn_graph(xa, k)
        eb = ea if shared_structure else knn_graph(xb, k)
        fa = F.normalize(xa[ea[0]] - xa[ea[1]], dim=1)
        fb = F.normalize(xb[eb[0]] - xb[eb[1]], dim=1)
        unary.append(0.5 - F.normalize(xa, dim=1) @ F.normalize(xb, dim=1).T - gumbel(n, n))
        quadratic.append(0.25 - 0.5 * fa @ fb.T - 0.5 * gumbel(ea.shape[1], eb.shape[1]))
        edges_a.append(ea)
        edges_b.append(eb)
    return torch.stack(unary), torch.stack(quadratic), torch.stack(edges_a), torch.stack(edges_b)


def brute_force(unary, quadratic, edges_a, edges_b):
    """Minimum over all partial matchings by plain Python enumeration (one problem)."""
    n, m = unary.shape
    pairs_a = edges_a.T.tolist()
    pairs_b = edges_b.T.tolist()
    best, best_x = float("inf"), None
    for size in range(min(n, m) + 1):
        for rows in itertools.combinations(range(n), size):
            for cols in itertools.permutations(range(m), size):
                match = dict(zip(rows, cols))
                value = sum(float(unary[i, j]) for i, j in match.items())
                for a, (i1, i2) in enumerate(pairs_a):
                    for b, (j1, j2) in enumerate(pairs_b):
                        if match.get(i1) == j1 and match.get(i2) == j2:
                            value += float(quadratic[a, b])
                if value < best - 1e-12:
                    best, best_x = value, match
    x = torch.zeros(n, m, dtype=torch.float64)
    for i, j in best_x.items():
        x[i, j] = 1.0
    return best, x


def random_costs(n, m, e1, e2, seed):
    gen = torch.Generator().manual_seed(seed)
    unary = torch.randn(1, n, m, generator=gen, dtype=torch.float64) * 0.5 - 0.2
    quadratic = torch.randn(1, e1, e2, generator=gen, dtype=torch.float64)
    edges_a = torch.randint(0, n, (1, 2, e1), generator=gen)
    edges_b = torch.randint(0, m, (1, 2, e2), generator=gen)
    return unary, quadratic, edges_a, edges_b


@pytest.mark.parametrize("n,m,seed", [(4, 4, 0), (3, 5, 1), (5, 3, 2), (4, 4, 3)])
def test_exact_matches_python_brute_force(n, m, seed):
    # random edges include self loops and duplicates: the folding in prepare_problem must be exact
    unary, quadratic, edges_a, edges_b = random_costs(n, m, 7, 6, seed)
    value, _ = brute_force(unary[0], quadratic[0], edges_a[0], edges_b[0])
    x = solve_graph_matching(unary, quadratic, edges_a, edges_b, solver="exact")
    assert matching_objective(x, unary, quadratic, edges_a, edges_b).item() == pytest.approx(value, abs=1e-9)


def test_default_solver_is_near_exact_on_mga_instances():
    gaps = []
    for n, seed, shared in [(5, 0, True), (6, 1, True), (6, 2, False), (5, 3, False)]:
        problems = mga_instances(12, n, seed, shared_structure=shared)
        exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
        found = matching_objective(solve_graph_matching(*problems), *problems)
        assert bool((found >= exact - 1e-9).all())  # nothing beats the optimum
        gaps.append((found - exact) / exact.abs().clamp_min(1e-9))
    gaps = torch.cat(gaps)
    assert (gaps <= 0.01).double().mean() >= 0.95, gaps


def test_default_solver_improves_on_lap_for_hard_random_costs():
    unary, quadratic, edges_a, edges_b = [], [], [], []
    for seed in range(10):
        problem = random_costs(6, 6, 12, 12, 100 + seed)
        for store, value in zip((unary, quadratic, edges_a, edges_b), problem):
            store.append(value)
    problems = tuple(torch.cat(v) for v in (unary, quadratic, edges_a, edges_b))
    lap = matching_objective(solve_graph_matching(*problems, solver="lap"), *problems)
    found = matching_objective(solve_graph_matching(*problems), *problems)
    exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    assert bool((found <= lap + 1e-9).all())  # started from the LAP, only improving moves
    assert found.mean() < lap.mean()
    assert ((found - exact) / exact.abs()).mean() < 0.05


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_solutions_are_feasible_and_inputs_untouched(solver):
    problems = mga_instances(3, 6, seed=5, shared_structure=False)
    copies = [p.clone() for p in problems]
    x = solve_graph_matching(*problems, solver=solver)
    for before, after in zip(copies, problems):
        assert torch.equal(before, after)
    assert x.shape == (3, 6, 6) and x.dtype == problems[0].dtype
    assert bool(((x == 0) | (x == 1)).all())
    assert bool((x.sum(1) <= 1).all()) and bool((x.sum(2) <= 1).all())


def test_lap_is_exact_without_quadratic_costs():
    unary, quadratic, edges_a, edges_b = mga_instances(6, 6, seed=7, noise=0.8)
    quadratic = torch.zeros_like(quadratic)
    for solver in ("lap", "ipfp"):
        x = solve_graph_matching(unary, quadratic, edges_a, edges_b, solver=solver)
        exact = solve_graph_matching(unary, quadratic, edges_a, edges_b, solver="exact")
        torch.testing.assert_close(
            matching_objective(x, unary, quadratic, edges_a, edges_b),
            matching_objective(exact, unary, quadratic, edges_a, edges_b),
        )


def test_unassigned_nodes_cost_nothing():
    # all unary costs positive and no quadratic reward: the empty matching is optimal
    unary = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    edges = knn_graph(torch.randn(4, 3), 2)
    quadratic = torch.rand(2, edges.shape[1], edges.shape[1])
    for solver in SOLVERS:
        assert solve_graph_matching(unary, quadratic, edges, edges, solver=solver).sum() == 0


def test_sparse_gradient_matches_autograd_of_dense_objective():
    unary, quadratic, edges_a, edges_b = random_costs(5, 6, 9, 8, seed=11)
    # no self loops here (they are folded into the unary costs); duplicate edges stay
    edges_a[:, 1] = torch.where(edges_a[:, 0] == edges_a[:, 1], (edges_a[:, 1] + 1) % 5, edges_a[:, 1])
    edges_b[:, 1] = torch.where(edges_b[:, 0] == edges_b[:, 1], (edges_b[:, 1] + 1) % 6, edges_b[:, 1])
    edges_a[:, :, -1] = edges_a[:, :, 0]
    problem = prepare_problem(unary, quadratic, edges_a, edges_b)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        assignment = torch.randperm(6, generator=gen)[:5]
        assignment[torch.rand(5, generator=gen) < 0.3] = -1
        x = F.one_hot(assignment + 1, 7)[:, 1:].double()[None].requires_grad_(True)
        matching_objective(x, unary, quadratic, edges_a, edges_b).sum().backward()
        g1, g2 = _quadratic_gradients(problem, assignment[None])
        torch.testing.assert_close(problem.unary + g1 + g2, x.grad)


def test_low_precision_and_unbatched_inputs():
    unary, quadratic, edges_a, edges_b = mga_instances(1, 6, seed=9)
    expected = solve_graph_matching(unary, quadratic, edges_a, edges_b, solver="exact")
    x = solve_graph_matching(unary[0].float(), quadratic[0].float(), edges_a[0], edges_b[0], solver="exact")
    assert x.shape == (6, 6)
    torch.testing.assert_close(x.double(), expected[0])
    x16 = solve_graph_matching(unary.bfloat16(), quadratic.half(), edges_a, edges_b)
    assert x16.dtype == torch.bfloat16 and bool((x16.float().sum(2) <= 1).all())


def test_exact_refuses_large_problems_and_unknown_solver_is_named():
    unary, quadratic, edges_a, edges_b = mga_instances(1, 9, seed=0)
    with pytest.raises(ValueError, match="n, m <= 8"):
        solve_graph_matching(unary, quadratic, edges_a, edges_b, solver="exact")
    with pytest.raises(ValueError, match="unknown graph matching solver"):
        solve_graph_matching(unary, quadratic, edges_a, edges_b, solver="lpmp")


@pytest.mark.parametrize("structure", ["random", "knn"])
def test_pair_indicator_difference_matches_dense_indicator(structure):
    # random edges have self loops and duplicate B edges (comparison path), kNN graphs none (sparse path)
    if structure == "random":
        unary, quadratic, edges_a, edges_b = random_costs(5, 6, 12, 10, seed=21)
    else:
        unary, quadratic, edges_a, edges_b = mga_instances(2, 7, seed=21, shared_structure=False)
    problem = prepare_problem(unary, quadratic, edges_a, edges_b)
    b, n, m = unary.shape
    gen = torch.Generator().manual_seed(1)
    matchings = []
    for _ in range(2):
        assignment = torch.stack([torch.randperm(m, generator=gen)[:n] for _ in range(b)])
        assignment[torch.rand(b, n, generator=gen) < 0.3] = -1
        matchings.append(F.one_hot(assignment + 1, m + 1)[..., 1:].double())
    expected = edge_pair_indicator(matchings[0], edges_a, edges_b) - edge_pair_indicator(matchings[1], edges_a, edges_b)
    found = _pair_indicator_difference(problem, matchings[0], matchings[1], scale=-0.5)
    torch.testing.assert_close(torch.from_numpy(found), -0.5 * expected, rtol=0, atol=0)


@pytest.mark.parametrize("e1,e2", [(0, 5), (5, 0), (0, 0)])
def test_default_solver_without_edges_is_the_lap(e1, e2):
    gen = torch.Generator().manual_seed(3)
    unary = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    problems = (unary, torch.randn(2, e1, e2, generator=gen, dtype=torch.float64),
                torch.randint(0, 5, (2, 2, e1), generator=gen), torch.randint(0, 6, (2, 2, e2), generator=gen))
    torch.testing.assert_close(solve_graph_matching(*problems), solve_graph_matching(*problems, solver="lap"))
