"""kNN graph and GraphConv against brute-force / hand-written dense references."""

import pytest
import torch

from exgramed_plugin.alignment import GraphConv, NodeFeatureGNN, edge_features, knn_graph


def brute_force_knn(x: torch.Tensor, k: int) -> list[tuple[int, int]]:
    points = x.double().tolist()
    edges = []
    for i, p in enumerate(points):
        others = []
        for j, q in enumerate(points):
            if j != i:
                others.append((sum((a - b) ** 2 for a, b in zip(p, q)), j))
        others.sort()  # by distance, then by index
        edges += [(i, j) for _, j in others[:k]]
    return edges


@pytest.mark.parametrize("n,k,d", [(12, 5, 7), (16, 5, 32), (5, 5, 3), (3, 5, 4), (9, 1, 2), (2, 5, 3)])
def test_knn_graph_matches_brute_force(n, k, d):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(n * 100 + k))
    edge_index = knn_graph(x, k)
    assert edge_index.dtype == torch.long and edge_index.shape == (2, n * min(k, n - 1))
    assert list(map(tuple, edge_index.T.tolist())) == brute_force_knn(x, k)


def test_knn_graph_ties_go_to_lower_index_and_are_deterministic():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [5.0, 5.0]])
    edge_index = knn_graph(x, 2)
    # node 0 has four neighbours at distance 1: the two lowest indices win
    assert edge_index[1, :2].tolist() == [1, 2]
    assert torch.equal(edge_index, knn_graph(x.clone(), 2))
    assert not bool((edge_index[0] == edge_index[1]).any())


@pytest.mark.parametrize("k", [1, 3, 6])
def test_knn_graph_breaks_ties_by_index_on_a_lattice(k):
    # integer points: exact distances in every formula, ties inside and at the edge of most rows'
    # k nearest; the random points beside them have none
    lattice = torch.cartesian_prod(torch.arange(6.0), torch.arange(5.0))
    scattered = 10.0 + torch.rand(7, 2, generator=torch.Generator().manual_seed(k))
    x = torch.cat([lattice, scattered])
    assert list(map(tuple, knn_graph(x, k).T.tolist())) == brute_force_knn(x, k)


def test_knn_graph_accepts_low_precision():
    x = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    assert list(map(tuple, knn_graph(x.bfloat16(), 3).T.tolist())) == brute_force_knn(x.bfloat16().float(), 3)


def dense_graph_conv(x, edge_index, weight_rel, bias_rel, weight_root, receive_from_source=True):
    n = x.shape[0]
    out = []
    for t in range(n):
        if receive_from_source:
            senders = [s for s, r in edge_index.T.tolist() if r == t]
        else:
            senders = [r for s, r in edge_index.T.tolist() if s == t]
        if senders:
            aggregated = torch.stack([x[s] for s in senders]).max(dim=0).values
        else:
            aggregated = torch.zeros(x.shape[1], dtype=x.dtype)
        out.append(weight_rel @ aggregated + bias_rel + weight_root @ x[t])
    return torch.stack(out)


@pytest.mark.parametrize("flow", ["source_to_target", "target_to_source"])
def test_graph_conv_matches_dense_reference(flow):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    # node 5 sends but never receives (source_to_target); node 0 receives from two nodes
    edge_index = torch.tensor([[1, 2, 5, 0, 3, 4, 5], [0, 0, 1, 2, 4, 3, 3]])
    conv = GraphConv(4, 3, aggr="max", flow=flow).double()
    expected = dense_graph_conv(
        x, edge_index, conv.lin_rel.weight, conv.lin_rel.bias, conv.lin_root.weight, flow == "source_to_target"
    )
    torch.testing.assert_close(conv(x, edge_index), expected)
    if flow == "source_to_target":
        # a node nobody sends to aggregates to zero: only lin_rel's bias and the root term remain
        torch.testing.assert_close(conv(x, edge_index)[5], conv.lin_rel.bias + conv.lin_root.weight @ x[5])


def test_original_gnn_tensor_names_load():
    original = {
        "message_pass_node_features.conv1.lin_rel.weight": torch.randn(8, 6),
        "message_pass_node_features.conv1.lin_rel.bias": torch.randn(8),
        "message_pass_node_features.conv1.lin_root.weight": torch.randn(8, 6),
        "message_pass_node_features.conv2.lin_rel.weight": torch.randn(8, 8),
        "message_pass_node_features.conv2.lin_rel.bias": torch.randn(8),
        "message_pass_node_features.conv2.lin_root.weight": torch.randn(8, 8),
    }
    holder = torch.nn.Module()
    holder.message_pass_node_features = NodeFeatureGNN(6, 8)
    holder.load_state_dict(original, strict=True)
    torch.testing.assert_close(holder.message_pass_node_features.conv2.lin_root.weight, original[
        "message_pass_node_features.conv2.lin_root.weight"
    ])


def test_edge_features_batched_and_unbatched_agree():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    edges = torch.stack([knn_graph(x[i], 2) for i in range(3)])
    batched = edge_features(x, edges)
    for i in range(3):
        expected = torch.stack([x[i, a] - x[i, b] for a, b in edges[i].T.tolist()])
        torch.testing.assert_close(batched[i], expected)
        torch.testing.assert_close(edge_features(x[i], edges[i]), expected)
