"""MedEvalKit's multiple-choice prompt and judge (PMC-VQA, OmniMedVQA, MedXpertQA-MM), quirks included,
and a corrected judge beside it.

Why: the 2025-26 medical VLMs (Lingshu and the models it compares with) report these benchmarks through
MedEvalKit, whose judge turns a free-form reply into a verdict with rules that have bugs (``QUIRKS``).
Reproduced from alibaba-damo-academy/MedEvalKit (Apache-2.0) at commit
``9b12e3b34232a8779cc1275417bf4f72f03d28e0``:

* ``utils/question_formats.py`` L1-24 ``get_multiple_choice_prompt`` (non-reasoning, English);
* ``utils/utils.py`` L68-70 ``str_similarity``, L72-93 ``find_most_similar_index``, L95-132
  ``judge_multi_choice``, L135-156 ``parse_response``, L246-256 ``extract``
  (``parse_response`` and ``extract`` are shared with :mod:`medevalkit_metrics`);
* the choice strings and the step before judging of each loader: ``utils/PMC_VQA/PMC_VQA.py`` L44-49
  (the CSV's ``Choice A``-``D`` as they are, judged on the raw reply, L77), ``utils/OmniMedVQA/OmniMedVQA.py``
  L93-99 (``"A. <option>"``; ``extract(response, "answer")`` first, L122) and
  ``utils/MedXpertQA/MedXpertQA.py`` L52-54 (``"A. <option>"``; ``extract`` first, L93).

``judge_multi_choice`` is the faithful judge, line by line; ``judge_multi_choice_corrected`` fixes the
quirks marked as bugs in ``QUIRKS``. Both are backed by the hand-worked cases of
``tests/metrics/medevalkit_choice_cases.json``. Pure functions, no I/O.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from exgramed_plugin.metrics.medevalkit_metrics import extract, parse_response, parse_response_corrected

# Benchmarks whose MedEvalKit scorer applies extract(response, "answer") before the judge.
EXTRACTS_ANSWER_TAG: frozenset[str] = frozenset({"omnimedvqa", "medxpertqa_mm"})
INSTRUCTION = "Answer with the option's letter from the given choices directly."

QUIRKS: dict[str, str] = {
    "empty_reply_is_a": (
        "utils.py L78-79 and L87: find_most_similar_index starts at index 0 with best similarity 0 and only "
        "moves on a strictly higher one, so a reply that shares no character with any choice (empty, spaces, "
        "'???') falls back to option A (L129-130): right whenever the answer is A. Corrected: no choice, wrong."
    ),
    "length_guard_noop": (
        "utils.py L112-113: 'if len(split_response) > 300: flag = False' is followed by a new 'if' chain "
        "(L115), so the guard never changes a verdict; a long reply is judged like any other (difflib, L129). "
        "Not a bug in its effect; corrected keeps the same rule (and its autojunk: difflib ignores characters "
        "frequent in replies of 200+ characters)."
    ),
    "letter_abbreviation": (
        "utils.py L99-100 (and L108): a last paragraph whose text before its first '.' is one letter of the "
        "options is taken as that letter, so 'E. coli pyelonephritis' answers E and 'A. fumigatus' answers A. "
        "Corrected: a leading 'X.' / 'X)' / 'X:' counts as letter X only when nothing follows it or what follows "
        "begins with option X's own text; otherwise the reply is judged by its text."
    ),
    "letter_outside_options": (
        "utils.py L119 and L129: a single letter that is not an option ('E' with four options) is not refused "
        "but sent to difflib, which picks the option sharing most characters with that one letter (with none "
        "shared, option A). Corrected: wrong."
    ),
    "parenthesized_letter": (
        "utils.py L97-119: only a bare letter is recognised; '(B)' (MMMU's own option style) reaches difflib "
        "(L129), which picks the option most similar to the string '(b)'. Corrected: '(b)' is letter B."
    ),
    "boxed_none": (
        "utils.py L137-138: parse_response calls mathruler's extract_boxed_content whenever 'boxed' occurs; "
        "without a closed \\boxed{...} it returns the string 'None', so the reply becomes 'none' and difflib "
        "picks the option most similar to 'none' ('None of the above' if there is one). Corrected: the text "
        "is kept (medevalkit_metrics.parse_response_corrected)."
    ),
}

_LETTER_FORM = re.compile(r"\(?([a-z])\)?(?:[.:)]\s*(.*))?", re.DOTALL)
_OPTION_PREFIX = re.compile(r"\(?[a-z]\)?\s*[.:)]\s*")


def get_multiple_choice_prompt(question: str, choices: Sequence[str]) -> str:
    """question_formats.py L1-13 (``is_reasoning=False``, ``lang="en"``), whitespace as there: a leading
    newline, ``"Options: "`` with its trailing space, one choice per line."""
    options = "\n".join(str(choice) for choice in choices)
    return f"\nQuestion: {question}\nOptions: \n{options}\n{INSTRUCTION}"


def option_letters(count: int) -> list[str]:
    """``[chr(ord('a') + i) ...]`` of utils.py L97 / L103."""
    return [chr(ord("a") + i) for i in range(count)]


def str_similarity(str1: str, str2: str) -> float:
    """utils.py L68-70: ``difflib.SequenceMatcher(None, str1, str2).ratio()`` (autojunk on, as there)."""
    return difflib.SequenceMatcher(None, str1, str2).ratio()


def find_most_similar_index(str_list: Sequence[str], target_str: str) -> int:
    """utils.py L72-93: first index of the highest similarity; 0 when every similarity is 0 (quirk
    ``empty_reply_is_a``)."""
    most_similar_index = 0
    highest_similarity = 0.0
    for i, candidate in enumerate(str_list):
        similarity = str_similarity(candidate, target_str)
        if similarity > highest_similarity:
            most_similar_index = i
            highest_similarity = similarity
    return most_similar_index


def judge_multi_choice(choices: Sequence[str], answer: str, response: str) -> bool:
    """utils.py L95-132, statement by statement (quirks ``empty_reply_is_a``, ``length_guard_noop``,
    ``letter_abbreviation``, ``letter_outside_options``, ``parenthesized_letter``, ``boxed_none``)."""
    letters = option_letters(len(choices))
    response = response.lower()
    if response.split("\n\n")[0] in letters:
        response = response.split("\n\n")[0]
    elif response.split("\n\n")[-1].split(".")[0] in letters:
        response = response.split("\n\n")[-1].split(".")[0]
    response = parse_response(response)
    lowered = [choice.lower() for choice in choices]
    response = response.strip().lower().replace("\n", "")
    split_response = response.split(".")[0].split(":")[-1]
    answer = answer.strip().lower()
    # L112-113 (len(split_response) > 300 -> flag = False) is overwritten by the chain below.
    if split_response == answer:
        return True
    if split_response in letters:
        return lowered[ord(split_response) - ord("a")] == answer
    if split_response in lowered:
        return answer in letters and split_response == lowered[ord(answer) - ord("a")]
    index = find_most_similar_index(lowered, response)
    return letters[index] == answer or lowered[index] == answer


# --------------------------------------------------------------------------------------------------
# Corrected judge
# --------------------------------------------------------------------------------------------------


def option_text(choice: str) -> str:
    """A choice without its ``"A. "`` / ``"A:"`` / ``"(A) "`` label, lower-cased and stripped."""
    lowered = choice.lower().strip()
    match = _OPTION_PREFIX.match(lowered)
    return lowered[match.end():].strip() if match else lowered


def _letter_of(text: str, choices: Sequence[str]) -> str | None:
    """The option letter ``text`` states ("b", "(b)", "b.", "b) <option b's text>"), ``"?"`` for a letter that
    is not an option, None when ``text`` is not a letter answer (quirks ``letter_abbreviation``,
    ``letter_outside_options``, ``parenthesized_letter``)."""
    match = _LETTER_FORM.fullmatch(text.strip())
    if match is None:
        return None
    letter, rest = match.group(1), (match.group(2) or "").strip().rstrip(".").strip()
    letters = option_letters(len(choices))
    if not rest:
        return letter if letter in letters else "?"
    if letter in letters and rest.startswith(option_text(choices[letters.index(letter)])):
        return letter
    return None


def corrected_choice(choices: Sequence[str], response: str) -> int | None:
    """The option a reply chooses under the corrected rules, None for no (or an impossible) choice.

    Same order as utils.py L96-130: a letter stated by the first or the last paragraph, then the reply
    parsed (``parse_response_corrected``: closed ``\\boxed{}`` only, ``<answer>``, answer patterns), as a
    letter, as an option's text, then difflib over the choices; no choice when every similarity is 0.
    """
    letters = option_letters(len(choices))
    lowered = response.lower()
    paragraphs = [p for p in lowered.split("\n\n") if p.strip()]
    parsed = parse_response_corrected(lowered)
    candidates = [paragraphs[0], paragraphs[-1]] if paragraphs else []
    for text in (*candidates, parsed):
        letter = _letter_of(text, choices)
        if letter == "?":
            return None
        if letter is not None:
            return letters.index(letter)
    flat = " ".join(parsed.split()).rstrip(".").strip()
    if not flat:
        return None
    texts = [option_text(choice) for choice in choices]
    if flat in texts:
        return texts.index(flat)
    ratios = [str_similarity(choice.lower(), flat) for choice in choices]
    best = max(ratios)
    return None if best == 0 else ratios.index(best)


def judge_multi_choice_corrected(choices: Sequence[str], answer: str, response: str) -> bool:
    """Right iff :func:`corrected_choice` is the answer (a letter, or MedEvalKit's choice text)."""
    index = corrected_choice(choices, response)
    if index is None:
        return False
    answer = answer.strip().lower()
    return option_letters(len(choices))[index] == answer or choices[index].strip().lower() == answer


def scorer_reply(benchmark: str, response: str) -> str:
    """What the benchmark's ``cal_metrics`` hands to the judge: ``extract(response, "answer")`` for
    OmniMedVQA (OmniMedVQA.py L122) and MedXpertQA (MedXpertQA.py L93), the reply itself for PMC-VQA."""
    return extract(response, "answer") if benchmark in EXTRACTS_ANSWER_TAG else response
