"""The same preregistered design run by a GPU user (docs/experiments.md), smoke-tested on the tiny
model: ``--score-cell`` turns each cell's checkpoint into a cell of ``--out`` through the one
likelihood scorer, ``--summarize-only`` gives the analysis; pre-training files that are not nested
and cells outside the plan are refused."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DATA_TEMPLATES, last_summary
from exgramed_plugin.commands.experiment.data_efficiency import main
from plan_helpers import commit, plan_text, repo  # noqa: F401  (the git fixture)

pytestmark = pytest.mark.slow

PLAN = {"primary": "mga-none@0.1", "endpoint": "primary_score", "delta": 3.0, "blocks": 2,
        "cells": {"0.1": ["none", "mga"], "1.0": ["none"]}, "secondary": ["mga@0.1-none@1.0"],
        "secondary_endpoints": ["zero_shot_score"]}


def _subset(path, ids):
    rows = json.loads((DATA_TEMPLATES / "llava_med_instruct.json").read_text())
    path.write_text(json.dumps([row for row in rows if row["id"] in ids]))
    return str(path)


def test_gpu_users_cells_scored_and_analysed(repo, tmp_path, tiny_checkpoint, registered, capsys):  # noqa: F811
    plan = repo / "docs" / "experiments.md"
    commit(repo, plan, plan_text(PLAN), "plan")
    data = tmp_path / "data"
    shutil.copytree(DATA_TEMPLATES, data)
    out = tmp_path / "cells"
    common = ["data-efficiency", "--score-cell", "--out", str(out), "--plan", str(plan),
              "--model", str(tiny_checkpoint), "--test", str(data / "vqa.json"),
              "--candidates", str(data / "candidate.json"), "--finetune-data", str(data / "vqa.json")]
    small, large = _subset(tmp_path / "p10.json", {"instruct-0001"}), _subset(tmp_path / "p100.json",
                                                                               {"instruct-0001", "instruct-0002"})
    for block in (0, 1):
        for fraction, arm, pretrain in (("0.1", "none", small), ("0.1", "mga", small), ("1.0", "none", large)):
            extra = ["--zero-shot-model", str(tiny_checkpoint)] if (block, arm) == (0, "mga") else []
            assert main([*common, "--block", str(block), "--fraction", fraction, "--arm", arm,
                         "--pretrain-data", pretrain, *extra]) == 0
    cell = json.loads((out / "cells" / "block0000_frac010_mga.result.json").read_text())
    assert cell["test_items"] == {"open": 2, "closed": 2} and cell["zero_shot_score"] == cell["primary_score"]
    assert 0 <= cell["primary_score"] <= 100 and cell["finetune_data_sha256"]

    capsys.readouterr()
    assert main(["data-efficiency", "--summarize-only", "--out", str(out)]) == 0
    summary = last_summary(capsys.readouterr().out)
    # one checkpoint scored as every arm: the differences are 0, inside ±Δ
    assert summary["primary"]["n_blocks"] == 2 and summary["primary"]["mean"] == 0.0
    assert summary["primary"]["verdict"] == "no effect as large as Δ"
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["plan_sha256"] and results["protocol"]["kind"] == "external"

    not_nested = _subset(tmp_path / "other.json", {"instruct-0003"})
    assert main([*common, "--block", "0", "--fraction", "1.0", "--arm", "none", "--pretrain-data", not_nested]) == 2
    assert "--pretrain-data" in capsys.readouterr().err
    assert main([*common, "--block", "0", "--fraction", "1.0", "--arm", "mga"]) == 2
    assert "not a cell of the plan" in capsys.readouterr().err
    assert main([*common, "--block", "5", "--fraction", "1.0", "--arm", "none"]) == 2
    assert "--block 5" in capsys.readouterr().err
