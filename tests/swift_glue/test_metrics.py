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
    from exgramed_plugin.swift_glue.metrics import exgra_vqa_scores
    scores = exgra_vqa_scores([c[0] for c in CASES], [c[1] for c in CASES])
    assert scores["closed_acc"] == pytest.approx(200 / 3)   # 2 of 3
    assert scores["open_recall"] == pytest.approx(25.0)     # (0.5 + 0) / 2
    assert scores["average"] == pytest.approx((200 / 3 + 25.0) / 2)
    assert (scores["num_open"], scores["num_closed"]) == (2, 3)


def test_average_with_one_answer_type_only():
    from exgramed_plugin.swift_glue.metrics import exgra_vqa_scores
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
