"""The preregistered analysis against hand-worked numbers, scipy.stats and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from exgramed_plugin.commands.experiment.analysis import (GAIN, INCONCLUSIVE, LOSS, NO_EFFECT, analyse, blocks_for_power,
                                                 contrast, gate, holm, paired_contrast, parse_contrast, power,
                                                 verdict)


def _cell(block, fraction, arm, score, **more):
    return {"block": block, "fraction": fraction, "arm": arm, "primary_score": score, **more}


def test_paired_contrast_by_hand_and_against_scipy():
    # differences 10, 2, 6: mean 6, SD sqrt((16 + 16 + 0) / 2) = 4; t(0.975, 2) = 4.3027,
    # half-width 4.3027 * 4 / sqrt(3) = 9.9366; t statistic 6 / (4 / sqrt(3)) = 2.598
    a, b = {0: 50.0, 1: 60.0, 2: 55.0, 7: 99.0}, {0: 40.0, 1: 58.0, 2: 49.0}
    result = paired_contrast(a, b)
    assert result["blocks"] == [0, 1, 2] and result["differences"] == [10.0, 2.0, 6.0]
    assert result["mean"] == pytest.approx(6.0) and result["sd"] == pytest.approx(4.0)
    assert result["ci95"] == pytest.approx([6 - 9.9366, 6 + 9.9366], abs=1e-3)
    reference = stats.ttest_rel([50.0, 60.0, 55.0], [40.0, 58.0, 49.0])
    assert result["p"] == pytest.approx(reference.pvalue)
    assert result["ci95"] == pytest.approx(list(reference.confidence_interval(0.95)))
    assert reference.statistic == pytest.approx(2.598, abs=1e-3)


def test_paired_contrast_needs_two_blocks():
    one = paired_contrast({0: 3.0}, {0: 1.0})
    assert one["mean"] == 2.0 and one["n"] == 1 and one["sd"] is None and one["ci95"] == [None, None]
    assert paired_contrast({}, {0: 1.0})["mean"] is None
    equal = paired_contrast({0: 5.0, 1: 6.0}, {0: 4.0, 1: 5.0})  # SD 0: the interval is the point
    assert equal["ci95"] == [1.0, 1.0] and equal["p"] == 0.0


def test_contrast_names():
    assert parse_contrast("mga-none@0.1") == (("mga", 0.1), ("none", 0.1))
    assert parse_contrast("mga-lm-long@0.1") == (("mga", 0.1), ("lm-long", 0.1))
    assert parse_contrast("lm-long-none@0.4") == (("lm-long", 0.4), ("none", 0.4))
    assert parse_contrast("mga@0.1-none@1.0") == (("mga", 0.1), ("none", 1.0))
    for bad in ("mga-none", "clip-none@0.1", "mga@0.1"):
        with pytest.raises(ValueError, match="contrast"):
            parse_contrast(bad)
    cells = [_cell(0, 0.1, "mga", 60.0), _cell(0, 1.0, "none", 70.0), _cell(1, 0.1, "mga", 64.0),
             _cell(1, 1.0, "none", 70.0), _cell(2, 0.1, "mga", 1.0)]  # block 2 lacks none@1.0: left out
    result = contrast(cells, "mga@0.1-none@1.0", "primary_score")
    assert result["differences"] == [-10.0, -6.0] and result["blocks"] == [0, 1]


def _holm_brute_force(pvalues):
    """Holm by its definition: the adjusted p of hypothesis i is the max over the hypotheses ranked
    at or before it of min(1, (m - rank) x p)."""
    m = len(pvalues)
    ranked = sorted(range(m), key=lambda i: pvalues[i])
    position = {index: rank for rank, index in enumerate(ranked)}
    return [max(min(1.0, (m - r) * pvalues[ranked[r]]) for r in range(position[i] + 1)) for i in range(m)]


def test_holm_by_hand_and_brute_force():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 9):
        for _ in range(20):
            pvalues = rng.uniform(0, 0.3, size).tolist()
            assert holm(pvalues) == pytest.approx(_holm_brute_force(pvalues))


@pytest.mark.parametrize("interval, expected", [
    ((0.5, 4.0), GAIN), ((0.5, 2.0), GAIN),  # above 0 comes first, even inside ±Δ
    ((-4.0, -0.5), LOSS), ((-2.0, 2.5), NO_EFFECT), ((-2.0, 3.5), INCONCLUSIVE), ((-3.0, 1.0), INCONCLUSIVE),
    ((None, None), INCONCLUSIVE)])
def test_verdict_words(interval, expected):
    assert verdict(interval, delta=3.0) == expected


def test_power_against_simulation():
    # brute force: draw 12 blocks of N(Δ, σ) differences, count the intervals lying above 0
    delta, sd, blocks, draws = 3.0, 4.0, 12, 20000
    rng = np.random.default_rng(1)
    samples = rng.normal(delta, sd, size=(draws, blocks))
    low = samples.mean(1) - stats.t.ppf(0.975, blocks - 1) * samples.std(1, ddof=1) / math.sqrt(blocks)
    assert power(delta, sd, blocks) == pytest.approx((low > 0).mean(), abs=0.01)
    assert power(delta, sd, 24) > power(delta, sd, 12) > power(delta, sd, 6)
    needed = blocks_for_power(delta, sd)
    assert needed >= 12 and power(delta, sd, needed) >= 0.8 > power(delta, sd, needed - 1)
    assert blocks_for_power(delta, 0.5) == 12  # already powered: the minimum


def test_gate_rule_by_hand():
    def pilots(gaps):
        cells = []
        for block, gap in enumerate(gaps):
            cells += [_cell(1000 + block, 0.1, "none", 40.0), _cell(1000 + block, 1.0, "none", 40.0 + gap)]
        return cells

    passed = gate(pilots([10.0, 12.0, 8.0, 10.0]))  # mean 10, SD 1.633: 10 >= 4.9 and >= 5
    assert passed["passed"] and passed["gap"] == pytest.approx(10.0)
    assert passed["paired_sd"] == pytest.approx(math.sqrt(8 / 3))
    assert not gate(pilots([4.0, 4.5, 4.2, 4.3]))["passed"]  # small SD, but under 5 points
    assert not gate(pilots([20.0, 2.0, 15.0, 3.0]))["passed"]  # 10 points, but SD 8.6: under 3 SD
    assert not gate(pilots([9.0]))["passed"]  # one block has no SD


def test_analyse_holm_family_and_missing_contrasts():
    rng = np.random.default_rng(2)
    cells = []
    for block in range(6):
        base = rng.normal(50, 5)
        for fraction, arm, shift in ((0.1, "none", 0), (0.1, "mga", 2), (0.1, "lm-long", 1), (1.0, "none", 10)):
            cells.append(_cell(block, fraction, arm, base + shift + rng.normal(0, 1),
                               zero_shot_score=base + rng.normal(0, 1)))
    found = analyse(cells, primary="mga-none@0.1", delta=3.0, secondary=["mga-lm-long@0.1", "mga-none@1.0"],
                    secondary_endpoints=["zero_shot_score", "closed_score"])
    primary = found["primary"]
    assert primary["contrast"] == "mga-none@0.1" and primary["n_blocks"] == 6
    assert primary["verdict"] == verdict(primary["ci95"], 3.0)
    family = found["secondary"]
    assert [(r["contrast"], r["endpoint"]) for r in family] == [("mga-lm-long@0.1", "primary_score"),
                                                                ("mga-none@0.1", "zero_shot_score")]
    assert [r["p_holm"] for r in family] == pytest.approx(holm([r["p"] for r in family]))
    assert found["secondary_not_run"] == ["mga-none@1.0 (primary_score)", "mga-none@0.1 (closed_score)"]
    # every pair of the family is also what scipy says
    for result in family:
        (arm_a, fa), (arm_b, fb) = parse_contrast(result["contrast"])
        pick = {(c["block"], c["fraction"], c["arm"]): c[result["endpoint"]] for c in cells}
        a = [pick[(k, fa, arm_a)] for k in range(6)]
        b = [pick[(k, fb, arm_b)] for k in range(6)]
        assert result["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
