"""The preregistered plan: its section, sha256 and commit, recomputed from git; refusals of an
unfinished, uncommitted or edited plan; the repository's own plan and committed results."""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import REPO_ROOT
from exgramed_plugin.commands.experiment.preregistration import (BEGIN, END, PLACEHOLDER, PlanError, committed_plan,
                                                        plan_section, plan_settings, section_at)
from plan_helpers import commit, plan_text, repo  # noqa: F401  (the git fixture)

RESULTS = REPO_ROOT / "benchmarks" / "results" / "data_efficiency" / "results.json"
PLAN_FILE = REPO_ROOT / "docs" / "experiments.md"


def test_plan_sha256_and_commit_from_git(repo):  # noqa: F811
    docs = repo / "docs" / "experiments.md"
    commit(repo, docs, "# Experiments\n", "start")
    section = plan_text({"blocks": 12, "delta": 3.0})
    plan_commit = commit(repo, docs, "# Experiments\n\n" + section + "\nafter the plan\n", "plan")
    later = commit(repo, docs, "# Experiments, retitled\n\n" + section + "\nresults: a sentence\n", "results")
    plan = committed_plan(docs)
    assert plan.sha256 == hashlib.sha256(section.rstrip("\n").encode()).hexdigest()  # markers included
    assert plan.commit == plan_commit != later  # the commit that made the plan, not the last one
    assert plan.settings == {"blocks": 12, "delta": 3.0}
    assert section_at(docs, plan_commit) == section.rstrip("\n")


def test_unfinished_uncommitted_or_edited_plans_are_refused(repo):  # noqa: F811
    docs = repo / "experiments.md"
    with pytest.raises(PlanError, match="no such plan file"):
        committed_plan(docs)
    commit(repo, docs, "no plan here\n", "start")
    with pytest.raises(PlanError, match="no preregistered plan"):
        committed_plan(docs)
    commit(repo, docs, plan_text({"blocks": PLACEHOLDER}), "template")
    with pytest.raises(PlanError, match=PLACEHOLDER):
        committed_plan(docs)
    docs.write_text(plan_text({"blocks": 12}))
    with pytest.raises(PlanError, match="differs from the committed one"):
        committed_plan(docs)
    commit(repo, docs, plan_text({"blocks": 12}) + plan_text({"blocks": 13}).replace("```json", "```text"), "ok")
    assert committed_plan(docs).settings == {"blocks": 12}
    with pytest.raises(PlanError, match="exactly one"):
        plan_settings(f"{BEGIN}\nno json\n{END}")


def test_the_repository_plan_section_parses():
    section = plan_section(PLAN_FILE.read_text(encoding="utf-8"), str(PLAN_FILE))
    settings = plan_settings(section)
    assert settings["primary"] == "mga-none@0.1" and settings["endpoint"] == "primary_score"
    assert set(settings["cells"]["0.1"]) >= {"none", "mga", "lm-long"} and "none" in settings["cells"]["1.0"]


def test_committed_results_record_the_committed_plan():
    """Once the grid's results are committed, they name the plan's commit and sha256, and the plan
    was not edited since."""
    if not RESULTS.is_file():
        pytest.skip("the preregistered grid has not run yet (benchmarks/results/data_efficiency/results.json)")
    protocol = json.loads(RESULTS.read_text())["protocol"]
    at_commit = section_at(PLAN_FILE, protocol["plan_commit"])
    assert at_commit is not None
    assert hashlib.sha256(at_commit.encode()).hexdigest() == protocol["plan_sha256"]
    now = plan_section(PLAN_FILE.read_text(encoding="utf-8"))
    assert hashlib.sha256(now.encode()).hexdigest() == protocol["plan_sha256"]
