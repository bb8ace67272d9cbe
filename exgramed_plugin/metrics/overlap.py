"""Word-set overlap shared by the corrected conventions (strict VQA, MedEvalKit corrected).

One definition of precision / recall / F1 over *sets* of words, returned by name, so the conventions
differ only in how they split and normalise the text (the original's multiset F1 stays its own, with
its quirks, in ``vqa_metrics.calculate_f1score``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


def set_prf(predicted: Iterable[str], reference: Iterable[str]) -> PRF:
    """Precision, recall and F1 of two word sets; all 0 when they share nothing (an empty side included)."""
    predicted, reference = set(predicted), set(reference)
    shared = len(predicted & reference)
    if shared == 0:
        return PRF(0.0, 0.0, 0.0)
    precision, recall = shared / len(predicted), shared / len(reference)
    return PRF(precision, recall, 2 * precision * recall / (precision + recall))
