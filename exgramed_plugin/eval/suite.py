"""`exgramed eval`: a benchmark suite in one command: questions, answers, scores, one table.

Why: a researcher who trains with the plugin reports VQA-RAD / SLAKE / PathVQA next to the multiple-choice
benchmarks of recent medical VLMs (PMC-VQA, OmniMedVQA, MMMU-Med, MedXpertQA-MM), scored as MedEvalKit
scores them; MedEvalKit itself cannot load a swift checkpoint, an adapter or ``exgra_med``.

For each benchmark, under ``<out>/<benchmark>/``:

1. ``questions.jsonl``: the questions as swift rows (VQA sets from their hub copies,
   ``data/hub_benchmarks.py``; multiple choice with MedEvalKit's prompt, ``multiple_choice.question_row``);
   an invalid question stops the run, or with ``--skip-invalid`` is left out and listed;
2. ``answers.jsonl``: ``exgramed predict`` (swift's engine, batched, resumable: a rerun answers only the
   missing ids), or with ``--score-only`` the answers file given by ``--pred``;
3. ``likelihoods.jsonl`` (``--scoring likelihood``, multiple choice only): each choice's log-likelihood
   through ``zeroshot.option_log_likelihoods``, resumable too;
4. ``metrics.json`` and ``per_question.csv``: VQA sets by ``eval_vqa`` (original, strict, MedEvalKit,
   corrected MedEvalKit), multiple choice by ``multiple_choice.score_choices``.

Then ``<out>/eval.md`` and ``<out>/eval.json``: one row per benchmark (MedEvalKit, corrected, likelihood,
run_eval.py average), the accuracies by MedEvalKit's groups, and, with ``--peers``, published rows stored
with their quotes (``peer_results.json``). The last stdout line is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgramed_plugin.data.hub_benchmarks import load_benchmark
from exgramed_plugin.common.jsonio import append_jsonl, print_summary, read_json, read_jsonl, write_json, write_jsonl
from exgramed_plugin.data.mc_benchmarks import get_choice_benchmark, load_choice_benchmark
from exgramed_plugin.metrics import medevalkit_choice, mmmu_metrics
from exgramed_plugin.metrics import multiple_choice as choice
from exgramed_plugin.eval.eval_vqa import (
    evaluate_vqa,
    id_pairing_problems,
    load_answers,
    write_report,
    write_rows_csv,
)

logger = logging.getLogger(__name__)

VQA_BENCHMARKS: tuple[str, ...] = ("vqa_rad", "slake", "pathvqa")
SUITE_BENCHMARKS: tuple[str, ...] = VQA_BENCHMARKS + choice.BENCHMARK_NAMES
# Folder names under --data-root: MedEvalKit's DATASETS_PATH names (eval.py L115, benchmarks.py L33-64).
VQA_FOLDERS = {"vqa_rad": "VQA_RAD", "slake": "SLAKE", "pathvqa": "PATH_VQA"}
DEFAULT_SPLITS = {"vqa_rad": "test", "slake": "test", "pathvqa": "test", "pmc_vqa": "test", "omnimedvqa": "test",
                  "mmmu_med": "validation", "medxpertqa_mm": "test"}
SCORINGS = ("generate", "likelihood")
VQA_PROMPTS = ("medevalkit", "plain")


@dataclass(frozen=True)
class EngineSettings:
    """How answers are produced (``exgramed predict``'s engine arguments)."""

    model: str | None
    adapters: tuple[str, ...] = ()
    model_type: str | None = None
    template: str | None = None
    infer_backend: str = "transformers"
    batch_size: int = 8
    max_new_tokens: int = 1024
    dtype: str = "auto"
    device_map: str | None = None
    template_settings: Any = None


@dataclass
class BenchmarkRun:
    """One benchmark of the suite: where its files are and which questions were left out."""

    name: str
    split: str
    folder: Path
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def is_choice(self) -> bool:
        return self.name in choice.BENCHMARK_NAMES

    @property
    def questions(self) -> Path:
        return self.folder / "questions.jsonl"

    @property
    def answers(self) -> Path:
        return self.folder / "answers.jsonl"

    @property
    def likelihoods(self) -> Path:
        return self.folder / "likelihoods.jsonl"


def parse_splits(pairs: Sequence[str]) -> dict[str, str]:
    """``["mmmu_med=test", ...]`` over the defaults; an unknown benchmark or split is an error."""
    splits = dict(DEFAULT_SPLITS)
    for pair in pairs:
        name, _, split = pair.partition("=")
        if name not in SUITE_BENCHMARKS or not split:
            raise ValueError(f"--split {pair!r}: expected BENCHMARK=SPLIT with BENCHMARK one of {SUITE_BENCHMARKS}")
        if name in choice.BENCHMARK_NAMES:
            get_choice_benchmark(name, split)
        elif split != "test":
            raise ValueError(f"--split {pair!r}: the suite scores the test split of {name}")
        splits[name] = split
    return splits


# --------------------------------------------------------------------------------------------------
# Questions
# --------------------------------------------------------------------------------------------------


def prepare_questions(name: str, split: str, out: Path, *, data_root: str | None, mmmu_answers: str | None = None,
                      mmmu_images: str = "first", limit: int | None = None, skip_invalid: bool = False,
                      image_cache: str | None = None) -> BenchmarkRun:
    """Write ``<out>/<name>/questions.jsonl`` (the first ``limit`` questions) and return the run."""
    run = BenchmarkRun(name, split, out / name)
    run.folder.mkdir(parents=True, exist_ok=True)
    if run.is_choice:
        loaded = load_choice_benchmark(name, split, data_root=data_root, mmmu_answers=mmmu_answers,
                                       image_cache=image_cache)
        if not skip_invalid:
            loaded.require_valid()
        run.skipped = [{"id": p.id, "field": p.field, "reason": p.reason, "source": p.source} for p in loaded.invalid]
        for problem in loaded.invalid:
            logger.warning("%s: skipped %s", name, problem)
        rows = [choice.question_row(q, split, mmmu_images) for q in loaded.questions]
    else:
        local = Path(data_root).expanduser() / VQA_FOLDERS[name] if data_root else None
        rows = load_benchmark(name, split, local_dir=local if local is not None and local.is_dir() else None,
                              image_cache=image_cache)
    write_jsonl(run.questions, rows[:limit] if limit is not None else rows)
    return run


# --------------------------------------------------------------------------------------------------
# Answers and likelihoods
# --------------------------------------------------------------------------------------------------


class EngineHolder:
    """Loads swift's engine once, at the first benchmark that needs it."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        self._engine = None

    @property
    def engine(self):
        if self._engine is None:
            from exgramed_plugin.eval.predict import load_engine
            s = self.settings
            if s.model is None:
                raise ValueError("--model is needed to answer the questions (or --score-only --pred ...)")
            self._engine = load_engine(s.model, adapters=s.adapters, batch_size=s.batch_size, dtype=s.dtype,
                                       device_map=s.device_map, template_settings=s.template_settings,
                                       model_type=s.model_type, template=s.template, infer_backend=s.infer_backend)
        return self._engine


def check_same_settings(run: BenchmarkRun, settings: dict[str, Any]) -> None:
    """Record what makes the answers (``<benchmark>/settings.json``); a rerun into the same folder with other
    settings (another checkpoint, prompt, image mode ...) is refused rather than mixed with the old answers."""
    path = run.folder / "settings.json"
    run.folder.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        previous = read_json(path)
        changed = {key: (previous.get(key), value) for key, value in settings.items() if previous.get(key) != value}
        if changed:
            raise ValueError(f"{path}: the answers in {run.folder} were made with other settings "
                             f"({', '.join(f'{k}: {old!r} then, {new!r} now' for k, (old, new) in changed.items())}); "
                             "use another --out or delete the folder")
    write_json(path, settings)


def answer_settings(engine: EngineSettings, run: BenchmarkRun, vqa_prompt: str, mmmu_images: str) -> dict[str, Any]:
    """What the answers of one benchmark depend on (compared by :func:`check_same_settings`)."""
    return {"model": engine.model, "adapters": list(engine.adapters), "model_type": engine.model_type,
            "template": engine.template, "template_settings": repr(engine.template_settings), "split": run.split,
            "max_new_tokens": engine.max_new_tokens, "prompt": vqa_prompt if not run.is_choice else
            f"medevalkit, mmmu images {mmmu_images}" if run.name == "mmmu_med" else "medevalkit"}


def answer_questions(run: BenchmarkRun, holder: EngineHolder, vqa_prompt: str, show_progress: bool = True) -> Path:
    """``exgramed predict`` on the run's questions (resumable); returns the answers file."""
    from exgramed_plugin.eval.predict import predict, read_existing_answers

    s = holder.settings
    questions = read_jsonl(run.questions)
    done = read_existing_answers(run.answers)
    if len(done) == len(questions) and all(str(row["id"]) in done for _, row in questions):
        return run.answers  # finished earlier: no engine needed
    medevalkit_vqa = not run.is_choice and vqa_prompt == "medevalkit"
    return predict(s.model or "", run.questions, run.answers, batch_size=s.batch_size,
                   max_new_tokens=s.max_new_tokens, engine=holder.engine, show_progress=show_progress,
                   prompt="medevalkit" if medevalkit_vqa else "plain", dataset=run.name if medevalkit_vqa else None,
                   model_id=s.model, progress_desc=run.name)


def choice_likelihoods(run: BenchmarkRun, holder: EngineHolder, *, norm: str = "sum",
                       show_progress: bool = True) -> dict[str, list[float]]:
    """Each multiple-choice question's choice scores (``zeroshot.option_log_likelihoods``), cached in
    ``likelihoods.jsonl`` and resumed from it; MMMU's open questions have none."""
    from tqdm import tqdm

    from exgramed_plugin.eval.predict import EXGRA_MED, PromptBuilder, engine_template_type, load_prompts
    from exgramed_plugin.eval.zeroshot import option_log_likelihoods

    if holder.settings.infer_backend != "transformers":
        raise ValueError("--scoring likelihood reads the model's weights: use --infer_backend transformers")
    done = {str(row["id"]): row["scores"] for _, row in read_jsonl(run.likelihoods, drop_torn_last_line=True)} \
        if run.likelihoods.is_file() else {}
    infos = {str(row["id"]): json.loads(row[choice.ROW_FIELD]) for _, row in read_jsonl(run.questions)}
    prompts = [p for p in load_prompts(run.questions) if p.id not in done
               and infos[p.id]["question_type"] == mmmu_metrics.MULTIPLE_CHOICE]
    if prompts:
        engine = holder.engine
        engine.model.eval()
        builder = PromptBuilder(mode="plain", exgra_med=engine_template_type(engine) == EXGRA_MED)
        write_jsonl(run.likelihoods, [{"id": key, "scores": scores} for key, scores in done.items()])
        with open(run.likelihoods, "a", encoding="utf-8") as handle:
            for prompt in tqdm(prompts, desc=f"{run.name} likelihood", unit="q", disable=not show_progress):
                info = infos[prompt.id]
                scores = option_log_likelihoods(engine.model, engine.template, builder.content(prompt),
                                                choice.choice_lines(info["benchmark"], info["choices"]),
                                                prompt.images, batch_size=holder.settings.batch_size, norm=norm)
                done[prompt.id] = scores
                append_jsonl(handle, {"id": prompt.id, "scores": scores})
                handle.flush()
    return done


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------


def _choice_responses(run: BenchmarkRun, answers_path: Path) -> dict[str, str]:
    answers = load_answers(answers_path)
    question_ids = [str(row["id"]) for _, row in read_jsonl(run.questions)]
    problems = id_pairing_problems(question_ids, [a.id for a in answers], answer="answer",
                                   missing="no answer for", extra="answers to questions not in the benchmark for")
    if problems:
        raise ValueError(f"{answers_path}: does not answer the questions of {run.questions}: " + "; ".join(problems))
    return {a.id: a.text for a in answers}


def score_benchmark(run: BenchmarkRun, answers_path: Path, likelihoods: dict[str, list[float]] | None = None
                    ) -> dict[str, Any]:
    """Score one benchmark, write its ``metrics.json`` / ``per_question.csv``; returns its table entry."""
    entry: dict[str, Any] = {"benchmark": run.name, "split": run.split, "answers": str(answers_path),
                             "skipped": run.skipped}
    if run.is_choice:
        questions = [row for _, row in read_jsonl(run.questions)]
        report = choice.score_choices(run.name, run.split, questions, _choice_responses(run, answers_path),
                                      likelihoods)
        entry["questions"] = len(report.per_question)
        for convention, stats in report.summary.items():
            entry[convention] = stats["overall"]["accuracy"]
        entry["groups"] = {convention: {key: value for key, value in stats.items() if key.startswith("by_")}
                           for convention, stats in report.summary.items()}
        write_json(run.folder / "metrics.json", {
            "benchmark": run.name, "split": run.split, "summary": report.summary, "skipped": run.skipped,
            "quirks": mmmu_metrics.QUIRKS if run.name == "mmmu_med" else medevalkit_choice.QUIRKS})
        write_rows_csv(run.folder / "per_question.csv", report.per_question)
        if run.name == "mmmu_med" and run.split == "test":
            entry["note"] = "MedEvalKit raises TypeError on MMMU's test split (quirk test_split_crash)"
        if likelihoods is not None and report.summary["likelihood"]["overall"]["scored"] < entry["questions"]:
            entry["likelihood"] = report.summary["likelihood"]["overall"]["accuracy_scored"]
            entry["likelihood_note"] = "multiple-choice questions only"
        return entry
    report = evaluate_vqa(run.questions, answers_path, dataset=run.name)
    write_report(report, run.folder / "metrics.json", run.folder / "per_question.csv")
    entry.update({"questions": report.counts["total"], "medevalkit": (report.medevalkit or {}).get("accuracy"),
                  "medevalkit_corrected": (report.medevalkit_corrected or {}).get("accuracy"),
                  "likelihood": None, "run_eval_average": report.original.get("average")})
    return entry


# --------------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]


def suite_markdown(entries: Sequence[dict[str, Any]], peers: Sequence[Any], label: str) -> str:
    """The suite table, the accuracy by group of each multiple-choice benchmark, and quoted peer rows."""
    lines = [f"# exgramed eval: {label}", "",
             "Accuracy ×100. MedEvalKit = its scoring @ 9b12e3b, quirks included; corrected = its bugs fixed "
             "(docs/evaluation.md); likelihood = the most likely choice, no parsing; run_eval.py = (open recall + "
             "closed) / 2 of LLaVA-Med's script (VQA sets only).", ""]
    lines += markdown_table(
        ["benchmark", "split", "questions", "skipped", "MedEvalKit", "corrected", "likelihood", "run_eval.py"],
        [[e["benchmark"], e["split"], e["questions"], len(e["skipped"]), e.get("medevalkit"),
          e.get("medevalkit_corrected"), e.get("likelihood"), e.get("run_eval_average")] for e in entries])
    for entry in entries:
        for note in (entry.get("note"), entry.get("likelihood_note") and f"likelihood: {entry['likelihood_note']}"):
            if note:
                lines.append(f"\n{entry['benchmark']}: {note}")
    for entry in entries:
        groups = entry.get("groups", {}).get("medevalkit", {})
        for group, by_value in groups.items():
            lines += ["", f"## {entry['benchmark']} {group.replace('_', ' ')}", ""]
            corrected = entry["groups"]["medevalkit_corrected"][group]
            lines += markdown_table([group[3:], "questions", "MedEvalKit", "corrected"],
                                    [[value, stats["total"], stats["accuracy"], corrected[value]["accuracy"]]
                                     for value, stats in by_value.items()])
    if peers:
        names = [e["benchmark"] for e in entries]
        lines += ["", "## Published rows (MedEvalKit), stored with their quotes", ""]
        lines += markdown_table(["model", *names], [[label, *(e.get("medevalkit") for e in entries)]]
                                + [[p.model, *(p.numbers.get(n) for n in names)] for p in peers])
        lines += [""] + [f"* {p.model}: \"{p.quote}\" ({p.table}; {p.url}){'; ' + p.note if p.note else ''}"
                         for p in peers]
    skipped = [(e["benchmark"], s) for e in entries for s in e["skipped"]]
    if skipped:
        lines += ["", "## Skipped questions (--skip-invalid)", ""]
        lines += [f"* {name} {s['id']}: field {s['field']}: {s['reason']}" for name, s in skipped]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def run_suite(benchmarks: Sequence[str], out: str | Path, *, engine: EngineSettings, data_root: str | None = None,
              splits: dict[str, str] | None = None, scorings: Sequence[str] = ("generate",),
              vqa_prompt: str = "medevalkit", mmmu_images: str = "first", mmmu_answers: str | None = None,
              limit: int | None = None, skip_invalid: bool = False, preds: Sequence[str] | None = None,
              peers: Sequence[str] = (), likelihood_norm: str = "sum", show_progress: bool = True,
              image_cache: str | None = None) -> dict[str, Any]:
    """Run the suite; returns the summary (also written to ``<out>/eval.json``, the table to ``eval.md``)."""
    from exgramed_plugin.eval.peer_results import select_peers

    unknown = [name for name in benchmarks if name not in SUITE_BENCHMARKS]
    if unknown or not benchmarks:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {SUITE_BENCHMARKS}")
    if preds is not None and len(preds) != len(benchmarks):
        raise ValueError(f"--pred needs one answers file per benchmark ({len(benchmarks)}), got {len(preds)}")
    if "likelihood" in scorings and preds is not None:
        raise ValueError("--scoring likelihood needs the model; it cannot be combined with --score-only")
    if vqa_prompt not in VQA_PROMPTS or mmmu_images not in choice.MMMU_IMAGE_MODES:
        raise ValueError(f"--vqa-prompt must be one of {VQA_PROMPTS}, --mmmu-images one of {choice.MMMU_IMAGE_MODES}")
    peer_rows = select_peers(list(peers))
    splits = splits or dict(DEFAULT_SPLITS)
    out = Path(out)
    holder = EngineHolder(engine)
    entries = []
    for index, name in enumerate(benchmarks):
        if preds is None:  # before questions.jsonl is rewritten
            planned = BenchmarkRun(name, splits[name], out / name)
            check_same_settings(planned, answer_settings(engine, planned, vqa_prompt, mmmu_images))
        run = prepare_questions(name, splits[name], out, data_root=data_root, mmmu_answers=mmmu_answers,
                                mmmu_images=mmmu_images, limit=limit, skip_invalid=skip_invalid,
                                image_cache=image_cache)
        answers = Path(preds[index]) if preds is not None else answer_questions(run, holder, vqa_prompt,
                                                                                show_progress)
        likelihoods = (choice_likelihoods(run, holder, norm=likelihood_norm, show_progress=show_progress)
                       if "likelihood" in scorings and run.is_choice else None)
        entries.append(score_benchmark(run, answers, likelihoods))
        logger.info("%s: MedEvalKit %s, corrected %s", name, _cell(entries[-1].get("medevalkit")),
                    _cell(entries[-1].get("medevalkit_corrected")))
    label = engine.model or "answers given"
    summary = {"ok": True, "out": str(out), "model": engine.model, "adapters": list(engine.adapters),
               "model_type": engine.model_type, "template": engine.template, "infer_backend": engine.infer_backend,
               "scorings": list(scorings), "vqa_prompt": vqa_prompt, "mmmu_images": mmmu_images, "limit": limit,
               "benchmarks": {e["benchmark"]: e for e in entries},
               "peers": [p.__dict__ for p in peer_rows], "table": str(out / "eval.md")}
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.md").write_text(suite_markdown(entries, peer_rows, label), encoding="utf-8")
    write_json(out / "eval.json", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    from exgramed_plugin.eval.predict import DTYPES, add_engine_arguments

    parser = argparse.ArgumentParser(
        prog="exgramed eval",
        description="Answer and score a benchmark suite (VQA-RAD, SLAKE, PathVQA, PMC-VQA, OmniMedVQA, MMMU-Med, "
                    "MedXpertQA-MM) as MedEvalKit scores it, with a corrected scoring beside it; one table.")
    parser.add_argument("--model", default=None, help="checkpoint folder or hub id (exgra_med or any swift model)")
    parser.add_argument("--adapters", nargs="*", default=[], help="LoRA checkpoint folder(s) trained with swift")
    add_engine_arguments(parser)
    parser.add_argument("--benchmarks", nargs="+", required=True, choices=SUITE_BENCHMARKS, metavar="BENCHMARK",
                        help=f"any of {' '.join(SUITE_BENCHMARKS)}")
    parser.add_argument("--data-root", default=None,
                        help="folder with MedEvalKit's layout (VQA_RAD, SLAKE, PATH_VQA, PMC_VQA, OmniMedVQA, MMMU, "
                             "MedXpertQA); a benchmark missing there comes from its hub copy (or $EXGRAMED_*_DIR)")
    parser.add_argument("--out", required=True, help="output folder (a rerun resumes in it)")
    parser.add_argument("--split", nargs="*", default=[], metavar="BENCHMARK=SPLIT",
                        help="e.g. mmmu_med=test medxpertqa_mm=dev (defaults: test; mmmu_med validation)")
    parser.add_argument("--scoring", nargs="+", choices=SCORINGS, default=["generate"],
                        help="generate (answers scored by MedEvalKit's rules); likelihood adds the choice ranking of "
                             "multiple-choice questions (transformers backend)")
    parser.add_argument("--vqa-prompt", choices=VQA_PROMPTS, default="medevalkit",
                        help="VQA sets: MedEvalKit's instruction per question (default) or the question as is")
    parser.add_argument("--mmmu-images", choices=choice.MMMU_IMAGE_MODES, default="first",
                        help="first (MedEvalKit: image_1 only) or all of a question's images")
    parser.add_argument("--mmmu-answers", default=None, help="MMMU test answers (MedEvalKit's utils/MMMU/answer.json; "
                                                             "default <MMMU folder>/answer.json)")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="leave out invalid questions and list them, instead of stopping")
    parser.add_argument("--score-only", action="store_true", help="score answers made elsewhere (--pred)")
    parser.add_argument("--pred", nargs="+", default=None,
                        help="with --score-only: one answers JSONL (question_id/text or id/response) per benchmark")
    parser.add_argument("--peers", nargs="*", default=[],
                        help="published rows to show beside the measured ones (stored with quotes: peer_results.json)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--likelihood-norm", choices=("sum", "mean"), default="sum")
    parser.add_argument("--prompt-style", choices=("simple", "v0"), default=None, help="exgra_med only")
    parser.add_argument("--response-mode", choices=("original", "clean", "raw"), default=None, help="exgra_med only")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--device-map", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N questions of each benchmark (smoke tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 130 interrupted (rerun the same command to resume)."""
    from exgramed_plugin.eval.predict import cli_template_settings

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        if args.score_only != (args.pred is not None):
            raise ValueError("--score-only and --pred go together (one answers file per benchmark)")
        if not args.score_only and args.model is None:
            raise ValueError("--model is required (or --score-only --pred ...)")
        engine = EngineSettings(args.model, tuple(args.adapters), args.model_type, args.template, args.infer_backend,
                                args.batch_size, args.max_new_tokens, args.dtype, args.device_map,
                                cli_template_settings(args.prompt_style, args.response_mode))
        summary = run_suite(args.benchmarks, args.out, engine=engine, data_root=args.data_root,
                            splits=parse_splits(args.split), scorings=args.scoring, vqa_prompt=args.vqa_prompt,
                            mmmu_images=args.mmmu_images, mmmu_answers=args.mmmu_answers, limit=args.limit,
                            skip_invalid=args.skip_invalid, preds=args.pred, peers=args.peers,
                            likelihood_norm=args.likelihood_norm)
    except (ValueError, OSError) as error:  # DataFormatError (a bad benchmark folder or question) is a ValueError
        print(f"error: {error}", file=sys.stderr)
        print_summary({"error": str(error)}, ok=False)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: answers so far are kept under {args.out}; resume with the same command: "
              f"exgramed eval {shlex.join(argv)}", file=sys.stderr)
        print_summary({"error": "interrupted", "out": args.out}, ok=False)
        return 130
    print(Path(summary["table"]).read_text(encoding="utf-8"))
    print_summary({key: value for key, value in summary.items() if key != "ok"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
