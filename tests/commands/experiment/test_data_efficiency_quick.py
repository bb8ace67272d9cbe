"""Smoke test: ``exgramed experiment data-efficiency --quick`` runs every required cell of one block
and writes the output contract (< 2 min); ``--summarize-only`` rebuilds it without training.

No threshold on any outcome: the numbers of a few-step run say nothing, only that the pipeline works.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import last_summary

pytestmark = pytest.mark.slow
pytest.importorskip("easy_vqa")

CONTRACT_CELL_KEYS = {"block", "fraction", "arm", "finetune_data_sha256", "primary_score", "zero_shot_score"}


def test_quick_run_writes_the_output_contract(tmp_path):
    from exgramed_plugin.commands.experiment.data_efficiency import main
    from exgramed_plugin.commands.experiment.easy_vqa_data import file_sha256

    out = tmp_path / "quick"
    completed = subprocess.run([sys.executable, "-m", "exgramed_plugin.commands.cli", "experiment", "data-efficiency", "--quick",
                                "--jobs", "2", "--out", str(out), "--cache", str(tmp_path / "cache")],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    summary = last_summary(completed.stdout)
    assert summary["results"] == str(out / "results.json") and summary["primary"]["contrast"] == "mga-none@0.1"
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert {"epochs_per_fraction", "finetune_steps", "test_items", "plan_commit", "plan_sha256"} <= set(protocol)
    assert protocol["plan_commit"] is None and protocol["test_items"] == 97  # quick: one open item per (text, answer)
    cells = results["cells"]
    assert {(c["fraction"], c["arm"]) for c in cells} == {(0.1, "none"), (0.1, "mga"), (0.1, "lm-long"), (1.0, "none")}
    assert all(CONTRACT_CELL_KEYS <= set(c) for c in cells)
    downstream = file_sha256(out / "data" / "downstream_train.json")
    assert {c["finetune_data_sha256"] for c in cells} == {downstream}  # one byte-identical fine-tuning set
    assert len({c["pretrain_batches_sha256"] for c in cells if c["fraction"] == 0.1}) == 1  # same batches per arm
    steps = {c["fraction"]: c["pretrain"]["steps"] for c in cells}
    assert steps[0.1] < steps[1.0]  # same epochs: fewer steps for less data
    assert {c["finetune"]["steps"] for c in cells} == set(protocol["finetune_steps"])
    mga = next(c for c in cells if c["arm"] == "mga")
    assert mga["pretrain"]["align_loss_tail"] is not None  # the alignment loss trained in stage 2
    assert {"contrast", "mean", "ci95", "n_blocks", "verdict"} <= set(results["primary"])
    assert results["primary"]["n_blocks"] == 1 and results["primary"]["verdict"] == "inconclusive"
    assert isinstance(results["secondary"], list) and results["gate"] is None
    assert len(results["code"]) == 1 and len(results["code"][0].get("commit", "x" * 40)) == 40  # the commit it ran on
    table = (out / "table.md").read_text()
    for arm in ("none", "mga", "lm-long"):
        assert f"| 10 % | {arm} |" in table
    assert (out / "accuracy_vs_fraction.png").stat().st_size > 0

    (out / "table.md").unlink()
    assert main(["data-efficiency", "--summarize-only", "--out", str(out)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["cells"] == cells and again["primary"] == results["primary"] and (out / "table.md").is_file()
