"""``--eval_metric exgra_vqa``: the original's eval-during-training VQA metric, for swift.

Why: the original VQA fine-tuning logged ``eval_val_average`` = (open recall + closed accuracy) / 2
from greedy generations on the validation split (docs/method.md §5, ``prepare_compute_metrics``). With
``swift sft --predict_with_generate true --eval_metric exgra_vqa --metric_for_best_model average
--greater_is_better true`` swift's trainer produces the same three numbers.

Scoring per sample (as the original): ``gt = normalize_word(label.lower())``, ``pred =
normalize_word(response.lower())``; the answer type is not passed to swift metrics, so a label that
normalises to ``yes`` or ``no`` is CLOSED (substring hit, ``gt in pred``) and any other label is OPEN
(token recall of ``calculate_f1score``). The original decided by the file's ``answer_type``; on
VQA-RAD/SLAKE/PathVQA the two agree except for non-yes/no CLOSED questions (options "A"/"B"...),
which are scored as OPEN here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from swift.metrics import eval_metrics_map
from swift.metrics.base import EvalMetrics
from swift.utils import Serializer

from ..eval.vqa_metrics import calculate_f1score, closed_hit_original, prepare_original

logger = logging.getLogger(__name__)

METRIC_NAME = "exgra_vqa"
CLOSED_LABELS = frozenset({"yes", "no"})


def is_closed_label(label: str) -> bool:
    """CLOSED iff the normalised label is exactly ``yes`` or ``no``."""
    return prepare_original(label) in CLOSED_LABELS


def exgra_vqa_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """``open_recall``, ``closed_acc`` and ``average`` (all ×100) plus the counts.

    A type with no sample contributes nothing: ``average`` is then the other type's score (so it is
    always present for ``--metric_for_best_model``), and the missing one is reported as 0.0 with
    ``num_open``/``num_closed`` = 0 telling why.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    open_scores: list[float] = []
    closed_scores: list[float] = []
    for prediction, label in zip(predictions, labels):
        gt = prepare_original(label)
        pred = prepare_original(prediction)
        if gt in CLOSED_LABELS:
            closed_scores.append(closed_hit_original(pred, gt))
        else:
            open_scores.append(calculate_f1score(pred, gt)[2])
    open_recall = 100 * sum(open_scores) / len(open_scores) if open_scores else None
    closed_acc = 100 * sum(closed_scores) / len(closed_scores) if closed_scores else None
    present = [v for v in (open_recall, closed_acc) if v is not None]
    return {
        "open_recall": 0.0 if open_recall is None else open_recall,
        "closed_acc": 0.0 if closed_acc is None else closed_acc,
        "average": sum(present) / len(present) if present else 0.0,
        "num_open": float(len(open_scores)),
        "num_closed": float(len(closed_scores)),
    }


def _decode(item: Any) -> str:
    value = Serializer.from_tensor(item)
    return "" if value is None else str(value)


class ExGraVQAMetrics(EvalMetrics):
    """swift eval metric; the seq2seq trainer passes strings serialised as tensors (``Serializer``)."""

    def compute_metrics(self, eval_prediction) -> dict[str, float]:
        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        decoded_predictions = [_decode(predictions[i]) for i in range(predictions.shape[0])]
        decoded_labels = [_decode(labels[i]) for i in range(labels.shape[0])]
        return exgra_vqa_scores(decoded_predictions, decoded_labels)


def register_exgra_vqa_metric() -> None:
    """Add ``exgra_vqa`` to ``swift.metrics.eval_metrics_map``; idempotent."""
    eval_metrics_map[METRIC_NAME] = ExGraVQAMetrics
