"""Multi-graph alignment (MGA) core of ExGra-Med: kNN graphs, graph layers, graph-matching
solvers and black-box gradients. Needs only torch, scipy and (for the ``"fgw"`` solver) POT;
never imports swift or transformers.
"""

from .blackbox import BlackboxMatching, blackbox_matching
from .costs import edge_costs, gumbel_noise
from .graphs import GraphConv, NodeFeatureGNN, edge_features, knn_graph
from .losses import (
    PROBLEM_NAMES,
    MultiGraphAlignment,
    MultiGraphAlignmentOutput,
    hamming_loss,
)
from .solvers import (
    DEFAULT_SOLVER,
    SOLVERS,
    GraphMatchingProblem,
    edge_pair_indicator,
    matching_objective,
    prepare_problem,
    register_solver,
    solve_graph_matching,
    solve_prepared,
)
from .split import ProblemSplit

__all__ = [
    "BlackboxMatching",
    "blackbox_matching",
    "edge_costs",
    "GraphConv",
    "NodeFeatureGNN",
    "edge_features",
    "knn_graph",
    "PROBLEM_NAMES",
    "MultiGraphAlignment",
    "MultiGraphAlignmentOutput",
    "gumbel_noise",
    "hamming_loss",
    "DEFAULT_SOLVER",
    "SOLVERS",
    "GraphMatchingProblem",
    "edge_pair_indicator",
    "matching_objective",
    "prepare_problem",
    "register_solver",
    "solve_graph_matching",
    "solve_prepared",
    "ProblemSplit",
]
