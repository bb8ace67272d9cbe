"""`exgramed compare`: exact point estimates on a hand-checkable case, paired seeded bootstrap, id checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exgramed_plugin.eval.compare import compare_models, main

from conftest import last_summary


def _item(item_id: int, answer_type: str, answer: str) -> dict:
    return {"id": item_id, "answer_type": answer_type,
            "conversations": [{"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": answer}]}


def _answers(path: Path, texts: dict[int, str]) -> Path:
    path.write_text("".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in texts.items()),
                    encoding="utf-8")
    return path


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    """q1 CLOSED yes, q2 CLOSED no, q3 OPEN liver, q4 OPEN left lung; three models.

    A: right, right, right, wrong ("spleen")     B: wrong ("no" for yes), right, right, right
    A2: the same answers as A (a paired difference to A must be exactly 0 on every resample).
    """
    gt = tmp_path / "questions.json"
    gt.write_text(json.dumps([_item(1, "CLOSED", "yes"), _item(2, "CLOSED", "no"), _item(3, "OPEN", "liver"),
                              _item(4, "OPEN", "left lung")]), encoding="utf-8")
    a_texts = {1: "yes", 2: "no", 3: "liver", 4: "spleen"}
    return {
        "gt": gt,
        "A": _answers(tmp_path / "A.jsonl", a_texts),
        "B": _answers(tmp_path / "B.jsonl", {1: "no", 2: "no", 3: "liver", 4: "left lung"}),
        "A2": _answers(tmp_path / "A2.jsonl", a_texts),
    }


def test_point_estimates_by_convention_and_type(files: dict[str, Path]) -> None:
    result = compare_models(files["gt"], [files["A"], files["B"]], dataset="vqa_rad", resamples=200, seed=1)
    values = {(conv, kind, label): entry["value"] for conv, by_type in result["results"].items()
              for kind, by_label in by_type.items() for label, entry in by_label.items()}
    # original / strict: closed = yes/no hits, open = recall, all = (open + closed) / 2
    #   A: closed 2/2, open (1 + 0)/2 -> all 75;  B: closed 1/2 ("yes" not in "no"), open 2/2 -> all 75
    # medevalkit (vqa_rad): closed by yes/no answers, open = exact match, all = right / 4 = 3/4 for both
    for convention in ("original", "strict", "medevalkit", "medevalkit_corrected"):
        assert values[(convention, "closed", "A")] == pytest.approx(100.0)
        assert values[(convention, "open", "A")] == pytest.approx(50.0)
        assert values[(convention, "all", "A")] == pytest.approx(75.0)
        assert values[(convention, "closed", "B")] == pytest.approx(50.0)
        assert values[(convention, "open", "B")] == pytest.approx(100.0)
        assert values[(convention, "all", "B")] == pytest.approx(75.0)
    differences = result["differences"]["medevalkit"]
    assert differences["closed"]["B"]["value"] == pytest.approx(-50.0)
    assert differences["open"]["B"]["value"] == pytest.approx(50.0)
    assert differences["all"]["B"]["value"] == pytest.approx(0.0)
    assert result["results"]["original"]["open"]["A"]["n"] == 2


def test_intervals_are_seeded_paired_percentile_bootstrap(files: dict[str, Path]) -> None:
    paths = [files["A"], files["B"], files["A2"]]
    first = compare_models(files["gt"], paths, dataset="vqa_rad", resamples=300, seed=7)
    again = compare_models(files["gt"], paths, dataset="vqa_rad", resamples=300, seed=7)
    assert first["results"] == again["results"] and first["differences"] == again["differences"]
    for by_type in first["results"].values():
        for by_label in by_type.values():
            for entry in by_label.values():
                assert entry["low"] <= entry["value"] <= entry["high"]
    # reference: the documented procedure by hand (same Generator, rows of 4 question indices);
    # medevalkit "all" of A is the mean of its correctness [1, 1, 1, 0] over each resample
    draws = np.random.default_rng(7).integers(0, 4, size=(300, 4))
    reference = np.array([1.0, 1.0, 1.0, 0.0])[draws].mean(axis=1) * 100
    entry = first["results"]["medevalkit"]["all"]["A"]
    assert entry["low"] == pytest.approx(np.percentile(reference, 2.5))
    assert entry["high"] == pytest.approx(np.percentile(reference, 97.5))
    # paired: A2 answers like A, so its difference is 0 on every resample
    for by_label in first["differences"]["strict"].values():
        assert (by_label["A2"]["value"], by_label["A2"]["low"], by_label["A2"]["high"]) == (0.0, 0.0, 0.0)


def test_without_dataset_only_original_and_strict(files: dict[str, Path]) -> None:
    result = compare_models(files["gt"], [files["A"]], resamples=10)
    assert list(result["results"]) == ["original", "strict"]
    assert result["differences"]["original"]["all"] == {}


def test_answers_to_another_question_set_are_an_error(files: dict[str, Path], tmp_path: Path) -> None:
    other = _answers(tmp_path / "other.jsonl", {1: "yes", 2: "no", 3: "liver", 5: "x", 6: "y"})
    with pytest.raises(ValueError) as error:
        compare_models(files["gt"], [files["A"], other])
    message = str(error.value)
    assert message.startswith(f"{other}: answers another question set than {files['gt']}")
    assert "no answer for 1 id(s): ['4']" in message
    assert "answers to questions not in the gt for 2 id(s): ['5', '6']" in message


def test_labels_must_be_unique_and_match(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unique"):
        compare_models(files["gt"], [files["A"], files["B"]], ["m", "m"])
    with pytest.raises(ValueError, match="1 label"):
        compare_models(files["gt"], [files["A"], files["B"]], ["m"])


def test_cli_writes_markdown_html_json_and_chart(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from exgramed_plugin.commands.cli import main as exgramed_main

    out = tmp_path / "cmp"
    assert exgramed_main(["compare", str(files["A"]), str(files["B"]), "--gt", str(files["gt"]), "--out", str(out),
                          "--dataset", "vqa_rad", "--resamples", "50", "--labels", "model-a", "model-b"]) == 0
    markdown = (out / "compare.md").read_text()
    assert "| convention | answer type | model-a | model-b |" in markdown
    assert "| medevalkit | all | 75.00 [" in markdown
    assert "## Difference to model-a (paired)" in markdown
    assert "<table>" in (out / "compare.html").read_text()
    assert json.loads((out / "compare.json").read_text())["resamples"] == 50
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "wrote" in printed and last_summary(printed)["json"] == str(out / "compare.json")


def test_cli_reports_mismatch_on_stderr(files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    short = _answers(tmp_path / "short.jsonl", {1: "yes"})
    assert main([str(short), "--gt", str(files["gt"]), "--out", str(tmp_path / "o")]) == 2
    assert "no answer for 3 id(s): ['2', '3', '4']" in capsys.readouterr().err


def test_compare_on_multiple_choice_questions_of_exgramed_eval(tmp_path):
    """Paired bootstrap over the questions of a questions.jsonl written by exgramed eval: model A right on
    the 3 questions, model B on 2 (its empty reply to q2 is option A under MedEvalKit, wrong; corrected: no
    option): all-accuracies 100 and 66.67, every resample's difference <= 0."""
    import json

    from exgramed_plugin.data.mc_benchmarks import ChoiceQuestion
    from exgramed_plugin.eval.compare import compare_models, write_comparison
    from exgramed_plugin.metrics.multiple_choice import question_row

    questions = [ChoiceQuestion(f"q{i}", "pmc_vqa", "Q?", ("A:x", "B:y"), answer, ("/x.png",))
                 for i, answer in enumerate("ABB")]
    gt = tmp_path / "questions.jsonl"
    gt.write_text("".join(json.dumps(question_row(q, "test")) + "\n" for q in questions))
    for name, replies in (("a", ["A", "B", "B"]), ("b", ["A", "B", ""])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"question_id": f"q{i}", "text": r}) + "\n"
                                                        for i, r in enumerate(replies)))
    comparison = compare_models(gt, [tmp_path / "a.jsonl", tmp_path / "b.jsonl"], resamples=200, seed=0)
    assert comparison["answer_types"] == ["all"] and comparison["dataset"] == "pmc_vqa"
    for convention in ("medevalkit", "medevalkit_corrected"):
        assert comparison["results"][convention]["all"]["a"]["value"] == 100.0
        assert comparison["results"][convention]["all"]["b"]["value"] == pytest.approx(200 / 3)
        assert comparison["differences"][convention]["all"]["b"]["high"] <= 0
    files = write_comparison(comparison, tmp_path / "out")
    assert "| medevalkit | all | 100.00" in files.markdown.read_text()
