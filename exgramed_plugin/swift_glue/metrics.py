"""``--eval_metric exgra_vqa``: the original's eval-during-training VQA metric, for swift; and
``--eval_metric exgra_mc``: multiple-choice accuracy as ``exgramed eval`` scores it (``ExGraChoiceMetrics``).

Why: the original VQA fine-tuning logged ``eval_val_average`` = (open recall + closed accuracy) / 2
from greedy generations on the validation split (docs/method.md §5, ``prepare_compute_metrics``). With
``swift sft --predict_with_generate true --eval_metric exgra_vqa --metric_for_best_model average
--greater_is_better true`` swift's trainer produces the same three numbers.

Scoring per sample (as the original): ``gt = normalize_word(label.lower())``, ``pred =
normalize_word(response.lower())``; the answer type is not passed to swift metrics, so a label that
normalises to ``yes`` or ``no`` is CLOSED (substring hit, ``gt in pred``) and any other label is OPEN
(token recall of ``calculate_f1score``; ``metrics/vqa_metrics.exgra_vqa_scores``). The original decided by the file's ``answer_type``; on
VQA-RAD/SLAKE/PathVQA the two agree except for non-yes/no CLOSED questions (options "A"/"B"...),
which are scored as OPEN here.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from swift.metrics import eval_metrics_map
from swift.metrics.base import EvalMetrics
from swift.utils import Serializer

from ..metrics.vqa_metrics import exgra_vqa_scores

logger = logging.getLogger(__name__)

METRIC_NAME = "exgra_vqa"
CHOICE_METRIC_NAME = "exgra_mc"
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


class ExGraChoiceMetrics(EvalMetrics):
    """``--eval_metric exgra_mc``: multiple-choice accuracy with MedEvalKit's judge and the corrected one
    (metrics/multiple_choice.py), so ``--metric_for_best_model medevalkit_corrected`` (or
    ``<benchmark>_medevalkit``) picks a checkpoint on them. swift passes only replies and labels; the
    choices come from the evaluation rows' ``mc_question`` column, matched by position (checked against the
    labels), which needs ``--predict_with_generate true`` and one evaluation dataset in its own order."""

    def compute_metrics(self, eval_prediction) -> dict[str, float]:
        from ..data.formats import CHOICE_COLUMN
        from ..metrics.multiple_choice import training_metrics

        predictions, labels = eval_prediction.predictions, eval_prediction.label_ids
        rows = self.trainer.eval_dataset
        if rows is None or isinstance(rows, dict) or CHOICE_COLUMN not in getattr(rows, "column_names", ()):
            raise ValueError(f"--eval_metric {CHOICE_METRIC_NAME} scores the registered multiple-choice datasets "
                             "(pmc_vqa_hf_test, mmmu_med_hf_val, ...) or exgramed eval's questions.jsonl: the "
                             f"evaluation rows need the '{CHOICE_COLUMN}' column (with --predict_with_generate true)")
        infos = [json.loads(value) for value in rows[CHOICE_COLUMN]]
        return training_metrics([_decode(predictions[i]) for i in range(predictions.shape[0])],
                                [_decode(labels[i]) for i in range(labels.shape[0])], infos)


def register_exgra_vqa_metric() -> None:
    """Add ``exgra_vqa`` and ``exgra_mc`` to ``swift.metrics.eval_metrics_map``; idempotent."""
    eval_metrics_map[METRIC_NAME] = ExGraVQAMetrics
    eval_metrics_map[CHOICE_METRIC_NAME] = ExGraChoiceMetrics
