"""Graph construction and graph layers of the multi-graph alignment (docs/method.md §3.5-§3.7).

Plain torch: no torch_geometric / torch_cluster (the latter has no wheels), but the same
semantics and parameter names, so that the original checkpoints'
``message_pass_node_features.conv{1,2}.*`` tensors load unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "knn_graph",
    "GraphConv",
    "NodeFeatureGNN",
    "edge_features",
    "MessageFlow",
]

MessageFlow = Literal["source_to_target", "target_to_source"]


def knn_graph(x: Tensor, k: int) -> Tensor:
    """Directed Euclidean kNN graph without self loops, ``edge_index[:, e] = (i, j)``.

    One edge ``i -> j`` for each ``j`` among the ``k`` nearest nodes of ``i`` (the
    ``flow="target_to_source"`` orientation of the original ``knn_graph`` call, §3.5):
    ``edge_index[0]`` holds the query node, ``edge_index[1]`` its neighbour. With
    ``n <= k`` every node is linked to every other node. Edges are grouped by query node
    (ascending) and, within a group, sorted by distance; equal float64 distances go to the
    lower node index, so the result is deterministic. Unlike torch_cluster (which drops
    self pairs after a ``k + 1`` search), every node gets exactly ``min(k, n - 1)`` edges.
    """
    if x.dim() != 2:
        raise ValueError(f"knn_graph expects node features of shape [n, d], got {tuple(x.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = x.shape[0]
    num_neighbours = min(k, n - 1)
    if num_neighbours <= 0:
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    points = x.detach().to(torch.float64)
    squared_norms = (points * points).sum(dim=1)
    squared_dist = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (points @ points.T)
    squared_dist = squared_dist.clamp_min_(0.0)
    squared_dist.fill_diagonal_(float("inf"))
    # the k + 1 nearest give the k nearest, unless a row ties among them: a stable sort of such rows
    # keeps ascending column order (the lower index wins), as a stable sort of every row would
    nearest, order = torch.topk(squared_dist, num_neighbours + 1, dim=1, largest=False, sorted=True)
    order = order[:, :num_neighbours]
    tied = (nearest[:, 1:] == nearest[:, :-1]).any(dim=1).nonzero().squeeze(1)
    if len(tied):
        order[tied] = torch.sort(squared_dist[tied], dim=1, stable=True).indices[:, :num_neighbours]
    source = torch.arange(n, device=x.device).repeat_interleave(num_neighbours)
    return torch.stack([source, order.reshape(-1)], dim=0)


class GraphConv(nn.Module):
    """``x'_t = lin_rel(aggr_{s -> t} x_s) + lin_root(x_t)`` (Morris et al., PyG ``GraphConv``).

    ``flow="source_to_target"`` (PyG's default and the original's) sends messages along
    ``edge_index[0] -> edge_index[1]``; on a :func:`knn_graph` this means a node hears the
    nodes that picked it as a neighbour ("reverse kNN", §3.6). ``"target_to_source"`` sends
    them the other way, so a node hears its own k nearest neighbours (the usual kNN-GNN
    choice, §10.6). Nodes without incoming messages aggregate to zero, as in PyG.
    Edge attributes are ignored, as in the original.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        aggr: Literal["max", "mean", "sum"] = "max",
        flow: MessageFlow = "source_to_target",
    ) -> None:
        super().__init__()
        if aggr not in ("max", "mean", "sum"):
            raise ValueError(f"aggr must be 'max', 'mean' or 'sum', got {aggr!r}")
        if flow not in ("source_to_target", "target_to_source"):
            raise ValueError(f"flow must be 'source_to_target' or 'target_to_source', got {flow!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.aggr = aggr
        self.flow = flow
        # names as in torch_geometric.nn.GraphConv, so original state dicts load
        self.lin_rel = nn.Linear(in_features, out_features, bias=True)
        self.lin_root = nn.Linear(in_features, out_features, bias=False)

    def aggregate(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """Aggregate neighbour features per receiving node (zero where nothing arrives)."""
        if self.flow == "source_to_target":
            sender, receiver = edge_index[0], edge_index[1]
        else:
            sender, receiver = edge_index[1], edge_index[0]
        messages = x.index_select(0, sender)
        index = receiver[:, None].expand_as(messages)
        out = torch.zeros_like(x)
        if self.aggr == "max":
            return out.scatter_reduce(0, index, messages, reduce="amax", include_self=False)
        if self.aggr == "sum":
            return out.scatter_add(0, index, messages)
        return out.scatter_reduce(0, index, messages, reduce="mean", include_self=False)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.lin_rel(self.aggregate(x, edge_index)) + self.lin_root(x)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, aggr={self.aggr!r}, flow={self.flow!r}"


class NodeFeatureGNN(nn.Module):
    """The shared two-layer GNN of §3.6 (original ``GDPModel1``): 2 x (GraphConv + ReLU), dropout.

    Submodules are named ``conv1`` / ``conv2`` so the original
    ``message_pass_node_features.conv{1,2}.lin_rel.{weight,bias}`` and ``...lin_root.weight``
    tensors load when this module is stored under the attribute ``message_pass_node_features``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int | None = None,
        aggr: Literal["max", "mean", "sum"] = "max",
        flow: MessageFlow = "source_to_target",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        hidden_features = in_features if hidden_features is None else hidden_features
        self.conv1 = GraphConv(in_features, hidden_features, aggr=aggr, flow=flow)
        self.conv2 = GraphConv(hidden_features, hidden_features, aggr=aggr, flow=flow)
        self.dropout = nn.Dropout(p=dropout)

    @property
    def out_features(self) -> int:
        return self.conv2.out_features

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        x = F.relu(self.conv1(x, edge_index))
        x = F.relu(self.conv2(x, edge_index))
        return self.dropout(x)


def edge_features(x: Tensor, edge_index: Tensor) -> Tensor:
    """Edge feature ``x_i - x_j`` for each edge ``i -> j`` (BB-GM ``SiameseNodeFeaturesToEdgeFeatures``).

    Works on a leading batch dimension too: ``x`` ``[..., n, f]`` and ``edge_index`` ``[..., 2, E]``.
    """
    if x.dim() == 2:
        return x.index_select(0, edge_index[0]) - x.index_select(0, edge_index[1])
    source = edge_index[..., 0, :, None].expand(*edge_index.shape[:-2], edge_index.shape[-1], x.shape[-1])
    target = edge_index[..., 1, :, None].expand_as(source)
    return x.gather(-2, source) - x.gather(-2, target)
