"""eval-chat and extend-captions against a real OpenAI-compatible server: `swift deploy` of the tiny
random checkpoint on 127.0.0.1. Its replies are nonsense, which exercises the malformed-reply paths
end to end (real HTTP, real swift server, real error replies)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from exgramed_plugin.data.extend_captions import main as extend_main
from exgramed_plugin.common.jsonio import read_jsonl_records
from exgramed_plugin.eval.chat_judge import main as chat_main

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTER = REPO_ROOT / "exgramed_plugin" / "register.py"
SWIFT = str(Path(sys.executable).parent / "swift")
READY_TIMEOUT_S = 90


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _served_model(base_url: str) -> str | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    try:
        with opener.open(f"{base_url}/models", timeout=2) as response:
            return json.loads(response.read())["data"][0]["id"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


@pytest.fixture(scope="module")
def swift_server(tiny_checkpoint, tmp_path_factory):
    """`swift deploy` bound to 127.0.0.1 on a free port; the whole process group is killed at the end
    (the `swift` launcher runs the server as a child that outlives the launcher)."""
    log_path = tmp_path_factory.mktemp("deploy") / "deploy.log"
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [SWIFT, "deploy", "--model", str(tiny_checkpoint), "--host", "127.0.0.1", "--port", str(port),
             "--custom_register_path", str(REGISTER), "--max_new_tokens", "16"],
            cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        model = None
        while model is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"swift deploy did not come up:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
            model = _served_model(base_url)
        yield base_url, model
    finally:
        group = os.getpgid(process.pid) if process.poll() is None else process.pid
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the launcher is gone; make sure its server child is too
            time.sleep(0.5)
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
        assert _served_model(base_url) is None, "the swift deploy server outlived the test"


def test_nonsense_replies_of_a_real_swift_deploy_server_are_recorded(swift_server, tmp_path, capsys):
    base_url, model = swift_server

    # eval-chat: the judge's first line is not two scores -> recorded as unparsable, never guessed
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text("".join(json.dumps({
        "question_id": i, "image": f"{i}.jpg", "text": f"What does figure {i} show?\n<image>", "fig_label": "Figure 1",
        "fig_caption": "Chest radiograph.", "in_text_mention": [{"tokens": "See Figure 1 ."}],
        "gpt4_answer": "A chest X-ray.", "type": "conversation", "domain": {"chest_xray": True}}) + "\n"
        for i in range(2)))
    answers.write_text("".join(json.dumps({"question_id": i, "text": "An X-ray."}) + "\n" for i in range(2)))
    review = tmp_path / "review.json"
    code = chat_main(["--answers", str(answers), "--questions", str(questions), "--judge-base-url", base_url,
                      "--judge-model", model, "--max-tokens", "8", "--backoff", "0", "--concurrency", "2",
                      "--out-json", str(review), "--no-progress-bar"])
    assert code == 1
    summary = json.loads(review.read_text())
    assert summary["counts"] == {"questions": 2, "ok": 0, "unparsable": 2, "request_failed": 0}
    assert summary["groups"]["overall"]["relative_score"] is None
    per_question = read_jsonl_records(tmp_path / "a.chat_review.jsonl")
    assert all(r["status"] == "unparsable" and isinstance(r["reply"], str) for r in per_question)

    # extend-captions: a first turn with "<image>" but no image is refused by the exgra_med template (HTTP 400,
    # not retried); the text-only second turn gets nonsense -> malformed after --parse-attempts requests.
    data = tmp_path / "instruct.json"
    data.write_text(json.dumps([{"id": "pmc-7", "image": "x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A CT scan."},
        {"from": "human", "value": "Which organ?"}, {"from": "gpt", "value": "The liver."}]}]))
    out = tmp_path / "extended.json"
    capsys.readouterr()
    code = extend_main(["--in", str(data), "--out", str(out), "--base-url", base_url, "--model", model,
                        "--max-tokens", "8", "--parse-attempts", "2", "--backoff", "0", "--no-progress-bar"])
    assert code == 1
    assert "rows NOT written" in capsys.readouterr().out
    assert json.loads(out.read_text()) == []
    failures = {f["turn"]: f for f in read_jsonl_records(f"{out}.failures.jsonl")}
    assert failures[0]["status"] == "request_failed" and "HTTP 400" in failures[0]["error"]
    assert failures[0]["requests"] == 1
    assert failures[1]["status"] == "malformed" and failures[1]["requests"] == 2 and failures[1]["reply"] != ""
    summary = json.loads(Path(f"{out}.summary.json").read_text())
    assert summary["turns_malformed"] == 1 and summary["turns_request_failed"] == 1 and summary["rows_failed"] == 1
