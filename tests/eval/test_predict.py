"""`exgramed predict` on the demo data with the tiny checkpoint, then `exgramed eval-vqa` on its output."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import DEMO_QUESTIONS as QUESTIONS
from conftest import last_summary

MAX_NEW_TOKENS = 4
SHORTUUID_ALPHABET = set("23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


@pytest.fixture(scope="module")
def engine(registered, tiny_checkpoint):
    from swift.infer_engine import TransformersEngine
    return TransformersEngine(str(tiny_checkpoint), max_batch_size=4, torch_dtype=torch.float32)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_predict_then_eval_vqa(demo, engine, tiny_checkpoint, tmp_path, capsys):
    from swift.infer_engine import InferRequest, RequestConfig

    from exgramed_plugin.eval import eval_vqa, predict
    data, questions, rows = demo
    out = tmp_path / "answers.jsonl"
    assert predict.main(["--model", str(tiny_checkpoint), "--questions", str(questions), "--out", str(out),
                         "--batch-size", "4", "--max-new-tokens", str(MAX_NEW_TOKENS)]) == 0
    answers = _read(out)
    # §6.1: one row per question, in question-file order, exactly these fields.
    assert [a["question_id"] for a in answers] == [f"test-{i:04d}" for i in range(QUESTIONS)]
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in answers)
    assert all(a["metadata"] == {} and a["model_id"] == str(tiny_checkpoint) for a in answers)
    # The demo's human turns are "<question>\n<image>", which is exactly the original prompt field.
    assert [a["prompt"] for a in answers] == [r["conversations"][0]["value"] for r in rows]
    assert all(len(a["answer_id"]) == 22 and set(a["answer_id"]) <= SHORTUUID_ALPHABET for a in answers)
    assert len({a["answer_id"] for a in answers}) == QUESTIONS

    # Batched answers equal swift's answers to each question alone (greedy, same template).
    images = [str(data.root / r["image"]) for r in rows]
    single = [engine.infer([InferRequest(messages=[{"role": "user", "content": r["conversations"][0]["value"]}],
                                         images=[image])],
                           RequestConfig(max_tokens=MAX_NEW_TOKENS, temperature=0), use_tqdm=False)[0]
              .choices[0].message.content for r, image in zip(rows, images)]
    assert [a["text"] for a in answers] == single

    capsys.readouterr()
    assert eval_vqa.main(["--gt", str(questions), "--pred", str(out), "--candidate", str(data.candidates)]) == 0
    metrics = json.loads(out.with_suffix(".metrics.json").read_text())
    # Two demo images with 2 OPEN + 2 CLOSED questions each.
    assert metrics["counts"] == {"total": 8, "open": 4, "closed": 4, "skipped": 0}


def test_predict_resumes_and_keeps_answered_ids(demo, engine, tmp_path):
    from exgramed_plugin.eval.predict import predict
    _, questions, _ = demo
    out = tmp_path / "answers.jsonl"
    kept = [{"question_id": f"test-{i:04d}", "prompt": "p", "text": f"KEEP {i}", "answer_id": f"id{i}",
             "model_id": "earlier", "metadata": {}} for i in (2, 0, 1)]
    out.write_text("".join(json.dumps(k) + "\n" for k in kept) + '{"question_id": "test-00')  # killed mid-line
    predict("unused", questions, out, engine=engine, batch_size=4, max_new_tokens=MAX_NEW_TOKENS,
            show_progress=False)
    answers = _read(out)
    assert [a["question_id"] for a in answers] == [f"test-{i:04d}" for i in range(QUESTIONS)]
    assert [a["text"] for a in answers[:3]] == ["KEEP 0", "KEEP 1", "KEEP 2"]
    assert [a["answer_id"] for a in answers[:3]] == ["id0", "id1", "id2"]
    assert all(a["model_id"] == "unused" for a in answers[3:])

    class NoInference:
        def infer(self, *args, **kwargs):
            raise AssertionError("nothing is left to answer")

    before = out.read_text()
    predict("unused", questions, out, engine=NoInference(), show_progress=False)
    assert out.read_text() == before


def test_predict_refuses_foreign_answers(demo, tmp_path):
    from exgramed_plugin.eval.predict import predict
    _, questions, _ = demo
    out = tmp_path / "answers.jsonl"
    out.write_text(json.dumps({"question_id": "other-1", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="other-1"):
        predict("unused", questions, out, engine=object(), show_progress=False)


def test_missing_image_names_file_row_and_field(demo, tmp_path):
    from exgramed_plugin.eval.predict import predict
    _, _, rows = demo
    broken = [dict(rows[0]), dict(rows[1], image="images/nope.png")]
    path = tmp_path / "q.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError) as error:
        predict("unused", path, tmp_path / "a.jsonl", images=demo[0].root, engine=object(), show_progress=False)
    message = str(error.value)
    assert "q.json" in message and "test-0001" in message and "'image'" in message and "nope.png" in message


class LineBreakingEngine:
    """Answers every question with text holding the characters str.splitlines() breaks at."""

    def infer(self, requests, config, use_tqdm=False):
        return [SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(
            content=f"answer {i}\u2028second line\u2029third\x85end"))]) for i, _ in enumerate(requests)]


def test_answers_with_line_separators_stay_one_line_each(demo, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    # Issue 12: such an answer made "wrote 17 answers" for 16 questions, then resume and eval-vqa failed.
    from exgramed_plugin.eval import eval_vqa, predict
    data, questions, _ = demo
    monkeypatch.setattr(predict, "load_engine", lambda *args, **kwargs: LineBreakingEngine())
    out = tmp_path / "a.jsonl"
    argv = ["--model", str(tiny_checkpoint), "--questions", str(questions), "--out", str(out), "--batch-size", "3"]
    assert predict.main(argv) == 0
    printed = capsys.readouterr().out
    assert last_summary(printed) == {"ok": True, "answers": str(out), "rows": QUESTIONS}
    assert printed.strip().splitlines()[-2].startswith(f"wrote {QUESTIONS} answers to {out};")
    text = out.read_text(encoding="utf-8")
    assert len(text.splitlines()) == QUESTIONS  # line-safe even for str.splitlines() readers
    answers = [json.loads(line) for line in text.split("\n") if line]
    assert [a["text"] for a in answers] == [f"answer {i % 3}\u2028second line\u2029third\x85end"
                                            for i in range(QUESTIONS)]
    monkeypatch.setattr(predict, "load_engine", lambda *args, **kwargs: pytest.fail("nothing is left to answer"))
    assert predict.main(argv) == 0  # the resume reads every row back
    assert out.read_text(encoding="utf-8") == text
    assert eval_vqa.main(["--gt", str(questions), "--pred", str(out)]) == 0
    assert json.loads(out.with_suffix(".metrics.json").read_text())["counts"]["total"] == QUESTIONS


def _default_sigint() -> None:
    # A suite started in the background has SIGINT ignored; give the child a terminal's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.mark.slow
def test_ctrl_c_says_how_many_answers_are_saved_and_how_to_resume(demo, tiny_checkpoint, tmp_path):
    data, _, _ = demo
    out = tmp_path / "answers.jsonl"
    limit = 12
    args = ["predict", "--model", str(tiny_checkpoint), "--questions", str(data.vqa_test), "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "24", "--limit", str(limit)]
    exgramed = str(Path(sys.executable).parent / "exgramed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    child = subprocess.Popen([exgramed, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while not (out.is_file() and out.read_text().count("\n") >= 2):  # the first batch is on disk
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr
    saved = _rows(out)
    assert 2 <= len(saved) < limit
    command = f"exgramed {shlex.join(args)}"
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted: {len(saved)} answers saved in {out}; resume with the same command (same --out): {command}")

    resumed = subprocess.run([exgramed, *shlex.split(command)[1:]], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    answers = _rows(out)
    assert [a["question_id"] for a in answers] == [f"test-{i:04d}" for i in range(limit)]  # none lost, none twice
    by_id = {a["question_id"]: a for a in answers}
    assert all(by_id[a["question_id"]] == a for a in saved)  # what was saved is kept, not re-answered
