"""``exgramed experiment data-efficiency``: the paper's data-efficiency claim as a preregistered miniature.

The paper (docs/method.md §4.3, §5, §7): pre-training on 10 % of the data, ExGra-Med (MGA) keeps
VQA-RAD at 72.52 where LLaVA-Med drops to 52.39. Its protocol cuts *pre-training* (same epochs, so
10 % gets 10 % of the steps) and fine-tunes every model on the same downstream set with one recipe.
This command runs that protocol on easy-vqa (docs/experiments.md): blocks of cells (.protocol), each
cell pre-trains with its arm and fine-tunes on the one downstream file (.cell), in process (.loop);
the analysis (.analysis) follows the plan committed in docs/experiments.md (.preregistration).

Modes (one per call):

* ``--gate``: arm ``none`` at 10 % and 100 % on pilot blocks with one budget; appends the gate's
  figures to ``<out>/gate.json``; at most three budgets, none after one passed;
* ``--plan-numbers``: from ``<out>/gate.json``: the pilot SD, the power of 12 blocks for Δ, the
  blocks needed for 80 %, the projected wall time of the grid (a 10-step timing probe of each arm,
  no outcome measured), and the plan's json block to paste;
* the grid (no mode flag): the cells and blocks of the committed plan; refuses to run without it;
* ``--quick``: one block, few steps, every required cell (the CI smoke test, < 2 minutes);
* ``--summarize-only``: rebuild ``results.json``, ``table.md`` and the plot from the finished cells
  of ``--out`` (also cells written by ``--score-cell`` from a GPU user's own runs);
* ``--score-cell``: the endpoints of one checkpoint on a VQA test file, as a cell of ``--out``
  (GPU users' runs of the same design, docs/experiments.md).

Every cell runs in a process of its own (``python -m exgramed_plugin.commands.experiment.cell``), ``--jobs``
at a time, its log in ``<out>/cells/<cell>.log``; a failed cell stops the run with its log.
Finished cells are kept, so a stopped run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ...common.jsonio import print_summary, read_json, write_json
from ...common.logs import log_tail
from ...settings import SETTING_KEYS
from . import analysis
from .blocks import BlockFiles, SharedFiles, prepare_block, prepare_shared
from .cell import CellSpec
from ..paths import PACKAGE_DIR
from .external import SCORE_CELL_OPTIONS, add_score_cell_arguments
from .preregistration import PlanError, code_version, committed_plan
from .protocol import (ARMS, FULL, PILOT_BLOCK_BASE, PRIMARY_CONTRAST, QUICK, Budget, budget_changes, budget_key,
                       cell_name)
from .report import cell_means, format_gate, format_tables, plot

logger = logging.getLogger(__name__)
DEFAULT_PLAN = PACKAGE_DIR.parent / "docs" / "experiments.md"
DEFAULT_CACHE = Path("~/.cache/exgramed/data_efficiency").expanduser()
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
REQUIRED_CELLS = {0.1: ("none", "mga", "lm-long"), 1.0: ("none",)}
GATE_CELLS = {0.1: ("none",), 1.0: ("none",)}
SECONDARY = ("mga-lm-long@0.1", "lm-long-none@0.1", "mga@0.1-none@1.0")
SECONDARY_ENDPOINTS = ("zero_shot_score", "closed_score", "generated_average")
MAX_GATE_BUDGETS = 3
DEFAULT_PILOT_BLOCKS = 4
DEFAULT_DELTA = 3.0
TIMING_PROBE_STEPS = 10


class ExperimentError(ValueError):
    """Bad input to the command: names the option or file."""


class CellFailed(RuntimeError):
    """A cell's process failed; the message holds its log's tail."""


# ------------------------------------------------------------------------------------------------ set-up


@dataclass
class Setup:
    tokenizer: Any
    tower: Path | None
    warm: Path
    shared: SharedFiles
    report: dict[str, Any]


def prepare(out: Path, budget: Budget, cache: Path) -> Setup:
    """Tokenizer, stage-0 tower and warm-up (cached in ``cache``), the shared files (in ``out/data``)."""
    from ...tiny_checkpoints.exgra_med import make_tiny_checkpoint
    from .tokenizer import build_experiment_tokenizer
    from .vision_pretrain import Stage0Settings, pretrain_vision_tower, settings_key
    from .warmup import WarmupSettings, warm_up_checkpoint

    start = time.perf_counter()
    tokenizer = build_experiment_tokenizer()
    small = budget.stage0_images is not None
    stage0 = Stage0Settings(image_size=budget.image_size, patch_size=budget.patch_size,
                            vision_hidden_size=budget.vision_hidden_size, vision_layers=budget.vision_layers,
                            downstream_images=budget.downstream_images, universe_images=budget.universe_images,
                            epochs=budget.stage0_epochs, max_train_images=budget.stage0_images,
                            heldout_images=100 if small else 300, max_test_images=200 if small else None)
    cached = cache / f"stage0-{settings_key(stage0)}"  # the tower and what is built on it
    tower, stage0_report = pretrain_vision_tower(cached / "stage0", stage0)
    base = make_tiny_checkpoint(cached / "base", tokenizer=tokenizer, vision_tower_weights=tower,
                                image_size=budget.image_size, patch_size=budget.patch_size,
                                vision_hidden_size=budget.vision_hidden_size, vision_layers=budget.vision_layers,
                                hidden_size=budget.hidden_size, num_layers=budget.num_layers, seed=0)
    warm, warm_report = warm_up_checkpoint(base, cached / "warmup", WarmupSettings(steps=budget.warmup_steps,
                                                                                  learning_rate=budget.learning_rate))
    shared = prepare_shared(out / "data", budget)
    report = {"stage0": stage0_report, "warmup": warm_report, "tokenizer_size": len(tokenizer), "data": shared.counts,
              "setup_s": time.perf_counter() - start}
    return Setup(tokenizer, tower, warm, shared, report)


def prepare_blocks(out: Path, setup: Setup, budget: Budget, blocks: Sequence[int],
                   fractions: Sequence[float]) -> dict[int, BlockFiles]:
    return {block: prepare_block(out / "blocks" / f"block{block:04d}", block, budget, fractions,
                                 downstream_rows=setup.shared.counts["downstream_rows"], warm_checkpoint=setup.warm,
                                 tokenizer=setup.tokenizer, tower=setup.tower) for block in blocks}


def cell_specs(out: Path, setup: Setup, files: Mapping[int, BlockFiles], budget: Budget,
               cells: Mapping[float, Sequence[str]]) -> list[CellSpec]:
    """Every (block, fraction, arm) of ``cells`` for every block of ``files``, block after block."""
    specs = []
    shared = setup.shared
    for block, block_files in files.items():
        for fraction, arms in cells.items():
            for arm in arms:
                specs.append(CellSpec(block, fraction, arm, str(block_files.checkpoint),
                                      str(block_files.pretrain[fraction]), str(block_files.pretrain_batches[fraction]),
                                      str(shared.downstream), str(block_files.finetune_batches), str(shared.test_open),
                                      str(shared.test_closed), str(shared.candidates),
                                      str(out / "cells" / cell_name(block, fraction, arm)), asdict(budget)))
    return specs


# ------------------------------------------------------------------------------------------------ running cells


def _cell_environment(threads: int | None) -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": os.pathsep.join(
        [str(PACKAGE_DIR.parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for key in [name for name in env if name.lower() in SETTING_KEYS]:  # the arm alone decides them
        env.pop(key)
    if threads is not None:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(key, str(threads))
    return env


def run_cell_process(spec: CellSpec, threads: int | None = None) -> dict[str, Any]:
    """One cell in a fresh interpreter, logged to ``<cell>.log``; its result (also ``<cell>.result.json``)."""
    spec_path, result_path, log_path = (Path(spec.out_dir + suffix)
                                        for suffix in (".spec.json", ".result.json", ".log"))
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(spec_path, asdict(spec), indent=1)
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with log_path.open("w") as log:
        completed = subprocess.run([sys.executable, "-m", "exgramed_plugin.commands.experiment.cell", str(spec_path),
                                    str(result_path)], env=_cell_environment(threads), stdout=log,
                                   stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0 or not result_path.is_file():
        raise CellFailed(f"cell {cell_name(spec.block, spec.fraction, spec.arm)} failed (exit {completed.returncode}); "
                         f"log {log_path}:\n{log_tail(log_path)}")
    result = read_json(result_path)
    result["wall_s"] = time.perf_counter() - start
    write_json(result_path, result, indent=1)
    return result


def run_cells(specs: Sequence[CellSpec], jobs: int) -> list[dict[str, Any]]:
    """Every cell of ``specs`` (finished ones reused), ``jobs`` at a time; the first failure stops the
    run (cells already started finish, no new one starts) and is raised with its log."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    stop = threading.Event()
    results: dict[int, dict[str, Any]] = {}

    def one(index: int) -> dict[str, Any] | None:
        spec = specs[index]
        done = Path(spec.out_dir + ".result.json")
        if done.is_file():
            return read_json(done)
        if stop.is_set():
            return None
        try:
            return run_cell_process(spec, threads)
        except CellFailed:
            stop.set()  # before this worker thread takes the next cell
            raise

    failure: CellFailed | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(one, index): index for index in range(len(specs))}
        for future in as_completed(futures):
            try:
                cell = future.result()
            except CellFailed as error:
                failure = failure or error
                continue
            if cell is None:
                continue
            results[futures[future]] = cell
            logger.info("[%d/%d] %s: primary %.2f (zero-shot %.2f) in %.0f s", len(results), len(specs),
                        cell_name(cell["block"], cell["fraction"], cell["arm"]), cell["primary_score"],
                        cell["zero_shot_score"], cell.get("wall_s") or 0.0)
    if failure is not None:
        raise failure
    return [results[index] for index in sorted(results)]


# ------------------------------------------------------------------------------------------------ checks


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Nested prefixes of one pool: increasing, in (0, 1], the last the whole pool (1.0)."""
    fractions = tuple(float(f) for f in fractions)
    if (not fractions or any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(set(fractions))
            or fractions[-1] != 1.0):
        raise ExperimentError(f"--fractions {' '.join(map(str, fractions))}: the subsets must be nested prefixes of "
                              "one pool, given increasing in (0, 1] and ending with 1.0 (e.g. 0.1 0.4 1.0)")
    return fractions


def claim_folder(out: Path, protocol: Mapping[str, Any]) -> None:
    """Write ``<out>/protocol.json``, or check that the folder already holds this protocol's run."""
    path = out / "protocol.json"
    if path.is_file():
        earlier = read_json(path)
        differing = sorted(key for key in set(earlier) | set(protocol) if earlier.get(key) != protocol.get(key))
        if differing:
            raise ExperimentError(f"--out {out}: the folder holds a run of another protocol (it differs in "
                                  f"{', '.join(differing)}); choose another --out or remove the folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, protocol, indent=1)


def _cells_of(plan_cells: Mapping[str, Sequence[str]]) -> dict[float, tuple[str, ...]]:
    cells = {float(fraction): tuple(arms) for fraction, arms in plan_cells.items()}
    for arm in {a for arms in cells.values() for a in arms} - set(ARMS):
        raise ExperimentError(f"the plan names an unknown arm {arm!r}; arms: {', '.join(ARMS)}")
    return dict(sorted(cells.items()))


def check_plan(settings: Mapping[str, Any], source: str) -> None:
    """The plan's own consistency: the issue's required cells and blocks, a gate that passed with its budget."""
    cells = _cells_of(settings.get("cells", {}))
    missing = [f"{arm}@{fraction}" for fraction, arms in REQUIRED_CELLS.items() for arm in arms
               if arm not in cells.get(fraction, ())]
    if missing:
        raise ExperimentError(f"{source}: the plan lacks the required cells {', '.join(missing)}")
    if int(settings.get("blocks", 0)) < analysis.MIN_BLOCKS:
        raise ExperimentError(f"{source}: the plan has {settings.get('blocks')} blocks; the protocol needs >= "
                              f"{analysis.MIN_BLOCKS}")
    gate = settings.get("gate") or {}
    passing = [tried for tried in gate.get("budgets_tried", []) if tried.get("passed")]
    if not gate.get("passed") or not passing:
        raise ExperimentError(f"{source}: the plan's gate did not pass; no alignment arm may run")
    if passing[-1].get("budget") != settings.get("budget"):
        raise ExperimentError(f"{source}: the plan's budget {settings.get('budget')} is not the one that passed the "
                              f"gate ({passing[-1].get('budget')})")


# ------------------------------------------------------------------------------------------------ results


def assemble(out: Path, cells: list[dict[str, Any]], protocol: Mapping[str, Any], setup_report: Mapping[str, Any],
             *, plan: Mapping[str, Any], gate: Mapping[str, Any] | None, wall_s: float | None) -> dict[str, Any]:
    """``results.json`` (the output contract of docs/experiments.md), ``table.md`` and the plot."""
    from .diagnostics import question_only_baseline

    cells = sorted(cells, key=lambda c: (c["block"], float(c["fraction"]), ARMS.index(c["arm"])))
    found = analysis.analyse(cells, primary=plan.get("primary", PRIMARY_CONTRAST),
                             delta=float(plan.get("delta", DEFAULT_DELTA)),
                             secondary=plan.get("secondary", SECONDARY),
                             secondary_endpoints=plan.get("secondary_endpoints", SECONDARY_ENDPOINTS))
    prior = None
    data = Path(protocol["data_dir"]) if protocol.get("data_dir") else None
    if data is not None and (data / "downstream_train.json").is_file():
        test_all = out / "baseline" / "test_all.json"
        test_all.parent.mkdir(parents=True, exist_ok=True)
        write_json(test_all, read_json(data / "test_open.json") + read_json(data / "test_closed.json"))
        prior = question_only_baseline(data / "downstream_train.json", test_all, data / "candidate.json",
                                       out / "baseline")["original"]
    budget = protocol.get("budget") or {}
    steps = {str(f): sorted({c["pretrain"]["steps"] for c in cells if float(c["fraction"]) == f} - {None})
             for f in sorted({float(c["fraction"]) for c in cells})}
    results = {
        "protocol": {"epochs_per_fraction": budget.get("pretrain_epochs"),
                     "finetune_steps": sorted({c["finetune"]["steps"] for c in cells} - {None}),
                     "pretrain_steps": steps, "test_items": (cells[0]["test_items"]["open"] if cells else None),
                     "closed_test_items": (cells[0]["test_items"]["closed"] if cells else None),
                     "plan_commit": protocol.get("plan_commit"), "plan_sha256": protocol.get("plan_sha256"),
                     "finetune_data_sha256": sorted({c["finetune_data_sha256"] for c in cells}),
                     **{key: protocol.get(key) for key in ("kind", "budget", "budget_key", "cells", "blocks")}},
        "cells": cells, "gate": gate, **found, "summary": cell_means(cells), "question_only_prior": prior,
        "setup": setup_report, "code": read_json(out / "code.json") if (out / "code.json").is_file() else None,
        "wall_s": wall_s, "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
    }
    write_json(out / "results.json", results, indent=1)
    (out / "table.md").write_text(format_tables(results))
    plot(results, out / "accuracy_vs_fraction.png")
    return results


def _protocol(kind: str, out: Path, budget: Budget, blocks: Sequence[int], cells: Mapping[float, Sequence[str]],
              **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "budget": asdict(budget), "budget_key": budget_key(budget),
            "cells": {str(f): list(arms) for f, arms in cells.items()}, "blocks": list(blocks),
            "data_dir": str(out / "data"), **extra}


def _run(out: Path, budget: Budget, blocks: Sequence[int], cells: Mapping[float, Sequence[str]], cache: Path,
         jobs: int, protocol: dict[str, Any]) -> tuple[list[dict[str, Any]], Setup, float]:
    claim_folder(out, protocol)
    runs = read_json(out / "code.json") if (out / "code.json").is_file() else []  # one entry per call (resumes)
    write_json(out / "code.json", [*runs, {**(code_version(PACKAGE_DIR) or {}), "started": time.time()}], indent=1)
    started = time.perf_counter()
    setup = prepare(out, budget, cache)
    files = prepare_blocks(out, setup, budget, blocks, sorted(cells))
    results = run_cells(cell_specs(out, setup, files, budget, cells), jobs)
    write_json(out / "setup.json", setup.report, indent=1)
    return results, setup, time.perf_counter() - started


# ------------------------------------------------------------------------------------------------ modes


def run_quick(args: argparse.Namespace) -> dict[str, Any]:
    budget = budget_from_args(args, QUICK)
    fractions = check_fractions(args.fractions or (0.1, 1.0))
    cells = {f: REQUIRED_CELLS.get(f, ("none",)) for f in fractions}
    protocol = _protocol("quick", args.out, budget, (0,), cells)
    results, setup, wall = _run(args.out, budget, (0,), cells, args.cache, args.jobs, protocol)
    return assemble(args.out, results, protocol, setup.report, plan={}, gate=None, wall_s=wall)


def run_gate(args: argparse.Namespace) -> dict[str, Any]:
    """One budget of the gate on ``none``; appends to ``<out>/gate.json`` (module doc)."""
    budget = budget_from_args(args, FULL)
    record_path = args.out / "gate.json"
    record = read_json(record_path) if record_path.is_file() else {"budgets_tried": []}
    tried = record["budgets_tried"]
    changes = budget_changes(budget)
    if any(entry["passed"] for entry in tried):
        raise ExperimentError(f"--out {args.out}: a budget already passed the gate; trying more is choosing among them")
    if any(entry["budget"] == changes for entry in tried):
        raise ExperimentError(f"--out {args.out}: this budget ({changes or 'default'}) was tried already")
    if len(tried) >= MAX_GATE_BUDGETS:
        raise ExperimentError(f"--out {args.out}: {MAX_GATE_BUDGETS} budgets were tried and none passed; the protocol "
                              "stops here: report that instead of running arms")
    blocks = tuple(range(PILOT_BLOCK_BASE, PILOT_BLOCK_BASE + args.pilot_blocks))
    run_dir = args.out / f"budget{len(tried) + 1}"
    protocol = _protocol("gate", run_dir, budget, blocks, GATE_CELLS)
    cells, setup, wall = _run(run_dir, budget, blocks, GATE_CELLS, args.cache, args.jobs, protocol)
    figures = analysis.gate(cells)
    tried.append({"budget": changes, "budget_key": budget_key(budget), **figures, "run": run_dir.name,
                  "wall_s": wall, "cell_wall_s": {cell_name(c["block"], c["fraction"], c["arm"]): c["wall_s"]
                                                  for c in cells if "wall_s" in c}})
    record.update(gap=figures["gap"], paired_sd=figures["paired_sd"], passed=figures["passed"], rule=figures["rule"])
    write_json(record_path, record, indent=1)
    assemble(run_dir, cells, protocol, setup.report, plan={}, gate=record, wall_s=wall)
    (args.out / "gate.md").write_text(format_gate(record) + "\n")
    return record


def _timing_probe(args: argparse.Namespace, budget: Budget, run_dir: Path) -> dict[str, float]:
    """Seconds per pre-training step of each arm: :data:`TIMING_PROBE_STEPS` steps on a pilot block's
    100 % batches, nothing scored (no outcome of an alignment arm is seen)."""
    from .cell import stage2_batches, standard_rows
    from .loop import Recipe, load_stage, train
    from .protocol import arm_settings

    block_dir = run_dir / "blocks" / f"block{PILOT_BLOCK_BASE:04d}"
    rows = standard_rows(str(block_dir / "pretrain_100.json"))
    schedule = read_json(block_dir / "pretrain_batches_100.json")[:TIMING_PROBE_STEPS + 1]
    seconds = {}
    for arm in dict.fromkeys(("none", *(args.arms or ("mga", "lm-long")))):
        stage = load_stage(block_dir / "checkpoint", arm_settings(arm, budget.alpha), seed=0)
        batches = stage2_batches(rows, schedule, arm)
        train(stage, batches[:1], Recipe(budget.learning_rate), seed=0)  # first step: start-up costs
        start = time.perf_counter()
        train(stage, batches[1:], Recipe(budget.learning_rate), seed=0)
        seconds[arm] = (time.perf_counter() - start) / (len(batches) - 1)
    return seconds


def plan_numbers(args: argparse.Namespace) -> dict[str, Any]:
    """The numbers the plan takes from the pilots (module doc); nothing is written."""
    record_path = args.out / "gate.json"
    if not record_path.is_file():
        raise ExperimentError(f"--out {args.out}: no gate.json; run --gate first")
    record = read_json(record_path)
    passing = [entry for entry in record["budgets_tried"] if entry["passed"]]
    if not passing:
        raise ExperimentError(f"--out {args.out}: no budget passed the gate ({len(record['budgets_tried'])} tried); "
                              "the protocol stops here")
    entry = passing[-1]
    budget = replace(FULL, **entry["budget"])
    run_dir = args.out / entry["run"]
    sd = entry["paired_sd"]
    needed = analysis.blocks_for_power(args.delta, sd)
    seconds = _timing_probe(args, budget, run_dir)
    pilot_cells = {name: read_json(run_dir / "cells" / f"{name}.result.json") for name in entry["cell_wall_s"]}
    fixed = [c["wall_s"] - c["timings"]["pretrain_s"] for c in pilot_cells.values()]
    none_step = sum(c["timings"]["pretrain_s"] for c in pilot_cells.values()) / \
        sum(c["pretrain"]["steps"] for c in pilot_cells.values())
    steps = {float(f): max(c["pretrain"]["steps"] for c in pilot_cells.values() if math.isclose(c["fraction"], f))
             for f in (0.1, 1.0)}
    steps[0.4] = round(0.4 * steps[1.0])

    def projected(cells: Mapping[float, Sequence[str]]) -> float:
        per_block = sum(sum(fixed) / len(fixed) + steps[f] * none_step * seconds[arm] / seconds["none"]
                        for f, arms in cells.items() for arm in arms)
        return per_block * needed / args.jobs

    gate_s = sum(e["wall_s"] for e in record["budgets_tried"])
    grid_s = projected(REQUIRED_CELLS)
    optional = {**REQUIRED_CELLS, 1.0: ("none", "mga", "lm-long")}
    gate = {key: record[key] for key in ("gap", "paired_sd", "passed", "rule")}
    kept = ("budget", "gap", "paired_sd", "n_blocks", "passed", "differences", "wall_s")
    gate["budgets_tried"] = [{key: tried[key] for key in kept} for tried in record["budgets_tried"]]
    return {"primary": PRIMARY_CONTRAST, "endpoint": "primary_score", "delta": args.delta, "blocks": needed,
            "cells": {str(f): list(arms) for f, arms in REQUIRED_CELLS.items()}, "secondary": list(SECONDARY),
            "secondary_endpoints": list(SECONDARY_ENDPOINTS), "budget": entry["budget"], "gate": gate,
            "pilot_sd": sd, "power_at_12_blocks": analysis.power(args.delta, sd, analysis.MIN_BLOCKS),
            "power": analysis.power(args.delta, sd, needed), "seconds_per_pretrain_step": seconds,
            "projected_grid_wall_s": grid_s, "pilots_wall_s": gate_s, "projected_total_wall_s": grid_s + gate_s,
            "projected_with_optional_wall_s": {
                "mga, lm-long at 100 %": projected(optional) + gate_s,
                "and every arm at 40 %": projected({**optional, 0.4: optional[0.1]}) + gate_s},
            "jobs": args.jobs}


def run_grid(args: argparse.Namespace) -> dict[str, Any]:
    """The cells and blocks of the committed plan (refused without one)."""
    try:
        plan = committed_plan(args.plan)
    except PlanError as error:
        raise ExperimentError(f"--plan: {error}") from None
    settings = plan.settings
    check_plan(settings, str(plan.path))
    if args.blocks is not None and args.blocks != int(settings["blocks"]):
        fewer = "fewer" if args.blocks < int(settings["blocks"]) else "more"
        raise ExperimentError(f"--blocks {args.blocks}: {fewer} blocks than the plan's {settings['blocks']}; the plan "
                              "fixes the sample size")
    cells = _cells_of(settings["cells"])
    if args.fractions is not None and check_fractions(args.fractions) != tuple(cells):
        raise ExperimentError(f"--fractions: the plan's fractions are {' '.join(map(str, cells))}")
    budget = replace(FULL, **settings["budget"])
    blocks = tuple(range(int(settings["blocks"])))
    protocol = _protocol("grid", args.out, budget, blocks, cells, plan_sha256=plan.sha256, plan_commit=plan.commit,
                         plan_file=str(plan.path))
    results, setup, wall = _run(args.out, budget, blocks, cells, args.cache, args.jobs, protocol)
    return assemble(args.out, results, protocol, setup.report, plan=settings, gate=settings["gate"], wall_s=wall)


def run_score_cell(args: argparse.Namespace) -> Path:
    """One GPU user's checkpoint as a cell of ``--out``, whose protocol is the committed ``--plan``'s."""
    from .easy_vqa_data import file_sha256
    from .external import check_arguments, score_cell

    try:
        check_arguments(args)
        plan = committed_plan(args.plan)
    except (ValueError, PlanError) as error:
        raise ExperimentError(str(error)) from None
    cells = _cells_of(plan.settings["cells"])
    blocks = list(range(int(plan.settings["blocks"])))
    if args.block not in blocks:
        raise ExperimentError(f"--block {args.block}: the plan's blocks are 0-{blocks[-1]}")
    if args.arm not in cells.get(args.fraction, ()):
        raise ExperimentError(f"--fraction {args.fraction} --arm {args.arm}: not a cell of the plan "
                              f"({ {str(f): list(a) for f, a in cells.items()} })")
    protocol = {"kind": "external", "cells": {str(f): list(a) for f, a in cells.items()}, "blocks": blocks,
                "plan_sha256": plan.sha256, "plan_commit": plan.commit, "plan_file": str(plan.path),
                "finetune_data_sha256": file_sha256(args.finetune_data), "test_sha256": file_sha256(args.test),
                "candidates_sha256": file_sha256(args.candidates)}
    claim_folder(args.out, protocol)
    earlier = [read_json(path) for path in sorted((args.out / "cells").glob("*.result.json"))]
    try:
        result = score_cell(args, earlier)
    except ValueError as error:
        raise ExperimentError(str(error)) from None
    path = args.out / "cells" / f"{cell_name(args.block, args.fraction, args.arm)}.result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result, indent=1)
    return path


def summarize_only(args: argparse.Namespace) -> dict[str, Any]:
    """Rebuild the outputs of ``--out`` from its finished cells (no training)."""
    protocol_path = args.out / "protocol.json"
    if not protocol_path.is_file():
        raise ExperimentError(f"--out {args.out}: no protocol.json, so no run to summarise")
    protocol = read_json(protocol_path)
    cells = [read_json(path) for path in sorted((args.out / "cells").glob("*.result.json"))]
    wanted = {(b, float(f), a) for b in protocol["blocks"] for f, arms in protocol["cells"].items() for a in arms}
    found = {(c["block"], float(c["fraction"]), c["arm"]) for c in cells}
    missing = sorted(wanted - found)
    if missing:
        raise ExperimentError(f"--out {args.out}: no finished cell for (block, fraction, arm) {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing)")
    plan = _plan_at(protocol) if protocol.get("plan_commit") else {}
    setup = read_json(args.out / "setup.json") if (args.out / "setup.json").is_file() else {}
    earlier = read_json(args.out / "results.json") if (args.out / "results.json").is_file() else {}
    gate = plan.get("gate") if plan else earlier.get("gate")
    return assemble(args.out, [c for c in cells if (c["block"], float(c["fraction"]), c["arm"]) in wanted], protocol,
                    setup, plan=plan, gate=gate, wall_s=earlier.get("wall_s"))


def _plan_at(protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The plan settings a run recorded, read from git at the plan's commit (checked by its sha256)."""
    from .preregistration import plan_settings, section_at, section_sha256

    plan_file = Path(protocol["plan_file"])
    section = section_at(plan_file, protocol["plan_commit"])
    if section is None or section_sha256(section) != protocol["plan_sha256"]:
        raise ExperimentError(f"{plan_file}: the plan at commit {protocol['plan_commit']} is not the one the run "
                              "recorded")
    return plan_settings(section)


# ------------------------------------------------------------------------------------------------ command line


BUDGET_OPTIONS = {"downstream_images": int, "pool_images": int, "pretrain_epochs": int, "finetune_epochs": int,
                  "pretrain_batch": int, "finetune_batch": int, "learning_rate": float, "warmup_steps": int}


def budget_from_args(args: argparse.Namespace, base: Budget) -> Budget:
    """``base`` with the command line's budget options (they apply to every arm alike)."""
    overrides = {name: getattr(args, name) for name in BUDGET_OPTIONS if getattr(args, name) is not None}
    return replace(base, **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exgramed experiment",
                                     description="small experiments mirroring claims of the ExGra-Med paper")
    sub = parser.add_subparsers(dest="experiment", required=True)
    de = sub.add_parser("data-efficiency", help="easy-vqa: pre-training cut to 10 / 100 percent with and without MGA, "
                                                "fine-tuning fixed, preregistered (docs/experiments.md)")
    modes = de.add_mutually_exclusive_group()
    modes.add_argument("--gate", action="store_true", help="arm none at 10 and 100 percent on pilot blocks, one budget")
    modes.add_argument("--plan-numbers", action="store_true",
                       help="from --out's gate.json: pilot SD, power, blocks, projected time, the plan's json block")
    modes.add_argument("--quick", action="store_true", help="smoke run: one block, few steps, every required cell")
    modes.add_argument("--summarize-only", action="store_true",
                       help="train nothing: rebuild results.json, table.md and the plot from the cells in --out")
    modes.add_argument("--score-cell", action="store_true",
                       help="score one checkpoint as a cell of --out (GPU users' runs; docs/experiments.md)")
    de.add_argument("--out", type=Path, default=Path("exgramed_experiment"), help="output folder")
    de.add_argument("--plan", type=Path, default=None,
                    help=f"the file holding the preregistered plan (grid, --score-cell; default {DEFAULT_PLAN})")
    de.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="stage-0 tower and warm-up cache")
    de.add_argument("--jobs", type=int, default=1, help="cells at a time, each with cpu_count/jobs threads")
    de.add_argument("--blocks", type=int, default=None, help="grid: must equal the plan's block count")
    de.add_argument("--pilot-blocks", type=int, default=None,
                    help=f"--gate: pilot blocks (default {DEFAULT_PILOT_BLOCKS})")
    de.add_argument("--fractions", type=float, nargs="+", default=None,
                    help="pre-training fractions (nested prefixes, increasing, ending with 1.0)")
    de.add_argument("--arms", nargs="+", choices=ARMS, default=None, help="--plan-numbers: arms to time")
    de.add_argument("--delta", type=float, default=None,
                    help=f"--plan-numbers: smallest effect of interest, points (default {DEFAULT_DELTA:g})")
    for name, kind in BUDGET_OPTIONS.items():
        de.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                        help=f"budget (--gate / --quick): {name.replace('_', ' ')}")
    add_score_cell_arguments(de)
    return parser


def _mode(args: argparse.Namespace) -> str:
    return next((mode for mode in MODES if getattr(args, mode)), "grid")


MODES = ("gate", "plan_numbers", "quick", "summarize_only", "score_cell")
# options (their default None) and the modes they belong to; given in another mode they are refused
OPTION_MODES = {"blocks": ("grid",), "pilot_blocks": ("gate",), "arms": ("plan_numbers",),
                "delta": ("plan_numbers",), "fractions": ("grid", "quick"), "plan": ("grid", "score_cell"),
                **{name: ("gate", "quick") for name in BUDGET_OPTIONS},
                **{name: ("score_cell",) for name in SCORE_CELL_OPTIONS}}


def _check_options(args: argparse.Namespace) -> None:
    """Refuse an option given in a mode it does not belong to, then fill the defaults."""
    mode = _mode(args)
    for name, modes in OPTION_MODES.items():
        if getattr(args, name) is not None and mode not in modes:
            where = " or ".join("the grid" if m == "grid" else f"--{m.replace('_', '-')}" for m in modes)
            hint = "; the grid takes its budget from the plan" if mode == "grid" and name in BUDGET_OPTIONS else ""
            raise ExperimentError(f"--{name.replace('_', '-')}: applies to {where} only{hint}")
    if args.jobs < 1:
        raise ExperimentError(f"--jobs {args.jobs}: must be >= 1")
    args.pilot_blocks = DEFAULT_PILOT_BLOCKS if args.pilot_blocks is None else args.pilot_blocks
    if args.pilot_blocks < 2:
        raise ExperimentError(f"--pilot-blocks {args.pilot_blocks}: the gate's SD needs >= 2 blocks")
    args.delta = DEFAULT_DELTA if args.delta is None else args.delta
    if args.delta <= 0:
        raise ExperimentError(f"--delta {args.delta}: the smallest effect of interest must be > 0")
    args.plan = DEFAULT_PLAN if args.plan is None else args.plan
    if args.fractions is not None:
        check_fractions(args.fractions)


def main(argv: list[str] | None = None) -> int:
    """CLI entry (``exgramed experiment ...``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out = args.out.resolve()
    try:
        _check_options(args)
        if args.plan_numbers:
            numbers = plan_numbers(args)
            print(_format_plan_numbers(numbers))
            print_summary({"plan_numbers": numbers})
            return 0
        if args.score_cell:
            path = run_score_cell(args)
            print(f"wrote {path}")
            print_summary({"cell": str(path)})
            return 0
        if args.gate:
            record = run_gate(args)
            print(format_gate(record))
            print_summary({"gate": str(args.out / "gate.json"), "passed": record["passed"],
                           "budgets_tried": len(record["budgets_tried"])})
            return 0
        mode = run_quick if args.quick else summarize_only if args.summarize_only else run_grid
        results = mode(args)
    except ExperimentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except CellFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print((args.out / "table.md").read_text())
    primary = results["primary"]
    print_summary({"results": str(args.out / "results.json"), "table": str(args.out / "table.md"),
                   "plot": str(args.out / "accuracy_vs_fraction.png"), "wall_s": results["wall_s"],
                   "primary": {key: primary[key] for key in ("contrast", "mean", "ci95", "n_blocks", "verdict")}})
    return 0


def _format_plan_numbers(numbers: Mapping[str, Any]) -> str:
    import json
    lines = [f"pilot SD of none@100 % - none@10 % per block: {numbers['pilot_sd']:.3f} points",
             f"power of {analysis.MIN_BLOCKS} blocks for Δ = {numbers['delta']:g}: "
             f"{numbers['power_at_12_blocks']:.3f}",
             f"blocks for >= {analysis.TARGET_POWER:.0%} power: {numbers['blocks']} (power {numbers['power']:.3f})",
             "seconds per pre-training step: " + ", ".join(f"{a} {s:.3f}" for a, s in
                                                            numbers["seconds_per_pretrain_step"].items()),
             f"projected grid wall time with --jobs {numbers['jobs']}: "
             f"{numbers['projected_grid_wall_s'] / 60:.1f} min; pilots so far {numbers['pilots_wall_s'] / 60:.1f} "
             f"min; total {numbers['projected_total_wall_s'] / 60:.1f} min",
             *[f"  total with the optional cells ({name}): {seconds / 60:.1f} min"
               for name, seconds in numbers["projected_with_optional_wall_s"].items()],
             "", "the plan's json block (paste into docs/experiments.md between the plan markers):", "```json",
             json.dumps({k: numbers[k] for k in ("primary", "endpoint", "delta", "blocks", "cells", "secondary",
                                                 "secondary_endpoints", "budget", "gate", "pilot_sd", "power",
                                                 "projected_total_wall_s")}, indent=1), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
