"""Medical VQA metrics: the original ExGra-Med / LLaVA-Med scoring, quirks included, and a strict set.

Why two sets: published VQA-RAD / SLAKE / PathVQA numbers come from `run_eval.py` +
`eval_metrics/{glossary,evaluate_metrics,utils}.py` of the original code, whose normalisation and
metrics have known flaws (docs/method.md §6.1, §10 item 13). To be comparable with the papers we
reproduce them bit for bit ("original"); to be meaningful we also compute corrected versions
("strict"). Everything here is pure (no I/O).

Conventions for the ``*_original`` functions: they mirror the original functions one to one and take
the strings the original pipeline passes them, i.e. ``prepare_original(text)`` =
``normalize_word(text.lower())``. Several of them normalise *again* internally, exactly like the
original (double normalisation is part of the behaviour). ``score_pair_original`` runs the whole
per-question pipeline from raw strings. The ``*_strict`` functions take raw strings.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exgramed_plugin.metrics.overlap import set_prf

# --------------------------------------------------------------------------------------------------
# Normalisation (eval_metrics/glossary.py, itself the official VQA evaluation's processPunctuation /
# processDigitArticle)
# --------------------------------------------------------------------------------------------------

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    # The capitalised keys can never match (words are lower-cased before the lookup); kept verbatim.
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",  # (sic) reversed in the original table
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: tuple[str, ...] = ("a", "an", "the")

# Order matters only for readability; each character is handled independently. ":" and "'" are not
# in the list, so "assistant:" survives normalisation.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`",
    ",", "?", "!",
)  # fmt: skip

# The intended pattern was a look-behind "(?<!\d)"; "(?!<=\d)" is a look-ahead for the literal text
# "<=digit", which never matches before a ".", so effectively the pattern is r"\.(?!\d)".
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")

# The original calls ``period_strip.sub("", text, re.UNICODE)``: the flag lands in the ``count``
# parameter, so only the first int(re.UNICODE) == 32 periods are removed.
ORIGINAL_PERIOD_REMOVAL_LIMIT: int = int(re.UNICODE)


def normalize_word(text: str, *, remove_all_periods: bool = False) -> str:
    """Normalise an answer exactly like the original ``glossary.normalize_word``.

    Steps (why they matter: they decide what counts as a match):
    1. For each punctuation character ``p``: if ``p + " "`` or ``" " + p`` occurs in the *original*
       input, or the input contains a digit-comma-digit anywhere, delete ``p``; else replace it by
       a space. (So "left/right" -> "left right" but "left / right." -> "left  right.", and with
       "1,000" anywhere every listed punctuation is deleted.)
    2. Delete periods not followed by a digit, at most 32 of them (the ``re.UNICODE``-as-count bug);
       ``remove_all_periods=True`` lifts that limit (strict variant).
    3. Lower-case, split on whitespace, map number words none/zero/one..ten to digits, drop the
       articles a/an/the, expand the contraction table, join with single spaces.
    4. Delete any remaining comma.
    """
    delete_punctuation_everywhere = _COMMA_BETWEEN_DIGITS.search(text) is not None
    result = text
    for p in PUNCTUATION:
        if p + " " in text or " " + p in text or delete_punctuation_everywhere:
            result = result.replace(p, "")
        else:
            result = result.replace(p, " ")
    period_count = 0 if remove_all_periods else ORIGINAL_PERIOD_REMOVAL_LIMIT
    result = _PERIOD_STRIP.sub("", result, count=period_count)

    words: list[str] = []
    for word in result.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    words = [CONTRACTIONS.get(word, word) for word in words]
    return " ".join(words).replace(",", "")


def prepare_original(text: str) -> str:
    """What ``run_eval.py`` does to every gt answer and prediction before scoring."""
    return normalize_word(str(text).lower())


def word_counts(text: str) -> Counter[str]:
    """Unigram counts like the original ``split_sentence(text, 1)`` (lower-case, whitespace split)."""
    return Counter(text.lower().strip().split())


# --------------------------------------------------------------------------------------------------
# Original metrics (eval_metrics/evaluate_metrics.py, run_eval.py)
# --------------------------------------------------------------------------------------------------


def closed_hit_original(pred: str, gt: str) -> float:
    """Closed ("yes/no accuracy") hit: the prepared gt is a *substring* of the prepared prediction.

    Flaw kept on purpose: "no" hits "not", "none" -> "0" ... and an empty gt (e.g. option "A",
    which is dropped as an article) hits everything.
    """
    return 1.0 if gt in pred else 0.0


def calculate_f1score(pred: str, gt: str) -> tuple[float, float, float]:
    """Token F1/precision/recall of the original, returned as ``(f1, precision, recall)``.

    Inputs are normalised again (as in the original). Multiplicity semantics: over the union of
    words, ``tp += count_pred(w)`` for shared words, ``fp += count_pred(w)`` for pred-only words,
    ``fn += count_gt(w)`` for gt-only words. Repeating a correct word therefore inflates recall
    (gt "b c", pred "b b b b" gives recall 4/5). Recall is what the papers report as "Open".
    """
    pred_words = word_counts(normalize_word(pred))
    gt_words = word_counts(normalize_word(gt))
    tp = fp = fn = 0
    for word in set(pred_words) | set(gt_words):
        if word in pred_words and word in gt_words:
            tp += pred_words[word]
        elif word in pred_words:
            fp += pred_words[word]
        else:
            fn += gt_words[word]
    if not pred_words or not gt_words or tp == 0:
        return 0.0, 0.0, 0.0
    precision = tp / (tp + fp)
    recall = tp / (tp + fn)
    return 2 * precision * recall / (precision + recall), precision, recall


def exact_match_original(pred: str, gt: str) -> float:
    """The misnamed "exact match score": distinct gt words present in pred / number of pred words.

    Inputs are normalised again (as in the original).
    """
    pred_words = word_counts(normalize_word(pred))
    gt_words = word_counts(normalize_word(gt))
    total = sum(pred_words.values())
    if total == 0:
        return 0.0
    return sum(1 for word in gt_words if word in pred_words) / total


@dataclass(frozen=True)
class NormalizedCandidates:
    """Candidate answers normalised once, with an inverted index so that scoring is O(overlap).

    Why: candidate.json holds every OPEN training answer (thousands); the original scores every
    candidate for every question, which is slow but gives the same argmax as this index.
    """

    answers: tuple[str, ...]
    distinct_word_counts: tuple[int, ...]
    word_to_indices: dict[str, tuple[int, ...]]


def normalize_candidates(
    candidates: Iterable[object], *, remove_all_periods: bool = False
) -> NormalizedCandidates:
    """Normalise candidate answers like ``calculate_appearance_with_normalization`` does.

    The original only stringifies ints; any non-string is stringified here.
    """
    answers: list[str] = []
    distinct_counts: list[int] = []
    index: dict[str, list[int]] = {}
    for position, candidate in enumerate(candidates):
        normalized = normalize_word(str(candidate), remove_all_periods=remove_all_periods)
        words = word_counts(normalized)
        answers.append(normalized)
        distinct_counts.append(len(words))
        for word in words:
            index.setdefault(word, []).append(position)
    if not answers:
        raise ValueError("the candidate answer list is empty")
    return NormalizedCandidates(
        answers=tuple(answers),
        distinct_word_counts=tuple(distinct_counts),
        word_to_indices={word: tuple(positions) for word, positions in index.items()},
    )


def best_candidate(pred_normalized: str, candidates: NormalizedCandidates) -> str:
    """First candidate maximising |distinct pred words in c| / |distinct words of c|.

    Same floats and same tie-breaking (first index) as the original ``argmax`` over all candidates;
    candidates sharing no word with the prediction score 0.0, so with no overlap at all the first
    candidate wins, as in the original.
    """
    overlap: Counter[int] = Counter()
    for word in word_counts(pred_normalized):
        for position in candidates.word_to_indices.get(word, ()):
            overlap[position] += 1
    best_position, best_similarity = 0, 0.0
    for position in sorted(overlap):
        similarity = overlap[position] / candidates.distinct_word_counts[position]
        if similarity > best_similarity:
            best_position, best_similarity = position, similarity
    return candidates.answers[best_position]


def _as_normalized_candidates(
    candidates: Sequence[object] | NormalizedCandidates, *, remove_all_periods: bool = False
) -> NormalizedCandidates:
    if isinstance(candidates, NormalizedCandidates):
        return candidates
    return normalize_candidates(candidates, remove_all_periods=remove_all_periods)


def open_accuracy_original(
    pred: str, gt: str, candidates: Sequence[object] | NormalizedCandidates
) -> float:
    """``calculate_appearance_with_normalization``: snap pred to the closest candidate, compare to gt.

    ``candidates`` is ``candidate.json["0"]`` (or its ``normalize_candidates`` form, for speed).
    pred and gt are normalised again (as in the original); candidates once.
    """
    normalized = _as_normalized_candidates(candidates)
    prediction = normalize_word(pred)
    reference = normalize_word(gt)
    return 1.0 if best_candidate(prediction, normalized) == reference else 0.0


BLEU_WEIGHTS: dict[str, tuple[float, ...]] = {
    # The original's "bleu_score": cumulative BLEU-4, uniform weights, no smoothing.
    "bleu_cumulative_4": (0.25, 0.25, 0.25, 0.25),
    # The original's "bleu_score_1..3": individual n-gram precisions (times brevity penalty).
    "bleu_1": (1.0, 0.0, 0.0, 0.0),
    "bleu_2": (0.0, 1.0, 0.0, 0.0),
    "bleu_3": (0.0, 0.0, 1.0, 0.0),
    # Not printed by the original; added so that BLEU-1..4 are all available.
    "bleu_4": (0.0, 0.0, 0.0, 1.0),
}


def bleu_scores(pred: str, gt: str) -> dict[str, float]:
    """nltk ``sentence_bleu([gt.lower().split()], pred.lower().split(), weights)`` for every variant.

    Inputs as the original passes them (prepared once, no further normalisation). nltk's warnings
    about zero n-gram overlap are silenced, as ``run_eval.py`` does globally.
    """
    try:
        from nltk.translate.bleu_score import sentence_bleu  # the original's BLEU implementation
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("BLEU needs nltk: pip install nltk") from error
    reference = [str(gt).lower().split()]
    hypothesis = str(pred).lower().split()
    scores: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, weights in BLEU_WEIGHTS.items():
            scores[name] = float(sentence_bleu(reference, hypothesis, weights=weights))
    return scores


@dataclass(frozen=True)
class _MetricSet:
    """The per-question metrics of one convention: both sets run one pipeline, so their keys line up."""

    prepare: Callable[[str], str]  # raw string -> what the metric functions below receive
    closed_hit: Callable[[str, str], float]
    prf: Callable[[str, str], tuple[float, float, float]]  # (f1, precision, recall)
    exact_match: Callable[[str, str], float]
    bleu_text: Callable[[str], str]  # prepared string -> what BLEU tokenises
    open_hit: Callable[[str, str, NormalizedCandidates], float]


def _score_pair(
    metrics: _MetricSet,
    pred_text: str,
    gt_text: str,
    answer_type: str,
    candidates: NormalizedCandidates | None,
) -> dict[str, float]:
    """``run_eval.evaluate``'s per-question pipeline with the metrics of one convention."""
    pred = metrics.prepare(pred_text)
    gt = metrics.prepare(gt_text)
    if answer_type == "CLOSED":
        return {"closed_hit": metrics.closed_hit(pred, gt)}
    if answer_type != "OPEN":
        raise ValueError(f"answer_type must be OPEN or CLOSED, got {answer_type!r}")
    f1, precision, recall = metrics.prf(pred, gt)
    scores = {
        "recall": recall,
        "precision": precision,
        "f1": f1,
        "exact_match": metrics.exact_match(pred, gt),
        **bleu_scores(metrics.bleu_text(pred), metrics.bleu_text(gt)),
    }
    if candidates is not None:
        scores["open_hit"] = metrics.open_hit(pred, gt, candidates)
    return scores


_ORIGINAL = _MetricSet(
    prepare=prepare_original,
    closed_hit=closed_hit_original,
    prf=calculate_f1score,
    exact_match=exact_match_original,
    bleu_text=lambda text: text,
    open_hit=open_accuracy_original,
)


def score_pair_original(
    pred_text: str,
    gt_text: str,
    answer_type: str,
    candidates: NormalizedCandidates | None = None,
) -> dict[str, float]:
    """All original per-question metrics from raw strings, as ``run_eval.evaluate`` computes them."""
    return _score_pair(_ORIGINAL, pred_text, gt_text, answer_type, candidates)


# --------------------------------------------------------------------------------------------------
# Strict metrics (fix the flaws listed in docs/method.md §10 item 13)
# --------------------------------------------------------------------------------------------------

_ASSISTANT_PREFIX = re.compile(r"^assistant\s*:", re.IGNORECASE)
_NON_ALPHANUMERIC = re.compile(r"[^0-9a-z]+")


def strip_assistant_prefix(text: str) -> str:
    """Remove one leading "Assistant:" (any case) that the `simple` template leaves in answers."""
    stripped = str(text).strip()
    return _ASSISTANT_PREFIX.sub("", stripped, count=1).strip()


def normalize_word_strict(text: str) -> str:
    """Single-pass normalisation of a raw string: no "Assistant:" prefix, every period handled."""
    return normalize_word(strip_assistant_prefix(text).lower(), remove_all_periods=True)


def _light_tokens(text: str) -> list[str]:
    """Lower-case alphanumeric tokens; used where normalisation erases the answer (option "A")."""
    return _NON_ALPHANUMERIC.sub(" ", str(text).lower()).split()


def _starts_with_tokens(tokens: Sequence[str], prefix: Sequence[str]) -> bool:
    return bool(prefix) and list(tokens[: len(prefix)]) == list(prefix)


def closed_hit_strict(pred_text: str, gt_text: str) -> float:
    """Strict closed hit from raw strings: the answer must *begin* with the gt as whole words.

    After prefix stripping and normalisation, hit iff the prediction's first ``len(gt)`` words equal
    the gt words: "no" / "No, there is not" hit gt "no"; "not sure" does not. For yes/no this is
    "the first word is the gt". When normalisation erases the gt (an option letter "A" is an
    article), the same rule is applied to lower-cased alphanumeric tokens instead ("B) left" hits "B").
    """
    gt_tokens = normalize_word_strict(gt_text).split()
    if gt_tokens:
        return 1.0 if _starts_with_tokens(normalize_word_strict(pred_text).split(), gt_tokens) else 0.0
    light_gt = _light_tokens(gt_text)
    light_pred = _light_tokens(strip_assistant_prefix(pred_text))
    return 1.0 if _starts_with_tokens(light_pred, light_gt) else 0.0


def token_prf_strict(pred_text: str, gt_text: str) -> tuple[float, float, float]:
    """``(f1, precision, recall)`` (the original's order, as :class:`_MetricSet` takes it) on *sets* of
    normalised words (no multiplicity inflation)."""
    scores = set_prf(normalize_word_strict(pred_text).split(), normalize_word_strict(gt_text).split())
    return scores.f1, scores.precision, scores.recall


def exact_match_strict(pred_text: str, gt_text: str) -> float:
    """A real exact match: normalised prediction equals normalised gt."""
    return 1.0 if normalize_word_strict(pred_text) == normalize_word_strict(gt_text) else 0.0


def open_accuracy_strict(
    pred_text: str, gt_text: str, candidates: Sequence[object] | NormalizedCandidates
) -> float:
    """Candidate snapping as in the original, on single-pass strict normalisation.

    Pass ``normalize_candidates(..., remove_all_periods=True)`` to share the index across questions.
    """
    normalized = _as_normalized_candidates(candidates, remove_all_periods=True)
    prediction = normalize_word_strict(pred_text)
    return 1.0 if best_candidate(prediction, normalized) == normalize_word_strict(gt_text) else 0.0


_STRICT = _MetricSet(
    prepare=lambda text: text,  # the strict functions take raw strings
    closed_hit=closed_hit_strict,
    prf=token_prf_strict,
    exact_match=exact_match_strict,
    bleu_text=normalize_word_strict,
    open_hit=open_accuracy_strict,
)


def score_pair_strict(
    pred_text: str,
    gt_text: str,
    answer_type: str,
    candidates: NormalizedCandidates | None = None,
) -> dict[str, float]:
    """All strict per-question metrics from raw strings (same keys as ``score_pair_original``)."""
    return _score_pair(_STRICT, pred_text, gt_text, answer_type, candidates)


def mean_percent(values: Sequence[float]) -> float | None:
    """``sum / len × 100`` exactly as the original tables; None when there is nothing to average."""
    if not values:
        return None
    return sum(values) / len(values) * 100


# --------------------------------------------------------------------------------------------------
# The original's eval-during-training metric (``prepare_compute_metrics``, docs/method.md §5), which
# swift runs as ``--eval_metric exgra_vqa`` (swift_glue/metrics.py): swift passes no answer type, so
# a label that normalises to yes / no is CLOSED and every other label OPEN.
# --------------------------------------------------------------------------------------------------

CLOSED_LABELS = frozenset({"yes", "no"})


def is_closed_label(label: str) -> bool:
    """CLOSED iff the normalised label is exactly ``yes`` or ``no``."""
    return prepare_original(label) in CLOSED_LABELS


def exgra_vqa_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """``open_recall``, ``closed_acc`` and ``average`` (all ×100) plus the counts.

    A type with no sample contributes nothing: ``average`` is then the other type's score (so it is
    always present for ``--metric_for_best_model``), and the missing one is reported as 0.0 with
    ``num_open``/``num_closed`` = 0 telling why.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    open_scores: list[float] = []
    closed_scores: list[float] = []
    for prediction, label in zip(predictions, labels):
        gt = prepare_original(label)
        pred = prepare_original(prediction)
        if gt in CLOSED_LABELS:
            closed_scores.append(closed_hit_original(pred, gt))
        else:
            open_scores.append(calculate_f1score(pred, gt)[2])
    open_recall = 100 * sum(open_scores) / len(open_scores) if open_scores else None
    closed_acc = 100 * sum(closed_scores) / len(closed_scores) if closed_scores else None
    present = [v for v in (open_recall, closed_acc) if v is not None]
    return {
        "open_recall": 0.0 if open_recall is None else open_recall,
        "closed_acc": 0.0 if closed_acc is None else closed_acc,
        "average": sum(present) / len(present) if present else 0.0,
        "num_open": float(len(open_scores)),
        "num_closed": float(len(closed_scores)),
    }
