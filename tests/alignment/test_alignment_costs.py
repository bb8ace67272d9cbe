"""The MGA's perturbed edge costs against the dense formula they replace, and the noise against Gumbel's CDF."""

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from exgramed_plugin.alignment import costs, edge_costs, gumbel_noise

SCALE = 0.05


def _unit_edge_features(problems, edges, width, seed):
    generator = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(problems, 2, edges, width, generator=generator), dim=-1)
    return feats[:, 0].clone().requires_grad_(), feats[:, 1].clone().requires_grad_()


def _dense_formula(feats_a, feats_b, generator):
    """The costs as the MGA built them before (one [b, E, E] tensor per term, float64 noise)."""
    affinity = feats_a @ feats_b.transpose(1, 2)
    noise = gumbel_noise(tuple(affinity.shape), SCALE, generator)
    return 0.25 - 0.5 * affinity - 0.5 * noise.to(torch.float32)


def _next_draw(generator):
    return torch.rand(1, generator=generator, dtype=torch.float64)


@pytest.fixture(autouse=True)
def small_noise_chunks(monkeypatch):
    monkeypatch.setattr(costs, "NOISE_CHUNK", 4099)  # chunks that end inside rows and problems


def test_costs_equal_the_dense_formula_bit_for_bit_and_draw_the_same_noise():
    feats_a, feats_b = _unit_edge_features(4, 90, 8, seed=0)
    found_generator, expected_generator = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    found = edge_costs(feats_a, feats_b, SCALE, found_generator)
    expected = _dense_formula(feats_a, feats_b, expected_generator)
    assert found.dtype == torch.float32 and found.device.type == "cpu"
    assert torch.equal(found, expected.detach())
    assert torch.equal(_next_draw(found_generator), _next_draw(expected_generator))


def test_a_subset_of_problems_gets_the_same_costs_and_leaves_the_generator_where_all_would():
    feats_a, feats_b = _unit_edge_features(6, 50, 8, seed=1)
    found_generator, expected_generator = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    found = edge_costs(feats_a, feats_b, SCALE, found_generator, solved=range(2, 4))
    expected = _dense_formula(feats_a, feats_b, expected_generator)
    assert torch.equal(found[2:4], expected[2:4].detach())
    assert torch.equal(_next_draw(found_generator), _next_draw(expected_generator))


def test_gradients_equal_autograd_of_the_dense_formula():
    feats_a, feats_b = _unit_edge_features(3, 60, 8, seed=2)
    weights = torch.randn(3, 60, 60, generator=torch.Generator().manual_seed(3))
    weights[weights.abs() < 1.5] = 0.0  # sparse, as the black-box gradient is
    (edge_costs(feats_a, feats_b, SCALE, torch.Generator().manual_seed(0)) * weights).sum().backward()
    found = feats_a.grad.clone(), feats_b.grad.clone()
    feats_a.grad = feats_b.grad = None
    (_dense_formula(feats_a, feats_b, torch.Generator().manual_seed(0)) * weights).sum().backward()
    torch.testing.assert_close(found, (feats_a.grad, feats_b.grad), rtol=1e-6, atol=1e-7)


def test_under_autocast_the_affinities_keep_autocasts_precision():
    feats_a, feats_b = _unit_edge_features(2, 40, 8, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = edge_costs(feats_a, feats_b, SCALE, torch.Generator().manual_seed(1))
        expected = _dense_formula(feats_a, feats_b, torch.Generator().manual_seed(1))
    assert expected.dtype == torch.float32 and torch.equal(found, expected.detach())
    found.sum().backward()
    found_grads = feats_a.grad.clone(), feats_b.grad.clone()
    feats_a.grad = feats_b.grad = None
    expected.sum().backward()
    torch.testing.assert_close(found_grads, (feats_a.grad, feats_b.grad), rtol=1e-2, atol=1e-2)


def test_noise_follows_gumbels_distribution():
    noise = gumbel_noise((200_000,), SCALE, torch.Generator().manual_seed(0))
    assert noise.dtype == torch.float64
    result = stats.kstest(noise.numpy(), stats.gumbel_r(loc=0.0, scale=SCALE).cdf)
    assert result.pvalue > 1e-3, result
