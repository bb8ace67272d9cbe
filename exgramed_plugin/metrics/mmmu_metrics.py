"""MMMU's prompt and scoring as MedEvalKit runs it on the Health & Medicine subjects (MMMU-Med), and the
corrected scoring beside it.

Why: MMMU-Med numbers in recent medical-VLM papers come from MedEvalKit's copy of MMMU's own
``eval_utils``. Reproduced from alibaba-damo-academy/MedEvalKit (Apache-2.0) @
``9b12e3b34232a8779cc1275417bf4f72f03d28e0``, ``utils/MMMU/``: ``data_utils.py`` L9-16
(``DOMAIN_CAT2SUB_CAT``), L87-100 (``process_single_sample``), L136-188 (``construct_prompt``);
``eval_utils.py`` L10-69 (``parse_multi_choice_response``), L72-178 (``parse_open_response`` and helpers),
L182-223 (``eval_multi_choice``, ``eval_open``); ``eval_val.py`` L16-55 (what is parsed before judging)
and ``eval_test.py`` L17-48, L77. MMMU's own copy (MMMU-Benchmark/MMMU @
``bb0b95a945998d91dfef37e969e07d49d1139438``, ``mmmu/utils/eval_utils.py``, ``mmmu/main_eval_only.py``)
is the reference for the corrected set.

The random letter MMMU gives an unparsable multiple-choice reply comes from a ``random.Random(42)``
consumed in question order: MedEvalKit seeds Python's global generator with 42 before each benchmark
(``eval.py`` L113, ``set_seed``), MMMU's copy at import (``eval_utils.py`` L6). Nothing else in MedEvalKit's
run is known to draw from it in between, which this reproduction assumes.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from exgramed_plugin.metrics.medevalkit_metrics import extract, extract_boxed_content

MMMU_COMMIT = "bb0b95a945998d91dfef37e969e07d49d1139438"
RANDOM_SEED = 42
# data_utils.py L13: the Health & Medicine subjects, in MedEvalKit's order (the order of its runs).
MEDICAL_SUBJECTS: tuple[str, ...] = (
    "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy", "Public_Health",
)  # fmt: skip
MULTIPLE_CHOICE = "multiple-choice"
QUESTION_TYPES = (MULTIPLE_CHOICE, "open")

QUIRKS: dict[str, str] = {
    "val_open_never_right": (
        "eval_val.py L51-53 keeps the raw reply as parsed_pred of an open question; eval_open "
        "(eval_utils.py L210-217) then loops over its characters and asks whether a normalised gold answer "
        "(at least 2 characters, or a float) occurs in one character: on the validation split an open "
        "question is never right. Corrected: the reply goes through parse_open_response first, as "
        "MMMU's main_eval_only.py L53-54 and MedEvalKit's own eval_test.py L45 do."
    ),
    "test_split_crash": (
        "eval_test.py L77 calls evaluate(out_samples, gold_answers), but evaluate (eval_utils.py L226) takes "
        "one argument (and out_samples is a dict of id -> prediction there): MedEvalKit raises TypeError and "
        "reports no test number. Corrected: the test split scored against answer.json's ground_truth the "
        "way MMMU's main_eval_only.py L51-65 does."
    ),
    "first_image_only": (
        "data_utils.py L87-100 passes only image_1 (eval_val.py L23 sends one 'image'), although a "
        "question may refer to up to 7 images by <image N>; the placeholders stay in the text. A prompt "
        "setting, not a scoring one: `exgramed eval --mmmu-images all` sends every image the question "
        "and its options refer to, in order."
    ),
}


# --------------------------------------------------------------------------------------------------
# Prompt (data_utils.py)
# --------------------------------------------------------------------------------------------------


def construct_prompt(question: str, options: Sequence[str], question_type: str) -> str:
    """data_utils.py L136-188 with ``REASONING`` "False": the question, "(A) option" lines and the
    instruction, with the blank lines and the 8-space indent of its template string."""
    if question_type == MULTIPLE_CHOICE:
        example = "".join(f"({chr(ord('A') + i)}) {option}\n" for i, option in enumerate(options))
        return f"\n{question}\n\n{example}\n\n        Answer with the option's letter from the given choices directly."
    return f"\n{question}\n\n        Answer the question using a single word or phrase."


def index2ans(options: Sequence[str]) -> dict[str, str]:
    """``{"A": option, ...}`` of construct_prompt (L143-148)."""
    return {chr(ord("A") + i): option for i, option in enumerate(options)}


def pre_parse(response: str) -> str:
    """eval_val.py L41-44 / eval_test.py L38-41: ``<answer>`` contents, then a closed ``\\boxed{}``'s."""
    if "<answer>" in response:
        response = extract(response, "answer")
    boxed = extract_boxed_content(response)
    return boxed if boxed != "None" else response


# --------------------------------------------------------------------------------------------------
# Parsing (eval_utils.py)
# --------------------------------------------------------------------------------------------------


def parse_multi_choice_response(response: str | None, all_choices: Sequence[str], answers: dict[str, str],
                                rng: random.Random) -> str:
    """MedEvalKit's eval_utils.py L10-69: "(X)" mentions, then " X " mentions, then (replies of more
    than 5 words) option texts; several candidates -> the last mentioned; none -> ``rng.choice``."""
    response = "" if response is None else response
    if "<answer>" in response:
        response = extract(response, "answer")
    elif "\\boxed" in response:
        response = extract_boxed_content(response)
    response = response.strip()
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans = True
    ans_with_brack = False
    candidates = []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        for choice in all_choices:
            if f" {choice} " in response:
                candidates.append(choice)
    if not candidates and len(response.split()) > 5:
        for index, ans in answers.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if not candidates:
        return rng.choice(list(all_choices))
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        marker = "({})" if ans_with_brack else " {} "
        start_indexes = [response.rfind(marker.format(can)) for can in candidates]
    else:
        start_indexes = [response.lower().rfind(answers[can].lower()) for can in candidates]
    return candidates[int(np.argmax(start_indexes))]


def check_is_number(string: str) -> bool:
    """eval_utils.py L72-81."""
    try:
        float(string.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(string: str) -> list[Any]:
    """eval_utils.py L83-105: a number rounded to 2 decimals, else the lower-cased string (a single
    character padded with a space on either side)."""
    string = string.strip()
    if check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]
    return [string]


def extract_numbers(string: str) -> list[str]:
    """eval_utils.py L107-127."""
    pattern_commas = r"-?\b\d{1,3}(?:,\d{3})+\b"
    pattern_scientific = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
    pattern_simple = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    return re.findall(pattern_commas, string) + re.findall(pattern_scientific, string) + re.findall(
        pattern_simple, string)


def _key_subresponses(response: str) -> list[str]:
    """eval_utils.py L135-162 (``get_key_subresponses``)."""
    response = response.strip().strip(".").lower()
    sub_responses = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators_of_keys = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    key_responses = []
    for index, resp in enumerate(sub_responses):
        if index == len(sub_responses) - 1:
            indicators_of_keys.extend(["="])
        shortest_key_response = None
        for indicator in indicators_of_keys:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                if not shortest_key_response or len(tail) < len(shortest_key_response):
                    shortest_key_response = tail
        if shortest_key_response and shortest_key_response.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            key_responses.append(shortest_key_response)
    return key_responses or [response]


def parse_open_response(response: str) -> list[Any]:
    """eval_utils.py L129-178: key sub-responses, the numbers in them, each normalised, de-duplicated."""
    key_responses = _key_subresponses(response)
    pred_list: list[Any] = list(key_responses)
    for resp in key_responses:
        pred_list.extend(extract_numbers(resp))
    normalized: list[Any] = []
    for pred in pred_list:
        normalized.extend(normalize_str(pred))
    return list(set(normalized))


# --------------------------------------------------------------------------------------------------
# Judging (eval_utils.py L182-223)
# --------------------------------------------------------------------------------------------------


def eval_multi_choice(gold: str | list[str], pred: str) -> bool:
    """eval_utils.py L182-196: the parsed letter equals the gold letter (one of a gold list)."""
    return pred in gold if isinstance(gold, list) else gold == pred


def eval_open(gold: str | list[str], pred: Any) -> bool:
    """eval_utils.py L198-223: a string prediction contains a normalised gold string, or a number
    prediction equals a normalised gold number. ``pred`` is iterated: a list of parsed predictions, or
    (MedEvalKit's validation split, quirk ``val_open_never_right``) a raw string, character by character."""
    norm_answers: list[Any] = []
    for answer in gold if isinstance(gold, list) else [gold]:
        norm_answers.extend(normalize_str(answer))
    for candidate in pred:
        if isinstance(candidate, str):
            if any(isinstance(norm, str) and norm in candidate for norm in norm_answers):
                return True
        elif candidate in norm_answers:
            return True
    return False


def judge(response: str, *, question_type: str, options: Sequence[str], gold: str | list[str], split: str,
          rng: random.Random, corrected: bool) -> tuple[bool | None, Any]:
    """(verdict, parsed prediction) of one question; verdict None where MedEvalKit raises (quirk
    ``test_split_crash``: the faithful test split). ``rng`` is drawn from only for an unparsable
    multiple-choice reply."""
    reply = pre_parse(response)
    if question_type == MULTIPLE_CHOICE:
        letters = [chr(ord("A") + i) for i in range(len(options))]
        parsed: Any = parse_multi_choice_response(reply, letters, index2ans(options), rng)
        verdict = eval_multi_choice(gold, parsed)
    else:
        parsed = reply if (split != "test" and not corrected) else parse_open_response(reply)
        verdict = eval_open(gold, parsed)
    if split == "test" and not corrected:
        return None, parsed
    return verdict, parsed
