"""`exgramed eval-zeroshot`: the §6.2 prompt, difflib choice, and likelihood scoring on a planted model."""

import json
import math

import pytest
import torch

from conftest import DATA_TEMPLATES

IMAGE = str(DATA_TEMPLATES / "images" / "mri_head.png")
BOOST = 30.0


def test_prompt_is_the_original_text():
    from exgramed_plugin.eval.zeroshot import omnimed_prompt
    assert omnimed_prompt("What is shown?", ["CT", "MRI"]) == (
        "What is shown?Here are 2 candidate answers:['CT', 'MRI'] Only return what you think is the correct "
        "answer from the candidate answers, do not return any other irrelevant text!\n<image>")


def test_difflib_choice_by_hand():
    from exgramed_plugin.eval.zeroshot import difflib_choice
    assert difflib_choice(["abc", "xyz"], "abc") == (0, [1.0, 0.0])
    assert difflib_choice(["CT", "ct"], "ct") == (1, [0.0, 1.0])  # case-sensitive
    assert difflib_choice(["ab", "ab"], "abcd") == (0, [2 * 2 / 6, 2 * 2 / 6])  # first maximum
    assert difflib_choice(["abc", "xyz"], "qqq") == (None, [0.0, 0.0])  # no similarity: no choice


@pytest.fixture(scope="module")
def engine(registered, tiny_checkpoint):
    from swift.infer_engine import TransformersEngine
    return TransformersEngine(str(tiny_checkpoint), max_batch_size=4, torch_dtype=torch.float32)


def _labels(template, prompt, option):
    template.set_mode("train")
    try:
        encoded = template.encode({"messages": [{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": option}], "images": [IMAGE]})
    finally:
        template.set_mode("transformers")
    return [t for t in encoded["labels"] if t != -100]


@pytest.fixture
def planted(engine):
    """The model's logits replaced by a constant vector: BOOST on the tokens of the answer "zebra" (and its
    closing "\\n###"), 0 elsewhere. Every token's log-probability is then known in closed form."""
    from exgramed_plugin.eval.zeroshot import omnimed_prompt
    template = engine.template
    boosted = sorted(set(_labels(template, omnimed_prompt("Q?", ["zebra", "lion"]), "zebra")))
    vocab = engine.model.lm_head.out_features

    def hook(module, inputs, output):
        logits = torch.zeros_like(output)
        logits[..., boosted] = BOOST
        return logits

    handle = engine.model.lm_head.register_forward_hook(hook)
    yield boosted, vocab
    handle.remove()


def test_likelihood_scores_match_the_closed_form_and_pick_the_planted_option(engine, planted):
    from exgramed_plugin.eval.zeroshot import ZeroShotSample, option_log_likelihoods
    from exgramed_plugin.metrics.multiple_choice import argmax_first
    boosted, vocab = planted
    sample = ZeroShotSample("q", "D", "M", "Which animal?", ["lion", "zebra", "horse"], "zebra", IMAGE)
    scores = option_log_likelihoods(engine.model, engine.template, sample.prompt, sample.options, [sample.image],
                                    batch_size=2)
    log_z = math.log(len(boosted) * math.exp(BOOST) + vocab - len(boosted))
    expected = [sum((BOOST if t in boosted else 0.0) - log_z for t in _labels(engine.template, sample.prompt, o))
                for o in sample.options]
    assert scores == pytest.approx(expected, abs=1e-3)
    assert argmax_first(scores) == 1
    mean = option_log_likelihoods(engine.model, engine.template, sample.prompt, sample.options, [sample.image],
                                  norm="mean")
    counts = [len(_labels(engine.template, sample.prompt, o)) for o in sample.options]
    assert mean == pytest.approx([e / n for e, n in zip(expected, counts)], abs=1e-3)


def _write_rows_with_a_missing_image(tmp_path):
    """Three OmniMedVQA rows (datasets A and B); a2's image does not exist."""
    rows = [
        {"question_id": "a1", "dataset": "A", "modality_type": "MR", "question": "Which animal?",
         "option_A": "zebra", "option_B": "lion", "gt_answer": "zebra", "image_path": "mri_head.png"},
        {"question_id": "a2", "dataset": "A", "modality_type": "MR", "question": "Which animal?",
         "option_A": "zebra", "option_B": "lion", "gt_answer": "lion", "image_path": "missing.png"},
        {"question_id": "b1", "dataset": "B", "modality_type": "CT", "question": "Which animal?",
         "option_A": "lion", "option_B": "zebra", "gt_answer": "lion", "image_path": "mri_head.png"},
    ]
    path = tmp_path / "omni.json"
    path.write_text(json.dumps(rows))
    return path


def test_failures_are_counted_and_listed(engine, planted, tmp_path):
    from exgramed_plugin.eval.zeroshot import evaluate_zeroshot, load_omnimed
    path = _write_rows_with_a_missing_image(tmp_path)
    samples = load_omnimed([path], DATA_TEMPLATES / "images")
    summary = evaluate_zeroshot(samples, engine=engine, scorings=["difflib", "likelihood"], max_new_tokens=3,
                                show_progress=False)
    # likelihood picks "zebra" everywhere: a1 right, b1 wrong, a2 failed (missing image).
    assert summary["overall"]["likelihood"] == {"samples": 3, "attempted": 2, "failed": 1, "correct": 1,
                                                "accuracy": 100 / 3, "accuracy_attempted": 50.0}
    assert summary["per_dataset"]["A"]["likelihood"]["accuracy"] == 50.0
    assert summary["per_dataset"]["B"]["likelihood"]["accuracy"] == 0.0
    assert summary["per_modality"]["MR"]["likelihood"]["correct"] == 1
    assert summary["overall"]["difflib"]["attempted"] == 2 and summary["overall"]["difflib"]["failed"] == 1
    assert [f["question_id"] for f in summary["failed"]] == ["a2"]
    assert "missing.png" in summary["failed"][0]["reason"]


def test_run_zeroshot_writes_the_run_and_reports_its_failures(engine, planted, tmp_path):
    from exgramed_plugin.eval.zeroshot import format_report, run_zeroshot
    path = _write_rows_with_a_missing_image(tmp_path)
    run = run_zeroshot([path], tmp_path / "out" / "z", engine=engine, images=DATA_TEMPLATES / "images", limit=2,
                       scorings=["likelihood"])
    assert (run.questions, run.json_path, run.samples_path) == (2, tmp_path / "out" / "z.json",
                                                                 tmp_path / "out" / "z.samples.jsonl")
    written = json.loads(run.json_path.read_text())
    assert written["settings"]["questions"] == [str(path)] and written["settings"]["scoring"] == ["likelihood"]
    assert written["overall"]["likelihood"]["correct"] == 1  # a1 right (zebra planted), a2 failed
    assert [json.loads(line)["question_id"] for line in run.samples_path.read_text().splitlines()] == ["a1", "a2"]
    notes = format_report(run.summary, ["likelihood"]).split("\n\n", 1)[1].splitlines()
    assert notes[0] == "1 failed sample(s) (counted as wrong in 'acc'), e.g.:"
    assert notes[1].startswith("  a2 [A]: ") and "missing.png" in notes[1] and len(notes) == 2
