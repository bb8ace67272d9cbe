"""Multiple-choice benchmarks (PMC-VQA, OmniMedVQA, MMMU-Med, MedXpertQA-MM): prompts, question rows and
scores under MedEvalKit's convention, the corrected one and the likelihood ranking.

Why one module: ``exgramed eval``, ``exgramed compare``, the registered swift datasets and
``--eval_metric exgra_mc`` must prompt and score these benchmarks the same way. The rules themselves are
in :mod:`medevalkit_choice` and :mod:`mmmu_metrics` (MedEvalKit @ 9b12e3b, Apache-2.0); accuracy per group
is reported as MedEvalKit's ``cal_metrics`` does: PMC-VQA overall only (``PMC_VQA.py`` L67-84),
OmniMedVQA by ``question_type`` and ``modality_type`` (``OmniMedVQA.py`` L113-150), MMMU by subject
(``utils/MMMU/eval_val.py`` L58-86), MedXpertQA by ``question_type`` and ``medical_task``
(``MedXpertQA.py`` L75-113).

Conventions, each a verdict per question:

* ``medevalkit``: MedEvalKit's judge, quirks included (MMMU: its validation/test flow);
* ``medevalkit_corrected``: the same with the quirks that are bugs fixed;
* ``likelihood``: no reply parsed; the model's summed log-probability of each choice line as the answer
  (``zeroshot.option_log_likelihoods``), the most likely one chosen. MMMU's open questions have no
  choices: not scored under it (counted under ``not_scored``).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exgramed_plugin.data.conversation import IMAGE_TAG
from exgramed_plugin.data.formats import CHOICE_COLUMN
from exgramed_plugin.data.mc_benchmarks import MULTIPLE_CHOICE, ChoiceQuestion
from exgramed_plugin.metrics import medevalkit_choice as mc
from exgramed_plugin.metrics import mmmu_metrics as mmmu

BENCHMARK_NAMES: tuple[str, ...] = ("pmc_vqa", "omnimedvqa", "mmmu_med", "medxpertqa_mm")
CONVENTIONS: tuple[str, ...] = ("medevalkit", "medevalkit_corrected", "likelihood")
GROUPS: dict[str, tuple[str, ...]] = {
    "pmc_vqa": (),
    "omnimedvqa": ("question_type", "modality_type"),
    "mmmu_med": ("subject",),
    "medxpertqa_mm": ("question_type", "medical_task"),
}
MMMU_IMAGE_MODES = ("first", "all")
ROW_FIELD = CHOICE_COLUMN  # the column of a question row that carries what scoring needs


def argmax_first(scores: Sequence[float]) -> int:
    """First index of the maximum (deterministic tie-breaking)."""
    best = 0
    for index, score in enumerate(scores):
        if score > scores[best]:
            best = index
    return best


@dataclass(frozen=True)
class Prompt:
    """The text sent for one question (without image tags) and the images sent with it."""

    text: str
    images: tuple[str, ...]

    @property
    def content(self) -> str:
        """The user turn of a question file: one ``<image>`` tag per image, then the text."""
        return IMAGE_TAG * len(self.images) + self.text


def choice_lines(benchmark: str, choices: Sequence[str]) -> list[str]:
    """The choices as the prompt lists them (what the likelihood ranking scores): MMMU ``"(A) option"``,
    the others their own strings."""
    if benchmark == "mmmu_med":
        return [f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(choices)]
    return list(choices)


def build_prompt(question: ChoiceQuestion, mmmu_images: str = "first") -> Prompt:
    """MedEvalKit's prompt: ``get_multiple_choice_prompt`` (PMC-VQA, OmniMedVQA, MedXpertQA, every image);
    MMMU's ``construct_prompt`` with ``image_1`` only (``mmmu_images="all"``: every image, quirk
    ``first_image_only``)."""
    if question.benchmark == "mmmu_med":
        if mmmu_images not in MMMU_IMAGE_MODES:
            raise ValueError(f"mmmu_images must be one of {MMMU_IMAGE_MODES}, got {mmmu_images!r}")
        images = question.images if mmmu_images == "all" else question.images[:1]
        return Prompt(mmmu.construct_prompt(question.question, question.choices, question.question_type), images)
    return Prompt(mc.get_multiple_choice_prompt(question.question, question.choices), question.images)


def scoring_info(question: ChoiceQuestion, split: str) -> dict[str, Any]:
    """What scoring needs besides the reply (kept as JSON in a question row's ``mc_question``)."""
    answer = list(question.answer) if isinstance(question.answer, tuple) else question.answer
    return {"benchmark": question.benchmark, "split": split, "choices": list(question.choices), "answer": answer,
            "question_type": question.question_type, "groups": question.groups}


def reference_reply(answer: str | Sequence[str]) -> str:
    """The assistant turn of a question row: the answer letter (MMMU open: the first gold answer)."""
    return answer if isinstance(answer, str) else answer[0]


def question_row(question: ChoiceQuestion, split: str, mmmu_images: str = "first") -> dict[str, Any]:
    """A swift ``messages`` row (the plugin's standard row): the prompt, the answer as the reference reply,
    the images, the id and ``mc_question``."""
    prompt = build_prompt(question, mmmu_images)
    reference = reference_reply(question.answer)
    return {"messages": [{"role": "user", "content": prompt.content}, {"role": "assistant", "content": reference}],
            "images": list(prompt.images), "id": question.id, "answer_type": None, "extended_answers": None,
            ROW_FIELD: json.dumps(scoring_info(question, split), ensure_ascii=False)}


# --------------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdicts:
    """One question's verdicts (None: not scored under that convention, e.g. MedEvalKit raises)."""

    medevalkit: bool | None
    medevalkit_corrected: bool | None
    parsed: str = ""


class ChoiceScorer:
    """Scores replies in question order; holds MMMU's two random streams (faithful, corrected), each
    ``random.Random(42)`` as MedEvalKit seeds them, so one scorer must see one benchmark's questions once,
    in order."""

    def __init__(self) -> None:
        self._rng = {False: random.Random(mmmu.RANDOM_SEED), True: random.Random(mmmu.RANDOM_SEED)}

    def verdicts(self, info: Mapping[str, Any], response: str) -> Verdicts:
        if info["benchmark"] == "mmmu_med":
            faithful, parsed = mmmu.judge(response, question_type=info["question_type"], options=info["choices"],
                                          gold=info["answer"], split=info["split"], rng=self._rng[False],
                                          corrected=False)
            corrected, _ = mmmu.judge(response, question_type=info["question_type"], options=info["choices"],
                                      gold=info["answer"], split=info["split"], rng=self._rng[True], corrected=True)
            return Verdicts(faithful, corrected, str(parsed))
        reply = mc.scorer_reply(info["benchmark"], response)
        return Verdicts(mc.judge_multi_choice(info["choices"], info["answer"], reply),
                        mc.judge_multi_choice_corrected(info["choices"], info["answer"], reply))


def likelihood_verdict(info: Mapping[str, Any], scores: Sequence[float] | None) -> tuple[str | None, bool | None]:
    """(chosen letter, right) of the likelihood ranking (first maximum); (None, None) without scores (MMMU
    open questions)."""
    if not scores:
        return None, None
    letter = chr(ord("A") + argmax_first(scores))
    gold = info["answer"]
    return letter, (letter in gold if isinstance(gold, list) else letter == gold)


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


@dataclass
class ChoiceReport:
    """Per-question rows and, per convention, accuracy overall and by MedEvalKit's groups (×100)."""

    benchmark: str
    split: str
    per_question: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


def _accuracy(values: Sequence[bool | None]) -> dict[str, Any]:
    scored = [v for v in values if v is not None]
    right = sum(scored)
    return {"total": len(values), "scored": len(scored), "right": right,
            "accuracy": 100 * right / len(scored) if scored and len(scored) == len(values) else None}


def summarize(benchmark: str, rows: Sequence[dict[str, Any]], conventions: Sequence[str]) -> dict[str, Any]:
    """Accuracy per convention: ``overall`` and ``by_<group>``; None where a question could not be scored
    (MedEvalKit's MMMU test split: it raises; likelihood: MMMU open questions), with ``scored`` saying how
    many were. Groups in first-seen order."""
    summary: dict[str, Any] = {}
    for convention in conventions:
        column = f"{convention}_correct"
        entry: dict[str, Any] = {"overall": _accuracy([row[column] for row in rows])}
        for group in GROUPS[benchmark]:
            by_value: dict[str, list[bool | None]] = defaultdict(list)
            for row in rows:
                by_value[row[group]].append(row[column])
            entry[f"by_{group}"] = {value: _accuracy(values) for value, values in by_value.items()}
        if convention == "likelihood":
            entry["overall"]["accuracy_scored"] = (100 * entry["overall"]["right"] / entry["overall"]["scored"]
                                                   if entry["overall"]["scored"] else None)
        summary[convention] = entry
    return summary


def score_choices(benchmark: str, split: str, questions: Sequence[Mapping[str, Any]],
                  responses: Mapping[str, str], likelihoods: Mapping[str, Sequence[float]] | None = None
                  ) -> ChoiceReport:
    """Score the ``responses`` (question id -> reply) to ``questions`` (``{"id", "mc_question"}`` rows in
    question order, as :func:`question_row` writes them). ``likelihoods`` (question id -> one score per
    choice) adds the likelihood convention."""
    scorer = ChoiceScorer()
    conventions = CONVENTIONS if likelihoods is not None else CONVENTIONS[:2]
    rows = []
    for question in questions:
        info = json.loads(question[ROW_FIELD])
        response = responses[question["id"]]
        verdicts = scorer.verdicts(info, response)
        row: dict[str, Any] = {"id": question["id"], **info["groups"],
                               "answer": json.dumps(info["answer"]) if isinstance(info["answer"], list)
                               else info["answer"], "prediction": response,
                               "medevalkit_correct": verdicts.medevalkit,
                               "medevalkit_corrected_correct": verdicts.medevalkit_corrected}
        if benchmark == "mmmu_med":
            row.update({"mmmu_question_type": info["question_type"], "mmmu_parsed": verdicts.parsed})
        if likelihoods is not None:
            scores = likelihoods.get(question["id"]) if info["question_type"] == MULTIPLE_CHOICE else None
            row["likelihood_choice"], row["likelihood_correct"] = likelihood_verdict(info, scores)
            row["likelihood_scores"] = json.dumps(list(scores)) if scores else ""
        rows.append(row)
    return ChoiceReport(benchmark, split, rows, summarize(benchmark, rows, conventions))


def training_metrics(responses: Sequence[str], references: Sequence[str], infos: Sequence[Mapping[str, Any]]
                     ) -> dict[str, float]:
    """``--eval_metric exgra_mc``: accuracy ×100 under ``medevalkit`` and ``medevalkit_corrected``, over all
    questions and per benchmark (``<benchmark>_medevalkit...``), plus ``num_questions``. A faithful accuracy
    is left out where MedEvalKit gives none (MMMU's test split). ``references`` (swift's labels) must be
    the rows' reference replies in order: predictions are matched to rows by position."""
    if not len(responses) == len(references) == len(infos):
        raise ValueError(f"{len(responses)} replies, {len(references)} labels, {len(infos)} evaluation rows: they "
                         "must be the same questions in the same order")
    mismatched = [i for i, (reference, info) in enumerate(zip(references, infos))
                  if reference != reference_reply(info["answer"])]
    if mismatched:
        raise ValueError(f"labels and evaluation rows do not line up at positions {mismatched[:10]} (is "
                         "--val_dataset_shuffle on?)")
    scorers: dict[str, ChoiceScorer] = defaultdict(ChoiceScorer)
    verdicts: dict[str, dict[str, list[bool | None]]] = defaultdict(lambda: defaultdict(list))
    for response, info in zip(responses, infos):
        verdict = scorers[info["benchmark"]].verdicts(info, response)
        for name, value in (("medevalkit", verdict.medevalkit), ("medevalkit_corrected", verdict.medevalkit_corrected)):
            verdicts["all"][name].append(value)
            verdicts[info["benchmark"]][name].append(value)
    metrics: dict[str, float] = {"num_questions": float(len(responses))}
    for scope, by_convention in verdicts.items():
        prefix = "" if scope == "all" else f"{scope}_"
        for name, values in by_convention.items():
            if values and None not in values:
                metrics[f"{prefix}{name}"] = 100 * sum(values) / len(values)
    return metrics
