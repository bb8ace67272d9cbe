"""``table.md`` and ``accuracy_vs_fraction.png`` of a grid, from its ``results.json`` content."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .analysis import scores_by_block
from .protocol import ARMS

ENDPOINTS = {"primary_score": "open, likelihood-ranked (primary)", "zero_shot_score": "open, likelihood-ranked, "
             "after pre-training (zero-shot)", "closed_score": "closed, likelihood-ranked",
             "generated_average": "generated answers, original average (run_eval.py)"}


def cell_means(cells: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """``{fraction: {arm: {endpoint: {"mean", "sd", "n"}}}}`` over blocks (None where undefined)."""
    summary: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for fraction, arm in sorted({(float(c["fraction"]), c["arm"]) for c in cells}):
        for endpoint in ENDPOINTS:
            values = list(scores_by_block(cells, arm, fraction, endpoint).values())
            n = len(values)
            mean = sum(values) / n if n else None
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
            summary.setdefault(str(fraction), {}).setdefault(arm, {})[endpoint] = {"mean": mean, "sd": sd, "n": n}
    return summary


def _interval(result: Mapping[str, Any]) -> str:
    low, high = result["ci95"]
    return "–" if low is None else f"[{low:+.2f}, {high:+.2f}]"


def _number(value: float | None, form: str = "+.2f") -> str:
    return "–" if value is None else format(value, form)


def format_tables(results: Mapping[str, Any]) -> str:
    """The primary contrast and its verdict, the secondary family, the cell means, the gate."""
    parts = []
    primary = results.get("primary")
    if primary:
        parts.append(f"Primary endpoint: accuracy of likelihood-ranked answers on {results['protocol']['test_items']} "
                     f"open test items after fine-tuning. Primary contrast {primary['contrast']}: "
                     f"**{_number(primary['mean'])} points {_interval(primary)}** over {primary['n_blocks']} blocks "
                     f"(paired 95 % t interval; Δ = {primary['delta']:g}): **{primary['verdict']}**.")
    secondary = results.get("secondary") or []
    if secondary:
        lines = ["Secondary contrasts (paired over blocks; p from the paired t-test, Holm-adjusted over this table):",
                 "", "| contrast | endpoint | mean | 95 % CI | p | p (Holm) | blocks |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['contrast']} | {ENDPOINTS.get(r['endpoint'], r['endpoint'])} | {_number(r['mean'])} | "
                  f"{_interval(r)} | {_number(r['p'], '.3g')} | {_number(r.get('p_holm'), '.3g')} | {r['n']} |"
                  for r in secondary]
        parts.append("\n".join(lines))
    summary = results["summary"]
    lines = ["Cell means over blocks (mean ± SD, percent):", "",
             "| fraction | arm | " + " | ".join(ENDPOINTS.values()) + " | blocks |",
             "|---|---|" + "---|" * len(ENDPOINTS) + "---|"]
    for fraction in sorted(summary, key=float):
        for arm in [a for a in ARMS if a in summary[fraction]]:
            stats = summary[fraction][arm]
            shown = ["–" if not s["n"] else f"{s['mean']:.2f} ± {s['sd'] or 0:.2f}" for s in stats.values()]
            lines.append(f"| {round(float(fraction) * 100)} % | {arm} | " + " | ".join(shown)
                         + f" | {stats['primary_score']['n']} |")
    prior = results.get("question_only_prior")
    if prior:
        lines += ["", f"Question-only prior (the most frequent downstream answer of each question text, "
                      f"generated-answer metrics): open recall {prior['open_recall']:.2f}, closed accuracy "
                      f"{prior['closed_accuracy']:.2f}, average {prior['average']:.2f}."]
    parts.append("\n".join(lines))
    gate = results.get("gate")
    if gate:
        parts.append(format_gate(gate))
    return "\n\n".join(parts) + "\n"


def format_gate(gate: Mapping[str, Any]) -> str:
    """Every budget the gate tried, with its figures."""
    lines = ["Gate (arm none on pilot blocks: none@100 % − none@10 % on the primary endpoint; "
             f"{gate.get('rule', '')}):", "",
             "| budget (changes from the default) | gap | paired SD | gap / SD | blocks | passed |",
             "|---|---|---|---|---|---|"]
    for tried in gate.get("budgets_tried", []):
        gap, sd = tried["gap"], tried["paired_sd"]
        ratio = None if gap is None or sd is None else (gap / sd if sd else math.inf)
        lines.append(f"| {tried['budget'] or 'default'} | {_number(gap)} | {_number(sd, '.2f')} | "
                     f"{_number(ratio, '.2f')} | {tried['n_blocks']} | {'yes' if tried['passed'] else 'no'} |")
    return "\n".join(lines)


def plot(results: Mapping[str, Any], path: Path) -> None:
    """Left: primary endpoint (mean and 95 % t interval over blocks) against fraction, one line per
    arm. Right: the primary contrast's per-block differences, its interval and the ±Δ band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    summary = results["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    fractions = sorted(summary, key=float)
    for index, arm in enumerate(ARMS):
        shown = [f for f in fractions if arm in summary[f]]
        if not shown:
            continue
        values = [summary[f][arm]["primary_score"] for f in shown]
        errors = [0.0 if v["n"] < 2 else stats.t.ppf(0.975, v["n"] - 1) * v["sd"] / math.sqrt(v["n"]) for v in values]
        offset = (index - 2) * 1.2
        left.errorbar([100 * float(f) + offset for f in shown], [v["mean"] for v in values], yerr=errors, marker="o",
                      capsize=3, label=arm)
    left.set_xlabel("pre-training data (percent of the block's pool)")
    left.set_ylabel("open accuracy, likelihood-ranked (%)")
    left.set_xticks([100 * float(f) for f in fractions])
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    primary = results.get("primary")
    if primary and primary["n"]:
        right.scatter(range(len(primary["differences"])), primary["differences"], color="k", s=12, label="blocks")
        right.axhline(primary["mean"], color="C0", label=f"mean {primary['mean']:+.2f}")
        if primary["ci95"][0] is not None:
            right.axhspan(*primary["ci95"], color="C0", alpha=0.2, label="95 % interval")
        right.axhspan(-primary["delta"], primary["delta"], color="C2", alpha=0.08, label="±Δ")
        right.axhline(0, color="grey", lw=0.8)
        right.set_xlabel("block")
        right.set_ylabel(f"{primary['contrast']} (points)")
        right.legend(fontsize=8)
        right.set_title(primary["verdict"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
