"""A fixed, seeded set of graph-matching problems and the matchings commit 89ccc2b's solvers gave them.

The costs are built from ``torch.rand`` by exact arithmetic only (no BLAS, no transcendental
functions), so every machine builds the same float32 costs, the dtype the MGA gives the solver.
``planted`` problems hide a matching in the costs (IPFP and the local search then move a lot);
``random`` ones have the MGA's cost ranges; ``perturbed`` ones add the black-box backward's
``lambda * dL/dx`` to a planted problem's unary costs.

Regenerate the fixture with the old code (only if the problem set changes)::

    mkdir -p /tmp/old && git archive 89ccc2b exgramed_plugin | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old python tests/alignment/fixed_problems.py tests/alignment/data/matchings_89ccc2b.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

FIXTURE = Path(__file__).parent / "data" / "matchings_89ccc2b.json"
K = 5
# (family, n, solver, options): "auto" with search 0 is what the MGA step runs
CASES = [
    *((family, n, "auto", {"search": 0}) for family in ("planted", "random", "perturbed") for n in (8, 30, 64, 150)),
    *((family, n, "ipfp", {}) for family in ("planted", "random") for n in (12, 64)),
    ("planted", 12, "auto", {}),
    ("random", 8, "bnb", {}),
    ("planted", 10, "tabu", {"iterations": 200, "patience": 60}),
    ("random", 10, "ils", {"rounds": 4, "parallel": 4}),
    ("planted", 30, "lap", {}),
]


def case_name(family: str, n: int, solver: str, options: dict) -> str:
    return f"{family}-{n}-{solver}-" + ",".join(f"{key}={value}" for key, value in sorted(options.items()))


def _knn_like_edges(n: int, generator: torch.Generator) -> torch.Tensor:
    """``[2, n K]``: every node to K distinct other nodes, grouped by source (a kNN graph's shape)."""
    targets = []
    for node in range(n):
        others = torch.randperm(n - 1, generator=generator)[:min(K, n - 1)]
        targets.append(others + (others >= node).long())
    target = torch.cat(targets)
    return torch.stack([torch.arange(n).repeat_interleave(len(targets[0])), target])


def problems(family: str, n: int, seed: int = 0, batch: int = 6):
    """``(unary [b, n, n], quadratic [b, E, E], edges_a, edges_b)``, float32 costs."""
    generator = torch.Generator().manual_seed(hash_seed(family, n, seed))
    unary, quadratic, edges_a, edges_b = [], [], [], []
    for _ in range(batch):
        ea = _knn_like_edges(n, generator)
        if family == "random":
            eb = _knn_like_edges(n, generator)
            u = torch.rand(n, n, generator=generator) - 0.6
            q = 0.75 - torch.rand(ea.shape[1], eb.shape[1], generator=generator)
        else:  # planted: B is A relabelled by a hidden permutation, edges shuffled
            hidden = torch.randperm(n, generator=generator)
            eb = hidden[ea][:, torch.randperm(ea.shape[1], generator=generator)]
            u = torch.rand(n, n, generator=generator) - 0.55
            u[torch.arange(n), hidden] -= 0.25
            q = 0.75 - torch.rand(ea.shape[1], eb.shape[1], generator=generator)
            image = torch.stack([hidden[ea[0]], hidden[ea[1]]])
            same = (image[:, :, None] == eb[:, None, :]).all(dim=0)
            q[same] -= 0.5
            if family == "perturbed":  # lambda * d(Hamming)/dx of the MGA loss, one of six problems
                u = u + 80.0 * (1.0 - 2.0 * torch.eye(n)) / (6 * n)
        unary.append(u.float())
        quadratic.append(q.float())
        edges_a.append(ea)
        edges_b.append(eb)
    return torch.stack(unary), torch.stack(quadratic), torch.stack(edges_a), torch.stack(edges_b)


def hash_seed(family: str, n: int, seed: int) -> int:
    return seed * 1_000 + n * 10 + ("planted", "random", "perturbed").index(family)


def solve_all() -> dict[str, list[list[int]]]:
    """Every case's assignments ``[b, n]`` (column per row, -1 unassigned) by the importable solver."""
    from exgramed_plugin.alignment import solve_graph_matching
    answers = {}
    for family, n, solver, options in CASES:
        matching = solve_graph_matching(*problems(family, n), solver=solver, **options)
        value, column = matching.max(dim=-1)
        answers[case_name(family, n, solver, options)] = torch.where(value > 0.5, column, -1).tolist()
    return answers


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(solve_all()) + "\n")
    print(f"wrote {len(CASES)} cases to {target}")
