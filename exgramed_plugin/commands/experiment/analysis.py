"""The preregistered analysis: paired contrasts over blocks, Holm's adjustment, verdict words, power, the gate.

* A **contrast** ``"A-B@f"`` is arm A minus arm B at pre-training fraction f; ``"A@f-B@g"`` compares
  two fractions. Its per-block differences (blocks holding both cells) give the mean, the 95 %
  Student t interval over blocks and the two-sided paired t-test p-value (scipy.stats).
* **Holm**: the step-down adjustment of a family of p-values (secondary contrasts).
* **Verdict** of the primary contrast, relative to the smallest effect of interest Δ: "gain" if
  the interval lies above 0, "loss" if below 0, "no effect as large as Δ" if it lies within ±Δ,
  else "inconclusive".
* **Power** of n blocks for a true difference Δ with per-block SD σ: the probability that the 95 %
  interval lies above 0, from the noncentral t distribution; :func:`blocks_for_power` the
  smallest block count (at least the issue's 12) with power >= 80 %.
* **Gate**: ``none`` at 100 % must beat ``none`` at 10 % by >= 3 SD of the per-block differences
  and by >= 5 points, on pilot blocks, before any alignment arm runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from scipy import stats

from .protocol import ARMS

GAIN, LOSS, NO_EFFECT, INCONCLUSIVE = "gain", "loss", "no effect as large as Δ", "inconclusive"
GATE_SDS, GATE_POINTS = 3.0, 5.0
MIN_BLOCKS, TARGET_POWER = 12, 0.8
_SIDE = re.compile(r"^(?P<arm>[a-z-]+?)(?:@(?P<fraction>[0-9.]+))?$")


def parse_contrast(contrast: str) -> tuple[tuple[str, float], tuple[str, float]]:
    """``"mga-none@0.1"`` -> ``(("mga", 0.1), ("none", 0.1))``; ``"mga@0.1-none@1.0"`` -> ``(("mga", 0.1),
    ("none", 1.0))``; arms are those of :data:`.protocol.ARMS` (``lm-long`` holds a hyphen)."""
    for cut in [i for i, char in enumerate(contrast) if char == "-"]:
        left, right = _SIDE.match(contrast[:cut]), _SIDE.match(contrast[cut + 1:])
        if left and right and left["arm"] in ARMS and right["arm"] in ARMS and right["fraction"]:
            fb = float(right["fraction"])
            return (left["arm"], float(left["fraction"]) if left["fraction"] else fb), (right["arm"], fb)
    raise ValueError(f"contrast {contrast!r} is not 'ARM-ARM@FRACTION' or 'ARM@FRACTION-ARM@FRACTION' with arms "
                     f"from {', '.join(ARMS)}")


def scores_by_block(cells: Iterable[Mapping[str, Any]], arm: str, fraction: float, endpoint: str) -> dict[int, float]:
    """``{block: value of endpoint}`` of the cells of (arm, fraction) that have it."""
    return {int(c["block"]): float(c[endpoint]) for c in cells
            if c["arm"] == arm and math.isclose(float(c["fraction"]), fraction) and c.get(endpoint) is not None}


def paired_contrast(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, Any]:
    """``a - b`` over the blocks in both: mean, SD, n, 95 % t interval, two-sided paired t-test p
    (None where the blocks do not define them: no mean without a block, no SD / interval / p with one)."""
    blocks = sorted(set(a) & set(b))
    differences = [a[k] - b[k] for k in blocks]
    n = len(differences)
    if n < 2:
        return {"mean": differences[0] if n else None, "sd": None, "n": n, "ci95": [None, None], "p": None,
                "blocks": blocks, "differences": differences}
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    if sd > 0:
        p = float(stats.ttest_rel([a[k] for k in blocks], [b[k] for k in blocks]).pvalue)
    else:
        p = 1.0 if mean == 0 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "ci95": [mean - half, mean + half], "p": p, "blocks": blocks,
            "differences": differences}


def contrast(cells: Iterable[Mapping[str, Any]], name: str, endpoint: str) -> dict[str, Any]:
    """:func:`paired_contrast` of a named contrast on ``endpoint`` (a cell field such as ``primary_score``)."""
    cells = list(cells)
    (arm_a, fraction_a), (arm_b, fraction_b) = parse_contrast(name)
    return {"contrast": name, "endpoint": endpoint,
            **paired_contrast(scores_by_block(cells, arm_a, fraction_a, endpoint),
                              scores_by_block(cells, arm_b, fraction_b, endpoint))}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (capped at 1, monotone in the sorted order)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def verdict(ci95: Sequence[float], delta: float) -> str:
    """The preregistered words for a 95 % interval (module doc), checked in the issue's order."""
    low, high = ci95
    if low is None or high is None:
        return INCONCLUSIVE
    if low > 0:
        return GAIN
    if high < 0:
        return LOSS
    if -delta < low and high < delta:
        return NO_EFFECT
    return INCONCLUSIVE


def power(delta: float, sd: float, blocks: int, alpha: float = 0.05) -> float:
    """P(the paired 95 % t interval over ``blocks`` blocks lies above 0 | true mean difference ``delta``, SD ``sd``)."""
    if blocks < 2:
        raise ValueError("power needs at least 2 blocks")
    if sd <= 0:
        return 1.0 if delta > 0 else 0.0
    df = blocks - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, delta * math.sqrt(blocks) / sd))


def blocks_for_power(delta: float, sd: float, target: float = TARGET_POWER, minimum: int = MIN_BLOCKS,
                     maximum: int = 1000) -> int:
    """The smallest block count >= ``minimum`` whose :func:`power` reaches ``target``."""
    for blocks in range(max(2, minimum), maximum + 1):
        if power(delta, sd, blocks) >= target:
            return blocks
    raise ValueError(f"{maximum} blocks do not reach power {target} for Δ {delta} with SD {sd}")


def gate(cells: Iterable[Mapping[str, Any]], endpoint: str = "primary_score") -> dict[str, Any]:
    """The gate on pilot cells: ``none`` at 100 % minus ``none`` at 10 % per block (module doc)."""
    result = contrast(cells, "none@1.0-none@0.1", endpoint)
    gap, sd = result["mean"], result["sd"]
    passed = result["n"] >= 2 and gap >= GATE_POINTS and gap >= GATE_SDS * sd
    return {"gap": gap, "paired_sd": sd, "n_blocks": result["n"], "differences": result["differences"],
            "blocks": result["blocks"], "ci95": result["ci95"], "passed": bool(passed),
            "rule": f"gap >= {GATE_SDS:g} x paired SD and >= {GATE_POINTS:g} points"}


def analyse(cells: Sequence[Mapping[str, Any]], *, primary: str, delta: float, secondary: Sequence[str],
            secondary_endpoints: Sequence[str]) -> dict[str, Any]:
    """The primary contrast on ``primary_score`` with its verdict, and the secondary family: each
    secondary contrast on the primary endpoint, and the primary contrast on each secondary
    endpoint, Holm-adjusted together (contrasts whose cells are missing are left out and listed)."""
    main = contrast(cells, primary, "primary_score")
    family, missing = [], []
    for name, endpoint in [(name, "primary_score") for name in secondary] + \
                          [(primary, endpoint) for endpoint in secondary_endpoints]:
        result = contrast(cells, name, endpoint)
        (family if result["n"] >= 2 else missing).append(result if result["n"] >= 2 else f"{name} ({endpoint})")
    for result, adjusted in zip(family, holm([r["p"] for r in family])):
        result["p_holm"] = adjusted
    return {"primary": {**main, "n_blocks": main["n"], "delta": delta, "verdict": verdict(main["ci95"], delta)},
            "secondary": family, "secondary_not_run": missing}
