"""`exgramed eval-chat` (LLaVA-Med chatbot protocol) against a recorded-reply judge on 127.0.0.1."""

import json

import pytest
from exgramed_llm_fakes import RecordedServer

from conftest import last_summary

from exgramed_plugin.eval.chat_judge import (
    INSTRUCT_PROMPT,
    SYSTEM_PROMPT,
    aggregate,
    build_questions,
    main,
    parse_scores,
    question_domain,
    question_text,
    review_user_message,
)


def question(qid, qtype, domain, text="What is seen?\n<image>"):
    flags = {d: d == domain for d in ("chest_xray", "mri", "histology", "gross", "ct_scan")}
    return {"question_id": qid, "image": f"{qid}.jpg", "pair_id": f"p{qid}", "text": text, "fig_label": "Figure 2",
            "fig_caption": f"Caption of figure {qid}.", "in_text_mention": [{"tokens": f"Mention {qid} .",
                                                                               "entities": []}],
            "gpt4_answer": f"Reference answer {qid}.", "type": qtype, "domain": flags}


QUESTIONS = [question(1, "conversation", "chest_xray"), question(2, "conversation", "mri"),
             question(3, "detailed_description", "chest_xray"), question(4, "detailed_description", "ct_scan")]
ANSWERS = [{"question_id": q["question_id"], "prompt": q["text"], "text": f"Model answer {q['question_id']}.",
            "answer_id": "x", "model_id": "m", "metadata": {}} for q in QUESTIONS]
# Recorded judge replies (by question id): three scorable, one that is not.
JUDGE_REPLIES = {
    1: "8 6\nAssistant 1 gives a precise answer; Assistant 2 misses the location.",
    2: "9 9\nBoth answers identify the T2 hyperintensity.",
    3: "10 4\nAssistant 2 only restates the question.",
    4: "Assistant 1: 8/10, Assistant 2: 7/10. Both are fine.",
}


def judge_responder(request):
    user = request["messages"][1]["content"]
    qid = int(user.split("Caption of figure ")[1].split(".")[0])
    return 200, JUDGE_REPLIES[qid]


@pytest.fixture()
def files(tmp_path):
    questions, answers = tmp_path / "qa50.jsonl", tmp_path / "answers.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    answers.write_text("".join(json.dumps(a) + "\n" for a in reversed(ANSWERS)))  # order must not matter
    return questions, answers


def test_prompts_follow_the_original_protocol():
    assert SYSTEM_PROMPT == "'You are a helpful and precise assistant for checking the quality of the answer."
    # the rating instruction is reconstructed from §6.3: it must ask for what the parser reads
    for phrase in ("helpfulness", "relevance", "accuracy", "level of detail", "from 1 to 10",
                   "first line write only the two scores", "separated by a space"):
        assert phrase in INSTRUCT_PROMPT
    message = review_user_message("Figure 1", "A CT.", "ctx", "Q?", "A1", "A2")
    assert message == ("[Context]\nFigure Caption:\nFigure 1: A CT.\n\nFigure Context:\n\t- ctx\n\n[Question]\nQ?\n\n"
                       "[Assistant 1]\nA1\n\n[End of Assistant 1]\n\n[Assistant 2]\nA2\n\n[End of Assistant 2]\n\n"
                       f"[System]\n{INSTRUCT_PROMPT}\n\n")


@pytest.mark.parametrize("reply, expected", [
    ("8 7\nexplanation", (8.0, 7.0)), ("8 7", (8.0, 7.0)), ("  9  10 \nx", (9.0, 10.0)), ("8, 6\n", (8.0, 6.0)),
    ("7.5 6\n", (7.5, 6.0)), ("Score: 8 7\n", None), ("8\n7", None), ("8 7 6", None), ("", None),
    ("Ib Wass CHAPTER", None)])
def test_parse_scores(reply, expected):
    assert parse_scores(reply) == expected


def test_question_helpers():
    assert question_text("Q?\n<image>") == "Q?" and question_text("Q? <image>") == "Q? <image>"
    assert question_domain(QUESTIONS[1]) == "mri" and question_domain({"domain": "gross"}) == "gross"
    assert question_domain({"domain": {"mri": False}}) == "unknown"


def test_happy_path_with_recorded_judge_replies(files, tmp_path, capsys):
    questions, answers = files
    out_json, out_jsonl = tmp_path / "review.json", tmp_path / "review.jsonl"
    with RecordedServer(judge_responder) as server:
        code = main(["--answers", str(answers), "--questions", str(questions), "--judge-base-url", server.base_url,
                     "--judge-model", "gpt-4-judge", "--out-json", str(out_json), "--out-jsonl", str(out_jsonl),
                     "--backoff", "0", "--no-progress-bar"])
    assert code == 1  # one question could not be scored: reported, not hidden
    # requests: temperature 0, the original system string, the original user template, answers paired by id
    assert len(server.requests) == 4
    assert all(r["temperature"] == 0 and r["model"] == "gpt-4-judge" for r in server.requests)
    by_qid = {int(r["messages"][1]["content"].split("Caption of figure ")[1].split(".")[0]): r for r in server.requests}
    q = QUESTIONS[0]
    assert by_qid[1]["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": review_user_message(q["fig_label"], q["fig_caption"], q["in_text_mention"],
                                                        "What is seen?", q["gpt4_answer"], "Model answer 1.")}]
    assert "[Question]\nWhat is seen?\n\n" in by_qid[1]["messages"][1]["content"]
    summary = json.loads(out_json.read_text())
    groups = summary["groups"]
    assert list(groups) == ["conversation", "detailed_description", "chest_xray", "mri", "ct_scan", "overall"]
    assert groups["conversation"]["relative_score"] == pytest.approx((6 / 8 + 9 / 9) / 2 * 100)
    assert groups["conversation"]["gpt4_score"] == pytest.approx(8.5)
    assert groups["detailed_description"] == {"gpt4_score": 10.0, "pred_score": 4.0, "relative_score": 40.0,
                                              "scored": 1, "unscored": 1}
    assert groups["chest_xray"]["relative_score"] == pytest.approx((6 / 8 + 4 / 10) / 2 * 100)
    assert groups["ct_scan"]["relative_score"] is None and groups["ct_scan"]["unscored"] == 1
    assert groups["overall"]["relative_score"] == pytest.approx((6 / 8 + 1 + 0.4) / 3 * 100)
    assert summary["counts"] == {"questions": 4, "ok": 3, "unparsable": 1, "request_failed": 0}
    assert summary["unscored"] == [{"question_id": "4", "status": "unparsable",
                                    "error": "first line is not two scores"}]
    per_question = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["question_id"] for r in per_question] == ["1", "2", "3", "4"]
    assert per_question[3]["reply"] == JUDGE_REPLIES[4] and per_question[3]["status"] == "unparsable"
    table = capsys.readouterr().out
    assert last_summary(table, ok=False)["counts"]["unparsable"] == 1  # one question unscored: not a full run
    assert "overall" in table and "unparsable replies: 1" in table and "4 (unparsable)" in table


def test_swift_infer_rows_are_accepted_and_default_outputs_sit_next_to_the_answers(files, tmp_path):
    questions, _ = files
    answers = tmp_path / "swift.jsonl"
    answers.write_text("".join(json.dumps({"id": str(q["question_id"]), "response": "ok"}) + "\n" for q in QUESTIONS))
    with RecordedServer(lambda request: (200, "7 7\nsame")) as server:
        assert main(["--answers", str(answers), "--questions", str(questions), "--judge-base-url", server.base_url,
                     "--judge-model", "j", "--no-progress-bar"]) == 0
    summary = json.loads((tmp_path / "swift.chat_review.json").read_text())
    assert summary["groups"]["overall"]["relative_score"] == pytest.approx(100.0)
    assert (tmp_path / "swift.chat_review.jsonl").exists()


def test_mismatched_ids_are_an_error_listing_them(files, tmp_path, capsys):
    questions, _ = files
    answers = tmp_path / "short.jsonl"
    answers.write_text("".join(json.dumps(a) + "\n" for a in ANSWERS[:2] + [{"question_id": 99, "text": "x"}]))
    assert main(["--answers", str(answers), "--questions", str(questions), "--judge-base-url",
                 "http://127.0.0.1:9/v1", "--judge-model", "j"]) == 2
    err = capsys.readouterr().err
    assert "no answer for 2 id(s): ['3', '4']" in err and "answers without a question for 1 id(s): ['99']" in err


def test_failed_requests_are_recorded_and_a_zero_reference_score_is_not_divided(files):
    questions, answers = files
    built = build_questions(questions, answers, context_style="joined")
    assert "Figure Context:\n\t- Mention 1 .\n\n" in built[0].messages[1]["content"]
    records = [{"question_id": "1", "type": "conversation", "domain": "mri", "status": "ok", "gpt4_score": 8.0,
                "pred_score": 4.0, "relative": 0.5},
               {"question_id": "2", "type": "conversation", "domain": "mri", "status": "request_failed"}]
    groups = aggregate(records)
    assert groups["overall"] == {"gpt4_score": 8.0, "pred_score": 4.0, "relative_score": 50.0, "scored": 1,
                                 "unscored": 1}
    with RecordedServer(lambda request: (200, "0 5\nno reference")) as server:
        from exgramed_plugin.eval.chat_judge import judge_one
        from exgramed_plugin.common.openai_client import ChatClient
        record = judge_one(ChatClient(server.base_url, "j", backoff_base=0), built[0], max_tokens=None)
    assert record["status"] == "unparsable" and "relative score undefined" in record["error"]
