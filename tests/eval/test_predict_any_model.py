"""`exgramed predict` / `eval-zeroshot` with any swift model: tiny exgra_med and qwen2_5_vl on the same questions."""

import ast
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

MAX_NEW_TOKENS = 4
QWEN = ["--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl"]
FIELDS = {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
# MedEvalKit @ 9b12e3b, utils/question_formats.py (non-reasoning, English), copied by hand from its source.
JUDGEMENT = "\nPlease output 'yes' or 'no'(no extra output)."
OPEN_ENDED = "\nPlease answer the question concisely."
CLOSE_ENDED = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def qwen_engine(registered, tiny_qwen2_5_vl):
    from exgramed_plugin.eval.predict import load_engine
    return load_engine(str(tiny_qwen2_5_vl), model_type="qwen2_5_vl", template="qwen2_5_vl", batch_size=4,
                       dtype="float32")


def _read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _question(row):
    return row["conversations"][0]["value"].replace("<image>", "").strip()


def _alone(engine, content, image):
    from swift.infer_engine import InferRequest, RequestConfig
    request = InferRequest(messages=[{"role": "user", "content": content}], images=[image])
    return engine.infer([request], RequestConfig(max_tokens=MAX_NEW_TOKENS, temperature=0),
                        use_tqdm=False)[0].choices[0].message.content


# --------------------------------------------------------------------------------------------------
# Both models, the same questions, then eval-vqa under all conventions
# --------------------------------------------------------------------------------------------------


def test_exgra_med_and_qwen_answer_the_same_file_and_are_scored(demo, tiny_checkpoint, tiny_qwen2_5_vl,
                                                                 qwen_engine, tmp_path, capsys):
    from exgramed_plugin.eval import eval_vqa, predict
    data, questions, rows = demo
    outs = {"exgra_med": tmp_path / "exgra.jsonl", "qwen": tmp_path / "qwen.jsonl"}
    common = ["--questions", str(questions), "--batch-size", "3", "--max-new-tokens", str(MAX_NEW_TOKENS),
              "--dtype", "float32"]
    assert predict.main(["--model", str(tiny_checkpoint), "--out", str(outs["exgra_med"]), *common]) == 0
    assert predict.main(["--model", str(tiny_qwen2_5_vl), *QWEN, "--out", str(outs["qwen"]), *common]) == 0
    answers = {name: _read(path) for name, path in outs.items()}
    ids = [r["id"] for r in rows]
    for name in outs:
        assert [a["question_id"] for a in answers[name]] == ids, name
        assert all(set(a) == FIELDS for a in answers[name]), name
    assert all(a["metadata"] == {} for a in answers["exgra_med"])  # the original's format, unchanged
    assert all(a["metadata"] == {"model_type": "qwen2_5_vl", "template": "qwen2_5_vl", "prompt": "plain"}
               for a in answers["qwen"])
    # Both record the question as model_vqa_med.py does; the demo's human turns already have that form.
    assert [a["prompt"] for a in answers["qwen"]] == [r["conversations"][0]["value"] for r in rows]
    assert [a["prompt"] for a in answers["exgra_med"]] == [r["conversations"][0]["value"] for r in rows]
    # qwen got the image first, then the bare question, in its own template: swift's answer to that alone.
    images = [str(data.root / r["image"]) for r in rows]
    assert [a["text"] for a in answers["qwen"]] == [_alone(qwen_engine, f"<image>{_question(r)}", image)
                                                     for r, image in zip(rows, images)]

    for name, path in outs.items():
        capsys.readouterr()
        assert eval_vqa.main(["--gt", str(questions), "--pred", str(path), "--dataset", "vqa_rad"]) == 0
        table = capsys.readouterr().out
        metrics = json.loads(path.with_suffix(".metrics.json").read_text())
        assert metrics["counts"] == {"total": 8, "open": 4, "closed": 4, "skipped": 0}, name
        for convention in ("original", "strict", "medevalkit", "medevalkit_corrected"):
            assert metrics[convention]["closed_accuracy"] is not None, (name, convention)
            assert convention in table.splitlines()[1]
        assert metrics["medevalkit_info"]["open"] + metrics["medevalkit_info"]["closed"] == 8


def test_medevalkit_prompts_reach_the_model(demo, qwen_engine, tiny_qwen2_5_vl, tmp_path):
    from exgramed_plugin.eval.predict import predict
    data, questions, rows = demo
    out = predict(str(tiny_qwen2_5_vl), questions, tmp_path / "m.jsonl", engine=qwen_engine, batch_size=4,
                  max_new_tokens=MAX_NEW_TOKENS, prompt="medevalkit", dataset="vqa_rad", show_progress=False)
    answers = _read(out)
    # VQA_RAD.py construct_messages: judgement for yes/no answers, open-ended otherwise.
    expected = [_question(r) + (JUDGEMENT if r["conversations"][1]["value"].lower() in ("yes", "no") else OPEN_ENDED)
                for r in rows]
    assert [a["prompt"] for a in answers] == [f"{text}\n<image>" for text in expected]
    assert {a["metadata"]["prompt"] for a in answers} == {"medevalkit"}
    image = str(data.root / rows[2]["image"])
    assert answers[2]["text"] == _alone(qwen_engine, f"<image>{expected[2]}", image)


def test_medevalkit_rule_per_dataset_by_hand():
    from exgramed_plugin.data.vqa_questions import VQAQuestion as VQAPrompt
    from exgramed_plugin.eval.predict import PromptBuilder, medevalkit_prompt
    closed_yes = VQAPrompt("1", "Is there a mass?\n<image>", ("x.png",), answer="Yes", answer_type="CLOSED")
    closed_side = VQAPrompt("2", "<image>\nWhich side?", ("x.png",), answer="left", answer_type="CLOSED")
    open_row = VQAPrompt("3", "What organ?", ("x.png",), answer="no", answer_type="OPEN")
    assert medevalkit_prompt(closed_yes, "vqa_rad") == "Is there a mass?" + JUDGEMENT  # answer.lower()
    assert medevalkit_prompt(closed_yes, "pathvqa") == "Is there a mass?" + OPEN_ENDED  # case-sensitive there
    assert medevalkit_prompt(closed_side, "vqa_rad") == "Which side?" + OPEN_ENDED
    assert medevalkit_prompt(open_row, "vqa_rad") == "What organ?" + JUDGEMENT  # by answer, not by type
    assert medevalkit_prompt(closed_side, "slake") == "Which side?" + CLOSE_ENDED  # by answer_type
    assert medevalkit_prompt(open_row, "slake") == "What organ?" + OPEN_ENDED
    chinese = VQAPrompt("4", "肝脏在哪里？", ("x.png",), answer="左", answer_type="OPEN", language="zh")
    assert medevalkit_prompt(chinese, "slake") == "肝脏在哪里？\n请简要回答该问题。"
    # What each template receives.
    assert PromptBuilder("plain", exgra_med=True).content(closed_side) == "<image>\nWhich side?"  # file as is
    assert PromptBuilder("plain", exgra_med=False).content(closed_side) == "<image>Which side?"
    assert PromptBuilder("medevalkit", exgra_med=True, dataset="slake").content(closed_side) == (
        "Which side?" + CLOSE_ENDED + "\n<image>")
    with pytest.raises(ValueError, match="--prompt medevalkit needs --dataset"):
        PromptBuilder("medevalkit")
    with pytest.raises(ValueError, match=r"q\.json: row id='9' has no 'answer_type'"):
        medevalkit_prompt(VQAPrompt("9", "Q", ()), "slake", "q.json")


# --------------------------------------------------------------------------------------------------
# Resuming (qwen)
# --------------------------------------------------------------------------------------------------


class Interrupting:
    """Passes ``batches`` batches to the real engine, then raises as Ctrl-C would."""

    def __init__(self, engine, batches):
        self.engine, self.left = engine, batches
        self.template, self.model_meta = engine.template, engine.model_meta

    def infer(self, *args, **kwargs):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return self.engine.infer(*args, **kwargs)


def test_resuming_qwen_loses_and_duplicates_nothing(demo, qwen_engine, tiny_qwen2_5_vl, tmp_path):
    from exgramed_plugin.eval.predict import predict
    _, questions, rows = demo
    out = tmp_path / "a.jsonl"
    kwargs = dict(batch_size=3, max_new_tokens=MAX_NEW_TOKENS, show_progress=False)
    with pytest.raises(KeyboardInterrupt):
        predict(str(tiny_qwen2_5_vl), questions, out, engine=Interrupting(qwen_engine, 1), **kwargs)
    saved = _read(out)
    assert [a["question_id"] for a in saved] == [r["id"] for r in rows[:3]]
    with open(out, "a", encoding="utf-8") as handle:
        handle.write('{"question_id": "test-00')  # killed mid-line
    predict(str(tiny_qwen2_5_vl), questions, out, engine=qwen_engine, **kwargs)
    answers = _read(out)
    assert [a["question_id"] for a in answers] == [r["id"] for r in rows]  # none lost, none twice
    assert answers[:3] == saved  # kept as they were (same answer_id), not re-answered
    uninterrupted = predict(str(tiny_qwen2_5_vl), questions, tmp_path / "b.jsonl", engine=qwen_engine, **kwargs)
    assert [a["text"] for a in _read(uninterrupted)] == [a["text"] for a in answers]


def test_resuming_with_another_model_or_prompt_is_refused(demo, qwen_engine, tiny_qwen2_5_vl, tmp_path):
    from exgramed_plugin.eval.predict import predict
    _, questions, _ = demo
    out = tmp_path / "a.jsonl"
    out.write_text(json.dumps({"question_id": "test-0000", "prompt": "p", "text": "t", "answer_id": "x",
                               "model_id": "exgra", "metadata": {}}) + "\n")
    with pytest.raises(ValueError, match=r"another run.*'test-0000'.*\{\}.*qwen2_5_vl"):
        predict(str(tiny_qwen2_5_vl), questions, out, engine=qwen_engine, show_progress=False)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_unknown_model_type_or_template_is_refused_with_how_to_list_them(demo, tiny_qwen2_5_vl, tmp_path, capsys):
    from exgramed_plugin.eval import predict, zeroshot
    _, questions, _ = demo
    base = ["--model", str(tiny_qwen2_5_vl), "--questions", str(questions), "--out", str(tmp_path / "a.jsonl")]
    assert predict.main([*base, "--model_type", "qwen2_5_vll"]) == 2
    error = capsys.readouterr().err
    assert "unknown model type 'qwen2_5_vll'" in error and "qwen2_5_vl" in error and "MODEL_MAPPING" in error
    assert predict.main([*base, "--model_type", "qwen2_5_vl", "--template", "qwen25vl"]) == 2
    error = capsys.readouterr().err
    assert "unknown template 'qwen25vl'" in error and "TEMPLATE_MAPPING" in error
    assert not (tmp_path / "a.jsonl").exists()
    assert zeroshot.main(["--model", str(tiny_qwen2_5_vl), "--model-type", "nope_vl", "--questions", str(questions),
                          "--out", str(tmp_path / "z")]) == 2
    assert "unknown model type 'nope_vl'" in capsys.readouterr().err


def test_exgra_med_switches_are_refused_for_another_template(demo, tiny_qwen2_5_vl, tmp_path, capsys):
    from exgramed_plugin.eval import predict
    _, questions, _ = demo
    assert predict.main(["--model", str(tiny_qwen2_5_vl), *QWEN, "--questions", str(questions), "--out",
                         str(tmp_path / "a.jsonl"), "--prompt-style", "v0"]) == 2
    assert "switches of the exgra_med template" in capsys.readouterr().err


def test_prediction_file_from_another_question_set(demo, qwen_engine, tiny_qwen2_5_vl, tmp_path, capsys):
    from exgramed_plugin.eval import eval_vqa
    from exgramed_plugin.eval.predict import predict
    data, questions, rows = demo
    out = predict(str(tiny_qwen2_5_vl), questions, tmp_path / "a.jsonl", engine=qwen_engine, batch_size=4,
                  max_new_tokens=MAX_NEW_TOKENS, show_progress=False)
    other = tmp_path / "other.json"
    other.write_text(json.dumps([dict(r, id=f"rad-{i}") for i, r in enumerate(rows[:3])]))
    (tmp_path / "images").symlink_to(data.root / "images")  # the rows' relative image paths resolve
    assert eval_vqa.main(["--gt", str(other), "--pred", str(out), "--dataset", "vqa_rad"]) == 2
    error = capsys.readouterr().err
    assert "missing predictions for 3 id(s): ['rad-0', 'rad-1', 'rad-2']" in error
    assert "predictions without ground truth for 8 id(s)" in error and "'test-0000'" in error
    with pytest.raises(ValueError, match=r"8 id\(s\) that are not questions of .*other\.json.*'test-0000'"):
        predict(str(tiny_qwen2_5_vl), other, out, engine=qwen_engine, show_progress=False)


# --------------------------------------------------------------------------------------------------
# --infer_backend: the engine that would be built
# --------------------------------------------------------------------------------------------------


def _init_parameters(module: str, cls: str) -> set[str]:
    """Parameter names of swift's ``cls.__init__``, read from its installed source (vllm is not installed)."""
    spec = importlib.util.find_spec("swift.infer_engine")
    source = Path(spec.submodule_search_locations[0]) / f"{module}.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
            return {a.arg for a in init.args.args + init.args.kwonlyargs}
    raise AssertionError(f"{cls} not in {source}")


def test_engine_requests_match_swifts_signatures():
    from exgramed_plugin.eval.predict import engine_request
    vllm = engine_request("Qwen/Qwen2.5-VL-7B-Instruct", infer_backend="vllm", model_type="qwen2_5_vl",
                          template="qwen2_5_vl", adapters=["lora"], batch_size=16, dtype="bfloat16")
    assert (vllm.backend, vllm.engine_class, vllm.model) == ("vllm", "VllmEngine", "Qwen/Qwen2.5-VL-7B-Instruct")
    assert vllm.kwargs == {"torch_dtype": torch.bfloat16, "model_type": "qwen2_5_vl", "template_type": "qwen2_5_vl",
                           "adapters": ["lora"], "enable_lora": True, "max_num_seqs": 16}
    assert set(vllm.kwargs) <= _init_parameters("vllm_engine", "VllmEngine")
    hf = engine_request("m", model_type="qwen2_5_vl", batch_size=2, dtype="float32", device_map="cpu")
    assert hf.engine_class == "TransformersEngine"
    assert hf.kwargs == {"torch_dtype": torch.float32, "model_type": "qwen2_5_vl", "template_type": None,
                         "adapters": None, "max_batch_size": 2, "device_map": "cpu"}
    assert set(hf.kwargs) <= _init_parameters("transformers_engine", "TransformersEngine")


def test_vllm_refusals(tiny_checkpoint):
    from exgramed_plugin.eval.predict import engine_request
    with pytest.raises(ValueError, match="exgra_med is not a vLLM architecture"):
        engine_request(str(tiny_checkpoint), infer_backend="vllm")  # found in its config.json
    with pytest.raises(ValueError, match="--device-map applies to --infer_backend transformers only"):
        engine_request("m", infer_backend="vllm", device_map="cuda:0")
    with pytest.raises(ValueError, match="one adapter, got 2"):
        engine_request("m", infer_backend="vllm", adapters=["a", "b"])
    with pytest.raises(ValueError, match="likelihood scoring reads the model's weights"):
        from exgramed_plugin.eval.zeroshot import evaluate_zeroshot
        evaluate_zeroshot([], model="m", infer_backend="vllm")


class StubVllmEngine:
    """Stands in for swift's VllmEngine: records its arguments, answers with the question's length."""

    built: list = []

    def __init__(self, model, **kwargs):
        StubVllmEngine.built.append((model, kwargs))
        self.template = SimpleNamespace(template_meta=SimpleNamespace(template_type=kwargs["template_type"]))
        self.model_meta = SimpleNamespace(model_type=kwargs["model_type"])
        self.requests = []

    def infer(self, requests, config, use_tqdm=False):
        self.requests += requests
        return [SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(
            content=str(len(r.messages[0]["content"]))))]) for r in requests]


def test_infer_backend_vllm_builds_swifts_vllm_engine(demo, tmp_path, monkeypatch):
    import swift.infer_engine as infer_engine

    from exgramed_plugin.eval import predict
    _, questions, rows = demo
    monkeypatch.setitem(infer_engine.__dict__, "VllmEngine", StubVllmEngine)
    StubVllmEngine.built.clear()
    out = tmp_path / "v.jsonl"
    assert predict.main(["--model", "Qwen/Qwen2.5-VL-3B-Instruct", *QWEN, "--infer_backend", "vllm", "--questions",
                         str(questions), "--out", str(out), "--batch-size", "5", "--dtype", "bfloat16",
                         "--prompt", "medevalkit", "--dataset", "vqa_rad"]) == 0
    (model, kwargs), = StubVllmEngine.built
    assert model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert kwargs == {"torch_dtype": torch.bfloat16, "model_type": "qwen2_5_vl", "template_type": "qwen2_5_vl",
                      "adapters": None, "enable_lora": False, "max_num_seqs": 5}
    answers = _read(out)
    assert [a["question_id"] for a in answers] == [r["id"] for r in rows]
    assert all(a["text"] == str(len("<image>" + a["prompt"].removesuffix("\n<image>"))) for a in answers)


# --------------------------------------------------------------------------------------------------
# eval-zeroshot with qwen
# --------------------------------------------------------------------------------------------------


def test_zeroshot_scores_a_qwen_model(qwen_engine, tmp_path):
    from conftest import DATA_TEMPLATES
    from exgramed_plugin.eval.zeroshot import evaluate_zeroshot, load_omnimed, option_log_likelihoods
    rows = [{"question_id": "a1", "dataset": "A", "modality_type": "MR", "question": "Which modality?",
             "option_A": "MRI", "option_B": "CT", "option_C": "x-ray", "gt_answer": "MRI",
             "image_path": "mri_head.png"}]
    path = tmp_path / "omni.json"
    path.write_text(json.dumps(rows))
    samples = load_omnimed([path], DATA_TEMPLATES / "images")
    summary = evaluate_zeroshot(samples, engine=qwen_engine, scorings=["difflib", "likelihood"], max_new_tokens=3,
                                show_progress=False)
    assert summary["overall"]["likelihood"]["attempted"] == 1 and summary["failed"] == []
    scores = samples[0].results["likelihood"]["scores"]
    assert len(scores) == 3 and all(s < 0 for s in scores)
    # The option's tokens, scored one by one in a plain forward pass, give the same sum.
    template = qwen_engine.template
    previous = template.mode
    template.set_mode("train")
    try:
        encoded = template.encode({"messages": [{"role": "user", "content": samples[0].prompt},
                                                {"role": "assistant", "content": "CT"}],
                                   "images": [samples[0].image]})
        batch = template.data_collator([encoded])
    finally:
        template.set_mode(previous)
    labels = batch.pop("labels")[0]
    with torch.no_grad():
        logits = qwen_engine.model(**batch).logits[0].float()
    positions = [i for i in range(1, labels.shape[0]) if labels[i] != -100]
    by_hand = sum(float(torch.log_softmax(logits[i - 1], -1)[labels[i]]) for i in positions)
    assert option_log_likelihoods(qwen_engine.model, template, samples[0].prompt, samples[0].options,
                                  [samples[0].image])[1] == pytest.approx(by_hand, abs=1e-4)
    assert scores[1] == pytest.approx(by_hand, abs=1e-4)
