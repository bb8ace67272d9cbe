"""Bad input to ``exgramed experiment data-efficiency`` is refused with a message naming the option
or file, before anything trains; a failed cell stops the run with its log."""

from __future__ import annotations

import json

import pytest

from exgramed_plugin.commands.experiment.cell import CellSpec
from exgramed_plugin.commands.experiment.data_efficiency import CellFailed, main, run_cells
from exgramed_plugin.commands.experiment.preregistration import PLACEHOLDER
from plan_helpers import commit, plan_text, repo  # noqa: F401  (the git fixture)

PASSED_GATE = {"passed": True, "budgets_tried": [{"budget": {}, "passed": True, "gap": 10.0, "paired_sd": 1.0,
                                                  "n_blocks": 4}]}
PLAN = {"primary": "mga-none@0.1", "endpoint": "primary_score", "delta": 3.0, "blocks": 12,
        "cells": {"0.1": ["none", "mga", "lm-long"], "1.0": ["none"]}, "secondary": ["mga-lm-long@0.1"],
        "secondary_endpoints": ["zero_shot_score"], "budget": {}, "gate": PASSED_GATE}


def refused(capsys, argv: list[str], *needles: str) -> str:
    assert main(["data-efficiency", *argv]) == 2
    message = capsys.readouterr().err
    for needle in needles:
        assert needle in message, message
    return message


def plan_file(repo, settings) -> str:  # noqa: F811
    path = repo / "docs" / "experiments.md"
    commit(repo, path, "# Experiments\n\n" + plan_text(settings), "plan")
    return str(path)


def test_fractions_must_be_nested_prefixes(capsys, tmp_path):
    for fractions in (["0.4", "0.1", "1.0"], ["0.1", "0.4"], ["0.1", "1.5"], ["0.1", "0.1", "1.0"]):
        refused(capsys, ["--quick", "--out", str(tmp_path), "--fractions", *fractions], "--fractions", "nested")


def test_the_grid_needs_a_finished_committed_plan(capsys, repo, tmp_path):  # noqa: F811
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan_file(repo, {**PLAN, "blocks": PLACEHOLDER})],
            "--plan", PLACEHOLDER)
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan_file(repo, {**PLAN, "blocks": 6})],
            "needs >= 12")
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan_file(repo, {**PLAN, "cells": {"0.1": ["none"]}})],
            "lacks the required cells", "mga@0.1")
    failed_gate = {"passed": False, "budgets_tried": [{**PASSED_GATE["budgets_tried"][0], "passed": False}]}
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan_file(repo, {**PLAN, "gate": failed_gate})],
            "gate did not pass")
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan_file(repo, {**PLAN, "budget": {"pool_images": 200}})],
            "not the one that passed the gate")
    plan = plan_file(repo, PLAN)
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan, "--blocks", "8"], "--blocks 8", "fewer blocks")
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan, "--pretrain-epochs", "9"], "--pretrain-epochs",
            "budget from the plan")
    refused(capsys, ["--out", str(tmp_path / "o"), "--plan", plan, "--fractions", "0.4", "1.0"], "--fractions")
    assert not (tmp_path / "o").exists()  # nothing was prepared


def test_options_of_another_mode_are_refused(capsys, tmp_path):
    refused(capsys, ["--quick", "--out", str(tmp_path), "--blocks", "3"], "--blocks: applies to the grid only")
    refused(capsys, ["--quick", "--out", str(tmp_path), "--model", "x"], "--model: applies to --score-cell only")
    refused(capsys, ["--out", str(tmp_path), "--delta", "2"], "--delta: applies to --plan-numbers only")
    refused(capsys, ["--gate", "--out", str(tmp_path), "--fractions", "0.5", "1.0"], "--fractions: applies to")
    refused(capsys, ["--plan-numbers", "--out", str(tmp_path), "--delta", "0"], "--delta 0")


def test_an_output_folder_of_another_protocol_is_refused(capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "protocol.json").write_text(json.dumps({"kind": "grid", "blocks": list(range(12))}))
    refused(capsys, ["--quick", "--out", str(out), "--cache", str(tmp_path / "cache")], f"--out {out}",
            "another protocol")


def test_the_gate_stops_after_three_budgets_or_a_pass(capsys, tmp_path):
    out = tmp_path / "gate"
    out.mkdir()
    entry = {"budget": {"pretrain_epochs": 9}, "passed": False}
    (out / "gate.json").write_text(json.dumps({"budgets_tried": [entry]}))
    refused(capsys, ["--gate", "--out", str(out), "--pretrain-epochs", "9"], "tried already")
    (out / "gate.json").write_text(json.dumps({"budgets_tried": [entry] * 3}))
    refused(capsys, ["--gate", "--out", str(out)], "3 budgets were tried and none passed")
    (out / "gate.json").write_text(json.dumps({"budgets_tried": [{**entry, "passed": True}]}))
    refused(capsys, ["--gate", "--out", str(out), "--finetune-epochs", "1"], "already passed")
    refused(capsys, ["--plan-numbers", "--out", str(tmp_path / "none")], "no gate.json")
    refused(capsys, ["--gate", "--out", str(out), "--pilot-blocks", "1"], "--pilot-blocks 1")


def test_summarize_only_needs_every_cell(capsys, tmp_path):
    refused(capsys, ["--summarize-only", "--out", str(tmp_path)], "no protocol.json")
    (tmp_path / "protocol.json").write_text(json.dumps({"kind": "quick", "blocks": [0], "cells": {"0.1": ["none"]}}))
    refused(capsys, ["--summarize-only", "--out", str(tmp_path)], "no finished cell", "(0, 0.1, 'none')")


def test_a_failed_cell_stops_the_run_with_its_log(tmp_path):
    def spec(name: str) -> CellSpec:
        missing = str(tmp_path / "missing")
        return CellSpec(0, 0.1, "none", missing, missing, missing, missing, missing, missing, missing, missing,
                        str(tmp_path / "cells" / name), {})

    with pytest.raises(CellFailed) as failure:
        run_cells([spec("first"), spec("second")], jobs=1)
    assert str(tmp_path / "cells" / "first.log") in str(failure.value) and "Traceback" in str(failure.value)
    assert not (tmp_path / "cells" / "second.log").exists()  # no cell starts after a failure
