"""`exgramed eval-zeroshot`: OmniMedVQA zero-shot classification as VQA (docs/method.md §6.2).

Two scorings of the same §6.2 prompt:

* ``difflib`` (faithful): generate an answer to the prompt, pick the option with the highest
  ``difflib.SequenceMatcher(None, option, prediction).ratio()`` (case-sensitive, raw strings, first
  maximum); all ratios 0 means no choice, counted wrong, as the original's exception did. The
  original sampled at T=0.7 (``--temperature 0.7`` reproduces that); the default here is greedy.
* ``likelihood`` (deterministic, better): the option the model finds most likely as the answer:
  for each option the conversation ``[prompt, option]`` is encoded in the training format (§2.1) by
  the ``exgra_med`` template, and the score is the summed log-probability of the tokens the
  template trains (the option and its closing ``\\n###``). Highest score wins (first on ties).
  ``--likelihood-norm mean`` divides by the token count instead.

Any swift model can be scored (``--model_type`` / ``--template`` / ``--infer_backend``, as in
``exgramed predict``); every model gets the same §6.2 prompt (the ``<image>`` tag at its end, where
swift's templates put the image), ``exgra_med`` through its original template. ``likelihood`` needs the
model's weights, so ``--infer_backend transformers``.

Unlike the original, a sample that fails (unreadable image, too few options, an inference error) is
counted and listed: ``accuracy`` divides by every sample (failures are wrong), ``accuracy_attempted``
by the samples that went through (the original's number). Answers with no similar option are
attempted and wrong (as originally) and listed under ``difflib_no_choice``.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgramed_plugin.common.jsonio import print_summary, read_json_or_jsonl, write_json, write_jsonl
from exgramed_plugin.metrics.multiple_choice import argmax_first

logger = logging.getLogger(__name__)

OPTION_KEYS = ("option_A", "option_B", "option_C", "option_D", "option_E", "option_F")
SCORINGS = ("difflib", "likelihood")
PROMPT_TAIL = (" Only return what you think is the correct answer from the candidate answers, do not return any "
               "other irrelevant text!\n<image>")


def omnimed_prompt(question: str, options: Sequence[str]) -> str:
    """The human text of ``model_omnimed_vqa_eval.py``, verbatim (no space before "Here")."""
    return f"{question}Here are {len(options)} candidate answers:{str(list(options))}{PROMPT_TAIL}"


def difflib_choice(options: Sequence[str], prediction: str) -> tuple[int | None, list[float]]:
    """Index of the first option with the highest similarity ratio, or None when every ratio is 0."""
    ratios = [difflib.SequenceMatcher(None, option, prediction).ratio() for option in options]
    best, best_ratio = None, 0.0
    for index, ratio in enumerate(ratios):
        if ratio > best_ratio:
            best, best_ratio = index, ratio
    return best, ratios


@dataclass
class ZeroShotSample:
    """One OmniMedVQA question and what happened to it."""

    question_id: str
    dataset: str
    modality: str
    question: str
    options: list[str]
    gt: str
    image: str | None
    error: str | None = None
    prediction: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return omnimed_prompt(self.question, self.options)


def load_omnimed(paths: Sequence[str | Path], image_root: str | Path | None = None) -> list[ZeroShotSample]:
    """OmniMedVQA QA_information JSON files -> samples; problems are recorded on the sample, not raised.

    ``dataset`` comes from the row (else the file name), ``modality`` from ``modality_type`` (else
    ``unknown``). Image paths are relative to ``image_root`` (default: each file's folder).
    """
    from exgramed_plugin.data.formats import DataFormatError, resolve_image_path

    samples: list[ZeroShotSample] = []
    for path in paths:
        source = str(Path(path).resolve())
        root = str(Path(image_root).expanduser()) if image_root is not None else str(Path(source).parent)
        for index, (_, row) in enumerate(read_json_or_jsonl(path)):
            question_id = str(row.get("question_id", row.get("id", f"{Path(path).stem}#{index}")))
            options = [str(row[k]) for k in OPTION_KEYS if row.get(k) not in (None, "")]
            sample = ZeroShotSample(
                question_id=question_id, dataset=str(row.get("dataset") or Path(path).stem),
                modality=str(row.get("modality_type") or row.get("modality") or "unknown"),
                question=str(row.get("question", "")), options=options, gt=str(row.get("gt_answer", "")),
                image=None)
            problems = []
            if "question" not in row:
                problems.append("no 'question'")
            if "gt_answer" not in row:
                problems.append("no 'gt_answer'")
            if len(options) < 2:
                problems.append(f"{len(options)} option(s)")
            elif sample.gt not in options:
                problems.append(f"gt_answer {sample.gt!r} is not one of the options")
            try:
                sample.image = resolve_image_path(row.get("image_path"), source, question_id, "image_path", root)
            except DataFormatError as error:
                problems.append(str(error))
            if problems:
                sample.error = "; ".join(problems)
            samples.append(sample)
    return samples


# --------------------------------------------------------------------------------------------------
# Model calls
# --------------------------------------------------------------------------------------------------


def _generate(engine, samples: Sequence[ZeroShotSample], *, max_new_tokens: int, temperature: float,
              seed: int | None) -> None:
    """Fill ``prediction`` (or ``error``) for each sample; a failing batch is retried one by one."""
    from swift.infer_engine import InferRequest, RequestConfig
    config = RequestConfig(max_tokens=max_new_tokens, temperature=temperature, seed=seed)

    def requests(batch):
        return [InferRequest(messages=[{"role": "user", "content": s.prompt}], images=[s.image]) for s in batch]

    try:
        responses = engine.infer(requests(samples), config, use_tqdm=False)
        for sample, response in zip(samples, responses):
            sample.prediction = response.choices[0].message.content
        return
    except Exception as error:  # noqa: BLE001 - isolate the failing sample below
        if len(samples) == 1:
            samples[0].error = f"generation failed: {type(error).__name__}: {error}"
            return
    for sample in samples:
        _generate(engine, [sample], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)


def option_log_likelihoods(model, template, content: str, options: Sequence[str], images: Sequence[str], *,
                           batch_size: int = 8, norm: str = "sum") -> list[float]:
    """Log-probability of each option as the answer to the user turn ``content`` (with its image tags)
    and ``images``, under the training format (module docstring). The one likelihood scorer of the
    plugin: ``eval-zeroshot`` and ``exgramed eval``'s likelihood scoring both call it."""
    import torch

    encoded = []
    previous_mode = template.mode
    template.set_mode("train")
    try:
        for option in options:
            row = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": option}],
                   "images": list(images)}
            encoded.append(template.encode(row))
    finally:
        template.set_mode(previous_mode)
    scores: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        template.set_mode("train")
        try:
            batch = template.data_collator(encoded[start:start + batch_size])
        finally:
            template.set_mode(previous_mode)
        labels = batch.pop("labels")
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        with torch.no_grad():
            logits = model(**batch).logits.float()
        labels = labels.to(logits.device)
        # Token t is predicted from position t-1.
        shifted_logits, shifted_labels = logits[:, :-1], labels[:, 1:]
        for i in range(shifted_labels.shape[0]):
            mask = shifted_labels[i] != -100
            log_probs = torch.log_softmax(shifted_logits[i][mask], dim=-1)
            token_log_probs = log_probs.gather(-1, shifted_labels[i][mask].unsqueeze(-1)).squeeze(-1)
            total = float(token_log_probs.sum())
            count = int(mask.sum())
            scores.append(total / count if norm == "mean" and count else total)
    return scores


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def _accuracy(samples: Sequence[ZeroShotSample], scoring: str) -> dict[str, Any]:
    total = len(samples)
    attempted = [s for s in samples if scoring in s.results]
    correct = sum(1 for s in attempted if s.results[scoring]["correct"])
    return {
        "samples": total,
        "attempted": len(attempted),
        "failed": total - len(attempted),
        "correct": correct,
        "accuracy": 100 * correct / total if total else None,
        "accuracy_attempted": 100 * correct / len(attempted) if attempted else None,
    }


def summarize(samples: Sequence[ZeroShotSample], scorings: Sequence[str]) -> dict[str, Any]:
    """Overall, per-dataset and per-modality accuracy for each scoring, and the failed samples."""
    groups: dict[str, dict[str, list[ZeroShotSample]]] = {"per_dataset": defaultdict(list),
                                                          "per_modality": defaultdict(list)}
    for sample in samples:
        groups["per_dataset"][sample.dataset].append(sample)
        groups["per_modality"][sample.modality].append(sample)
    summary: dict[str, Any] = {"overall": {s: _accuracy(samples, s) for s in scorings}}
    for name, by_key in groups.items():
        summary[name] = {key: {s: _accuracy(group, s) for s in scorings} for key, group in sorted(by_key.items())}
    summary["failed"] = [
        {"question_id": s.question_id, "dataset": s.dataset, "reason": s.error or "not scored",
         "scorings": [m for m in scorings if m not in s.results]}
        for s in samples if any(m not in s.results for m in scorings)
    ]
    summary["difflib_no_choice"] = [
        {"question_id": s.question_id, "dataset": s.dataset, "prediction": s.prediction}
        for s in samples if s.results.get("difflib", {}).get("choice", "") is None
    ]
    return summary


def evaluate_zeroshot(samples: list[ZeroShotSample], *, engine=None, model: str | None = None,
                      scorings: Sequence[str] = SCORINGS, batch_size: int = 8, max_new_tokens: int = 256,
                      temperature: float = 0.0, seed: int | None = None, likelihood_norm: str = "sum",
                      dtype: str = "auto", device_map: str | None = None,
                      show_progress: bool = True, template_settings=None, model_type: str | None = None,
                      template: str | None = None, infer_backend: str = "transformers") -> dict[str, Any]:
    """Run both scorings on ``samples`` (mutated with their results); returns :func:`summarize`.
    ``template_settings`` (exgra_med prompt style, response mode) apply to the engine it loads;
    ``model_type`` / ``template`` / ``infer_backend`` choose it (see ``predict.engine_request``)."""
    from tqdm import tqdm

    from exgramed_plugin.eval.predict import load_engine

    unknown = [s for s in scorings if s not in SCORINGS]
    if unknown:
        raise ValueError(f"unknown scoring(s) {unknown}; choose from {SCORINGS}")
    if "likelihood" in scorings and infer_backend != "transformers":
        raise ValueError(f"likelihood scoring reads the model's weights: use --infer_backend transformers "
                         f"(or --scoring difflib with {infer_backend})")
    if engine is None:
        if model is None:
            raise ValueError("pass a model path or an engine")
        engine = load_engine(model, batch_size=batch_size, dtype=dtype, device_map=device_map,
                             template_settings=template_settings, model_type=model_type, template=template,
                             infer_backend=infer_backend)
    runnable = [s for s in samples if s.error is None]
    if "difflib" in scorings:
        for start in tqdm(range(0, len(runnable), batch_size), desc="generate", disable=not show_progress):
            _generate(engine, runnable[start:start + batch_size], max_new_tokens=max_new_tokens,
                      temperature=temperature, seed=seed)
        for sample in runnable:
            if sample.prediction is None:
                continue
            choice, ratios = difflib_choice(sample.options, sample.prediction)
            # No similar option: wrong but attempted, as the original's caught exception.
            sample.results["difflib"] = {"choice": None if choice is None else sample.options[choice],
                                         "ratios": ratios,
                                         "correct": choice is not None and sample.options[choice] == sample.gt}
    if "likelihood" in scorings:
        engine.model.eval()
        for sample in tqdm(runnable, desc="likelihood", disable=not show_progress):
            if sample.error is not None and sample.prediction is None and "difflib" in scorings:
                continue  # its generation already failed: the same input would fail again
            try:
                scores = option_log_likelihoods(engine.model, engine.template, sample.prompt, sample.options,
                                                [sample.image], batch_size=batch_size, norm=likelihood_norm)
            except Exception as error:  # noqa: BLE001 - recorded and listed
                sample.error = f"likelihood failed: {type(error).__name__}: {error}"
                continue
            choice = argmax_first(scores)
            sample.results["likelihood"] = {"choice": sample.options[choice], "scores": scores,
                                            "correct": sample.options[choice] == sample.gt}
    return summarize(samples, scorings)


@dataclass(frozen=True)
class ZeroShotRun:
    """What :func:`run_zeroshot` scored and where it wrote it."""

    summary: dict[str, Any]
    questions: int
    json_path: Path
    samples_path: Path


def run_zeroshot(questions: Sequence[str | Path], out: str | Path, *, model: str | None = None, engine=None,
                 images: str | Path | None = None,
                 limit: int | None = None, scorings: Sequence[str] = SCORINGS, batch_size: int = 8,
                 max_new_tokens: int = 256, temperature: float = 0.0, seed: int | None = None,
                 likelihood_norm: str = "sum", dtype: str = "auto", device_map: str | None = None,
                 template_settings=None, model_type: str | None = None, template: str | None = None,
                 infer_backend: str = "transformers") -> ZeroShotRun:
    """`exgramed eval-zeroshot` as a function: the first ``limit`` samples of the OmniMedVQA files scored
    (:func:`evaluate_zeroshot`; ``engine`` reuses a loaded one) and written with the run's settings
    (:func:`write_outputs`)."""
    samples = load_omnimed(questions, images)
    if limit is not None:
        samples = samples[:limit]
    summary = evaluate_zeroshot(
        samples, engine=engine, model=model, scorings=scorings, batch_size=batch_size, max_new_tokens=max_new_tokens,
        temperature=temperature, seed=seed, likelihood_norm=likelihood_norm, dtype=dtype, device_map=device_map,
        template_settings=template_settings, model_type=model_type, template=template, infer_backend=infer_backend)
    settings = {"model": model, "model_type": model_type, "template": template, "infer_backend": infer_backend,
                "questions": [str(q) for q in questions], "scoring": list(scorings), "temperature": temperature,
                "max_new_tokens": max_new_tokens, "likelihood_norm": likelihood_norm}
    json_path, samples_path = write_outputs(samples, summary, Path(out), settings)
    return ZeroShotRun(summary, len(samples), json_path, samples_path)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def format_table(summary: dict[str, Any], scorings: Sequence[str]) -> str:
    """Rows: overall, then datasets, then modalities; columns: accuracy per scoring."""
    header = ["group", "n", "failed"] + [f"{s} acc" for s in scorings] + [f"{s} acc (attempted)" for s in scorings]
    rows = []

    def add(name: str, stats: dict[str, Any]) -> None:
        first = stats[scorings[0]]
        rows.append([name, str(first["samples"]), str(max(stats[s]["failed"] for s in scorings))]
                    + [_pct(stats[s]["accuracy"]) for s in scorings]
                    + [_pct(stats[s]["accuracy_attempted"]) for s in scorings])

    add("ALL", summary["overall"])
    for key, stats in summary["per_dataset"].items():
        add(f"dataset: {key}", stats)
    for key, stats in summary["per_modality"].items():
        add(f"modality: {key}", stats)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(summary: dict[str, Any], scorings: Sequence[str]) -> str:
    """:func:`format_table`, then the first failed samples and the difflib answers with no similar option."""
    parts = [format_table(summary, scorings)]
    failed = summary["failed"]
    if failed:
        parts.append(f"\n{len(failed)} failed sample(s) (counted as wrong in 'acc'), e.g.:")
        parts.extend(f"  {entry['question_id']} [{entry['dataset']}]: {entry['reason']}" for entry in failed[:10])
    no_choice = summary["difflib_no_choice"]
    if no_choice:
        parts.append(f"\n{len(no_choice)} answer(s) share no character with any option (difflib: wrong, as "
                     f"originally), e.g. {[entry['question_id'] for entry in no_choice[:10]]}")
    return "\n".join(parts)


def write_outputs(samples: Sequence[ZeroShotSample], summary: dict[str, Any], out: Path,
                  settings: dict[str, Any]) -> tuple[Path, Path]:
    """``<out>.json`` (summary + settings) and ``<out>.samples.jsonl`` (one line per sample)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    samples_path = out.with_suffix(".samples.jsonl")
    write_json(json_path, {"settings": settings, **summary})
    write_jsonl(samples_path, ({"question_id": s.question_id, "dataset": s.dataset, "modality": s.modality,
                                "prompt": s.prompt, "options": s.options, "gt_answer": s.gt, "image": s.image,
                                "prediction": s.prediction, "results": s.results, "error": s.error}
                               for s in samples))
    return json_path, samples_path


def build_parser() -> argparse.ArgumentParser:
    from exgramed_plugin.eval.predict import add_engine_arguments

    parser = argparse.ArgumentParser(
        prog="exgramed eval-zeroshot",
        description="OmniMedVQA zero-shot classification: the original prompt with difflib scoring, and "
                    "option scoring by likelihood; per-dataset and per-modality accuracy; failures listed.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id (exgra_med or any swift model)")
    add_engine_arguments(parser)
    parser.add_argument("--questions", nargs="+", required=True,
                        help="OmniMedVQA QA_information/<access>/<dataset>.json file(s)")
    parser.add_argument("--images", default=None, help="OmniMedVQA root that image_path is relative to "
                                                       "(default: each questions file's folder)")
    parser.add_argument("--out", required=True, help="output stem: writes <out>.json and <out>.samples.jsonl")
    parser.add_argument("--scoring", nargs="+", choices=SCORINGS, default=list(SCORINGS))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256, help="original: 256")
    parser.add_argument("--temperature", type=float, default=0.0, help="original: 0.7 (sampling); default greedy")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed when --temperature > 0")
    parser.add_argument("--likelihood-norm", choices=("sum", "mean"), default="sum")
    parser.add_argument("--prompt-style", choices=("simple", "v0"), default=None, help="exgra_med only: generation "
                        "prompt (EXGRAMED_PROMPT_STYLE; default simple = original)")
    parser.add_argument("--response-mode", choices=("original", "clean", "raw"), default=None,
                        help="exgra_med only: EXGRAMED_RESPONSE_MODE (default original: 'Assistant:' kept, as scored "
                             "originally)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device-map", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N samples only (smoke tests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Prints the accuracy table and the failures, writes the summary and samples; returns 2 on bad input."""
    from exgramed_plugin.eval.predict import cli_template_settings

    args = build_parser().parse_args(argv)
    try:
        run = run_zeroshot(
            args.questions, args.out, model=args.model, images=args.images, limit=args.limit, scorings=args.scoring,
            batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
            seed=args.seed, likelihood_norm=args.likelihood_norm, dtype=args.dtype, device_map=args.device_map,
            template_settings=cli_template_settings(args.prompt_style, args.response_mode),
            model_type=args.model_type, template=args.template, infer_backend=args.infer_backend)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(run.summary, args.scoring))
    print(f"\nwrote {run.json_path} and {run.samples_path}")
    print_summary({"summary": str(run.json_path), "samples": str(run.samples_path), "questions": run.questions})
    return 0


if __name__ == "__main__":
    sys.exit(main())
