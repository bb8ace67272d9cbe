"""`exgramed reproduce`: local data layout + tiny checkpoint, predict, score, compare with the paper's number."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import last_summary

LIMIT = 8
MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """``<root>/VQA-RAD/test_w_options_new.json`` + images, as `exgramed download` lays VQA-RAD out."""
    from exgramed_plugin.data.demo_data import make_demo_data
    root = tmp_path_factory.mktemp("data")
    make_demo_data(root / "VQA-RAD", image_size=56)
    return root


def _args(checkpoint, data_root, out, *extra):
    return ["vqa_rad", "--checkpoint", str(checkpoint), "--data-root", str(data_root), "--out", str(out),
            "--limit", str(LIMIT), "--max-new-tokens", str(MAX_NEW_TOKENS), "--dtype", "float32", *extra]


def test_reproduce_runs_end_to_end_and_compares_with_the_paper(tiny_checkpoint, data_root, tmp_path, capsys,
                                                               monkeypatch):
    from exgramed_plugin.eval import eval_vqa, predict
    from exgramed_plugin.commands import reproduce
    out = tmp_path / "run"
    assert reproduce.main(_args(tiny_checkpoint, data_root, out, "--compare-to", "exgra-med-dci-vqa-rad")) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "reproduce.json").read_text())
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    questions = json.loads((data_root / "VQA-RAD" / "test_w_options_new.json").read_text())
    assert [a["question_id"] for a in answers] == [q["id"] for q in questions[:LIMIT]]
    assert all(a["metadata"] == {} and a["model_id"] == str(tiny_checkpoint) for a in answers)  # original prompt
    # The number here is eval-vqa's on the same answers, computed independently.
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(questions[:LIMIT]))
    independent = eval_vqa.evaluate_vqa(gt, out / "answers.jsonl", dataset="vqa_rad").original
    rows = {r["metric"]: r for r in result["comparison"]}
    assert rows["average"]["here"] == pytest.approx(independent["average"])
    assert rows["average"]["here"] == pytest.approx((independent["open_recall"] + independent["closed_accuracy"]) / 2)
    assert rows["average"]["paper"] == 75.25
    assert rows["average"]["difference"] == pytest.approx(independent["average"] - 75.25)
    assert rows["open_recall"]["paper"] is None and rows["open_recall"]["difference"] is None
    assert "docs/method.md §7.2" in result["paper_source"] and result["scored_questions"] == LIMIT
    assert f"{independent['average'] - 75.25:+.2f}" in printed and "not comparable" in printed
    assert "medevalkit_corrected" in printed  # eval-vqa's table, all conventions
    assert {"original", "strict", "medevalkit"} <= set(json.loads((out / "metrics.json").read_text()))

    # Rerun: everything is answered already, so nothing is generated and the result is the same.
    monkeypatch.setattr(predict, "load_engine", lambda *a, **k: pytest.fail("nothing is left to answer"))
    assert reproduce.main(_args(tiny_checkpoint, data_root, out, "--compare-to", "exgra-med-dci-vqa-rad")) == 0
    assert json.loads((out / "reproduce.json").read_text())["comparison"] == result["comparison"]


class HalfRightEngine:
    """An exgra_med-template engine that answers the even-numbered questions right and the others 'zzz'."""

    def __init__(self, questions):
        from types import SimpleNamespace
        self.template = SimpleNamespace(template_meta=SimpleNamespace(template_type="exgra_med"))
        self.right = {(q["conversations"][0]["value"], Path(q["image"]).name): q["conversations"][1]["value"]
                      for i, q in enumerate(questions) if i % 2 == 0}

    def infer(self, requests, config, use_tqdm=False):
        from types import SimpleNamespace
        return [SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(
            content=self.right.get((r.messages[0]["content"], Path(r.images[0]).name), "zzz")))]) for r in requests]


def test_difference_to_the_paper_by_hand(tiny_checkpoint, data_root, tmp_path, monkeypatch):
    from exgramed_plugin.eval import predict
    from exgramed_plugin.commands import reproduce
    questions = json.loads((data_root / "VQA-RAD" / "test_w_options_new.json").read_text())
    monkeypatch.setattr(predict, "load_engine", lambda *a, **k: HalfRightEngine(questions))
    assert reproduce.main(_args(tiny_checkpoint, data_root, tmp_path / "run", "--compare-to",
                                "exgra-med-dci-vqa-rad")) == 0
    rows = {r["metric"]: r for r in json.loads((tmp_path / "run" / "reproduce.json").read_text())["comparison"]}
    # Demo rows per image: OPEN, OPEN, CLOSED (yes), CLOSED (no). Right: OPEN #0 #4, CLOSED #2 #6; wrong: the rest
    # ("zzz" shares no word with the open answers and does not contain "no"): open recall 2/4, closed 2/4.
    assert [q["answer_type"] for q in questions[:4]] == ["OPEN", "OPEN", "CLOSED", "CLOSED"]
    assert rows["open_recall"]["here"] == 50.0 and rows["closed_accuracy"]["here"] == 50.0
    assert rows["average"] == {"metric": "average", "here": 50.0, "paper": 75.25, "difference": -25.25}


def test_checkpoint_without_a_paper_number_says_which_exist(tiny_checkpoint, data_root, tmp_path, capsys):
    from exgramed_plugin.commands import reproduce
    assert reproduce.main(_args(tiny_checkpoint, data_root, tmp_path / "run")) == 0
    printed = capsys.readouterr().out
    assert "no paper number for tiny-exgra-med on vqa_rad" in printed and "exgra-med-dci-vqa-rad on vqa_rad" in printed


def test_paper_table_names_published_checkpoints_and_sources():
    from exgramed_plugin.commands.reproduce import BENCHMARKS, PAPER_RESULTS, checkpoint_name
    from exgramed_plugin.commands.hub import CHECKPOINTS
    published = {r.name for r in CHECKPOINTS}
    for (name, benchmark), result in PAPER_RESULTS.items():
        assert name in published and benchmark in BENCHMARKS
        assert "docs/method.md §" in result.source and result.metrics
    assert checkpoint_name("MERGE-Group/exgra-med-dci-slake") == "exgra-med-dci-slake"
    assert checkpoint_name("/models/exgra-med-dci-pathvqa/") == "exgra-med-dci-pathvqa"


def test_missing_data_offline_names_the_repo_and_the_file(tiny_checkpoint, tmp_path, capsys):
    from exgramed_plugin.commands import reproduce
    assert reproduce.main(["slake", "--checkpoint", str(tiny_checkpoint), "--data-root", str(tmp_path / "empty"),
                           "--out", str(tmp_path / "run"), "--offline"]) == 2
    error = capsys.readouterr().err
    assert "MERGE-Group/SLAKE" in error and "test_w_options_new.json" in error


def test_bad_benchmark_and_checkpoint(data_root, tmp_path, capsys):
    from exgramed_plugin.commands import reproduce
    assert reproduce.main(["vqa-rad2", "--checkpoint", "x"]) == 2
    assert "unknown benchmark 'vqa-rad2'; choose from vqa_rad, slake, pathvqa" in capsys.readouterr().err
    assert reproduce.main(["vqa_rad", "--checkpoint", str(tmp_path / "nowhere"), "--data-root", str(data_root),
                           "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err
    assert "neither a folder nor a hub id" in error and "exgra-med-dci-vqa-rad" in error


@pytest.mark.slow
def test_exgramed_reproduce_command(tiny_checkpoint, data_root, tmp_path):
    exgramed = str(Path(sys.executable).parent / "exgramed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = tmp_path / "run"
    done = subprocess.run([exgramed, "reproduce", *_args(tiny_checkpoint, data_root, out, "--compare-to",
                                                          "exgra-med-dci-vqa-rad")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    last = last_summary(done.stdout)
    assert last["answers"] == str(out / "answers.jsonl")
    assert [r["metric"] for r in last["comparison"]] == ["open_recall", "closed_accuracy", "average"]
    assert json.loads((out / "reproduce.json").read_text())["comparison"] == last["comparison"]
