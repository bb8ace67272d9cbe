"""Hamming loss and the MultiGraphAlignment module."""

import itertools

import pytest
import torch

from exgramed_plugin.alignment import PROBLEM_NAMES, SOLVERS, MultiGraphAlignment, hamming_loss


def test_hamming_loss_against_hand_counts():
    n = 4
    identity = torch.eye(n)
    wrong = torch.eye(n)[[1, 2, 3, 0]]  # a permutation with no fixed point
    partial = torch.zeros(n, n)
    partial[0, 0] = partial[1, 2] = 1.0  # 1 right; row 1 wrong: 2 + 1 missing diagonal entries
    assert hamming_loss(identity).item() == 0.0
    assert hamming_loss(wrong).item() == pytest.approx(2.0)
    assert hamming_loss(torch.zeros(n, n)).item() == pytest.approx(1.0)
    assert hamming_loss(partial).item() == pytest.approx((1 + 1 + 1 + 1) / n)
    target = torch.eye(n)[[1, 0, 2, 3]]
    assert hamming_loss(target, target).item() == 0.0
    batched = hamming_loss(torch.stack([identity, wrong]))
    assert batched.tolist() == pytest.approx([0.0, 2.0])


def make_nodes(batch, dim, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=gen).to(dtype).requires_grad_(True) for _ in range(3)]


def test_forward_backward_and_diagnostics():
    mga = MultiGraphAlignment(in_features=16, hidden_features=12)
    nodes = make_nodes(8, 16)
    out = mga(*nodes, generator=torch.Generator().manual_seed(1))
    assert set(out.hamming) == set(PROBLEM_NAMES) and out.num_nodes == 8 and out.skipped_reason is None
    # counted entry by entry, not with hamming_loss: a wrong entry is a matched off-diagonal pair or an
    # unmatched diagonal one; each problem's term is the count over the 8 rows
    wrong = [sum(int(row[j] != (1.0 if i == j else 0.0)) for i, row in enumerate(matching.tolist())
                 for j in range(8)) for matching in out.matchings]
    assert out.loss.item() == pytest.approx(sum(wrong) / 8 / 6, abs=1e-6)
    accuracy = out.matchings.diagonal(dim1=1, dim2=2).sum() / 48
    torch.testing.assert_close(out.matching_accuracy, accuracy)
    out.loss.backward()
    assert all(z.grad is not None and torch.isfinite(z.grad).all() for z in nodes)
    assert mga.gnn.conv1.lin_rel.weight.grad is not None


def test_same_generator_same_result_and_noise_is_torch_only():
    mga = MultiGraphAlignment(in_features=16).eval()
    nodes = make_nodes(10, 16)
    state = torch.random.get_rng_state()
    a = mga(*nodes, generator=torch.Generator().manual_seed(5))
    b = mga(*nodes, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.matchings, b.matchings)
    assert torch.equal(torch.random.get_rng_state(), state)  # global torch RNG untouched in eval mode


def test_batch_of_one_returns_zero_loss_with_gradient_path():
    mga = MultiGraphAlignment(in_features=8)
    nodes = make_nodes(1, 8)
    out = mga(*nodes)
    assert out.loss.item() == 0.0 and out.skipped_reason and "at least 2" in out.skipped_reason
    out.loss.backward()
    assert all(z.grad is not None for z in nodes)
    assert all(p.grad is not None for p in mga.parameters())


@pytest.mark.parametrize("batch", [2, 3, 5, 6])
def test_small_batches_use_complete_graphs(batch):
    mga = MultiGraphAlignment(in_features=8, k=5)
    out = mga(*make_nodes(batch, 8))
    assert out.matchings.shape == (6, batch, batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()


def partial_matchings(n: int) -> torch.Tensor:
    """Every partial matching of an n x n problem as 0/1 matrices ``[count, n, n]`` (209 for n = 4)."""
    found = []
    for size in range(n + 1):
        for rows in itertools.combinations(range(n), size):
            for cols in itertools.permutations(range(n), size):
                x = torch.zeros(n, n, dtype=torch.float64)
                x[list(rows), list(cols)] = 1.0
                found.append(x)
    return torch.stack(found)


def brute_force_mga_problem(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The optimum of one H(A -> C) problem of docs/method.md §3.7-§3.9 without noise or message
    passing, by enumeration: complete graphs (B - 1 <= k), edge feature ``x_i - x_j``, unit node and
    edge features, unary ``0.5 - cos``, quadratic ``0.25 - 0.5 <e1, e2>`` for every edge pair."""
    n = source.shape[0]
    a = torch.nn.functional.normalize(source.double(), dim=-1)
    c = torch.nn.functional.normalize(target.double(), dim=-1)
    unary = 0.5 - a @ c.T
    edges_a = torch.nn.functional.normalize(source.double()[:, None] - source.double()[None], dim=-1)  # [n, n, d]
    edges_c = torch.nn.functional.normalize(target.double()[:, None] - target.double()[None], dim=-1)
    pair = 0.25 - 0.5 * torch.einsum("ijd,kld->ijkl", edges_a, edges_c)  # edge (i1 -> i2) with (j1 -> j2)
    no_loop = (1.0 - torch.eye(n, dtype=torch.float64))
    pair = pair * no_loop[:, :, None, None] * no_loop[None, None]  # i1 = i2 or j1 = j2 is no edge
    candidates = partial_matchings(n)
    values = (candidates * unary).sum(dim=(1, 2)) + torch.einsum("bik,bjl,ijkl->b", candidates, candidates, pair)
    return candidates[values.argmin()]


def test_forward_is_the_brute_force_optimum_of_the_documented_costs():
    """4 nodes (complete graphs for k = 5), no noise, no GNN: the six matchings are the enumerated
    optima of costs built here from the documented formulas, and the loss is their Hamming count."""
    # seed 0: the unary-only optimum (solver "lap") differs from these, so the edge-pair terms count
    image, text, extended = (z.detach() for z in make_nodes(4, 8, seed=0))
    barycenter = (image + text + extended) / 3
    references = []
    for z in (image, text, extended):  # PROBLEM_NAMES order: X -> bary, bary -> X
        references += [brute_force_mga_problem(z, barycenter), brute_force_mga_problem(barycenter, z)]
    mga = MultiGraphAlignment(in_features=8, gumbel_scale=0.0, use_message_passing=False)
    out = mga(image, text, extended)
    assert out.matchings.tolist() == [x.tolist() for x in references]
    wrong = [int((x != torch.eye(4, dtype=torch.float64)).sum()) for x in references]  # wrong entries per problem
    assert sum(wrong) > 0  # not the trivial all-identity case
    assert out.loss.item() == pytest.approx(sum(wrong) / 4 / 6, abs=1e-6)
    assert out.matching_accuracy.item() == pytest.approx(sum(int(x.trace()) for x in references) / 24, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """Three identical modalities, no noise: every problem matches a graph with itself, and the identity
    reaches the lower bound of each cost term (unary 0.5 - 1, each edge pair 0.25 - 0.5), so by hand the
    six matchings are the identity, the loss 0 and the accuracy 1, whatever the (seeded) GNN weights."""
    torch.manual_seed(0)
    mga = MultiGraphAlignment(in_features=8, hidden_features=16, gumbel_scale=0.0).eval()
    z = make_nodes(6, 8, dtype=dtype)[0]
    nodes = [z.detach().clone().requires_grad_(True) for _ in range(3)]
    out = mga(*nodes)
    assert torch.equal(out.matchings, torch.eye(6).expand(6, 6, 6))
    assert out.loss.item() == 0.0 and out.matching_accuracy.item() == 1.0
    out.loss.backward()
    assert nodes[0].grad.dtype == dtype


@pytest.mark.parametrize("position,name", [(0, "image"), (1, "text"), (2, "extended")])
def test_non_finite_features_give_a_nan_loss_naming_the_modality(position, name):
    # no matching is attempted; the NaN reaches the trainer's non-finite guard (or an fp16 scaler's skip)
    nodes = [z.detach() for z in make_nodes(6, 8)]
    nodes[position][2, 3] = float("nan")
    out = MultiGraphAlignment(in_features=8)(*nodes)
    assert torch.isnan(out.loss) and out.matchings is None
    assert out.skipped_reason == f"the {name} node features contain NaN or infinity"


def test_ablation_and_flow_switches_and_state_dict_names():
    for kwargs in ({"use_message_passing": False}, {"message_flow": "standard"}, {"solver": "lap"}):
        mga = MultiGraphAlignment(in_features=8, **kwargs)
        mga(*make_nodes(6, 8)).loss.backward()
    keys = set(MultiGraphAlignment(in_features=8).state_dict())
    assert keys == {f"gnn.conv{i}.{p}" for i in (1, 2) for p in ("lin_rel.weight", "lin_rel.bias", "lin_root.weight")}


def test_learning_aligns_three_modalities_sharing_structure():
    """Free node embeddings, trained with the MGA loss alone, end up matched to their own sample."""
    torch.manual_seed(0)
    batch, dim = 12, 16
    shared = torch.randn(batch, dim)
    nodes = [torch.nn.Parameter(shared + 4.0 * torch.randn(batch, dim)) for _ in range(3)]
    mga = MultiGraphAlignment(in_features=dim, hidden_features=dim)
    optimizer = torch.optim.Adam([*nodes, *mga.parameters()], lr=0.02)
    generator = torch.Generator().manual_seed(0)

    def accuracy():
        with torch.no_grad():
            mga.eval()
            values = [mga(*nodes, generator=generator).matching_accuracy.item() for _ in range(3)]
            mga.train()
        return min(values)

    initial = accuracy()
    for _ in range(60):
        optimizer.zero_grad()
        mga(*nodes, generator=generator).loss.backward()
        optimizer.step()
    assert initial < 0.7
    assert accuracy() == 1.0


def _mga_run(solver, solver_search=0, seed=3):
    torch.manual_seed(0)  # the same GNN weights for each module
    mga = MultiGraphAlignment(in_features=8, solver=solver, solver_search=solver_search).eval()
    nodes = make_nodes(12, 8, seed=seed)
    out = mga(*nodes, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    return out.matchings, [z.grad for z in nodes]


def test_the_training_step_runs_auto_without_its_search_unless_told(monkeypatch):
    """12 nodes: above 10 x 10, so "auto" = IPFP + search, and ``solver_search=0`` (the default) = IPFP."""
    ipfp, ipfp_grads = _mga_run("ipfp")
    step, step_grads = _mga_run("auto")
    assert torch.equal(step, ipfp) and all(torch.equal(a, b) for a, b in zip(step_grads, ipfp_grads))
    seen = []
    original = SOLVERS["auto"]
    monkeypatch.setitem(SOLVERS, "auto", lambda problem, **options: seen.append(options) or original(problem, **options))
    _mga_run("auto", solver_search=50)
    assert seen == [{"search": 50}, {"search": 50}]  # the forward and the backward (perturbed) solve
    with pytest.raises(ValueError, match="needs solver='auto'"):
        MultiGraphAlignment(in_features=8, solver="ipfp", solver_search=5)
