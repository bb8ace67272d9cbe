"""``exgramed experiment data-efficiency``: a CPU miniature of the paper's data-efficiency claim.

The paper: with 10 % of the pre-training data ExGra-Med (MGA) keeps VQA-RAD at 72.52 while
LLaVA-Med (no alignment loss) drops to 52.39; InfoNCE / SigLIP recover less (method-spec §7).
Here, on easy-vqa (see :mod:`.easy_vqa_data`) with one small random-init ``exgra_med`` model:

for every seed x data fraction x arm (``none`` = α 0, ``infonce``, ``mga``) one *cell*:

1. ``swift sft`` stage-2 style: ``--loss_type exgra_mga`` on the alignment file of the fraction
   (LM loss + α · alignment loss; ``--model_kwargs`` mga_alpha / mga_objective select the arm);
2. ``swift sft`` VQA fine-tuning (plain LM loss) on the VQA questions of the same fraction;
3. ``swift infer`` on the test subset (prompt style ``v0``, response mode ``clean``);
4. ``evaluate_vqa`` (original metrics of ``run_eval.py``, strict ones beside them).

All arms of a seed start from the same random checkpoint and use the same steps, batch sizes,
learning rates and seeds. The three swift stages of a cell run in one worker process through
swift's Python API (``sft_main``/``infer_main`` with the same argument lists ``swift sft/infer``
take), which saves two interpreter + swift start-ups per cell.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.jsonio import read_json, read_jsonl, write_json
from ..settings import SETTING_KEYS

logger = logging.getLogger(__name__)
PACKAGE_DIR = Path(__file__).resolve().parent.parent
REGISTER_FILE = PACKAGE_DIR / "register.py"
ARMS = ("none", "infonce", "mga")
FRACTIONS = (0.1, 0.4, 1.0)
SEEDS = (0, 1, 2)
METRICS = ("open_recall", "closed_accuracy", "average")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class Budget:
    """Everything that sets the cost of a run; identical for every arm and fraction."""

    pool_images: int = 400
    stage2_steps: int = 100
    finetune_steps: int = 200
    stage2_batch: int = 8
    finetune_batch: int = 8
    learning_rate: float = 2e-3
    n_open: int = 100
    n_closed: int = 100
    max_new_tokens: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    image_size: int = 64
    patch_size: int = 16
    train_vision_tower: bool = False


FULL = Budget()
QUICK = Budget(stage2_steps=6, finetune_steps=10, n_open=16, n_closed=16)
# Why a pool of 400 images: with 100 + 200 steps of batch 8 a run sees 800 alignment rows and 1,600
# questions; of all 4,000 images (~38,600 questions) even 10 % would be seen less than once, so the
# data fraction could not matter by construction. 10 / 40 / 100 % of the pool = 40 / 160 / 400 images
# (~385 / 1,540 / 3,850 questions). Why these step counts: 20 + 40 steps left the tiny model answering
# "no" to everything (chance level); 100 + 200 is what fits 27 cells into 60 minutes on 2 cores.
# Why the vision tower stays frozen: as in the paper's stage 2 (its encoder is pre-trained; ours is a
# fixed random ViT, i.e. a random-feature encoder); ``train_vision_tower`` switches it on.


@dataclass
class CellSpec:
    """One (seed, fraction, arm) run; written as JSON for the worker process."""

    seed: int
    fraction: float
    arm: str
    checkpoint: str
    alignment: str
    vqa_train: str
    vqa_test: str
    candidates: str
    out_dir: str
    budget: dict[str, Any] = field(default_factory=dict)


def _common_sft_args(budget: Budget, seed: int) -> list[str]:
    return ["--custom_register_path", str(REGISTER_FILE), "--model_type", "exgra_med", "--template", "exgra_med",
            "--tuner_type", "full", "--freeze_vit", str(not budget.train_vision_tower).lower(), "--freeze_aligner", "false", "--torch_dtype", "float32",
            "--learning_rate", str(budget.learning_rate), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.03",
            "--weight_decay", "0.0", "--max_length", "512", "--dataloader_num_workers", "0", "--dataset_num_proc",
            "1", "--check_model", "false", "--strict", "true", "--save_only_model", "true", "--save_total_limit",
            "1", "--report_to", "none", "--seed", str(seed), "--data_seed", str(seed), "--logging_steps", "5"]


def arm_settings(arm: str) -> dict[str, Any]:
    """The stage-2 ``--model_kwargs`` of an arm: ``none`` is mga_alpha 0 (no alignment module), the
    others α = 1 with their objective."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {ARMS}")
    if arm == "none":
        return {"mga_alpha": 0}
    return {"mga_alpha": 1.0, "mga_objective": arm}


# The inference prompt of the miniature: the training format, answers without "Assistant:".
INFER_SETTINGS = {"exgramed_prompt_style": "v0", "exgramed_response_mode": "clean"}


def _checkpoint_of(result: Any, train_dir: Path) -> Path:
    """The checkpoint swift reports, else the newest ``checkpoint-*`` under the run folder."""
    reported = result.get("last_model_checkpoint") if isinstance(result, dict) else None
    if reported and Path(reported).is_dir():
        return Path(reported)
    found = sorted(train_dir.glob("**/checkpoint-*"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no checkpoint written under {train_dir}")
    return found[-1]


def _losses(train_dir: Path) -> dict[str, float]:
    """Last logged training losses of a swift run (``logging.jsonl``)."""
    last: dict[str, float] = {}
    for path in train_dir.glob("**/logging.jsonl"):
        for _, row in read_jsonl(path):
            for key in ("loss", "lm_loss", "align_loss", "matching_accuracy"):
                if isinstance(row.get(key), (int, float)):
                    last[key] = float(row[key])
    return last


def run_cell(spec: CellSpec) -> dict[str, Any]:
    """Stage 2 → VQA fine-tuning → predictions → scores, in this process (swift's Python API).

    The arm's settings go to swift as ``--model_kwargs`` (which swift exports to the environment of
    this process), so call it in a process of its own, as :func:`main` does.
    """
    from swift.pipelines import infer_main, sft_main

    from ..eval.eval_vqa import evaluate_vqa, write_report

    budget = Budget(**spec.budget)
    out = Path(spec.out_dir)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    stage2_dir = out / "stage2"
    result = sft_main([*_common_sft_args(budget, spec.seed), "--model", spec.checkpoint, "--dataset",
                       spec.alignment, "--loss_type", "exgra_mga", "--max_steps", str(budget.stage2_steps),
                       "--save_steps", str(budget.stage2_steps), "--per_device_train_batch_size",
                       str(budget.stage2_batch), "--output_dir", str(stage2_dir),
                       "--model_kwargs", json.dumps(arm_settings(spec.arm))])
    stage2 = _checkpoint_of(result, stage2_dir)
    timings["stage2_s"] = time.perf_counter() - start

    start = time.perf_counter()
    vqa_dir = out / "vqa"
    result = sft_main([*_common_sft_args(budget, spec.seed), "--model", str(stage2), "--dataset", spec.vqa_train,
                       "--max_steps", str(budget.finetune_steps), "--save_steps", str(budget.finetune_steps),
                       "--per_device_train_batch_size", str(budget.finetune_batch), "--output_dir", str(vqa_dir)])
    trained = _checkpoint_of(result, vqa_dir)
    timings["finetune_s"] = time.perf_counter() - start

    start = time.perf_counter()
    predictions = out / "predictions.jsonl"
    infer_main(["--model", str(trained), "--model_kwargs", json.dumps(INFER_SETTINGS), "--val_dataset", spec.vqa_test,
                "--result_path", str(predictions),
                "--max_new_tokens", str(budget.max_new_tokens), "--temperature", "0", "--max_batch_size", "32",
                "--seed", str(spec.seed)])
    timings["infer_s"] = time.perf_counter() - start
    report = evaluate_vqa(spec.vqa_test, predictions, spec.candidates)
    write_report(report, out / "metrics.json", out / "per_question.csv")
    for directory in (stage2_dir, vqa_dir):  # keep the logs, drop the weights (~20 MB per checkpoint)
        for checkpoint in directory.glob("**/checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return {"seed": spec.seed, "fraction": spec.fraction, "arm": spec.arm, "original": report.original,
            "strict": report.strict, "counts": report.counts, "timings": timings,
            "stage2_losses": _losses(stage2_dir), "finetune_losses": _losses(vqa_dir)}


def _run_cell_subprocess(spec: CellSpec, log_path: Path) -> dict[str, Any]:
    """Run :func:`run_cell` in a fresh interpreter (own environment, own swift state); log to a file."""
    spec_path = Path(spec.out_dir + ".spec.json")
    result_path = Path(spec.out_dir + ".result.json")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, asdict(spec), indent=1)
    result_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "exgramed_plugin.experiment.data_efficiency", "_cell", str(spec_path),
               str(result_path)]
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_DIR.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for key in [name for name in env if name.lower() in SETTING_KEYS]:  # the arm alone decides them
        env.pop(key)
    with log_path.open("w") as log:
        completed = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0 or not result_path.is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"cell seed={spec.seed} fraction={spec.fraction} arm={spec.arm} failed "
                           f"(exit {completed.returncode}); log {log_path}:\n{tail}")
    return read_json(result_path)


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(cells: list[dict[str, Any]], metric_set: str = "original") -> dict[str, dict[str, dict[str, Any]]]:
    """``{fraction: {arm: {metric: {"mean", "std", "n", "values"}}}}`` over seeds.

    Besides the VQA metrics, ``image_dependence`` (see :mod:`.diagnostics`) where the cells carry it.
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        summary.setdefault(str(cell["fraction"]), {}).setdefault(cell["arm"], {})
    for fraction, arms in summary.items():
        for arm in arms:
            rows = [c for c in cells if str(c["fraction"]) == fraction and c["arm"] == arm]
            for metric in (*METRICS, "image_dependence"):
                found = [(c if metric == "image_dependence" else c[metric_set]).get(metric) for c in rows]
                values = [float(value) for value in found if value is not None]
                mean, std = _mean_std(values) if values else (float("nan"), float("nan"))
                arms[arm][metric] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return summary


def format_table(summary: dict[str, dict[str, dict[str, Any]]], title: str,
                 baselines: dict[str, dict[str, Any]] | None = None, metric_set: str = "original") -> str:
    """Markdown table: one row per (fraction, arm), ``mean ± std`` per metric.

    ``baselines`` (``{fraction: question_only_baseline(...)}``) adds a ``question-only prior`` row per
    fraction; the last column is the percent of repeated test questions answered differently for
    different images (0 = the answers ignore the image).
    """
    lines = [f"{title}", "", "| data fraction | arm | open recall | closed accuracy | average | answers vary with "
             "image (%) | seeds |", "|---|---|---|---|---|---|---|"]
    for fraction in sorted(summary, key=float):
        percent = f"{round(float(fraction) * 100)} %"
        if baselines and fraction in baselines:
            shown = [f"{baselines[fraction][metric_set][m]:.2f}" for m in METRICS]
            lines.append(f"| {percent} | question-only prior | " + " | ".join(shown) + " | 0 (by construction) | – |")
        for arm in ARMS:
            if arm not in summary[fraction]:
                continue
            cells = summary[fraction][arm]
            shown = [f"{cells[m]['mean']:.2f} ± {cells[m]['std']:.2f}" for m in (*METRICS, "image_dependence")]
            lines.append(f"| {percent} | {arm} | " + " | ".join(shown) + f" | {cells['average']['n']} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, dict[str, Any]]], path: Path, title: str,
         baselines: dict[str, dict[str, Any]] | None = None) -> None:
    """Average accuracy (mean ± std over seeds) against data fraction, one line per arm."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    fractions = sorted(summary, key=float)
    for arm in ARMS:
        xs = [100 * float(f) for f in fractions if arm in summary[f]]
        means = [summary[f][arm]["average"]["mean"] for f in fractions if arm in summary[f]]
        stds = [summary[f][arm]["average"]["std"] for f in fractions if arm in summary[f]]
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=arm)
    if baselines:
        shown = [f for f in fractions if f in baselines]
        ax.plot([100 * float(f) for f in shown], [baselines[f]["original"]["average"] for f in shown], "k--",
                marker="x", label="question-only prior")
    ax.set_xlabel("training data (percent of the pool of easy-vqa train images)")
    ax.set_ylabel("VQA average (open recall + closed acc) / 2")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([100 * float(f) for f in fractions])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cell_name(seed: int, fraction: float, arm: str) -> str:
    return f"seed{seed}_frac{round(fraction * 100):03d}_{arm}"


def _write_outputs(out_dir: Path, cells: list[dict[str, Any]], data: Any, *, budget: Budget, seeds: tuple[int, ...],
                   fractions: tuple[float, ...], arms: tuple[str, ...], wall_s: float | None) -> dict[str, Any]:
    """Diagnostics, summary, ``results.json``, ``table.md`` and the plot from finished cells."""
    from .diagnostics import image_dependence, question_only_baseline

    for cell in cells:
        predictions = out_dir / "cells" / _cell_name(cell["seed"], cell["fraction"], cell["arm"]) / "predictions.jsonl"
        cell["image_dependence"] = image_dependence(data.vqa_test, predictions)
    baselines = {str(f): question_only_baseline(data.fractions[f].vqa_train, data.vqa_test, data.candidates,
                                                out_dir / "baselines" / f"frac{round(f * 100):03d}")
                 for f in fractions}
    summary = {name: summarize(cells, name) for name in ("original", "strict")}
    results = {"partial": False, "budget": asdict(budget), "seeds": list(seeds), "fractions": list(fractions),
               "arms": list(arms), "data": data.counts, "wall_s": wall_s, "load_average_at_end": os.getloadavg(),
               "cpu_count": os.cpu_count(), "question_only_baseline": baselines, "summary": summary, "cells": cells}
    write_json(out_dir / "results.json", results, indent=1)
    tables = [format_table(summary["original"], "Original metrics (run_eval.py, as the paper reports):", baselines),
              format_table(summary["strict"], "Strict metrics (exgramed eval-vqa 'strict'):", baselines, "strict")]
    (out_dir / "table.md").write_text("\n\n".join(tables) + "\n")
    plot(summary["original"], out_dir / "accuracy_vs_fraction.png",
         f"easy-vqa, {len(seeds)} seed(s), {budget.stage2_steps}+{budget.finetune_steps} steps per run", baselines)
    return results


def run_experiment(out_dir: Path, *, budget: Budget, seeds: tuple[int, ...], fractions: tuple[float, ...],
                   arms: tuple[str, ...] = ARMS, summarize_only: bool = False) -> dict[str, Any]:
    """Prepare data, then every cell in its own worker; writes ``results.json``, the table and the plot.

    ``summarize_only``: no training; rebuild the outputs from the cells of an earlier run in ``out_dir``.
    """
    from ..data.tiny import make_tiny_checkpoint
    from .easy_vqa_data import prepare_easy_vqa

    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = prepare_easy_vqa(out_dir / "data", fractions, n_open=budget.n_open, n_closed=budget.n_closed,
                            pool_images=budget.pool_images)
    results_path = out_dir / "results.json"
    if summarize_only:
        if not results_path.is_file():
            raise FileNotFoundError(f"{results_path}: no earlier run to summarise")
        earlier = read_json(results_path)
        wanted = {(s, f, a) for s in seeds for f in fractions for a in arms}
        cells = [c for c in earlier["cells"] if (c["seed"], c["fraction"], c["arm"]) in wanted]
        missing = wanted - {(c["seed"], c["fraction"], c["arm"]) for c in cells}
        if missing:
            raise ValueError(f"{results_path}: no finished cell for (seed, fraction, arm) {sorted(missing)}")
        return _write_outputs(out_dir, cells, data, budget=budget, seeds=seeds, fractions=fractions, arms=arms,
                              wall_s=earlier.get("wall_s"))
    cells: list[dict[str, Any]] = []
    total = len(seeds) * len(fractions) * len(arms)
    for seed in seeds:
        checkpoint = make_tiny_checkpoint(out_dir / "checkpoints" / f"seed{seed}", hidden_size=budget.hidden_size,
                                          num_layers=budget.num_layers, image_size=budget.image_size,
                                          patch_size=budget.patch_size, seed=seed)
        for fraction in fractions:
            files = data.fractions[fraction]
            for arm in arms:
                name = _cell_name(seed, fraction, arm)
                spec = CellSpec(seed, fraction, arm, str(checkpoint), str(files.alignment), str(files.vqa_train),
                                str(data.vqa_test), str(data.candidates), str(out_dir / "cells" / name),
                                asdict(budget))
                cell_start = time.perf_counter()
                cell = _run_cell_subprocess(spec, out_dir / "cells" / f"{name}.log")
                cell["wall_s"] = time.perf_counter() - cell_start
                cells.append(cell)
                print(f"[{len(cells)}/{total}] {name}: average {cell['original']['average']:.2f} "
                      f"(open {cell['original']['open_recall']:.2f}, closed {cell['original']['closed_accuracy']:.2f})"
                      f" in {cell['wall_s']:.0f} s", flush=True)
                write_json(results_path, {"partial": True, "cells": cells}, indent=1)
    return _write_outputs(out_dir, cells, data, budget=budget, seeds=seeds, fractions=fractions, arms=arms,
                          wall_s=time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exgramed experiment",
                                     description="small experiments mirroring claims of the ExGra-Med paper")
    sub = parser.add_subparsers(dest="experiment", required=True)
    de = sub.add_parser("data-efficiency",
                        help="easy-vqa: alignment arms none / infonce / mga at 10, 40 and 100 percent of the data")
    de.add_argument("--quick", action="store_true",
                    help="smoke run: one seed, the 10 percent fraction, few steps, all three arms")
    de.add_argument("--out", type=Path, default=Path("exgramed_experiment"), help="output folder")
    de.add_argument("--seeds", type=int, nargs="+", default=None, help="override the seeds")
    de.add_argument("--fractions", type=float, nargs="+", default=None, help="override the data fractions")
    de.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="override the arms")
    de.add_argument("--stage2-steps", type=int, default=None, help="override the stage-2 steps of every run")
    de.add_argument("--finetune-steps", type=int, default=None, help="override the VQA fine-tuning steps of every run")
    de.add_argument("--train-vision-tower", action="store_true", help="train the (random) vision tower too")
    de.add_argument("--summarize-only", action="store_true",
                    help="train nothing: rebuild table, plot and diagnostics from the finished cells in --out")
    return parser


def budget_from_args(args: argparse.Namespace) -> Budget:
    """``FULL`` (or ``QUICK``) with the step / vision-tower overrides given on the command line."""
    overrides = {"stage2_steps": args.stage2_steps, "finetune_steps": args.finetune_steps,
                 "train_vision_tower": args.train_vision_tower or None}
    return replace(QUICK if args.quick else FULL, **{key: value for key, value in overrides.items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``exgramed experiment ...``); ``_cell SPEC RESULT`` is the internal worker mode."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["_cell"]:
        logging.basicConfig(level=logging.INFO)
        spec = CellSpec(**read_json(argv[1]))
        write_json(argv[2], run_cell(spec), indent=1)
        return 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    budget = budget_from_args(args)
    seeds = tuple(args.seeds) if args.seeds else ((0,) if args.quick else SEEDS)
    fractions = tuple(args.fractions) if args.fractions else ((0.1,) if args.quick else FRACTIONS)
    arms = tuple(args.arms) if args.arms else ARMS
    results = run_experiment(args.out, budget=budget, seeds=seeds, fractions=fractions, arms=arms,
                             summarize_only=args.summarize_only)
    print()
    print((args.out / "table.md").read_text())
    wall = f"wall time {results['wall_s']:.0f} s; " if results["wall_s"] is not None else ""
    print(f"{wall}written: {args.out / 'results.json'}, {args.out / 'table.md'}, "
          f"{args.out / 'accuracy_vs_fraction.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
