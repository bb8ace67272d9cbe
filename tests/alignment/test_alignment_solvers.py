"""Graph-matching solvers against an independent brute force and the dense objective."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

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
    branch_and_bound,
    solve_ipfp,
)
from exgramed_plugin.alignment.solvers.lap import _partial_lap
from exgramed_plugin.alignment.solvers.tables import _gradients, _pair_coefficients, _pair_terms


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


@pytest.mark.parametrize("n,m", [(5, 5), (4, 6), (6, 4), (1, 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lap_equals_brute_force_on_square_and_rectangular_costs(n, m, seed):
    # a third of the costs positive, as in the IPFP's gradients: partial matchings win there
    unary = torch.randn(1, n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 0.4
    no_edges = torch.zeros(1, 2, 0, dtype=torch.long)
    found = solve_graph_matching(unary, torch.zeros(1, 0, 0, dtype=torch.float64), no_edges, no_edges, solver="lap")
    value, expected = brute_force(unary[0], torch.zeros(0, 0), no_edges[0], no_edges[0])
    assert torch.equal(found[0], expected)
    assert float((found[0] * unary[0]).sum()) == pytest.approx(value, abs=1e-12)


def test_lap_with_the_square_reduction_keeps_scipys_minimiser():
    # the reduction only shifts every full assignment by one constant: scipy on the raw clipped
    # costs is the reference, on matrices of the IPFP's sign mix and spread
    gen = torch.Generator().manual_seed(5)
    unary = (torch.randn(12, 120, 120, generator=gen, dtype=torch.float64) * torch.rand(12, 1, 1, generator=gen) * 2
             - 0.3)
    clipped = np.minimum(unary.numpy(), 0.0)
    for problem, matching in zip(clipped, _partial_lap(unary)):
        rows, cols = linear_sum_assignment(problem)
        kept = problem[rows, cols] < 0
        expected = np.full(len(problem), -1)
        expected[rows[kept]] = cols[kept]
        np.testing.assert_array_equal(matching.numpy(), expected)


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
    found = _pair_indicator_difference(problem.pair_index(), matchings[0], matchings[1], scale=-0.5)
    torch.testing.assert_close(torch.from_numpy(found), -0.5 * expected, rtol=0, atol=0)


@pytest.mark.parametrize("e1,e2", [(0, 5), (5, 0), (0, 0)])
def test_default_solver_without_edges_is_the_lap(e1, e2):
    gen = torch.Generator().manual_seed(3)
    unary = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64)
    problems = (unary, torch.randn(2, e1, e2, generator=gen, dtype=torch.float64),
                torch.randint(0, 5, (2, 2, e1), generator=gen), torch.randint(0, 6, (2, 2, e2), generator=gen))
    torch.testing.assert_close(solve_graph_matching(*problems), solve_graph_matching(*problems, solver="lap"))


def gaussian_instances(batch, n, seed, k=3):
    """i.i.d. Gaussian costs on two random kNN graphs: rugged landscapes where local search stalls."""
    gen = torch.Generator().manual_seed(seed)
    edges_a = torch.stack([knn_graph(torch.randn(n, 4, generator=gen), k) for _ in range(batch)])
    edges_b = torch.stack([knn_graph(torch.randn(n, 4, generator=gen), k) for _ in range(batch)])
    unary = 0.5 * torch.randn(batch, n, n, generator=gen, dtype=torch.float64) - 0.2
    quadratic = 0.5 * torch.randn(batch, edges_a.shape[2], edges_b.shape[2], generator=gen, dtype=torch.float64)
    return unary, quadratic, edges_a, edges_b


def stacked_random_costs(count, n, m, e1, e2, seed):
    """``count`` problems of :func:`random_costs` (self loops and duplicate edges included) as one batch."""
    parts = [random_costs(n, m, e1, e2, seed + i) for i in range(count)]
    return tuple(torch.cat(values) for values in zip(*parts))


def objective_of(assignment, problems):
    m = problems[0].shape[2]
    return matching_objective(F.one_hot(torch.as_tensor(assignment) + 1, m + 1)[..., 1:].double(), *problems)


SMALL_FAMILIES = {
    "random_edges": lambda seed: stacked_random_costs(4, 5, 6, 9, 8, seed),
    "random_edges_tall": lambda seed: stacked_random_costs(4, 6, 4, 10, 6, seed),
    "mga": lambda seed: mga_instances(4, 6, seed, shared_structure=False),
    "gaussian": lambda seed: gaussian_instances(4, 6, seed),
}


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_branch_and_bound_equals_enumeration(family, seed):
    problems = SMALL_FAMILIES[family](40 + seed)
    problem = prepare_problem(*problems)
    optimum = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    b, n, _ = problems[0].shape
    for incumbent in (solve_ipfp(problem).numpy(), np.full((b, n), -1)):  # a good and the empty start
        assignment, proven, nodes = branch_and_bound(problem, incumbent, node_budget=10**6)
        assert proven.all() and (nodes >= 1).all()
        torch.testing.assert_close(objective_of(assignment, problems), optimum, rtol=0, atol=1e-9)


def test_branch_and_bound_matches_python_brute_force():
    # the enumeration above is itself a solver: check against plain Python on a few instances too
    for seed in range(3):
        problems = random_costs(4, 4, 7, 6, 200 + seed)
        value, _ = brute_force(*(p[0] for p in problems))
        found = solve_graph_matching(*problems, solver="bnb")
        assert matching_objective(found, *problems).item() == pytest.approx(value, abs=1e-9)


def test_node_budget_is_respected_and_falls_back_to_a_valid_matching():
    problems = gaussian_instances(6, 8, seed=3, k=5)
    problem = prepare_problem(*problems)
    start = solve_ipfp(problem).numpy()
    for budget in (1, 50, 400):
        assignment, proven, nodes = branch_and_bound(problem, start, node_budget=budget)
        assert (nodes <= budget).all() and not proven.all()
        assert ((assignment >= -1) & (assignment < 8)).all()
        for row in assignment:  # a partial matching: no column twice
            used = row[row >= 0]
            assert len(np.unique(used)) == len(used)
        assert bool((objective_of(assignment, problems) <= objective_of(start, problems) + 1e-12).all())
    # no node beyond the root: the registered solver returns its heuristic start unchanged
    torch.testing.assert_close(
        solve_graph_matching(*problems, solver="bnb", node_budget=1), solve_graph_matching(*problems, solver="ipfp")
    )


def test_branch_and_bound_refuses_problems_too_large_for_dense_pairs():
    problem = prepare_problem(*gaussian_instances(1, 21, seed=0))
    with pytest.raises(ValueError, match="n \\* m <= 400"):
        branch_and_bound(problem, np.full((1, 21), -1))


@pytest.mark.parametrize("n", [6, 7])  # 8 x 8 enumeration takes seconds: benchmarks/bench_solvers.py covers it
def test_default_solver_is_exact_on_small_gaussian_costs(n):
    problems = gaussian_instances(6, n, seed=10 + n, k=4)
    exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    ipfp = matching_objective(solve_graph_matching(*problems, solver="ipfp"), *problems)
    found = matching_objective(solve_graph_matching(*problems), *problems)
    torch.testing.assert_close(found, exact, rtol=0, atol=1e-9)
    assert bool((ipfp > exact + 1e-6).any())  # the instances are hard for the heuristic alone


def test_iterated_local_search_improves_on_ipfp_for_hard_costs():
    problems = gaussian_instances(6, 7, seed=5)
    exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    ipfp = matching_objective(solve_graph_matching(*problems, solver="ipfp"), *problems)
    ils = matching_objective(solve_graph_matching(*problems, solver="ils"), *problems)
    assert bool((ils <= ipfp + 1e-12).all()) and bool((ils >= exact - 1e-9).all())
    gap = lambda value: ((value - exact) / exact.abs()).mean()  # noqa: E731
    assert gap(ils) < 0.5 * gap(ipfp)


def test_tabu_search_improves_on_ipfp_and_often_reaches_the_optimum():
    problems = gaussian_instances(6, 7, seed=5)
    exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    ipfp = matching_objective(solve_graph_matching(*problems, solver="ipfp"), *problems)
    found = solve_graph_matching(*problems, solver="tabu")
    assert bool((found.sum(1) <= 1).all()) and bool((found.sum(2) <= 1).all())
    tabu = matching_objective(found, *problems)
    assert bool((tabu <= ipfp + 1e-12).all()) and bool((tabu >= exact - 1e-9).all())
    assert int((ipfp > exact + 1e-6).sum()) >= 2  # hard for the heuristic alone ...
    assert int((tabu <= exact + 1e-9).sum()) >= 5  # ... not for the search


def test_default_solver_searches_above_ten_by_ten_unless_told_not_to():
    problems = gaussian_instances(6, 11, seed=3, k=4)
    ipfp = matching_objective(solve_graph_matching(*problems, solver="ipfp"), *problems)
    torch.testing.assert_close(matching_objective(solve_graph_matching(*problems, search=0), *problems), ipfp,
                               rtol=0, atol=0)
    searched = matching_objective(solve_graph_matching(*problems), *problems)
    assert bool((searched <= ipfp + 1e-12).all()) and bool((searched < ipfp - 1e-6).any())
    with pytest.raises(ValueError, match="search must be >= 0"):
        solve_graph_matching(*problems, search=-1)


@pytest.mark.parametrize("solver,n,options", [
    ("auto", 7, {}),  # branch-and-bound path
    ("auto", 11, {}),  # IPFP + tabu search path
    ("tabu", 9, {"iterations": 150, "patience": 40}),
    ("auto", 8, {"exact_budget": 200}),  # budget runs out: iterated local search fallback
    ("bnb", 8, {"node_budget": 300}),  # budget runs out for some problems only
    ("ils", 9, {"rounds": 6, "parallel": 4}),
    ("ipfp", 9, {}),
])
def test_batched_equals_per_problem_and_is_deterministic(solver, n, options):
    problems = gaussian_instances(5, n, seed=7, k=4)
    batched = solve_graph_matching(*problems, solver=solver, **options)
    torch.testing.assert_close(batched, solve_graph_matching(*problems, solver=solver, **options), rtol=0, atol=0)
    for p in range(5):
        alone = solve_graph_matching(*(value[p : p + 1] for value in problems), solver=solver, **options)
        torch.testing.assert_close(alone[0], batched[p], rtol=0, atol=0)
    order = [3, 1, 4, 0, 2]
    shuffled = solve_graph_matching(*(value[order] for value in problems), solver=solver, **options)
    torch.testing.assert_close(shuffled, batched[order], rtol=0, atol=0)


def test_default_solver_falls_back_to_search_when_the_budget_runs_out():
    problems = gaussian_instances(6, 7, seed=4, k=4)
    ipfp = matching_objective(solve_graph_matching(*problems, solver="ipfp"), *problems)
    exact = matching_objective(solve_graph_matching(*problems, solver="exact"), *problems)
    found = solve_graph_matching(*problems, exact_budget=20)
    assert bool(((found.sum(1) <= 1) & (found.sum(1) >= 0)).all()) and bool((found.sum(2) <= 1).all())
    value = matching_objective(found, *problems)
    assert bool((value <= ipfp + 1e-12).all()) and bool((value >= exact - 1e-9).all())
    assert value.sum() < ipfp.sum()


def test_searches_leave_the_global_generators_alone():
    problems = gaussian_instances(2, 9, seed=2)
    np.random.seed(123)
    torch.manual_seed(123)
    numpy_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    for solver in ("auto", "ils", "bnb", "tabu"):
        solve_graph_matching(*problems, solver=solver)
    assert (np.random.get_state()[1] == numpy_state).all() and torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.parametrize("structure", ["random", "knn"])
def test_copied_tables_equal_tables_of_copied_problems(structure):
    if structure == "random":  # self loops and duplicate B edges
        problems = stacked_random_costs(3, 5, 6, 9, 8, seed=30)
    else:
        problems = mga_instances(3, 7, seed=30, shared_structure=False)
    problem = prepare_problem(*problems)
    index = np.array([2, 0, 0, 1, 2])
    shared, rebuilt = problem.tables().take(index), problem.take(index).tables()
    gen = np.random.default_rng(0)
    _, n, m = problem.shape
    for _ in range(4):
        assignment = np.stack([gen.permutation(m)[:n] for _ in index])
        assignment[gen.random(assignment.shape) < 0.3] = -1
        np.testing.assert_array_equal(_gradients(shared, assignment), _gradients(rebuilt, assignment))
        for found, expected in zip(_pair_coefficients(shared, assignment), _pair_coefficients(rebuilt, assignment)):
            np.testing.assert_array_equal(found, expected)


def test_sparse_pair_terms_are_the_dense_coefficients_bit_for_bit():
    problems = mga_instances(3, 9, seed=31, shared_structure=False)  # kNN graphs: some edges have reverses
    tables = prepare_problem(*problems).tables()
    assert tables.simple_a and (tables.reverse_a >= 0).any() and (tables.reverse_a < 0).any()
    gen = np.random.default_rng(1)
    for _ in range(4):
        assignment = np.stack([gen.permutation(9) for _ in range(3)])
        assignment[gen.random(assignment.shape) < 0.3] = -1
        same, both = np.zeros((3, 9, 9)), np.zeros((3, 9, 9))
        problem, i, k, same_values, both_values = _pair_terms(tables, assignment)
        assert len(set(zip(problem.tolist(), i.tolist(), k.tolist()))) == len(problem)  # each position once
        same[problem, i, k], both[problem, i, k] = same_values, both_values
        for found, expected in zip((same, both), _pair_coefficients(tables, assignment)):
            np.testing.assert_array_equal(found, expected)
