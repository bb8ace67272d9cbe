"""`exgramed reproduce <benchmark> --checkpoint <name, hub id or dir>`: a published number in one command.

Why: a GPU user must be able to check that a published checkpoint gives the paper's number through
this plugin, without assembling download, prediction and scoring by hand. The steps:

1. the checkpoint: a local folder as it is, else fetched into the hub cache with
   ``hub.download`` (MERGE-Group names / ids) or ``hub.fetch_snapshot`` (any other model id);
   both resume partial files and work offline from the cache;
2. the questions: ``<data root>/<VQA-RAD|SLAKE|PATH-VQA>/<split>_w_options_new.json`` (the layout
   ``exgramed download`` writes and the registered dataset names read); fetched with
   ``hub.download`` only when that file is missing;
3. ``exgramed predict`` with the original prompt (``exgra_med`` template, ``simple`` style,
   ``original`` response mode: docs/method.md §2.3/§2.4), resumable in ``<out>/answers.jsonl``;
4. ``exgramed eval-vqa`` (original, strict, MedEvalKit conventions), written next to the answers;
5. the paper's number for that checkpoint and benchmark (:data:`PAPER_RESULTS`, each with its
   source), the value measured here under the same definition, and the difference.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exgramed_plugin.common.jsonio import print_summary, read_json_or_jsonl, write_json

logger = logging.getLogger(__name__)

# Benchmark -> (folder under the data root = hub.DATASETS name, MedEvalKit dataset name for eval-vqa).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "vqa_rad": ("VQA-RAD", "vqa_rad"),
    "slake": ("SLAKE", "slake"),
    "pathvqa": ("PATH-VQA", "pathvqa"),
}
_BENCHMARK_ALIASES = {"vqa-rad": "vqa_rad", "vqarad": "vqa_rad", "path-vqa": "pathvqa", "path_vqa": "pathvqa"}
SPLITS = ("test", "val", "train")
CHECKPOINT_FLAG = "--checkpoint"  # this command's option for the model (named in the offline hint)

_SECONDARY_100 = ("docs/method.md §7.2 (secondary, unverified: third-party 'paper note' copies of the tables of "
                  "arXiv 2410.02615; the paper itself could not be read), '100 % comparison (averages)', row "
                  "'ExGra-Med + DCI 75.25 / 85.23 / 64.82 (75.10)' = VQA-RAD / SLAKE / PathVQA average. Assumed to "
                  "be the per-benchmark fine-tuned DCI checkpoints the README publishes (seed-readme.md, 'Model "
                  "Checkpoints'); the paper's average is (open recall + closed accuracy) / 2 of run_eval.py "
                  "(docs/method.md §6.1, §7.1: 'averages of open & closed')")


@dataclass(frozen=True)
class PaperResult:
    """Numbers the paper reports for one checkpoint on one benchmark (test split), with their source.

    ``metrics`` keys are ``eval_vqa`` report keys under ``convention``.
    """

    metrics: dict[str, float]
    source: str
    convention: str = "original"


PAPER_RESULTS: dict[tuple[str, str], PaperResult] = {
    ("exgra-med-dci-vqa-rad", "vqa_rad"): PaperResult({"average": 75.25}, _SECONDARY_100),
    ("exgra-med-dci-slake", "slake"): PaperResult({"average": 85.23}, _SECONDARY_100),
    ("exgra-med-dci-pathvqa", "pathvqa"): PaperResult({"average": 64.82}, _SECONDARY_100),
}
METRIC_NAMES = {"average": "average (open recall + closed)/2", "open_recall": "open recall",
                "closed_accuracy": "closed accuracy"}


def resolve_benchmark(name: str) -> str:
    key = _BENCHMARK_ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    return key


def checkpoint_name(checkpoint: str) -> str:
    """The short name the paper table is keyed by: a MERGE-Group name/id's, else the folder's / id's last part."""
    from exgramed_plugin.commands.hub import CHECKPOINTS
    tail = Path(checkpoint.rstrip("/")).name
    for repo in CHECKPOINTS:
        if checkpoint.lower() in (repo.name.lower(), repo.repo_id.lower()) or tail.lower() == repo.name.lower():
            return repo.name
    return tail


def fetch_checkpoint(checkpoint: str, *, offline: bool | None, cache_dir: str | None, revision: str | None) -> Path:
    """A local folder as it is; a MERGE-Group checkpoint through ``hub.download``; another id through
    ``hub.fetch_snapshot`` (the hub cache; resumable, offline-aware)."""
    from exgramed_plugin.commands import hub

    local = Path(checkpoint).expanduser()
    if local.is_dir():
        return local
    known = {r.name.lower() for r in hub.CHECKPOINTS} | {r.repo_id.lower() for r in hub.CHECKPOINTS}
    if checkpoint.lower() in known:
        result, = hub.download([checkpoint], cache_dir=cache_dir, offline=offline, revision=revision,
                               model_flag=CHECKPOINT_FLAG)
        return Path(result.snapshot)
    if checkpoint.count("/") != 1 or checkpoint.startswith((".", "/", "~")):
        raise ValueError(f"--checkpoint {checkpoint!r} is neither a folder nor a hub id (owner/name); published "
                         f"ones: {', '.join(r.name for r in hub.CHECKPOINTS)}")
    if offline is None:
        from huggingface_hub import constants
        offline = bool(constants.HF_HUB_OFFLINE) or not hub.hub_is_reachable()
    repo = hub.HubRepo(checkpoint.split("/")[1], checkpoint, "model")
    return hub.fetch_snapshot(repo, cache_dir=None if cache_dir is None else Path(cache_dir), local_only=offline,
                              revision=revision, data_root=hub.default_data_root(), model_flag=CHECKPOINT_FLAG)


def benchmark_questions(benchmark: str, split: str, data_root: Path, *, offline: bool | None,
                        cache_dir: str | None) -> Path:
    """``<data_root>/<folder>/<split>_w_options_new.json``, fetched with ``hub.download`` when missing."""
    from exgramed_plugin.commands import hub

    folder, _ = BENCHMARKS[benchmark]
    path = data_root / folder / f"{split}_w_options_new.json"
    if path.is_file():
        return path
    logger.info("%s not found: fetching %s/%s", path, hub.ORG, folder)
    result, = hub.download([folder], cache_dir=cache_dir, data_root=data_root, offline=offline)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found after downloading {result.repo_id}: "
                                f"{'; '.join(result.problems) or 'the repo has no such file'}")
    return path


def compare_with_paper(report, paper: PaperResult | None) -> list[dict[str, Any]]:
    """Rows ``{metric, here, paper, difference}`` (difference = here - paper): open recall, closed accuracy,
    their average (the paper's per-benchmark number), then any other metric the paper reports."""
    measured = getattr(report, paper.convention if paper else "original")
    keys = ["open_recall", "closed_accuracy", "average"]
    keys += [key for key in (paper.metrics if paper else ()) if key not in keys]
    rows = []
    for key in keys:
        here = measured.get(key)
        reported = paper.metrics.get(key) if paper else None
        difference = None if here is None or reported is None else here - reported
        rows.append({"metric": key, "here": here, "paper": reported, "difference": difference})
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    def cell(value: float | None, signed: bool = False) -> str:
        return "-" if value is None else (f"{value:+.2f}" if signed else f"{value:.2f}")

    table = [("metric (original run_eval.py convention)", "here", "paper", "difference")]
    table += [(METRIC_NAMES.get(r["metric"], r["metric"]), cell(r["here"]), cell(r["paper"]),
               cell(r["difference"], signed=True)) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in table)


def reproduce(benchmark: str, checkpoint: str, *, out: str | Path, data_root: str | Path | None = None,
              split: str = "test", compare_to: str | None = None, batch_size: int = 8, max_new_tokens: int = 1024,
              limit: int | None = None, dtype: str = "auto", device_map: str | None = None,
              offline: bool | None = None, cache_dir: str | None = None,
              revision: str | None = None) -> dict[str, Any]:
    """Run the five steps (module docstring); returns what ``<out>/reproduce.json`` holds."""
    from exgramed_plugin.commands import hub
    from exgramed_plugin.eval.eval_vqa import evaluate_vqa, format_report_table, write_report
    from exgramed_plugin.eval.predict import predict, template_settings

    benchmark = resolve_benchmark(benchmark)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    name = compare_to or checkpoint_name(checkpoint)
    paper = PAPER_RESULTS.get((name, benchmark)) if split == "test" else None
    root = hub.default_data_root() if data_root is None else Path(data_root).expanduser()
    questions = benchmark_questions(benchmark, split, root, offline=offline, cache_dir=cache_dir)
    model_dir = fetch_checkpoint(checkpoint, offline=offline, cache_dir=cache_dir, revision=revision)
    out_dir = Path(out)
    answers = out_dir / "answers.jsonl"
    predict(str(model_dir), questions, answers, batch_size=batch_size, max_new_tokens=max_new_tokens,
            model_id=checkpoint, dtype=dtype, device_map=device_map, limit=limit,
            template_settings=template_settings(prompt_style="simple", response_mode="original"))
    gt = questions
    if limit is not None:  # score the answered questions only
        gt = out_dir / f"questions_first_{limit}.json"
        write_json(gt, [row for _, row in read_json_or_jsonl(questions)][:limit])
    report = evaluate_vqa(gt, answers, dataset=BENCHMARKS[benchmark][1])
    write_report(report, out_dir / "metrics.json", out_dir / "per_question.csv")
    rows = compare_with_paper(report, paper)
    result = {"benchmark": benchmark, "split": split, "checkpoint": checkpoint, "model_dir": str(model_dir),
              "paper_checkpoint": name, "questions": str(questions), "answers": str(answers),
              "scored_questions": report.counts["total"], "limit": limit, "comparison": rows,
              "paper_source": paper.source if paper else None, "table": format_report_table(report)}
    write_json(out_dir / "reproduce.json", result)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed reproduce",
        description="Download a published checkpoint and a benchmark (resumable), predict with the original prompt, "
                    "score with eval-vqa, and print the result next to the paper's number.")
    parser.add_argument("benchmark", help=f"one of {', '.join(BENCHMARKS)}")
    parser.add_argument(CHECKPOINT_FLAG, required=True,
                        help="MERGE-Group checkpoint name (e.g. exgra-med-dci-vqa-rad), hub id or local folder")
    parser.add_argument("--data-root", default=None,
                        help="folder holding <VQA-RAD|SLAKE|PATH-VQA>/<split>_w_options_new.json (default: "
                             "$EXGRAMED_DATA_ROOT, else ~/exgramed_data)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="paper numbers exist for test only")
    parser.add_argument("--out", default=None, help="answers and scores folder (default: reproduce_<checkpoint>_"
                                                    "<benchmark>; rerunning resumes)")
    parser.add_argument("--compare-to", default=None,
                        help="paper row to compare with (default: the checkpoint's name); known: "
                             + ", ".join(sorted({n for n, _ in PAPER_RESULTS})))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="original: 1024")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only (smoke test; not comparable)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    parser.add_argument("--device-map", default=None)
    parser.add_argument("--vision-tower", default=None, help="VISION_TOWER: where the checkpoint's vision tower is")
    parser.add_argument("--dense-connector", default=None, choices=("none", "sci", "dci", "sti"),
                        help="EXGRAMED_DENSE_CONNECTOR when the checkpoint does not say (README: dci for DCI models)")
    parser.add_argument("--num-l", type=int, default=None, help="EXGRAMED_NUM_L (README: 6)")
    parser.add_argument("--offline", action="store_true", help="local hub cache only (as HF_HUB_OFFLINE=1)")
    parser.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HUB_CACHE)")
    parser.add_argument("--revision", default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    from exgramed_plugin.commands.hub import HubDownloadError
    from exgramed_plugin.settings import current_settings, use_settings

    args = build_parser().parse_args(argv)
    loader = {key: value for key, value in (("vision_tower", args.vision_tower),
                                            ("exgramed_dense_connector", args.dense_connector),
                                            ("exgramed_num_l", args.num_l)) if value is not None}
    try:
        if loader:
            use_settings(current_settings().replace(**loader))
        benchmark = resolve_benchmark(args.benchmark)
        out = args.out or f"reproduce_{checkpoint_name(args.checkpoint)}_{benchmark}"
        result = reproduce(benchmark, args.checkpoint, out=out, data_root=args.data_root, split=args.split,
                           compare_to=args.compare_to, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           limit=args.limit, dtype=args.dtype, device_map=args.device_map,
                           offline=True if args.offline else None, cache_dir=args.cache_dir, revision=args.revision)
    except (ValueError, OSError, HubDownloadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(result["table"])
    print(f"\n{result['checkpoint']} on {result['benchmark']} ({result['split']}, {result['scored_questions']} "
          f"questions{'; first ' + str(args.limit) + ' only: not comparable' if args.limit else ''}):")
    print(format_comparison(result["comparison"]))
    if result["paper_source"]:
        print(f"paper numbers ({result['paper_checkpoint']}): {result['paper_source']}")
    else:
        known = ", ".join(f"{n} on {b}" for n, b in PAPER_RESULTS)
        print(f"no paper number for {result['paper_checkpoint']} on {result['benchmark']} ({result['split']}); "
              f"known: {known} (--compare-to NAME compares a renamed copy)")
    print(f"wrote {Path(out) / 'reproduce.json'}, {Path(out) / 'metrics.json'} and {Path(out) / 'per_question.csv'}")
    print_summary({key: result[key] for key in ("answers", "comparison")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
