"""`exgramed eval`: the seven benchmarks from a MedEvalKit-layout data root (tests/mc_benchmark_files.py),
scored from answers made elsewhere (accuracies counted by hand), invalid questions stopped or listed,
and one run with the tiny exgra_med checkpoint: answers, likelihoods, resume, the JSON summary last."""

import csv
import json

import pytest
from mc_benchmark_files import PMC_ROWS, write_data_root, write_pmc_vqa

from conftest import last_summary

from exgramed_plugin.data.formats import DataFormatError
from exgramed_plugin.eval import suite

ALL = list(suite.SUITE_BENCHMARKS)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_data_root(tmp_path_factory.mktemp("medevalkit_data"))


@pytest.fixture(autouse=True)
def _image_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXGRAMED_HUB_IMAGE_CACHE", str(tmp_path / "cache"))


def _reference_answers(out, data_root, names, overrides):
    """Answers files (question_id/text) giving each question its reference reply, except ``overrides``."""
    paths = []
    for name in names:
        run = suite.prepare_questions(name, suite.DEFAULT_SPLITS[name], out / "questions", data_root=str(data_root))
        rows = [json.loads(line) for line in run.questions.read_text().splitlines()]
        path = out / f"{name}.answers.jsonl"
        path.write_text("".join(json.dumps({"question_id": r["id"], "text": overrides.get(r["id"],
                                                                                          r["messages"][1]["content"])})
                                + "\n" for r in rows))
        paths.append(str(path))
    return paths


def test_score_only_scores_every_benchmark_as_counted_by_hand(data_root, tmp_path):
    # pmc_vqa-test-000000 (answer B) and omni-0 (answer A) answered "": MedEvalKit takes option A (quirk
    # empty_reply_is_a), the corrected judge no option. validation_Pharmacy_2 is an open question answered
    # "24" = its gold: never right on MedEvalKit's validation split (quirk val_open_never_right).
    preds = _reference_answers(tmp_path, data_root, ALL, {"pmc_vqa-test-000000": "", "omni-0": ""})
    summary = suite.run_suite(ALL, tmp_path / "out", engine=suite.EngineSettings(None), data_root=str(data_root),
                              preds=preds, peers=["GPT-4.1"])
    got = {name: (entry["medevalkit"], entry["medevalkit_corrected"]) for name, entry in summary["benchmarks"].items()}
    assert got == {"vqa_rad": (100.0, 100.0), "slake": (100.0, 100.0), "pathvqa": (100.0, 100.0),
                   "pmc_vqa": (pytest.approx(200 / 3), pytest.approx(200 / 3)),
                   "omnimedvqa": (100.0, pytest.approx(200 / 3)),
                   "mmmu_med": (pytest.approx(600 / 7), 100.0), "medxpertqa_mm": (100.0, 100.0)}
    assert summary["benchmarks"]["mmmu_med"]["groups"]["medevalkit"]["by_subject"]["Pharmacy"]["accuracy"] == 50.0
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "| omnimedvqa | test | 3 | 0 | 100.00 | 66.67 | n/a | n/a |" in table
    assert '"GPT-4.1 75.2 65.0 72.2 55.5 55.2 75.5 45.2 63.4"' in table
    with open(tmp_path / "out" / "pmc_vqa" / "per_question.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], r["medevalkit_correct"]) for r in rows] == [
        ("pmc_vqa-test-000000", "False"), ("pmc_vqa-test-000001", "True"), ("pmc_vqa-test-000002", "True")]
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["benchmarks"]["pmc_vqa"]["questions"] == 3


def test_answers_for_other_questions_are_refused_with_their_ids(data_root, tmp_path):
    pred = tmp_path / "a.jsonl"
    pred.write_text(json.dumps({"question_id": "omni-0", "text": "A"}) + "\n")
    with pytest.raises(ValueError, match=r"no answer for 2 id\(s\): \['omni-1', 'omni-2'\]"):
        suite.run_suite(["omnimedvqa"], tmp_path / "out", engine=suite.EngineSettings(None),
                        data_root=str(data_root), preds=[str(pred)])


def test_invalid_questions_stop_the_run_or_are_skipped_and_listed(tmp_path):
    root = tmp_path / "root"
    write_pmc_vqa(root / "PMC_VQA", [PMC_ROWS[0], (*PMC_ROWS[1][:3], "E"), PMC_ROWS[2]])
    (root / "PMC_VQA" / "figures" / "PMC3_F2.jpg").unlink()
    with pytest.raises(DataFormatError, match=r"2 invalid question\(s\)(.|\n)*pmc_vqa-test-000001(.|\n)*"
                                              r"pmc_vqa-test-000002"):
        suite.prepare_questions("pmc_vqa", "test", tmp_path / "out", data_root=str(root))
    run = suite.prepare_questions("pmc_vqa", "test", tmp_path / "out", data_root=str(root), skip_invalid=True)
    assert [(s["id"], s["field"]) for s in run.skipped] == [("pmc_vqa-test-000001", "Answer"),
                                                           ("pmc_vqa-test-000002", "Figure_path")]
    pred = tmp_path / "a.jsonl"
    pred.write_text(json.dumps({"question_id": "pmc_vqa-test-000000", "text": "B"}) + "\n")
    summary = suite.run_suite(["pmc_vqa"], tmp_path / "out", engine=suite.EngineSettings(None), data_root=str(root),
                              preds=[str(pred)], skip_invalid=True)
    assert [s["id"] for s in summary["benchmarks"]["pmc_vqa"]["skipped"]] == ["pmc_vqa-test-000001",
                                                                              "pmc_vqa-test-000002"]
    table = (tmp_path / "out" / "eval.md").read_text()
    assert "* pmc_vqa pmc_vqa-test-000002: field Figure_path: image not found" in table


def _answer_ids(path):
    return [json.loads(line)["question_id"] for line in path.read_text().splitlines()]


def test_exgramed_eval_with_a_tiny_model_answers_scores_and_resumes(data_root, tiny_checkpoint, tmp_path, capsys):
    from exgramed_plugin.commands.cli import main
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tiny_checkpoint), "--benchmarks", *ALL, "--data-root", str(data_root),
            "--out", str(out), "--scoring", "generate", "likelihood", "--limit", "2", "--max-new-tokens", "4",
            "--batch-size", "2"]
    assert main(argv) == 0
    summary = last_summary(capsys.readouterr().out)  # the JSON summary is the last line
    assert set(summary["benchmarks"]) == set(ALL)
    for name in ALL:
        questions = [json.loads(line)["id"] for line in (out / name / "questions.jsonl").read_text().splitlines()]
        assert _answer_ids(out / name / "answers.jsonl") == questions and len(questions) == 2
    # The user turn sent (exgra_med, --prompt plain: the question file's turn as it is) is MedEvalKit's prompt
    # as get_multiple_choice_prompt builds it (question_formats.py L5-13) after the image tag.
    medevalkit = ("\nQuestion: What is the uptake pattern in the breast?\nOptions: \nA:Diffuse uptake pattern\n"
                  "B:Focal uptake pattern\nC:No uptake pattern\nD:Cannot determine\nAnswer with the option's letter "
                  "from the given choices directly.")
    sent = json.loads((out / "pmc_vqa" / "questions.jsonl").read_text().splitlines()[0])["messages"][0]["content"]
    assert sent == "<image>" + medevalkit
    first = json.loads((out / "pmc_vqa" / "answers.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == medevalkit.strip() + "\n<image>"  # model_vqa_med.py's prompt field
    likelihoods = [json.loads(line) for line in (out / "pmc_vqa" / "likelihoods.jsonl").read_text().splitlines()]
    assert [len(row["scores"]) for row in likelihoods] == [4, 4]
    with open(out / "pmc_vqa" / "per_question.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row, scores in zip(rows, likelihoods):
        assert row["likelihood_choice"] == "ABCD"[scores["scores"].index(max(scores["scores"]))]

    # Interrupted mid-benchmark: one answer kept, a torn line after it; the rerun redoes only the rest.
    answers = out / "omnimedvqa" / "answers.jsonl"
    kept = answers.read_text().splitlines()[0]
    answers.write_text(kept + "\n" + '{"question_id": "omni-1", "te')
    before = {name: (out / name / "answers.jsonl").read_text() for name in ALL if name != "omnimedvqa"}
    assert main(argv) == 0
    assert _answer_ids(answers) == ["omni-0", "omni-1"]
    assert answers.read_text().splitlines()[0] == kept  # not answered again
    assert {name: (out / name / "answers.jsonl").read_text() for name in before} == before
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["ok"]
    # Another prompt setting into the same folder is refused, not mixed with these answers.
    assert main([*argv, "--mmmu-images", "all"]) == 2
    assert "answers in" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


def test_a_bad_benchmark_folder_ends_with_a_json_error_line(tmp_path, capsys):
    from exgramed_plugin.commands.cli import main
    (tmp_path / "root" / "PMC_VQA" / "figures").mkdir(parents=True)
    assert main(["eval", "--score-only", "--pred", str(tmp_path / "a.jsonl"), "--benchmarks", "pmc_vqa",
                 "--data-root", str(tmp_path / "root"), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    last = json.loads(captured.out.strip().splitlines()[-1])
    assert last["ok"] is False and "PMC_VQA/test_2.csv: not found" in last["error"]
    assert "test_2.csv: not found" in captured.err
