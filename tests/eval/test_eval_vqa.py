"""`eval-vqa` loading, id pairing, aggregation and the CLI entry; expectations computed by hand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import last_summary

from exgramed_plugin.eval.eval_vqa import (
    evaluate_vqa,
    format_report_table,
    load_answers,
    load_vqa_questions,
    main,
)


def _vqa_item(item_id: object, answer_type: str, question: str, answer: str) -> dict:
    return {
        "id": item_id,
        "image": f"{item_id}.jpg",
        "answer_type": answer_type,
        "conversations": [
            {"from": "human", "value": f"{question}\n<image>"},
            {"from": "gpt", "value": answer},
        ],
    }


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def vqa_files(tmp_path: Path) -> dict[str, Path]:
    """Two closed and two open questions; predictions in another order, ids of mixed types."""
    gt = [
        _vqa_item(1, "CLOSED", 'Is there a mass? (Answer with either "Yes" or "No").', "yes"),
        _vqa_item(2, "CLOSED", 'Is it normal? (Answer with either "Yes" or "No").', "no"),
        _vqa_item("3", "OPEN", "Which organ is enlarged?", "Right lung"),
        _vqa_item(4, "OPEN", "Where is the lesion?", "left lung"),
    ]
    gt_path = tmp_path / "test_w_options_new.json"
    gt_path.write_text(json.dumps(gt), encoding="utf-8")
    answers = [
        {"question_id": "4", "prompt": "q", "text": "Assistant: lung lung lung", "answer_id": "a",
         "model_id": "m", "metadata": {}},
        {"question_id": 3, "prompt": "q", "text": "Assistant: right lung", "answer_id": "b",
         "model_id": "m", "metadata": {}},
        {"question_id": 2, "prompt": "q", "text": "Assistant: not sure", "answer_id": "c",
         "model_id": "m", "metadata": {}},
        {"question_id": "1", "prompt": "q", "text": "Assistant: yes", "answer_id": "d",
         "model_id": "m", "metadata": {}},
    ]
    pred_path = _write_jsonl(tmp_path / "answers.jsonl", answers)
    candidate_path = tmp_path / "candidate.json"
    candidate_path.write_text(json.dumps({"0": ["left lung", "right lung", "liver"]}), encoding="utf-8")
    return {"gt": gt_path, "pred": pred_path, "candidate": candidate_path}


def test_load_vqa_questions_reads_first_gpt_turn(vqa_files: dict[str, Path]) -> None:
    questions = load_vqa_questions(vqa_files["gt"])
    assert [q.id for q in questions] == ["1", "2", "3", "4"]
    assert questions[2].answer == "Right lung"
    assert questions[2].answer_type == "OPEN"
    assert questions[2].question == "Which organ is enlarged?"


def test_load_swift_style_rows(tmp_path: Path) -> None:
    gt_path = _write_jsonl(tmp_path / "gt.jsonl", [
        {"id": 7, "answer_type": "closed", "messages": [
            {"role": "user", "content": "<image>Is it?"}, {"role": "assistant", "content": "no"}]},
    ])
    pred_path = _write_jsonl(tmp_path / "pred.jsonl", [{"id": 7, "response": "No."}])
    questions = load_vqa_questions(gt_path)
    assert (questions[0].id, questions[0].answer_type, questions[0].answer) == ("7", "CLOSED", "no")
    answers = load_answers(pred_path)
    assert (answers[0].id, answers[0].text) == ("7", "No.")
    report = evaluate_vqa(gt_path, pred_path)
    assert report.original["closed_accuracy"] == pytest.approx(100.0)
    assert report.original["open_recall"] is None
    assert report.original["average"] is None


def test_load_answers_requires_an_id(tmp_path: Path) -> None:
    pred_path = _write_jsonl(tmp_path / "pred.jsonl", [{"text": "yes"}])
    with pytest.raises(ValueError, match="question_id"):
        load_answers(pred_path)


def test_evaluate_vqa_original_and_strict(vqa_files: dict[str, Path]) -> None:
    report = evaluate_vqa(vqa_files["gt"], vqa_files["pred"], vqa_files["candidate"])
    assert report.counts == {"total": 4, "open": 2, "closed": 2, "skipped": 0}
    original, strict = report.original, report.strict
    # closed: "yes" in "assistant: yes", "no" in "assistant: not sure" -> 2/2 (substring quirk)
    assert original["closed_accuracy"] == pytest.approx(100.0)
    # open recall: q3 tp 2 fn 0 -> 1; q4 pred {assistant:1, lung:3}, gt {left, lung} -> 3/4
    assert original["open_recall"] == pytest.approx(87.5)
    assert original["average"] == pytest.approx(93.75)
    # precision: q3 2/3 ("assistant:" counts), q4 3/4
    assert original["precision"] == pytest.approx((2 / 3 + 3 / 4) / 2 * 100)
    assert original["f1"] == pytest.approx((0.8 + 0.75) / 2 * 100)
    # "exact match": q3 2 gt words / 3 pred words, q4 1 / 4
    assert original["exact_match"] == pytest.approx((2 / 3 + 1 / 4) / 2 * 100)
    # candidates: q3 -> right lung (2/2); q4 "lung" ties 1/2 -> first, "left lung" -> both hit
    assert original["open_accuracy"] == pytest.approx(100.0)
    assert original["average_open_accuracy"] == pytest.approx(100.0)
    # BLEU-1: q3 2 of 3 tokens, q4 clipped 1 of 4 tokens; hypotheses longer -> no penalty
    assert original["bleu_1"] == pytest.approx((2 / 3 + 1 / 4) / 2 * 100)

    # strict: "not sure" no longer counts as "no"
    assert strict["closed_accuracy"] == pytest.approx(50.0)
    # q3 {right, lung} -> 1; q4 {lung} vs {left, lung} -> recall 1/2, precision 1
    assert strict["open_recall"] == pytest.approx(75.0)
    assert strict["average"] == pytest.approx(62.5)
    assert strict["precision"] == pytest.approx(100.0)
    assert strict["f1"] == pytest.approx((1 + 2 / 3) / 2 * 100)
    assert strict["exact_match"] == pytest.approx(50.0)
    assert strict["open_accuracy"] == pytest.approx(100.0)
    # BLEU-1: q3 exact -> 1; q4 [lung lung lung] vs [left lung] -> 1/3
    assert strict["bleu_1"] == pytest.approx((1 + 1 / 3) / 2 * 100)

    by_id = {row["id"]: row for row in report.per_question}
    assert [row["id"] for row in report.per_question] == ["1", "2", "3", "4"]
    assert by_id["2"]["original_closed_hit"] == 1.0
    assert by_id["2"]["strict_closed_hit"] == 0.0
    assert by_id["3"]["original_prediction_normalized"] == "assistant: right lung"
    assert by_id["3"]["strict_prediction_normalized"] == "right lung"


def test_without_candidates_open_accuracy_is_absent(vqa_files: dict[str, Path]) -> None:
    report = evaluate_vqa(vqa_files["gt"], vqa_files["pred"])
    assert "open_accuracy" not in report.original
    assert "open_accuracy" not in report.strict
    assert "Open accuracy" not in format_report_table(report)


def test_unknown_answer_type_is_skipped_and_counted(tmp_path: Path) -> None:
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps([
        _vqa_item(1, "CLOSED", "Is it?", "yes"), _vqa_item(2, "number", "How many?", "2"),
    ]))
    pred_path = _write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "3"},
    ])
    report = evaluate_vqa(gt_path, pred_path)
    assert report.counts == {"total": 2, "open": 0, "closed": 1, "skipped": 1}
    assert len(report.per_question) == 1


def _gt_with_ids(tmp_path: Path, ids: list[object]) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps([_vqa_item(i, "CLOSED", "Is it?", "yes") for i in ids]))
    return path


def test_missing_and_extra_ids_are_listed(tmp_path: Path) -> None:
    gt_path = _gt_with_ids(tmp_path, [1, 2, 3])
    pred_path = _write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "yes"},
        {"question_id": 99, "text": "yes"},
    ])
    with pytest.raises(ValueError) as error:
        evaluate_vqa(gt_path, pred_path)
    message = str(error.value)
    assert "missing predictions for 1 id(s): ['3']" in message
    assert "predictions without ground truth for 1 id(s): ['99']" in message


def test_many_missing_ids_are_truncated_with_count(tmp_path: Path) -> None:
    gt_path = _gt_with_ids(tmp_path, list(range(30)))
    pred_path = _write_jsonl(tmp_path / "p.jsonl", [{"question_id": 0, "text": "yes"}])
    with pytest.raises(ValueError) as error:
        evaluate_vqa(gt_path, pred_path)
    message = str(error.value)
    assert "29 id(s): ['1', '2'," in message
    assert "'20', ... (9 more)" in message
    assert "'21'" not in message


def test_duplicated_ids_are_errors(tmp_path: Path) -> None:
    gt_path = _gt_with_ids(tmp_path, [1, 2])
    pred_path = _write_jsonl(tmp_path / "p.jsonl", [
        {"question_id": 1, "text": "yes"}, {"question_id": "1", "text": "no"},
        {"question_id": 2, "text": "yes"},
    ])
    with pytest.raises(ValueError, match=r"duplicated prediction 1 id\(s\): \['1'\]"):
        evaluate_vqa(gt_path, pred_path)


def test_main_writes_json_csv_and_prints_table(
    vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = main([
        "--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"]),
        "--candidate", str(vqa_files["candidate"]),
    ])
    assert exit_code == 0
    stdout = capsys.readouterr().out
    assert last_summary(stdout)["counts"]["closed"] == 2
    closed_line = next(line for line in stdout.splitlines() if line.startswith("Closed accuracy"))
    assert closed_line.split()[2:4] == ["100.00", "50.00"]
    assert "open 2, closed 2" in stdout

    json_path = vqa_files["pred"].parent / "answers.metrics.json"
    csv_path = vqa_files["pred"].parent / "answers.per_question.csv"
    summary = json.loads(json_path.read_text())
    assert summary["original"]["open_recall"] == pytest.approx(87.5)
    assert summary["strict"]["closed_accuracy"] == pytest.approx(50.0)
    assert summary["counts"]["total"] == 4
    assert summary["original_names"]["closed_accuracy"] == "yes/no accuracy"

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["id"] for row in rows] == ["1", "2", "3", "4"]
    assert float(rows[1]["original_closed_hit"]) == 1.0
    assert float(rows[1]["strict_closed_hit"]) == 0.0
    assert rows[0]["original_recall"] == ""  # closed rows have no open metrics
    assert float(rows[3]["original_recall"]) == pytest.approx(0.75)
    assert float(rows[3]["strict_recall"]) == pytest.approx(0.5)


def test_main_custom_output_paths(vqa_files: dict[str, Path], tmp_path: Path) -> None:
    out_json, out_csv = tmp_path / "out" / "m.json", tmp_path / "out" / "q.csv"
    out_json.parent.mkdir()
    assert main([
        "--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"]),
        "--out-json", str(out_json), "--out-csv", str(out_csv),
    ]) == 0
    assert "open_accuracy" not in json.loads(out_json.read_text())["original"]
    assert out_csv.read_text().startswith("id,answer_type,")


def test_main_reports_id_mismatch_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gt_path = _gt_with_ids(tmp_path, [1, 2])
    pred_path = _write_jsonl(tmp_path / "p.jsonl", [{"question_id": 1, "text": "yes"}])
    assert main(["--gt", str(gt_path), "--pred", str(pred_path)]) == 2
    assert "missing predictions for 1 id(s): ['2']" in capsys.readouterr().err
    assert not (tmp_path / "p.metrics.json").exists()


def test_raw_line_separators_in_answers_stay_inside_their_row(vqa_files: dict[str, Path]) -> None:
    # Answers files written before issue 12 hold U+2028/U+2029 raw; str.splitlines() split their rows.
    rows = [json.loads(line) for line in vqa_files["pred"].read_text().splitlines()]
    rows[1]["text"] = "Assistant: right\u2028lung\u2029"
    vqa_files["pred"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    answers = load_answers(vqa_files["pred"])
    assert [(a.id, a.text) for a in answers][1] == ("3", "Assistant: right\u2028lung\u2029")
    assert len(answers) == 4
    assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"])]) == 0


def test_a_bad_answers_line_is_named_on_the_last_line(
    vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lines = vqa_files["pred"].read_text().splitlines()
    lines[2] = lines[2].replace('"text": ', '"text" ')
    vqa_files["pred"].write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"])]) == 2
    column = lines[2].index('"text" ') + len('"text" ') + 1  # where the colon is missing
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {vqa_files['pred']}:3:{column}: invalid JSON: Expecting ':' delimiter")


# --- MedEvalKit convention (expected values derived by hand from MedEvalKit's utils.py / VQA_RAD.py) ---
#
# vqa_files under --dataset vqa_rad: q1, q2 closed (gt yes/no), q3, q4 open; responses lower-cased:
#   q1 "assistant: yes": 'yes' in, 'no' not in -> XOR true, "yes" in -> right (corrected: word "yes" -> right)
#   q2 "assistant: not sure": 'no' in "not" -> right (corrected: no word "no" -> wrong)
#   q3 "assistant: right lung" != "right lung" -> no exact match; word sets {assistant:, right, lung} vs
#      {right, lung}: P 2/3, R 1, F1 0.8
#   q4 "assistant: lung lung lung" vs {left, lung}: {assistant:, lung}: P 1/2, R 1/2, F1 1/2
# medevalkit: accuracy (2 + 0) / 4 = 50, closed 100, em 0; reported precision = mean F1 = 65,
#   recall = mean P = (2/3 + 1/2) / 2, f1 = mean R = 75.
# corrected: accuracy 1/4 = 25, closed 50; precision (2/3 + 1/2) / 2, recall 75, f1 65.


def test_evaluate_vqa_medevalkit_conventions(vqa_files: dict[str, Path]) -> None:
    report = evaluate_vqa(vqa_files["gt"], vqa_files["pred"], dataset="vqa_rad")
    faithful, corrected = report.medevalkit, report.medevalkit_corrected
    assert faithful["accuracy"] == pytest.approx(50.0)
    assert faithful["closed_accuracy"] == pytest.approx(100.0)
    assert faithful["exact_match"] == pytest.approx(0.0)
    assert faithful["precision"] == pytest.approx(65.0)
    assert faithful["open_recall"] == pytest.approx((2 / 3 + 1 / 2) / 2 * 100)
    assert faithful["f1"] == pytest.approx(75.0)
    assert corrected["accuracy"] == pytest.approx(25.0)
    assert corrected["closed_accuracy"] == pytest.approx(50.0)
    assert corrected["precision"] == pytest.approx((2 / 3 + 1 / 2) / 2 * 100)
    assert corrected["open_recall"] == pytest.approx(75.0)
    assert corrected["f1"] == pytest.approx(65.0)
    assert report.medevalkit_info["open"] == 2 and report.medevalkit_info["closed"] == 2
    assert report.original["closed_accuracy"] == pytest.approx(100.0)  # the other conventions unchanged


def test_evaluate_vqa_rejects_unknown_dataset(vqa_files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="vqa_rad, slake, pathvqa.*'rad'"):
        evaluate_vqa(vqa_files["gt"], vqa_files["pred"], dataset="rad")


def test_main_prints_and_writes_three_conventions(
    vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"]), "--dataset", "vqa_rad"]) == 0
    stdout = capsys.readouterr().out
    header = next(line for line in stdout.splitlines() if line.startswith("Metric"))
    assert header.split()[1:5] == ["original", "strict", "medevalkit", "medevalkit_corrected"]
    closed_line = next(line for line in stdout.splitlines() if line.startswith("Closed accuracy"))
    assert closed_line.split()[2:6] == ["100.00", "50.00", "100.00", "50.00"]
    accuracy_line = next(line for line in stdout.splitlines() if line.startswith("Accuracy (closed"))
    assert accuracy_line.split()[6:10] == ["-", "-", "50.00", "25.00"]  # the label has 6 words
    assert "medevalkit (vqa_rad): open 2, closed 2" in stdout

    summary = json.loads((vqa_files["pred"].parent / "answers.metrics.json").read_text())
    assert summary["original"]["open_recall"] == pytest.approx(87.5)
    assert summary["strict"]["closed_accuracy"] == pytest.approx(50.0)
    assert summary["medevalkit"]["accuracy"] == pytest.approx(50.0)
    assert summary["medevalkit_corrected"]["accuracy"] == pytest.approx(25.0)
    assert summary["medevalkit_info"]["dataset"] == "vqa_rad"
    assert "prf_swapped" in summary["medevalkit_quirks"]

    with open(vqa_files["pred"].parent / "answers.per_question.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[1]["original_closed_hit"]) == 1.0
    assert float(rows[1]["strict_closed_hit"]) == 0.0
    assert float(rows[1]["medevalkit_correct"]) == 1.0
    assert float(rows[1]["medevalkit_corrected_correct"]) == 0.0
    assert rows[2]["medevalkit_compared"] == "assistant: right lung"
    assert float(rows[2]["medevalkit_precision"]) == pytest.approx(0.8)  # F1 in the precision slot
    assert float(rows[2]["medevalkit_corrected_precision"]) == pytest.approx(2 / 3)


def test_main_without_dataset_says_medevalkit_is_not_scored(
    vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"])]) == 0
    assert "medevalkit: not scored (pass --dataset vqa_rad|slake|pathvqa" in capsys.readouterr().out
    summary = json.loads((vqa_files["pred"].parent / "answers.metrics.json").read_text())
    assert summary["medevalkit"] is None


def test_main_medevalkit_llm_judge_through_openai_server(
    vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from exgramed_llm_fakes import RecordedServer

    def responder(request: dict) -> tuple[int, str]:
        content = request["messages"][0]["content"]
        if "The user's answer: assistant: right lung" in content:
            return 200, "<think>same organ</think>\n<judge>0</judge>"
        return 400, "refused"  # q4: fails for good -> counted incorrect, listed

    with RecordedServer(responder) as server:
        assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"]), "--dataset", "vqa_rad",
                     "--llm-judge-url", server.base_url, "--llm-judge-model", "judge-m", "--max-attempts", "1",
                     "--backoff", "0"]) == 0
    # VQA_RAD sends the open questions only (q3, q4), lower-cased, with MedEvalKit's request settings
    assert len(server.requests) == 2
    assert all(r["model"] == "judge-m" and r["temperature"] == 0 and r["max_tokens"] == 4096
               for r in server.requests)
    assert any("The standard answer: right lung" in r["messages"][0]["content"] for r in server.requests)
    summary = json.loads((vqa_files["pred"].parent / "answers.metrics.json").read_text())
    # closed right 2 (rule) + judged open right 1 (q3) -> 3/4; corrected: 1 + 1 -> 2/4
    assert summary["medevalkit"]["accuracy"] == pytest.approx(75.0)
    assert summary["medevalkit"]["open_judge_accuracy"] == pytest.approx(50.0)
    assert summary["medevalkit_corrected"]["accuracy"] == pytest.approx(50.0)
    assert summary["medevalkit_info"]["judge"]["failed_ids"] == ["4"]
    assert "1 failed" in capsys.readouterr().out


def test_main_llm_judge_needs_dataset(vqa_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--gt", str(vqa_files["gt"]), "--pred", str(vqa_files["pred"]),
                 "--llm-judge-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--llm-judge-url needs --dataset" in capsys.readouterr().err
