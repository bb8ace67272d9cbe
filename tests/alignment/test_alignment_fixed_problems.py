"""The solvers give commit 89ccc2b's matchings on a fixed problem set (``fixed_problems.py``, which
also made the fixture with that commit's code), whether the quadratic costs come as float32 (as the
MGA gives them, kept as they are) or float64, and whether a batch is solved at once or in parts."""

import json

import pytest
import torch

from exgramed_plugin.alignment import solve_graph_matching, solvers
from fixed_problems import CASES, FIXTURE, case_name, problems

OLD = json.loads(FIXTURE.read_text())


def _assignments(matching):
    value, column = matching.max(dim=-1)
    return torch.where(value > 0.5, column, -1).tolist()


@pytest.mark.parametrize("family,n,solver,options", CASES, ids=[case_name(*case) for case in CASES])
def test_matchings_are_those_of_the_old_code(family, n, solver, options):
    found = solve_graph_matching(*problems(family, n), solver=solver, **options)
    assert _assignments(found) == OLD[case_name(family, n, solver, options)]


@pytest.mark.parametrize("family,n,solver,options", [case for case in CASES if case[1] <= 64 and case[2] != "lap"])
def test_float64_costs_of_the_same_values_give_the_same_matchings(family, n, solver, options):
    unary, quadratic, edges_a, edges_b = problems(family, n)
    found = solve_graph_matching(unary, quadratic.double(), edges_a, edges_b, solver=solver, **options)
    assert _assignments(found) == OLD[case_name(family, n, solver, options)]


@pytest.mark.parametrize("family", ["planted", "random", "perturbed"])
def test_a_batch_solved_in_parts_gives_the_same_matchings(family, monkeypatch):
    n, options = 150, {"search": 0}
    monkeypatch.setattr(solvers, "BATCH_ENTRIES", 2 * n * n)  # three parts of two problems
    found = solve_graph_matching(*problems(family, n), solver="auto", **options)
    assert _assignments(found) == OLD[case_name(family, n, "auto", options)]
