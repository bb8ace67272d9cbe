"""`exgramed extend-captions` against a recorded-reply server on 127.0.0.1 (real HTTP, real files)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exgramed_llm_fakes import RecordedServer, user_payload

from exgramed_plugin.data.extend_captions import (
    GenerationSettings,
    InputError,
    MalformedReply,
    extend_captions,
    load_prompt,
    main,
    parse_extension_reply,
)
from exgramed_plugin.common.jsonio import JsonlAppender, read_jsonl_records
from exgramed_plugin.common.openai_client import ChatClient

from conftest import last_summary

REPO_ROOT = Path(__file__).resolve().parents[2]

ROWS = [
    {"id": "pmc-1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat modality is this?"},
        {"from": "gpt", "value": "A chest CT scan."}]},
    {"id": "pmc-2", "image": "b.jpg", "conversations": [
        {"from": "human", "value": "What is shown?\n<image>"},
        {"from": "gpt", "value": "An axial MRI of the brain."},
        {"from": "human", "value": "Any lesion?"},
        {"from": "gpt", "value": "A hyperintense lesion in the left frontal lobe."}],
     "domain": "mri"},
    {"id": "pmc-3", "image": "c.jpg", "conversatons": [  # the misspelled key of the released files
        {"from": "human", "value": "<image>\nDescribe the stain."},
        {"from": "gpt", "value": "H&E stain showing granulomas."}]},
]

# Replies as real LLMs write them: bare JSON, fenced JSON, a <think> block, chatter around the object.
REPLY_STYLES = [
    lambda rev: json.dumps({"explanation": {"helpfulness": "ok", "relevance": "ok", "accuracy": "ok",
                                            "detail": "short", "structure": "ok"}, "revision": rev}),
    lambda rev: "```json\n" + json.dumps({"explanation": {"detail": "short"}, "revision": rev}) + "\n```",
    lambda rev: "<think>The answer is short.</think>\n" + json.dumps({"explanation": {}, "revision": rev}),
    lambda rev: "Here is the result:\n" + json.dumps({"revision": rev, "explanation": {"accuracy": "ok"}}) + "\nDone.",
]


def revised(answer: str) -> str:
    return f"In the image, {answer[0].lower()}{answer[1:]} It is seen clearly."


def recorded_responder(request):
    answer = user_payload(request)["answer"]
    style = REPLY_STYLES[sum(map(ord, answer)) % len(REPLY_STYLES)]
    return 200, style(revised(answer))


@pytest.fixture()
def data_file(tmp_path):
    path = tmp_path / "instruct.json"
    path.write_text(json.dumps(ROWS))
    return path


def client_for(server, **kwargs):
    kwargs.setdefault("backoff_base", 0.0)
    return ChatClient(base_url=server.base_url, model="recorded", api_key="dummy", timeout=10, **kwargs)


# -------------------------------------------------------------------------------------------------
# prompt and parsing
# -------------------------------------------------------------------------------------------------


def test_prompt_is_shipped_as_package_data_and_states_the_rules():
    prompt = load_prompt()
    for phrase in ("biomedical expert", "Helpfulness", "Relevance", "Accuracy", "Level of Detail", "Structure",
                   "medical terminology", "in a tone that you are also seeing the image", '"explanation"',
                   '"revision"', "at most 20 tokens", "twice as many tokens", "no line breaks", "Example"):
        assert phrase in prompt, phrase
    example = prompt[prompt.index("Output:\n") + len("Output:\n"):].strip()
    assert set(json.loads(example)) == {"explanation", "revision"}
    assert set(json.loads(example)["explanation"]) == {"helpfulness", "relevance", "accuracy", "detail", "structure"}


@pytest.mark.parametrize("style", range(len(REPLY_STYLES)))
def test_parse_accepts_the_usual_reply_shapes(style):
    revision, _ = parse_extension_reply(REPLY_STYLES[style]("A long revision."))
    assert revision == "A long revision."


def test_parse_falls_back_to_the_revision_string_of_broken_json():
    text = '{"explanation": {"detail": "short"} "revision": "Seen \\"clearly\\" here."'  # missing comma and brace
    assert parse_extension_reply(text) == ('Seen "clearly" here.', None)


@pytest.mark.parametrize("text", ["Ib Wass CHAPTER č fakecur", "", '{"revision": ""}', '{"revision": 3}',
                                  '{"explanation": {}}', "[1, 2]"])
def test_parse_rejects_replies_without_a_usable_revision(text):
    with pytest.raises(MalformedReply):
        parse_extension_reply(text)


# -------------------------------------------------------------------------------------------------
# runs
# -------------------------------------------------------------------------------------------------


def test_happy_path_with_recorded_replies(data_file, tmp_path):
    out = tmp_path / "out.json"
    with RecordedServer(recorded_responder) as server:
        report = extend_captions(data_file, out, client_for(server), concurrency=3, show_progress=False)
    assert report.complete and report.turns == 4 and report.turns_ok == 4 and report.rows_written == 3
    # requests: the shipped prompt as system message, the original's json.dumps user message
    assert len(server.requests) == 4
    sent = sorted(r["messages"][1]["content"] for r in server.requests)
    turns = [row.get("conversations") or row["conversatons"] for row in ROWS]
    expected = sorted(json.dumps({"instruction": t[i]["value"], "answer": t[i + 1]["value"]})
                      for t in turns for i in range(0, len(t), 2))
    assert sent == expected
    assert all(r["messages"][0] == {"role": "system", "content": load_prompt()} for r in server.requests)
    assert all(h.get("Authorization") == "Bearer dummy" for h in server.headers)
    # output: input order, both conversation lists, the typo key written with the correct name
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["pmc-1", "pmc-2", "pmc-3"]
    for original, row in zip(ROWS, rows, strict=True):
        short = original.get("conversations") or original["conversatons"]
        assert row["conversations"] == short and "conversatons" not in row
        assert [t["from"] for t in row["conversations_long"]] == [t["from"] for t in short]
        for position, (s, long) in enumerate(zip(short, row["conversations_long"], strict=True)):
            assert long["value"] == (revised(s["value"]) if position % 2 else s["value"])
    assert rows[1]["domain"] == "mri" and rows[0]["image"] == "a.jpg"
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["complete"] and summary["turns_ok"] == 4 and summary["rows_failed"] == 0
    assert not Path(f"{out}.failures.jsonl").exists()


def test_malformed_replies_are_counted_reported_and_retried_by_a_rerun(data_file, tmp_path, capsys):
    out = tmp_path / "out.json"
    bad_answer = "A hyperintense lesion in the left frontal lobe."

    def responder(request):
        answer = user_payload(request)["answer"]
        return 200, ("I cannot help with that." if answer == bad_answer else recorded_responder(request)[1])

    args = ["--in", str(data_file), "--out", str(out), "--model", "recorded", "--backoff", "0",
            "--parse-attempts", "2", "--no-progress-bar"]
    with RecordedServer(responder) as server:
        assert main(args + ["--base-url", server.base_url]) == 1
    printed = capsys.readouterr().out
    assert "malformed replies: 1" in printed and "pmc-2" in printed
    assert last_summary(printed, ok=False)["failed_rows"] == ["pmc-2"]
    assert len(server.requests) == 3 + 2  # bounded: two requests for the bad turn, then it is recorded
    rows = json.loads(out.read_text())
    assert [r["id"] for r in rows] == ["pmc-1", "pmc-3"]  # no silent substitution of the short answer
    failures = read_jsonl_records(f"{out}.failures.jsonl")
    assert [(f["id"], f["turn"], f["status"]) for f in failures] == [("pmc-2", 1, "malformed")]
    assert failures[0]["reply"] == "I cannot help with that." and failures[0]["requests"] == 2
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["turns_malformed"] == 1 and summary["failed_rows"] == ["pmc-2"] and not summary["complete"]

    with RecordedServer(recorded_responder) as server:  # the rerun asks only for the failed turn
        assert main(args + ["--base-url", server.base_url]) == 0
    assert [user_payload(r)["answer"] for r in server.requests] == [bad_answer]
    assert [r["id"] for r in json.loads(out.read_text())] == ["pmc-1", "pmc-2", "pmc-3"]
    assert not Path(f"{out}.failures.jsonl").exists()


def test_retries_are_bounded_and_client_errors_are_not_retried(data_file, tmp_path):
    calls = {"n": 0}

    def flaky(request):  # every turn fails twice with 503, then answers
        calls["n"] += 1
        return (503, "overloaded") if calls["n"] % 3 else recorded_responder(request)

    with RecordedServer(flaky) as server:
        report = extend_captions(data_file, tmp_path / "a.json", client_for(server, max_attempts=3), concurrency=1,
                                 show_progress=False)
    assert report.complete and len(server.requests) == 12

    with RecordedServer(lambda request: (503, "down")) as server:
        report = extend_captions(data_file, tmp_path / "b.json", client_for(server, max_attempts=2), concurrency=2,
                                 show_progress=False)
    assert report.turns_request_failed == 4 and report.rows_written == 0 and len(server.requests) == 4 * 2

    with RecordedServer(lambda request: (400, "bad request")) as server:
        report = extend_captions(data_file, tmp_path / "c.json", client_for(server, max_attempts=5),
                                 settings=GenerationSettings(parse_attempts=3), show_progress=False)
    assert report.turns_request_failed == 4 and len(server.requests) == 4  # a 400 stays a 400
    failure = read_jsonl_records(tmp_path / "c.json.failures.jsonl")[0]
    assert failure["status"] == "request_failed" and "HTTP 400" in failure["error"]


def test_unreachable_server_fails_fast_and_boundedly(data_file, tmp_path):
    import socket
    with socket.socket() as sock:  # a free loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ChatClient(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_attempts=2, backoff_base=0.0, timeout=2)
    report = extend_captions(data_file, tmp_path / "out.json", client, show_progress=False)
    assert report.turns_request_failed == 4 and report.rows_written == 0


N_BIG = 16


def _write_big_input(path, n):
    rows = [{"id": f"r{i}", "image": f"{i}.jpg", "conversations": [
        {"from": "human", "value": f"<image>\nQuestion {i}?"}, {"from": "gpt", "value": f"Answer number {i}."}]}
        for i in range(n)]
    path.write_text(json.dumps(rows))
    return rows


def _default_sigint() -> None:
    # a suite started in the background (``cmd &``, nohup) has SIGINT ignored, the child would inherit
    # that and Python would install no KeyboardInterrupt handler: give the CLI a terminal's Ctrl-C
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(args, **kwargs):
    env = {**os.environ, "OPENAI_API_KEY": "dummy"}
    return subprocess.Popen([sys.executable, "-m", "exgramed_plugin.data.extend_captions", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint, **kwargs)


def _wait_for_lines(path, n, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} lines")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "kill-9"])
def test_resumes_after_an_interrupted_run_without_duplicates(tmp_path, how):
    data = tmp_path / "in.json"
    rows = _write_big_input(data, N_BIG)
    out = tmp_path / "out.json"
    progress = Path(f"{out}.progress.jsonl")
    # the server answers 3 requests, then holds the rest until released: the interrupt always lands
    # mid-run with requests in flight, whatever the machine's speed
    with RecordedServer(recorded_responder, hold_after=3) as server:
        args = ["--in", str(data), "--out", str(out), "--base-url", server.base_url, "--model", "recorded",
                "--concurrency", "2", "--backoff", "0", "--no-progress-bar"]
        first = _cli(args)
        _wait_for_lines(progress, 3)
        first.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        time.sleep(1.0)  # let the client take the signal before the held requests are answered
        server.release()
        stdout, stderr = first.communicate(timeout=30)
        saved = read_jsonl_records(progress)
        assert 3 <= len(saved) < N_BIG and not out.exists()
        if how == "ctrl-c":
            assert first.returncode == 130, stderr
            assert "INTERRUPTED" in stdout and "rerun the same command" in stdout
            # the requests in flight at Ctrl-C were waited for and saved: nothing paid for is lost
            assert len(saved) == len(server.requests)
        else:
            assert first.returncode == -signal.SIGKILL
        time.sleep(0.3)  # let the server finish reading requests the killed process had sent
        requested_first = len(server.requests)

        second = _cli(args)
        stdout, stderr = second.communicate(timeout=60)
        assert second.returncode == 0, stdout + stderr
    records = read_jsonl_records(progress)
    keys = [(r["index"], r["turn"]) for r in records if r["status"] == "ok"]
    assert sorted(keys) == [(i, 0) for i in range(N_BIG)]  # exactly one ok record per turn
    # the rerun asked only for what was not saved
    assert len(server.requests) - requested_first == N_BIG - len(saved)
    answers_asked = [user_payload(r)["answer"] for r in server.requests]
    if how == "ctrl-c":
        assert len(answers_asked) == len(set(answers_asked)) == N_BIG
    output = json.loads(out.read_text())
    assert [r["id"] for r in output] == [r["id"] for r in rows]
    assert [r["conversations_long"][1]["value"] for r in output] == [revised(r["conversations"][1]["value"])
                                                                     for r in rows]


def test_a_torn_last_line_is_dropped_on_resume(data_file, tmp_path):
    out = tmp_path / "out.json"
    progress = Path(f"{out}.progress.jsonl")
    with RecordedServer(recorded_responder) as server:
        extend_captions(data_file, out, client_for(server), show_progress=False, limit=1)
        progress.write_text(progress.read_text() + '{"index": 1, "turn": 0, "sta')  # crash mid-write
        report = extend_captions(data_file, out, client_for(server), show_progress=False)
    assert report.complete and report.turns_done_before == 1 and len(server.requests) == 4
    assert len(read_jsonl_records(progress)) == 4  # the torn fragment was cut off, every line is a record


def test_a_progress_file_of_another_input_is_refused(data_file, tmp_path):
    out = tmp_path / "out.json"
    with JsonlAppender(f"{out}.progress.jsonl") as writer:
        writer.append({"index": 0, "turn": 0, "id": "pmc-1", "status": "ok", "fingerprint": "0" * 16,
                       "revision": "stale"})
    with RecordedServer(recorded_responder) as server, pytest.raises(InputError, match="another input"):
        extend_captions(data_file, out, client_for(server), show_progress=False)


def test_bad_input_names_the_row_and_exits_2(tmp_path, capsys):
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"id": "x9", "conversations": [{"from": "gpt", "value": "no question"},
                                                               {"from": "human", "value": "?"}]}]))
    assert main(["--in", str(data), "--out", str(tmp_path / "o.json"), "--base-url", "http://127.0.0.1:9/v1",
                 "--model", "m"]) == 2
    assert "id='x9'" in capsys.readouterr().err


@pytest.mark.parametrize("command, flag", [("extend-captions", "--concurrency"), ("eval-chat", "--judge-base-url")])
def test_exgramed_cli_has_the_commands_with_help(command, flag, capsys):
    from exgramed_plugin.commands.cli import main as exgramed_main
    with pytest.raises(SystemExit) as exit_info:
        exgramed_main([command, "--help"])
    assert exit_info.value.code == 0 and flag in capsys.readouterr().out
