"""Hamming loss and the multi-graph alignment (MGA) loss module (docs/method.md §3.2-§3.12)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blackbox import LossScale, blackbox_matching
from .costs import edge_costs, gumbel_noise
from .graphs import NodeFeatureGNN, edge_features, knn_graph
from .solvers import DEFAULT_SOLVER, SOLVERS
from .split import ProblemSplit

__all__ = [
    "hamming_loss",
    "MultiGraphAlignment",
    "MultiGraphAlignmentOutput",
    "PROBLEM_NAMES",
]

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text", "extended")
# the six H(A -> C) calls of §3.4, in the original order: (X -> bary, bary -> X) for each X
PROBLEM_NAMES = tuple(name for m in MODALITIES for name in (f"{m}_to_bary", f"bary_to_{m}"))


def hamming_loss(matching: Tensor, target: Tensor | None = None) -> Tensor:
    """``sum(x (1 - t) + (1 - x) t) / n`` per problem (§3.11): wrong entries over the row count.

    ``matching`` ``[..., n, m]``; ``target`` defaults to the identity (sample i <-> sample i).
    A fully wrong permutation gives 2, an empty matching 1.
    """
    if target is None:
        target = torch.eye(matching.shape[-2], matching.shape[-1], dtype=matching.dtype, device=matching.device)
    target = target.to(matching.dtype)
    errors = matching * (1.0 - target) + (1.0 - matching) * target
    return errors.mean(dim=-2).sum(dim=-1)


@dataclass
class MultiGraphAlignmentOutput:
    """Result of one MGA forward.

    ``loss``: the §3.4 average of the six Hamming terms (a 0-d tensor with a gradient path).
    ``hamming``: the six terms, keyed by :data:`PROBLEM_NAMES` (detached 0-d tensors).
    ``matching_accuracy``: fraction of nodes matched to their own sample, over all six problems.
    ``skipped_reason``: set when no matching was computed (batch of one); terms are then NaN.
    """

    loss: Tensor
    hamming: dict[str, Tensor]
    matching_accuracy: Tensor
    num_nodes: int
    matchings: Tensor | None = None  # [6, B, B], detached, in PROBLEM_NAMES order
    skipped_reason: str | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)


MessageFlowName = Literal["original", "standard"]
_FLOWS = {"original": "source_to_target", "standard": "target_to_source"}



def skipped_output(nodes: dict[str, Tensor], weights: Iterable[Tensor], reason: str, *,
                   hamming_names: Sequence[str] = ()) -> MultiGraphAlignmentOutput:
    """The output of a step whose batch is too small for the loss: zero, with a gradient path
    (NaN when a node is not finite, as any loss of such inputs).

    Every input node and weight gets a (zero) gradient, so DDP / ZeRO see the same parameters used
    on every rank whether or not that rank skipped.
    """
    logger.debug("alignment loss skipped: %s", reason)
    anchor = sum(z.sum() for z in nodes.values()) + sum(w.sum() for w in weights)
    loss = (anchor * 0.0).float()
    nan = torch.full((), float("nan"), device=loss.device)
    return MultiGraphAlignmentOutput(loss=loss, hamming={name: nan for name in hamming_names},
                                     matching_accuracy=nan, num_nodes=next(iter(nodes.values())).shape[0],
                                     skipped_reason=reason)

class MultiGraphAlignment(nn.Module):
    """The MGA loss: three kNN graphs aligned to their barycenter by black-box graph matching.

    Defaults follow the original where results depend on it: k=5 Euclidean kNN on the first
    graph, structure copied to the second; shared 2 x GraphConv(max) + ReLU + dropout 0.1 with
    the original ("reverse kNN") message flow; costs ``0.5 - cos - G`` and
    ``0.25 - 0.5 edge_sim - 0.5 H`` with Gumbel(0, 0.05) noise, G shared by the six problems and
    H fresh per problem; λ = 80. Deviations by design: noise from a torch generator, the six
    problems solved as one batch, a pure-Python solver instead of LPMP, and (unless
    ``fidelity=True``) a loss-scale-aware backward.

    Args:
        in_features: node feature size (4096 for LLaMA-7B).
        hidden_features: GNN width (default ``in_features``, as the original).
        k: neighbours per node.
        lambda_val: black-box interpolation strength.
        gumbel_scale: scale of the perturb-and-MAP noise.
        solver: a key of :data:`SOLVERS`.
        solver_search: tabu iterations per node of ``"auto"`` on problems above 10 x 10
            (default 0: the IPFP answer, which fits the step's ~2 ms per solve; the search costs
            ~50x that). Only with ``solver="auto"``.
        message_flow: ``"original"`` (a node hears the nodes that picked it as a neighbour) or
            ``"standard"`` (a node hears its own k nearest neighbours).
        fidelity: mimic the original's loss-scale-unaware black-box backward.
        use_message_passing: ``False`` skips the GNN (the paper's "w/o message passing" ablation).
        dropout: dropout after the GNN.
        seed: seed of the default noise generator, used when ``forward`` gets none.
    """

    def __init__(
        self,
        in_features: int = 4096,
        hidden_features: int | None = None,
        k: int = 5,
        lambda_val: float = 80.0,
        gumbel_scale: float = 0.05,
        solver: str = DEFAULT_SOLVER,
        solver_search: int = 0,
        message_flow: MessageFlowName = "original",
        fidelity: bool = False,
        use_message_passing: bool = True,
        dropout: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {sorted(SOLVERS)}")
        if solver_search < 0 or (solver_search and solver != "auto"):
            raise ValueError(f"solver_search must be >= 0 and needs solver='auto', got {solver_search} with {solver!r}")
        if message_flow not in _FLOWS:
            raise ValueError(f"message_flow must be one of {sorted(_FLOWS)}, got {message_flow!r}")
        if k < 1 or lambda_val <= 0 or gumbel_scale < 0:
            raise ValueError("need k >= 1, lambda_val > 0 and gumbel_scale >= 0")
        self.in_features = in_features
        self.k = k
        self.lambda_val = lambda_val
        self.gumbel_scale = gumbel_scale
        self.solver = solver
        self.solver_search = solver_search
        self.message_flow = message_flow
        self.fidelity = fidelity
        self.use_message_passing = use_message_passing
        self.seed = seed
        self.gnn = NodeFeatureGNN(
            in_features, hidden_features, aggr="max", flow=_FLOWS[message_flow], dropout=dropout
        )
        self._default_generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, lambda_val={self.lambda_val}, gumbel_scale={self.gumbel_scale}, solver={self.solver!r}, "
            f"solver_search={self.solver_search}, "
            f"message_flow={self.message_flow!r}, fidelity={self.fidelity}, use_message_passing={self.use_message_passing}"
        )

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return generator
        if self._default_generator is None:
            self._default_generator = torch.Generator().manual_seed(self.seed)
        return self._default_generator

    def _check_inputs(self, nodes: dict[str, Tensor]) -> None:
        shapes = {name: tuple(z.shape) for name, z in nodes.items()}
        if len(set(shapes.values())) != 1 or any(len(s) != 2 for s in shapes.values()):
            raise ValueError(f"MultiGraphAlignment expects three [B, d] tensors of equal shape, got {shapes}")
        if shapes["image"][1] != self.in_features:
            raise ValueError(f"node features have size {shapes['image'][1]}, the module expects {self.in_features}")

    @staticmethod
    def _non_finite(nodes: dict[str, Tensor]) -> str | None:
        """Which node set holds NaN or infinity (None when all are finite)."""
        for name, z in nodes.items():
            if not bool(torch.isfinite(z).all()):
                return f"the {name} node features contain NaN or infinity"
        return None

    def _skip(self, nodes: dict[str, Tensor], reason: str) -> MultiGraphAlignmentOutput:
        weights: list[Tensor] = []
        if self.use_message_passing:
            # the graph network is called as in a step that aligns (once, here without edges): ZeRO-3
            # gathers its weights in each call, and every rank must make the same calls
            features = torch.cat(list(nodes.values())).to(self.gnn.conv1.lin_rel.weight.dtype)
            no_edges = torch.empty(2, 0, dtype=torch.long, device=features.device)
            weights = [self.gnn(features, no_edges), *self.gnn.parameters()]
        return skipped_output(nodes, weights, reason, hamming_names=PROBLEM_NAMES)

    def forward(
        self,
        z_image: Tensor,
        z_text: Tensor,
        z_extended: Tensor,
        generator: torch.Generator | None = None,
        loss_scale: LossScale = None,
        split: ProblemSplit | None = None,
    ) -> MultiGraphAlignmentOutput:
        """MGA loss of one batch of node features ``[B, d]`` per modality.

        ``generator`` supplies the Gumbel noise (a seeded module-owned one when ``None``);
        ``loss_scale`` is the AMP loss scale the backward will see (see :func:`blackbox_matching`).
        ``split``: processes that all pass the same nodes and the same generator state (the global
        graph) each solve a block of the six problems and share the answers; the loss and the gradient
        are those of the whole batch, as without the split.
        """
        nodes = {"image": z_image, "text": z_text, "extended": z_extended}
        self._check_inputs(nodes)
        non_finite = self._non_finite(nodes)
        if non_finite:  # a NaN loss (no matching): the trainer's guard names the step, an fp16 scaler skips it
            return self._skip(nodes, non_finite)
        num_nodes = z_image.shape[0]
        if num_nodes < 2:
            return self._skip(nodes, f"batch of {num_nodes} sample: a graph needs at least 2 nodes")

        weight = self.gnn.conv1.lin_rel.weight
        feature_dtype = weight.dtype if self.use_message_passing else torch.float32
        modalities = [z.to(feature_dtype) for z in (z_image, z_text, z_extended)]
        barycenter = (modalities[0] + modalities[1] + modalities[2]) / 3.0  # not detached, as the original
        bary_edges = knn_graph(barycenter, self.k)
        sources, targets, edges = [], [], []
        for z in modalities:
            own_edges = knn_graph(z, self.k)
            # H(X -> bary) uses X's kNN graph for both graphs; H(bary -> X) the barycenter's
            sources += [z, barycenter]
            targets += [barycenter, z]
            edges += [own_edges, bary_edges]
        edges = torch.stack(edges)  # [6, 2, E]: every graph has min(k, B-1) edges per node
        num_problems, num_edges = edges.shape[0], edges.shape[2]

        # all 12 graphs through the shared GNN as one disjoint union: [6, 2, B, d]
        features = torch.stack([torch.stack(sources), torch.stack(targets)], dim=1)
        if self.use_message_passing:
            offsets = torch.arange(2 * num_problems, device=edges.device).view(num_problems, 2, 1, 1) * num_nodes
            union_edges = (edges[:, None] + offsets).permute(2, 0, 1, 3).reshape(2, -1)
            hidden = self.gnn(features.reshape(-1, features.shape[-1]), union_edges)
            features = hidden.view(num_problems, 2, num_nodes, -1)
        # The costs in float32 whatever autocast is on (the graph network may run in bf16 / fp16): a
        # low-precision affinity matmul changed the costs by ~1e-2 under bf16 (gpu_acceptance.py checks it).
        with torch.autocast(features.device.type, enabled=False):
            features = features.float()
            edge_feats = edge_features(features.reshape(2 * num_problems, num_nodes, -1),
                                       edges.repeat_interleave(2, 0))
            edge_feats = F.normalize(edge_feats.view(num_problems, 2, num_edges, -1), p=2, dim=-1)
            features = F.normalize(features, p=2, dim=-1)
            node_affinity = features[:, 0] @ features[:, 1].transpose(1, 2)  # [6, B, B] cosine

            gen = self._generator(generator)
            node_noise = gumbel_noise((num_nodes, num_nodes), self.gumbel_scale, gen).to(node_affinity.device,
                                                                                           torch.float32)
            unary = 0.5 - node_affinity - node_noise  # = -(S + G - 0.5)
            # = -0.5 (T + H - 0.5) [6, E, E], float32 on the CPU; with a split, only this process's problems
            solved = None if split is None else split.owned(num_problems)
            quadratic = edge_costs(edge_feats[:, 0], edge_feats[:, 1], self.gumbel_scale, gen, solved)

        matchings = blackbox_matching(
            unary,
            quadratic,
            edges,
            edges,
            solver=self.solver,
            solver_options={"search": self.solver_search} if self.solver == "auto" else None,
            lambda_val=self.lambda_val,
            loss_scale=loss_scale,
            fidelity=self.fidelity,
            split=split,
            sparse_quadratic_grad=True,  # edge_costs takes it: no dense [6, E, E] gradient
        )
        terms = hamming_loss(matchings)  # [6]
        loss = terms.mean()  # = mean over modalities of (H(X -> bary) + H(bary -> X)) / 2
        detached = matchings.detach()
        accuracy = detached.diagonal(dim1=1, dim2=2).sum() / (num_problems * num_nodes)
        return MultiGraphAlignmentOutput(
            loss=loss,
            hamming={name: terms[i].detach() for i, name in enumerate(PROBLEM_NAMES)},
            matching_accuracy=accuracy,
            num_nodes=num_nodes,
            matchings=detached,
        )
