"""`--eval_metric exgra_vqa` on hand-made predictions."""

import pytest
import torch

# (prediction, label, hand score): closed = gt substring of pred after normalize_word; open = token recall.
CASES = [
    ("Assistant: yes", "yes", 1.0),     # closed hit
    ("not sure", "No", 1.0),            # closed: "no" is a substring of "not sure" (original quirk)
    ("yes", "no", 0.0),                 # closed miss
    ("the left side", "left lung", 0.5),  # open: "left" of {"left", "lung"}
    ("kidney", "liver", 0.0),           # open miss
]


def test_scores_by_hand():
    from exgramed_plugin.metrics.vqa_metrics import exgra_vqa_scores
    scores = exgra_vqa_scores([c[0] for c in CASES], [c[1] for c in CASES])
    assert scores["closed_acc"] == pytest.approx(200 / 3)   # 2 of 3
    assert scores["open_recall"] == pytest.approx(25.0)     # (0.5 + 0) / 2
    assert scores["average"] == pytest.approx((200 / 3 + 25.0) / 2)
    assert (scores["num_open"], scores["num_closed"]) == (2, 3)


def test_average_with_one_answer_type_only():
    from exgramed_plugin.metrics.vqa_metrics import exgra_vqa_scores
    scores = exgra_vqa_scores(["yes", "yes"], ["yes", "no"])
    assert scores["average"] == 50.0 and scores["closed_acc"] == 50.0 and scores["num_open"] == 0


def test_registered_metric_reads_serialized_strings(registered):
    from swift.metrics import eval_metrics_map
    from swift.utils import Serializer
    from torch.nn.utils.rnn import pad_sequence
    from transformers.trainer_utils import EvalPrediction

    from exgramed_plugin.swift_glue.metrics import ExGraVQAMetrics, register_exgra_vqa_metric
    register_exgra_vqa_metric()
    assert eval_metrics_map["exgra_vqa"] is ExGraVQAMetrics
    # As Seq2SeqTrainer.prediction_step hands them over: strings pickled into padded uint8 tensors.
    preds = pad_sequence([Serializer.to_tensor(c[0]) for c in CASES], batch_first=True).numpy()
    labels = pad_sequence([Serializer.to_tensor(c[1]) for c in CASES], batch_first=True).numpy()
    metric = ExGraVQAMetrics(args=None, trainer=None)
    scores = metric.compute_metrics(EvalPrediction(predictions=preds, label_ids=labels))
    assert scores["average"] == pytest.approx((200 / 3 + 25.0) / 2)
    assert isinstance(torch.tensor(scores["average"]).item(), float)


def test_exgra_mc_reads_the_choices_from_the_evaluation_rows(registered):
    """--eval_metric exgra_mc as the trainer calls it: serialized replies and labels, the rows (with their
    mc_question column) in trainer.eval_dataset. Verdicts by hand: 'B' right, '' -> MedEvalKit option A
    (answer B: wrong), '(A)' -> MedEvalKit difflib over 'a. yes'/'b. no': no shared character with
    '(a)' except 'a' of 'a. yes' -> A, right; corrected reads '(a)' as A too."""
    from datasets import Dataset
    from swift.metrics import eval_metrics_map
    from swift.utils import Serializer
    from torch.nn.utils.rnn import pad_sequence
    from transformers.trainer_utils import EvalPrediction

    from exgramed_plugin.data.mc_benchmarks import ChoiceQuestion
    from exgramed_plugin.metrics.multiple_choice import question_row
    from exgramed_plugin.swift_glue.metrics import ExGraChoiceMetrics, register_exgra_vqa_metric

    register_exgra_vqa_metric()
    assert eval_metrics_map["exgra_mc"] is ExGraChoiceMetrics
    questions = [ChoiceQuestion(f"q{i}", "pmc_vqa", "Abnormal?", ("A. yes", "B. no"), answer, ("/x.png",))
                 for i, answer in enumerate("BBA")]
    rows = Dataset.from_list([question_row(q, "test") for q in questions])
    replies, labels = ["B", "", "(A)"], ["B", "B", "A"]
    preds = pad_sequence([Serializer.to_tensor(r) for r in replies], batch_first=True).numpy()
    label_ids = pad_sequence([Serializer.to_tensor(label) for label in labels], batch_first=True).numpy()
    trainer = type("Trainer", (), {"eval_dataset": rows})()
    scores = ExGraChoiceMetrics(args=None, trainer=trainer).compute_metrics(
        EvalPrediction(predictions=preds, label_ids=label_ids))
    assert scores["medevalkit"] == pytest.approx(200 / 3) and scores["medevalkit_corrected"] == pytest.approx(200 / 3)
    assert scores["pmc_vqa_medevalkit"] == pytest.approx(200 / 3) and scores["num_questions"] == 3.0
    trainer.eval_dataset = Dataset.from_list([{"messages": r["messages"]} for r in rows])
    with pytest.raises(ValueError, match="need the 'mc_question' column"):
        ExGraChoiceMetrics(args=None, trainer=trainer).compute_metrics(
            EvalPrediction(predictions=preds, label_ids=label_ids))
