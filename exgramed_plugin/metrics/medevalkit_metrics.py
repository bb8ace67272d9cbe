"""MedEvalKit's VQA scoring (VQA-RAD, SLAKE, PathVQA), quirks included, and a corrected set beside it.

Why: recent medical VLM papers (Lingshu, HuatuoGPT-Vision, MedGemma comparisons) report MedEvalKit
numbers, whose conventions differ from LLaVA-Med's ``run_eval.py`` (see ``vqa_metrics.py``). Reproduced
from alibaba-damo-academy/MedEvalKit at commit ``9b12e3b34232a8779cc1275417bf4f72f03d28e0``:
``utils/utils.py`` (``parse_response``, ``judge_judgement``, ``judge_close_end_vqa``,
``judge_open_end_vqa``, ``calculate_f1``, ``bleu``, ``rouge``, ``extract``, ``get_compare_messages``),
the ``cal_metrics`` methods of ``utils/VQA_RAD/VQA_RAD.py``, ``utils/SLAKE/SLAKE.py`` and
``utils/PATH_VQA/PATH_VQA.py``, and ``extract_boxed_content`` of hiyouga/MathRuler
``mathruler/grader.py`` (mathruler 0.1.0, pinned by MedEvalKit's requirements.txt).

BLEU uses nltk's ``sentence_bleu`` and ROUGE the ``rouge`` package (pltrdy, 1.0.1, ``from rouge import
Rouge``), the libraries MedEvalKit imports; ``rouge`` is installed with ms-swift.

"faithful" functions mirror the original one to one. Where a quirk is a bug, a ``*_corrected``
function gives the value the code evidently meant; the quirks are listed in ``QUIRKS``. Pure: no I/O
except :func:`judge_with_client`, which sends MedEvalKit's LLM-judge prompt through our
OpenAI-compatible client.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from exgramed_plugin.metrics.overlap import PRF, set_prf

if TYPE_CHECKING:
    from exgramed_plugin.common.openai_client import ChatClient

logger = logging.getLogger(__name__)

MEDEVALKIT_COMMIT = "9b12e3b34232a8779cc1275417bf4f72f03d28e0"
DATASETS: tuple[str, ...] = ("vqa_rad", "slake", "pathvqa")
# MedEvalKit's open-question metric keys (judge_open_end_vqa), in its order.
OPEN_METRIC_KEYS: tuple[str, ...] = (
    "em", "bleu1", "bleu2", "bleu3", "bleu4", "rouge1", "rouge2", "rougel", "precision", "recall", "f1",
)  # fmt: skip
# MedEvalKit key -> our report key (chosen so that rows line up with the run_eval.py metrics in the
# eval-vqa table: MedEvalKit's bleu1 has weights (1,), the same as run_eval.py's 1-gram-only BLEU).
REPORT_KEYS: dict[str, str] = {
    "em": "exact_match",
    "bleu1": "bleu_1",
    "bleu2": "bleu_cumulative_2",
    "bleu3": "bleu_cumulative_3",
    "bleu4": "bleu_cumulative_4",
    "rouge1": "rouge_1",
    "rouge2": "rouge_2",
    "rougel": "rouge_l",
    "precision": "precision",
    "recall": "open_recall",
    "f1": "f1",
}
# Keys whose value MedEvalKit never reaches when an open question makes it raise (see MedEvalKitCrash).
CRASH_AFFECTED_KEYS: tuple[str, ...] = ("rouge1", "rouge2", "rougel", "precision", "recall", "f1")
# MedEvalKit's judge request (openai_llm.response_async as used by generate_outputs).
JUDGE_TEMPERATURE = 0.0
JUDGE_MAX_TOKENS = 4096
DEFAULT_JUDGE_MODEL = "gpt-4.1-2025-04-14"

QUIRKS: dict[str, str] = {
    "yes_no_substring": (
        "judge_judgement: ('yes' in r) ^ ('no' in r) and answer in r on the raw string, so 'no' is found "
        "in 'normal'/'not'/'nodule' ('yes, it is normal' is wrong for gt 'yes'; 'not sure' is right for "
        "gt 'no'). Corrected: the same rule on whole words."
    ),
    "leading_space": (
        "parse_response splits at 'answer:' / 'answer is' / ... and keeps what follows, leading space "
        "included and nothing strips it afterwards: 'Answer: left lung' never exact-matches 'left lung' "
        "and 'The answer is: x' leaves ': x'. Corrected: the parsed answer is stripped of whitespace and a "
        "leading ':'."
    ),
    "prf_swapped": (
        "calculate_f1 returns (f1, precision, recall) but judge_open_end_vqa unpacks precision, recall, "
        "f1: the reported 'precision' is F1, 'recall' is precision and 'f1' is recall. Corrected: each "
        "under its own name."
    ),
    "empty_answer_crash": (
        "An open question whose parsed answer is empty or only periods makes rouge raise ValueError "
        "('Hypothesis is empty.'); only whitespace makes calculate_f1 return a bare 0 that its caller "
        "cannot unpack (TypeError). Either stops MedEvalKit's whole run. Faithful: ROUGE and P/R/F1 are "
        "n/a and the question is counted under 'crashes'; corrected: they score 0."
    ),
    "closed_periods": (
        "judge_close_end_vqa deletes every '.' from the response but not from the answer, so a closed "
        "answer with a period ('2.5 cm') can never match. Corrected: deleted from both."
    ),
    "boxed_none": (
        "parse_response calls extract_boxed_content whenever 'boxed' occurs, which returns the string "
        "'None' without a closed \\boxed{...}: the answer becomes 'none'. Corrected: the text is kept."
    ),
    "slake_case": (
        "SLAKE's cal_metrics tests answer in ['yes', 'no'] on the raw answer and strips nothing, so the "
        "capitalised 'Yes'/'No' of SLAKE go to the exact-match rule. Corrected: answer and response "
        "lower-cased and stripped first (VQA-RAD's order), so yes/no answers get the yes/no rule."
    ),
    "judge_aggregation": (
        "With the LLM judge, SLAKE judges every question and adds the closed verdicts to the closed "
        "rule's count (closed right counted twice, accuracy can pass 100), and PATH_VQA resets closed "
        "right to 0 (accuracy = judged open right / all). Corrected: as VQA_RAD, closed by rule, open by "
        "the judge."
    ),
    "no_questions_of_a_type": (
        "acc = right / total raises ZeroDivisionError when a file has no open or no closed question; "
        "reported here as n/a."
    ),
}

_WORDS = re.compile(r"[0-9a-z]+")


class MedEvalKitCrash(RuntimeError):
    """Raised where MedEvalKit itself raises on a question (its run would stop there)."""


# --------------------------------------------------------------------------------------------------
# Extraction (mathruler/grader.py extract_boxed_content; utils/utils.py get_content_between_a_b, extract)
# --------------------------------------------------------------------------------------------------


def extract_boxed_content(text: str) -> str:
    r"""mathruler ``extract_boxed_content``: the content of the *last* ``\boxed{`` up to its matching
    brace, stripped; the string ``"None"`` when there is none or it is never closed."""
    depth = 0
    start_pos = text.rfind(r"\boxed{")
    end_pos = -1
    content = ""
    if start_pos != -1:
        content = text[start_pos + len(r"\boxed{") :]
        for i, char in enumerate(content):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            if depth == -1:
                end_pos = i
                break
    if end_pos != -1:
        return content[:end_pos].strip()
    return "None"


def get_content_between_a_b(start_tag: str, end_tag: str, text: str) -> str:
    """utils.py ``get_content_between_a_b``: every closed ``start…end`` span, joined by spaces."""
    extracted_text = ""
    start_index = text.find(start_tag)
    while start_index != -1:
        end_index = text.find(end_tag, start_index + len(start_tag))
        if end_index != -1:
            extracted_text += text[start_index + len(start_tag) : end_index] + " "
            start_index = text.find(start_tag, end_index + len(end_tag))
        else:
            break
    return extracted_text.strip()


def extract(text: str | None, tag: str, hard: bool = True) -> str:
    """utils.py ``extract``: the ``<tag>`` contents; the whole text when absent (``hard``); "" for None."""
    if text:
        target_str = get_content_between_a_b(f"<{tag}>", f"</{tag}>", text)
        if target_str:
            return target_str
        if hard:
            return text
        return ""
    return ""


ANSWER_PATTERNS: tuple[str, ...] = (
    "**answer**:", "**answer**", "*answer*:", "**answer:**", "answer is", "answer:", "答案:",
    "final answer", "final answer is",
)  # fmt: skip


def parse_response(response: str) -> str:
    """utils.py ``parse_response``: lower-case, ``\\boxed{}`` / ``<answer>`` extraction, then for each
    pattern in order keep what follows its last occurrence (leading space kept; quirks
    ``boxed_none`` and ``leading_space``)."""
    response = response.lower()
    if "boxed" in response:
        response = extract_boxed_content(response)
    elif "<answer>" in response:
        response = extract(response, "answer")
    for answer_pattern in ANSWER_PATTERNS:
        if answer_pattern in response:
            response = response.split(answer_pattern)[-1]
    return response


def parse_response_corrected(response: str) -> str:
    """``parse_response`` without the ``boxed_none`` substitution; whitespace and a leading ":" (left by
    "answer is:") stripped (``leading_space``)."""
    response = response.lower()
    boxed = extract_boxed_content(response)
    if boxed != "None":
        response = boxed
    elif "<answer>" in response:
        response = extract(response, "answer")
    for answer_pattern in ANSWER_PATTERNS:
        if answer_pattern in response:
            response = response.split(answer_pattern)[-1]
    return response.strip().removeprefix(":").strip()


def cal_metrics_response(response: str) -> str:
    """The extraction every ``cal_metrics`` applies to the raw model output before judging."""
    boxed = extract_boxed_content(response)
    if boxed != "None":
        return boxed
    if "<answer>" in response:
        return extract(response, "answer")
    return response


# --------------------------------------------------------------------------------------------------
# Judgements (utils.py judge_close_end_vqa, judge_judgement)
# --------------------------------------------------------------------------------------------------


def _closed_text(response: str, *, corrected: bool) -> str:
    parsed = parse_response_corrected(response) if corrected else parse_response(response)
    text = parsed.replace("\n", "").replace(".", "")
    return text.strip() if corrected else text


def judge_close_end_vqa(answer: str, response: str) -> bool:
    """utils.py ``judge_close_end_vqa``: parsed response without newlines and periods == lower(answer)."""
    return _closed_text(response, corrected=False) == answer.lower()


def judge_close_end_vqa_corrected(answer: str, response: str) -> bool:
    """Same, on the stripped parse (``leading_space``), newlines and periods deleted from the answer too
    (``closed_periods``)."""
    return _closed_text(response, corrected=True) == answer.lower().replace("\n", "").replace(".", "").strip()


def judge_judgement(answer: str, response: str) -> bool:
    """utils.py ``judge_judgement``: exactly one of "yes"/"no" occurs *as a substring* of the parsed
    response, and the answer occurs in it as a substring (quirk ``yes_no_substring``)."""
    answer = answer.lower()
    text = _closed_text(response, corrected=False)
    return (("yes" in text) ^ ("no" in text)) and answer in text


def judge_judgement_corrected(answer: str, response: str) -> bool:
    """The same rule on whole words: exactly one of yes/no is a word of the answer, and it is the gt."""
    words = set(_WORDS.findall(_closed_text(response, corrected=True)))
    return (("yes" in words) ^ ("no" in words)) and answer.lower().strip() in words


# --------------------------------------------------------------------------------------------------
# Open-question metrics (utils.py tokenize, bleu, rouge, calculate_f1, judge_open_end_vqa)
# --------------------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """utils.py ``tokenize``: lower, " ." before every period, split on single spaces (so "a  b" has an
    empty token and newlines do not split)."""
    return text.lower().replace(".", " .").split(" ")


def bleu(pred: str, target: str, n: int) -> float:
    """utils.py ``bleu``: nltk ``sentence_bleu`` with uniform weights ``1/n`` (cumulative BLEU-n), no
    smoothing; nltk's zero-overlap warnings are silenced (the value is unchanged)."""
    from nltk.translate.bleu_score import sentence_bleu

    weights = [1 / n for _ in range(n)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sentence_bleu([tokenize(target)], tokenize(pred), weights=weights))


def rouge(pred: str, target: str) -> list[dict[str, dict[str, float]]]:
    """utils.py ``rouge``: ``Rouge().get_scores(pred.lower(), target.lower())`` of the ``rouge`` package
    (raises ValueError on an empty hypothesis or reference, as there)."""
    from rouge import Rouge

    return Rouge().get_scores(pred.lower(), target.lower())


def calculate_f1(prediction: str, ground_truth: str) -> int | tuple[float, float, float]:
    """utils.py ``calculate_f1`` verbatim: word *sets*; returns ``(f1, precision, recall)``, ``(0, 0, 0)``
    without overlap and a bare ``0`` when either side has no word (quirks ``prf_swapped``,
    ``empty_answer_crash``)."""
    prediction_tokens = set(prediction.lower().split())
    ground_truth_tokens = set(ground_truth.lower().split())
    common = prediction_tokens & ground_truth_tokens
    if len(prediction_tokens) == 0 or len(ground_truth_tokens) == 0:
        return 0
    precision = len(common) / len(prediction_tokens)
    recall = len(common) / len(ground_truth_tokens)
    if precision + recall == 0:
        return 0, 0, 0
    f1 = 2 * (precision * recall) / (precision + recall)
    return f1, precision, recall


def precision_recall_f1_corrected(prediction: str, ground_truth: str) -> PRF:
    """Precision, recall and F1 of ``calculate_f1``'s word sets (lower-cased, split on white space), each
    under its name; 0s for an empty side."""
    return set_prf(prediction.lower().split(), ground_truth.lower().split())


def _bleu_and_em(answer: str, response: str) -> dict[str, float]:
    scores: dict[str, float] = {f"bleu{n}": bleu(response, answer, n) for n in (1, 2, 3, 4)}
    scores["em"] = float(response == answer)
    return scores


def judge_open_end_vqa(answer: str, response: str) -> dict[str, float]:
    """utils.py ``judge_open_end_vqa``, keys as MedEvalKit reports them (``precision`` holds F1,
    ``recall`` precision, ``f1`` recall: quirk ``prf_swapped``).

    Raises :class:`MedEvalKitCrash` where MedEvalKit raises (quirk ``empty_answer_crash``); the
    exception's ``partial`` attribute holds what was computed before (bleu1-4, em).
    """
    answer = answer.lower()
    response = parse_response(response)
    scores = _bleu_and_em(answer, response)
    try:
        rouge_scores = rouge(response, answer)
    except ValueError as error:
        crash = MedEvalKitCrash(f"rouge raised ValueError({error}) on the parsed answer {response!r}")
        crash.partial = scores  # type: ignore[attr-defined]
        raise crash from error
    scores["rouge1"] = rouge_scores[0]["rouge-1"]["f"]
    scores["rouge2"] = rouge_scores[0]["rouge-2"]["f"]
    scores["rougel"] = rouge_scores[0]["rouge-l"]["f"]
    result = calculate_f1(response, answer)
    if not isinstance(result, tuple):
        crash = MedEvalKitCrash(
            f"calculate_f1 returned a bare 0 for the parsed answer {response!r}; MedEvalKit's "
            "'precision, recall, f1 = calculate_f1(...)' raises TypeError"
        )
        crash.partial = scores  # type: ignore[attr-defined]
        raise crash
    precision, recall, f1 = result  # the caller's (wrong) order, kept on purpose
    scores.update({"precision": float(precision), "recall": float(recall), "f1": float(f1)})
    return scores


def judge_open_end_vqa_corrected(answer: str, response: str) -> dict[str, float]:
    """Same metrics on the stripped parse; ROUGE 0 for an empty side; P/R/F1 under their own names."""
    answer = answer.lower().strip()
    response = parse_response_corrected(response)
    scores = _bleu_and_em(answer, response)
    try:
        rouge_scores = rouge(response, answer)
        scores.update({"rouge1": rouge_scores[0]["rouge-1"]["f"], "rouge2": rouge_scores[0]["rouge-2"]["f"],
                       "rougel": rouge_scores[0]["rouge-l"]["f"]})
    except ValueError:
        scores.update({"rouge1": 0.0, "rouge2": 0.0, "rougel": 0.0})
    precision, recall, f1 = precision_recall_f1_corrected(response, answer)
    scores.update({"precision": precision, "recall": recall, "f1": f1})
    return scores


# --------------------------------------------------------------------------------------------------
# Per-question flow of cal_metrics (VQA_RAD.py, SLAKE.py, PATH_VQA.py)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionScore:
    """One question under MedEvalKit: its kind (by MedEvalKit's per-dataset rule), the string compared
    with the gt, rule-based correctness, open metrics (MedEvalKit keys) and a crash reason if any."""

    kind: str
    compared: str
    correct: bool
    metrics: dict[str, float] = field(default_factory=dict)
    crash: str | None = None
    judge_response: str = ""
    judge_answer: str = ""


def question_kind(answer: str, answer_type: str, dataset: str) -> str:
    """"open" or "closed" as MedEvalKit decides it per dataset.

    vqa_rad / pathvqa (VQA_RAD.py, PATH_VQA.py cal_metrics): closed iff ``answer.lower().strip()`` is
    "yes" or "no", whatever answer_type says. slake (SLAKE.py): open iff answer_type == "OPEN", every
    other type is closed.
    """
    _check_dataset(dataset)
    if dataset == "slake":
        return "open" if answer_type == "OPEN" else "closed"
    return "closed" if answer.lower().strip() in ("yes", "no") else "open"


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"MedEvalKit dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


def score_question(response: str, answer: str, answer_type: str, dataset: str) -> QuestionScore:
    """One question through the dataset's ``cal_metrics`` loop, faithfully.

    vqa_rad / pathvqa: extraction, then answer and response lower-cased and stripped; yes/no answers
    -> ``judge_judgement``, others -> ``judge_open_end_vqa`` (correct = em). slake: extraction only
    (no lower/strip); OPEN -> ``judge_open_end_vqa``; closed with answer exactly "yes"/"no" ->
    ``judge_judgement``, else ``judge_close_end_vqa``.
    """
    kind = question_kind(answer, answer_type, dataset)
    extracted = cal_metrics_response(response)
    if dataset == "slake":
        judged_answer, judged_response = answer, extracted
    else:
        judged_answer, judged_response = answer.lower().strip(), extracted.lower().strip()
    common = {"judge_response": judged_response, "judge_answer": judged_answer}
    if kind == "closed":
        compared = _closed_text(judged_response, corrected=False)
        if dataset != "slake" or answer in ("yes", "no"):
            correct = judge_judgement(judged_answer, judged_response)
        else:
            correct = judge_close_end_vqa(judged_answer, judged_response)
        return QuestionScore("closed", compared, correct, **common)
    compared = parse_response(judged_response)
    try:
        metrics = judge_open_end_vqa(judged_answer, judged_response)
    except MedEvalKitCrash as crash:
        partial: dict[str, float] = crash.partial  # type: ignore[attr-defined]
        return QuestionScore("open", compared, bool(partial["em"]), dict(partial), str(crash), **common)
    return QuestionScore("open", compared, bool(metrics["em"]), metrics, **common)


def score_question_corrected(response: str, answer: str, answer_type: str, dataset: str) -> QuestionScore:
    """``score_question`` with every bug of ``QUIRKS`` fixed (SLAKE: lower/strip first, as VQA-RAD)."""
    kind = question_kind(answer, answer_type, dataset)
    judged_answer = answer.lower().strip()
    judged_response = cal_metrics_response(response).lower().strip()
    common = {"judge_response": judged_response, "judge_answer": judged_answer}
    if kind == "closed":
        compared = _closed_text(judged_response, corrected=True)
        if judged_answer in ("yes", "no"):
            correct = judge_judgement_corrected(judged_answer, judged_response)
        else:
            correct = judge_close_end_vqa_corrected(judged_answer, judged_response)
        return QuestionScore("closed", compared, correct, **common)
    metrics = judge_open_end_vqa_corrected(judged_answer, judged_response)
    return QuestionScore("open", parse_response_corrected(judged_response), bool(metrics["em"]), metrics,
                         **common)


# --------------------------------------------------------------------------------------------------
# Aggregation (the end of cal_metrics), optionally with the LLM judge
# --------------------------------------------------------------------------------------------------


def _percent(right: float, total: int) -> float | None:
    return None if total == 0 else right / total * 100


def judged_questions(scores: Sequence[QuestionScore], dataset: str, *, corrected: bool = False) -> list[int]:
    """Indices of the questions MedEvalKit sends to the LLM judge: open ones (VQA_RAD, PATH_VQA), every
    one (SLAKE); open ones only when corrected."""
    _check_dataset(dataset)
    if dataset == "slake" and not corrected:
        return list(range(len(scores)))
    return [i for i, score in enumerate(scores) if score.kind == "open"]


def aggregate(scores: Sequence[QuestionScore], dataset: str, *,
              verdicts: dict[int, bool] | None = None, corrected: bool = False) -> dict[str, float | None]:
    """The ``metrics`` dict of ``cal_metrics`` as report keys (×100 of MedEvalKit's fractions).

    ``accuracy`` = (closed right + open right) / all questions; without a judge open right = exact
    matches. ``verdicts`` (question index -> the judge said correct, for ``judged_questions``) replays
    the dataset's judge bookkeeping (quirk ``judge_aggregation``; corrected: closed by rule, open by
    the judge) and adds ``open_judge_accuracy``. Open metrics are averaged over the open questions;
    those MedEvalKit never reaches on a crashing question (``CRASH_AFFECTED_KEYS``) are None when any
    question crashed.
    """
    _check_dataset(dataset)
    closed = [s for s in scores if s.kind == "closed"]
    open_ = [s for s in scores if s.kind == "open"]
    closed_right = float(sum(s.correct for s in closed))
    open_right = float(sum(s.correct for s in open_))
    if verdicts is not None:
        judged_open = float(sum(verdicts.get(i, False) for i, s in enumerate(scores) if s.kind == "open"))
        if corrected or dataset == "vqa_rad":
            open_right = judged_open
        elif dataset == "slake":
            closed_right += sum(verdicts.get(i, False) for i, s in enumerate(scores) if s.kind == "closed")
            open_right = judged_open
        else:  # pathvqa: closed right reset to 0 and never refilled
            closed_right, open_right = 0.0, judged_open
    metrics: dict[str, float | None] = {
        "accuracy": _percent(closed_right + open_right, len(scores)),
        "closed_accuracy": _percent(closed_right, len(closed)),
    }
    if verdicts is not None:
        metrics["open_judge_accuracy"] = _percent(open_right, len(open_))
    crashed = any(s.crash for s in open_)
    for key in OPEN_METRIC_KEYS:
        if not open_ or (crashed and key in CRASH_AFFECTED_KEYS):
            metrics[REPORT_KEYS[key]] = None
        else:
            metrics[REPORT_KEYS[key]] = sum(s.metrics[key] for s in open_) / len(open_) * 100
    return metrics


# --------------------------------------------------------------------------------------------------
# LLM judge (utils.py get_compare_messages, openai_llm; the judge branch of cal_metrics)
# --------------------------------------------------------------------------------------------------


def get_compare_messages(question: str, response: str, answer: str) -> list[dict[str, str]]:
    """utils.py ``get_compare_messages``: the judge prompt, verbatim (whitespace included)."""
    prompt = f"""
Your task is to determine whether the user's answer is correct based on the provided questions and standard answers (for example, if the user expresses a similar meaning to the standard answer, or another interpretation of the standard answer, it is considered correct.)

The question is: {question}

The standard answer: {answer}

The user's answer: {response}

Please strictly follow the following format for output(0 represents correct, 1 represents incorrect):
<think>{{your concise think step}}</think>
<judge>{{0/1}}</judge>

for example:
<think>The standard answer is right, and the user's answer is right frontal lobe, they express the same meaning, so it is correct.</think>
<judge>0</judge>
    """  # noqa: E501
    return [{"role": "user", "content": prompt}]


def judge_verdict(reply: str | None) -> bool:
    """The cal_metrics reading of a judge reply: ``extract(reply, "judge") == "0"`` (a failed request,
    None, counts as incorrect, as there)."""
    return extract(reply, "judge") == "0"


def judge_with_client(client: ChatClient, requests: Sequence[tuple[str, str, str]], *,
                      concurrency: int = 8) -> tuple[list[str | None], list[int]]:
    """Send ``(question, response, answer)`` triples to the judge; returns the replies (None where the
    request failed for good) and the indices that failed, which are logged."""
    from exgramed_plugin.common.concurrency import run_concurrently
    from exgramed_plugin.common.openai_client import ChatRequestError

    replies: list[str | None] = [None] * len(requests)
    failed: list[int] = []

    def worker(index: int) -> Any:
        question, response, answer = requests[index]
        try:
            return client.chat(get_compare_messages(question, response, answer), temperature=JUDGE_TEMPERATURE,
                               max_tokens=JUDGE_MAX_TOKENS).content
        except ChatRequestError as error:
            return error

    def on_result(index: int, result: Any) -> None:
        if isinstance(result, ChatRequestError):
            failed.append(index)
            logger.warning("LLM judge request %d failed: %s", index, result)
        else:
            replies[index] = result

    interrupted = run_concurrently(list(range(len(requests))), worker, on_result, concurrency=concurrency,
                                   desc="MedEvalKit LLM judge", show_progress=False)
    if interrupted:
        raise KeyboardInterrupt
    return replies, sorted(failed)
