"""`exgramed report`: a Markdown + HTML report of a swift training run and its evaluations.

Why: a run's state is spread over swift's ``logging.jsonl`` (train losses incl. the plugin's
``lm_loss``/``align_loss``, eval metrics such as ``eval_average`` of ``--eval_metric exgra_vqa``),
``args.json`` and the JSON files written by ``exgramed eval-vqa`` / ``eval-zeroshot``. The report puts
loss curves, eval curves and accuracy by answer type (or by dataset) in one place, with a
``report.json`` holding the same numbers for machines.

Plots use matplotlib's object API (``Figure``), so no global pyplot state or display is needed.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgramed_plugin.common.jsonio import print_summary, read_json, read_jsonl, write_json

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss", "lm_loss", "align_loss")
STEP_KEY = "global_step/max_steps"
VQA_KEYS = ("closed_accuracy", "open_recall", "average")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def find_logging_file(run: str | Path) -> Path:
    """``logging.jsonl`` of a run: the path itself, ``<run>/logging.jsonl``, or the newest ``<run>/v*/``."""
    run = Path(run)
    if run.is_file():
        return run
    direct = run / "logging.jsonl"
    if direct.is_file():
        return direct
    candidates = sorted(run.glob("*/logging.jsonl"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"no logging.jsonl in {run} or its sub-folders (is it a swift output dir?)")
    if len(candidates) > 1:
        logger.info("%d runs under %s; using the newest, %s", len(candidates), run, candidates[-1].parent)
    return candidates[-1]


def _step(row: dict[str, Any]) -> int | None:
    value = row.get(STEP_KEY)
    if isinstance(value, str) and "/" in value:
        try:
            return int(value.split("/", 1)[0])
        except ValueError:
            return None
    step = row.get("step", row.get("global_step"))
    return step if isinstance(step, int) else None


@dataclass
class RunLog:
    """Scalar series by name (``[(step, value)]``), split into training and evaluation."""

    path: Path
    train: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    eval: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    max_steps: int | None = None


def read_logging(path: str | Path) -> RunLog:
    """Parse swift's ``logging.jsonl``; rows without a step (the final summary) go to ``summary``.

    A run still training may have a half-written last line: it is left out with a warning.
    """
    log = RunLog(Path(path))
    for _, row in read_jsonl(path, drop_torn_last_line=True):
        step = _step(row)
        if isinstance(row.get(STEP_KEY), str) and "/" in row[STEP_KEY]:
            try:
                log.max_steps = int(row[STEP_KEY].split("/", 1)[1])
            except ValueError:
                pass
        if step is None or "train_runtime" in row:
            log.summary.update({k: v for k, v in row.items() if k != "log_history"})
            continue
        for key, value in row.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or key == "epoch":
                continue
            target = log.eval if key.startswith("eval_") else log.train
            target.setdefault(key, []).append((step, float(value)))
    return log


def read_eval_file(path: str | Path) -> dict[str, Any]:
    """An ``eval-vqa`` metrics JSON or an ``eval-zeroshot`` JSON, tagged with its kind."""
    data = read_json(path)
    if isinstance(data, dict) and "original" in data and "counts" in data:
        return {"kind": "vqa", "path": str(path), "data": data}
    if isinstance(data, dict) and "overall" in data and "per_dataset" in data:
        return {"kind": "zeroshot", "path": str(path), "data": data}
    raise ValueError(f"{path}: neither an `exgramed eval-vqa` metrics JSON nor an `eval-zeroshot` JSON")


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------


def _figure():
    from matplotlib.figure import Figure
    return Figure(figsize=(7, 4), dpi=100, layout="constrained")


def plot_series(series: dict[str, list[tuple[int, float]]], keys: Sequence[str], title: str, ylabel: str,
                out: Path) -> Path | None:
    """Line plot of the given series against the step; None when none of them exists."""
    present = [k for k in keys if series.get(k)]
    if not present:
        return None
    figure = _figure()
    axes = figure.add_subplot()
    for key in present:
        steps, values = zip(*series[key])
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(out)
    return out


def plot_bars(groups: dict[str, dict[str, float | None]], title: str, ylabel: str, out: Path) -> Path | None:
    """Grouped bars: one group per key of ``groups``, one bar per inner key (None drawn as 0)."""
    if not groups:
        return None
    labels = list(groups)
    series_names: list[str] = []
    for values in groups.values():
        series_names.extend(k for k in values if k not in series_names)
    figure = _figure()
    axes = figure.add_subplot()
    width = 0.8 / max(len(series_names), 1)
    for index, name in enumerate(series_names):
        xs = [i + (index - (len(series_names) - 1) / 2) * width for i in range(len(labels))]
        ys = [groups[label].get(name) or 0.0 for label in labels]
        bars = axes.bar(xs, ys, width=width, label=name)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0, ha="right" if
                    len(labels) > 3 else "center", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 105)
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.savefig(out)
    return out


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageCell:
    """A table cell showing an image (``src`` relative to the report's folder), e.g. a thumbnail."""

    src: str
    alt: str


def _fmt(value: Any) -> str | ImageCell:
    if value is None:
        return "n/a"
    if isinstance(value, ImageCell):
        return value
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def _md_cell(cell: str | ImageCell) -> str:
    if isinstance(cell, ImageCell):
        return f"![{cell.alt}]({cell.src})"
    return cell.replace("|", "\\|").replace("\n", " ")


def _html_cell(cell: str | ImageCell) -> str:
    if isinstance(cell, ImageCell):
        return f'<img class="thumb" src="{html.escape(cell.src)}" alt="{html.escape(cell.alt)}">'
    return html.escape(cell)


class ReportDocument:
    """Blocks rendered to both Markdown and HTML (so the two never disagree); images are referenced
    by file name, so they sit beside the report."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("para", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[_fmt(c) for c in r] for r in rows])))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(("image", (path.name, alt)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "para":
                out.append(value)
            elif kind == "table":
                header, rows = value
                out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                     + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]))
            else:
                out.append(f"![{value[1]}]({value[0]})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{html.escape(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append(f"<p>{html.escape(value)}</p>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
                lines = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>")
            else:
                body.append(f'<img src="{html.escape(value[0])}" alt="{html.escape(value[1])}">')
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}td:first-child{text-align:left}"
                 "img{max-width:100%}img.thumb{width:64px}")
        return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    json: Path
    plots: tuple[Path, ...]


def _last(series: list[tuple[int, float]] | None) -> float | None:
    return series[-1][1] if series else None


def effective_arguments(args: dict[str, Any]) -> dict[str, Any]:
    """A run's ``args.json`` with what swift decided after writing it: ``gradient_accumulation_steps``
    is saved as null when not given, and swift's TrainingArguments then use
    ``max(1, ceil(16 / per_device_train_batch_size / world_size))`` (swift/trainers/arguments.py)."""
    if args.get("gradient_accumulation_steps") is None and args.get("per_device_train_batch_size"):
        world = int(args.get("global_world_size") or 1)
        args = {**args, "gradient_accumulation_steps": max(1, math.ceil(16 / int(args["per_device_train_batch_size"])
                                                                      / world))}
    return args


def build_report(run: str | Path, evals: Sequence[str | Path] = (), out_dir: str | Path | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html``, ``report.json`` and the PNG plots into ``out_dir``."""
    logging_path = find_logging_file(run)
    log = read_logging(logging_path)
    out = Path(out_dir) if out_dir is not None else logging_path.parent / "exgramed_report"
    out.mkdir(parents=True, exist_ok=True)
    eval_files = [read_eval_file(p) for p in evals]
    doc = ReportDocument()
    plots: list[Path] = []
    machine: dict[str, Any] = {"run": str(logging_path.parent), "logging": str(logging_path),
                               "max_steps": log.max_steps, "train": {}, "eval": {}, "evaluations": []}

    doc.heading(f"Training report: {logging_path.parent.name}", 1)
    doc.para(f"Run folder: {logging_path.parent}. Source: {logging_path.name}"
             + (f", {log.max_steps} steps planned." if log.max_steps else "."))
    args_path = logging_path.parent / "args.json"
    if args_path.is_file():
        try:
            args = effective_arguments(read_json(args_path))
            keys = ("model", "dataset", "tuner_type", "learning_rate", "per_device_train_batch_size",
                    "gradient_accumulation_steps", "num_train_epochs", "max_steps", "eval_metric")
            doc.table(["argument", "value"], [[k, json.dumps(args.get(k))] for k in keys if k in args])
            machine["args"] = {k: args.get(k) for k in keys if k in args}
        except ValueError as error:
            logger.warning("%s (its arguments are left out of the report)", error)

    doc.heading("Losses")
    loss_keys = list(LOSS_KEYS) + sorted(k for k in log.train if k.endswith("_loss") and k not in LOSS_KEYS)
    rows = []
    for key in loss_keys:
        series = log.train.get(key)
        if series:
            values = [v for _, v in series]
            rows.append([key, len(series), values[0], values[-1], min(values)])
            machine["train"][key] = {"first": values[0], "last": values[-1], "min": min(values),
                                     "points": len(series)}
    if rows:
        doc.table(["series", "points", "first", "last", "min"], rows)
        plot = plot_series(log.train, loss_keys, "training losses", "loss", out / "losses.png")
        if plot:
            plots.append(plot)
            doc.image(plot, "training losses")
        missing = [k for k in LOSS_KEYS if k not in log.train]
        if missing:
            doc.para(f"Not logged in this run: {', '.join(missing)}.")
    else:
        doc.para("No training loss was logged.")

    if log.eval:
        doc.heading("Evaluation during training")
        doc.table(["metric", "points", "last", "best (max)", "best (min)"],
                  [[k, len(s), _last(s), max(v for _, v in s), min(v for _, v in s)]
                   for k, s in sorted(log.eval.items())])
        machine["eval"] = {k: {"last": _last(s), "max": max(v for _, v in s), "min": min(v for _, v in s),
                               "points": len(s)} for k, s in log.eval.items()}
        loss_plot = plot_series(log.eval, [k for k in log.eval if k.endswith("loss")], "evaluation loss", "loss",
                                out / "eval_loss.png")
        metric_keys = [k for k in sorted(log.eval) if not k.endswith("loss") and not k.endswith(("runtime",
                       "per_second")) and not k.startswith(("eval_num_", "eval_steps"))]
        metric_plot = plot_series(log.eval, metric_keys, "evaluation metrics", "value", out / "eval_metrics.png")
        for plot, alt in ((loss_plot, "evaluation loss"), (metric_plot, "evaluation metrics")):
            if plot:
                plots.append(plot)
                doc.image(plot, alt)

    vqa = [e for e in eval_files if e["kind"] == "vqa"]
    if vqa:
        doc.heading("VQA accuracy by answer type")
        rows, bars = [], {}
        for index, entry in enumerate(vqa, start=1):
            data = entry["data"]
            label = Path(entry["path"]).stem.replace(".metrics", "") or f"eval {index}"
            if label in bars:
                label = f"{label} ({index})"
            counts = data.get("counts", {})
            for metric_set in ("original", "strict"):
                values = data.get(metric_set, {})
                rows.append([label, metric_set, counts.get("open"), counts.get("closed")]
                            + [values.get(k) for k in VQA_KEYS])
                bars[f"{label}\n{metric_set}"] = {k: values.get(k) for k in VQA_KEYS}
            machine["evaluations"].append({"kind": "vqa", "path": entry["path"], "label": label,
                                           "counts": counts,
                                           **{s: {k: data.get(s, {}).get(k) for k in VQA_KEYS}
                                              for s in ("original", "strict")}})
        doc.table(["evaluation", "metrics", "open n", "closed n", "closed accuracy", "open recall", "average"], rows)
        plot = plot_bars(bars, "accuracy by answer type (closed: accuracy, open: recall)", "%", out / "vqa_by_type.png")
        if plot:
            plots.append(plot)
            doc.image(plot, "VQA accuracy by answer type")
        doc.para("original = run_eval.py metrics with their quirks; strict = corrected (see `exgramed eval-vqa`).")

    zeroshot = [e for e in eval_files if e["kind"] == "zeroshot"]
    for entry in zeroshot:
        data = entry["data"]
        label = Path(entry["path"]).stem
        scorings = list(data["overall"])
        doc.heading(f"Zero-shot accuracy: {label}")
        rows = [["ALL", data["overall"][scorings[0]]["samples"]] + [data["overall"][s]["accuracy"] for s in scorings]]
        for group in ("per_dataset", "per_modality"):
            for key, stats in data.get(group, {}).items():
                rows.append([f"{group[4:]}: {key}", stats[scorings[0]]["samples"]]
                            + [stats[s]["accuracy"] for s in scorings])
        doc.table(["group", "n"] + [f"{s} accuracy" for s in scorings], rows)
        failed = data.get("failed", [])
        doc.para(f"{len(failed)} failed sample(s), counted as wrong.")
        plot = plot_bars({k: {s: v[s]["accuracy"] for s in scorings} for k, v in data.get("per_dataset", {}).items()},
                         f"zero-shot accuracy by dataset ({label})", "%", out / f"zeroshot_{len(plots)}.png")
        if plot:
            plots.append(plot)
            doc.image(plot, "zero-shot accuracy by dataset")
        machine["evaluations"].append({"kind": "zeroshot", "path": entry["path"], "overall": data["overall"],
                                       "failed": len(failed)})

    files = ReportFiles(out / "report.md", out / "report.html", out / "report.json", tuple(plots))
    files.markdown.write_text(doc.markdown(), encoding="utf-8")
    files.html.write_text(doc.html(f"exgramed report: {logging_path.parent.name}"), encoding="utf-8")
    machine["plots"] = [str(p) for p in plots]
    write_json(files.json, machine)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exgramed report",
        description="Markdown + HTML report (tables and plots) of a swift run: losses, eval metrics, and the "
                    "accuracy of `exgramed eval-vqa` / `eval-zeroshot` results.")
    parser.add_argument("--run", required=True, help="swift output dir (holding logging.jsonl, or v*-* runs)")
    parser.add_argument("--eval", nargs="*", default=[], help="eval-vqa *.metrics.json / eval-zeroshot *.json")
    parser.add_argument("--out", default=None, help="output folder (default: <run>/exgramed_report)")
    args = parser.parse_args(argv)
    try:
        files = build_report(args.run, args.eval, args.out)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {files.markdown}, {files.html} and {len(files.plots)} plot(s)")
    print_summary({"markdown": str(files.markdown), "html": str(files.html), "json": str(files.json),
                   "plots": [str(p) for p in files.plots]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
