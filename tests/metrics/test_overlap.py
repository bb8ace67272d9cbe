"""The shared word-set overlap, against hand-worked counts."""

import pytest

from exgramed_plugin.metrics.overlap import PRF, set_prf


def test_precision_recall_and_f1_by_hand():
    # predicted {left, lung, mass}, reference {left, lung}: 2 shared -> p 2/3, r 2/2, f1 2(2/3)(1)/(5/3) = 0.8
    assert set_prf("left lung mass".split(), "left lung".split()) == pytest.approx(PRF(2 / 3, 1.0, 0.8))
    # repeats count once: {b} vs {b, c} -> p 1, r 1/2, f1 2/3
    scores = set_prf(["b", "b", "b", "b"], ["b", "c"])
    assert (scores.precision, scores.recall, scores.f1) == pytest.approx((1.0, 0.5, 2 / 3))


def test_nothing_shared_or_an_empty_side_scores_zero():
    assert set_prf(["liver"], ["lung"]) == PRF(0.0, 0.0, 0.0)
    assert set_prf([], ["lung"]) == PRF(0.0, 0.0, 0.0)
    assert set_prf(["lung"], []) == PRF(0.0, 0.0, 0.0)
