"""Smoke test: ``exgramed experiment data-efficiency --quick`` completes and fills every table cell (< 2 min).

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


def test_quick_run_completes(tmp_path):
    out = tmp_path / "quick"
    completed = subprocess.run([sys.executable, "-m", "exgramed_plugin.cli", "experiment", "data-efficiency",
                                "--quick", "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert last_summary(completed.stdout)["results"] == str(out / "results.json")
    results = json.loads((out / "results.json").read_text())
    assert results["partial"] is False
    assert len(results["cells"]) == 4
    for metric_set in ("original", "strict"):
        arms = results["summary"][metric_set]["0.1"]
        assert set(arms) == {"none", "infonce", "siglip", "mga"}
        for arm in arms.values():
            for metric in ("open_recall", "closed_accuracy", "average"):
                assert arm[metric]["n"] == 1
    table = (out / "table.md").read_text()
    for arm in ("none", "infonce", "siglip", "mga", "question-only prior"):
        assert f"| 10 % | {arm} |" in table
    for arm in ("infonce", "siglip", "mga"):
        assert f"| 10 % | {arm} − none |" in table
        assert results["summary"]["original"]["0.1"][arm]["paired_vs_none"]["average"]["n"] == 1
        assert results["summary"]["original"]["0.1"][arm]["alignment_accuracy"]["n"] == 1  # logged in stage 2
    # the bed: a small tokenizer, a stage-0 tower, a balanced test set with a chance-level prior
    assert results["tokenizer_size"] < 2000
    assert set(results["stage0"]["linear_probe"]) == {"shape", "colour"}
    assert results["data"]["test_set"] == "balanced"
    assert results["question_only_baseline"]["0.1"]["original"]["closed_accuracy"] == 50.0
    assert all(cell["image_dependence"] is not None for cell in results["cells"])
    assert set(results["question_only_baseline"]) == {"0.1"}
    assert (out / "accuracy_vs_fraction.png").stat().st_size > 0

    # --summarize-only trains nothing and rebuilds the same table from the finished cells
    (out / "table.md").unlink()
    cell_files = {path: path.stat().st_mtime_ns for path in (out / "cells").glob("*.result.json")}
    completed = subprocess.run([sys.executable, "-m", "exgramed_plugin.cli", "experiment", "data-efficiency",
                                "--quick", "--summarize-only", "--out", str(out)], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (out / "table.md").read_text() == table
    assert len(cell_files) == 4
    assert {path: path.stat().st_mtime_ns for path in (out / "cells").glob("*.result.json")} == cell_files
