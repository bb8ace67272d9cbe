"""VQA metric functions: expectations are worked out by hand from the original code's rules."""

from __future__ import annotations

import random

import pytest
from nltk.translate.bleu_score import sentence_bleu

from exgramed_plugin.metrics.vqa_metrics import (
    ORIGINAL_PERIOD_REMOVAL_LIMIT,
    best_candidate,
    bleu_scores,
    calculate_f1score,
    closed_hit_original,
    closed_hit_strict,
    exact_match_original,
    exact_match_strict,
    normalize_candidates,
    normalize_word,
    normalize_word_strict,
    open_accuracy_original,
    open_accuracy_strict,
    prepare_original,
    score_pair_original,
    score_pair_strict,
    strip_assistant_prefix,
    token_prf_strict,
)

# ------------------------------------------------------------------ normalize_word (original)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # no "/ " or " /" in the input: the slash becomes a space
        ("left/right", "left right"),
        # " -" occurs somewhere in the input, so *every* "-" is deleted, even inside "x-ray"
        ("x-ray - ct", "xray ct"),
        # no spaced hyphen: hyphens become spaces
        ("x-ray ct", "x ray ct"),
        # digit,digit anywhere: all listed punctuation is deleted (not spaced), commas included
        ("1,000 left/right", "1000 leftright"),
        # "? " present -> "?" deleted; "yes?" at the end alone is replaced by a space
        ("what ? no", "what no"),
        ("yes?", "yes"),
        # periods not followed by a digit are removed, decimals kept
        ("e.g. 3.5.", "eg 3.5"),
        ("Yes.", "yes"),
        # number words -> digits, "none" -> "0"; "eleven" is not in the table
        ("Two", "2"),
        ("none", "0"),
        ("eleven", "eleven"),
        # articles dropped; a lone option letter "A" vanishes entirely
        ("The left lung", "left lung"),
        ("A", ""),
        ("an mri", "mri"),
        # contraction table (after lower-casing, so the capitalised keys "Im"/"Ive" never match)
        ("dont know", "don't know"),
        ("Im", "im"),
        ("somebody'd", "somebodyd"),
        # ":" is not punctuation for the original: the prefix survives
        ("Assistant: yes", "assistant: yes"),
        # whitespace collapsed
        ("  left \t lung \n", "left lung"),
    ],
)
def test_normalize_word_matches_original_rules(text: str, expected: str) -> None:
    assert normalize_word(text) == expected


def test_normalize_word_removes_at_most_32_periods() -> None:
    assert ORIGINAL_PERIOD_REMOVAL_LIMIT == 32
    text = "." * 40 + "x"
    # the first 32 periods go, 8 stay glued to the word
    assert normalize_word(text) == "." * 8 + "x"
    assert normalize_word(normalize_word(text)) == "x"
    assert normalize_word(text, remove_all_periods=True) == "x"


def test_normalize_word_punctuation_rule_reads_the_original_string() -> None:
    # "( " occurs in the input, so every "(" is deleted ("a(b" -> "ab"); ")" never touches a
    # space in the input, so it becomes a space, and so does "=".
    assert normalize_word("( x a(b)c=d") == "x ab c d"
    # ";" (handled before "-") becomes a space next to "-", but the check is on the input, which
    # has no spaced "-", so "c-d" is split rather than glued
    assert normalize_word("x;-y c-d") == "x y c d"


# ------------------------------------------------------------------ original metrics


def test_calculate_f1score_counts_prediction_multiplicity() -> None:
    # pred {b:4}, gt {b:1, c:1}: tp = 4 (pred count), fp = 0, fn = 1 -> P = 1, R = 4/5
    f1, precision, recall = calculate_f1score("b b b b", "b c")
    assert precision == pytest.approx(1.0)
    assert recall == pytest.approx(0.8)
    assert f1 == pytest.approx(2 * 0.8 / 1.8)


def test_calculate_f1score_mixed_counts() -> None:
    # pred {x:1, b:2}, gt {b:1, c:1}: tp = 2, fp = 1, fn = 1 -> P = R = F1 = 2/3
    assert calculate_f1score("x b b", "b c") == pytest.approx((2 / 3, 2 / 3, 2 / 3))


def test_calculate_f1score_zero_cases() -> None:
    assert calculate_f1score("", "lung") == (0.0, 0.0, 0.0)
    assert calculate_f1score("lung", "") == (0.0, 0.0, 0.0)
    assert calculate_f1score("liver", "lung") == (0.0, 0.0, 0.0)


def test_calculate_f1score_normalises_a_second_time() -> None:
    once = prepare_original("." * 40 + "yes")
    assert once == "." * 8 + "yes"
    # the internal second normalisation removes the leftover periods ...
    assert calculate_f1score(once, "yes") == pytest.approx((1.0, 1.0, 1.0))
    # ... but BLEU works on the once-normalised tokens, so it sees "........yes" != "yes"
    assert bleu_scores(once, "yes")["bleu_1"] == 0.0


def test_assistant_prefix_lowers_precision_not_recall_in_original() -> None:
    pred = prepare_original("Assistant: left lung")
    f1, precision, recall = calculate_f1score(pred, prepare_original("Left lung"))
    assert recall == pytest.approx(1.0)
    assert precision == pytest.approx(2 / 3)
    assert f1 == pytest.approx(0.8)


def test_exact_match_original_is_gt_word_share_of_prediction_length() -> None:
    assert exact_match_original("assistant: left lung", "left lung") == pytest.approx(2 / 3)
    # distinct gt words (1) over *all* prediction words (2)
    assert exact_match_original("lung lung", "lung") == pytest.approx(0.5)
    assert exact_match_original("", "lung") == 0.0


def test_closed_hit_original_is_a_substring_test() -> None:
    assert closed_hit_original(prepare_original("Assistant: not sure"), prepare_original("no")) == 1.0
    assert closed_hit_original(prepare_original("abnormal"), prepare_original("no")) == 1.0
    assert closed_hit_original(prepare_original("Assistant: yes"), prepare_original("no")) == 0.0
    # gt option "A" normalises to "" which is a substring of anything
    assert closed_hit_original(prepare_original("B"), prepare_original("A")) == 1.0


CANDIDATES = ["left lung", "right lung", "liver", "heart"]


def test_open_accuracy_original_snaps_to_best_candidate() -> None:
    pred = prepare_original("The right lung is enlarged")
    # similarities: left lung 1/2, right lung 2/2, liver 0, heart 0 -> "right lung"
    assert open_accuracy_original(pred, "right lung", CANDIDATES) == 1.0
    assert open_accuracy_original(pred, "left lung", CANDIDATES) == 0.0


def test_open_accuracy_original_ties_pick_first_candidate() -> None:
    # "lung" scores 1/2 for both lungs; the first wins
    assert open_accuracy_original("lung", "left lung", CANDIDATES) == 1.0
    assert open_accuracy_original("lung", "right lung", CANDIDATES) == 0.0
    # no overlap anywhere: every score is 0 and the first candidate is chosen
    assert open_accuracy_original("kidney", "left lung", CANDIDATES) == 1.0


def test_open_accuracy_original_accepts_int_candidates_and_prenormalised() -> None:
    assert open_accuracy_original("3", "3", [3, "liver"]) == 1.0
    prepared = normalize_candidates(["The Liver", "heart"])
    assert prepared.answers == ("liver", "heart")
    assert open_accuracy_original("liver", "liver", prepared) == 1.0


def test_normalize_candidates_rejects_empty_list() -> None:
    with pytest.raises(ValueError, match="empty"):
        normalize_candidates([])


def _brute_force_best(prediction: str, candidates: list[str]) -> str:
    """Literal transcription of the original loop: similarity for every candidate, first argmax."""
    prediction_words = set(prediction.split())
    normalized = [normalize_word(c) for c in candidates]
    similarities = []
    for candidate in normalized:
        candidate_words = set(candidate.split())
        count = sum(1 for w in prediction_words if w in candidate_words)
        similarities.append(count / len(candidate_words) if candidate_words else 0.0)
    return normalized[similarities.index(max(similarities))]


def test_best_candidate_index_agrees_with_brute_force() -> None:
    rng = random.Random(0)
    vocabulary = ["lung", "left", "right", "liver", "mass", "heart", "ct", "mri", "the", "a"]
    candidates = [" ".join(rng.choices(vocabulary, k=rng.randint(1, 3))) for _ in range(40)]
    prepared = normalize_candidates(candidates)
    for _ in range(200):
        prediction = normalize_word(" ".join(rng.choices(vocabulary, k=rng.randint(0, 4))))
        assert best_candidate(prediction, prepared) == _brute_force_best(prediction, candidates)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bleu_matches_hand_values_and_nltk() -> None:
    scores = bleu_scores("left lung is enlarged", "the left lung")
    # 1-gram: 2 of 4 hypothesis words match, hypothesis longer than reference -> BP 1
    assert scores["bleu_1"] == pytest.approx(0.5)
    # 2-gram: only "left lung" of 3 hypothesis bigrams matches
    assert scores["bleu_2"] == pytest.approx(1 / 3)
    reference, hypothesis = [["the", "left", "lung"]], ["left", "lung", "is", "enlarged"]
    assert scores["bleu_cumulative_4"] == sentence_bleu(reference, hypothesis)
    assert scores["bleu_3"] == sentence_bleu(reference, hypothesis, weights=(0, 0, 1, 0))
    assert scores["bleu_4"] == sentence_bleu(reference, hypothesis, weights=(0, 0, 0, 1))


def test_bleu_brevity_penalty() -> None:
    # 1 hypothesis word vs 2 reference words: BP = exp(1 - 2/1)
    assert bleu_scores("lung", "left lung")["bleu_1"] == pytest.approx(0.36787944117144233)
    assert bleu_scores("", "left lung")["bleu_1"] == 0.0


# ------------------------------------------------------------------ strict metrics


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  assistant:  Yes ", "Yes"),
        ("ASSISTANT:no", "no"),
        ("The assistant: yes", "The assistant: yes"),
        ("Assistant: Assistant: yes", "Assistant: yes"),
    ],
)
def test_strip_assistant_prefix(text: str, expected: str) -> None:
    assert strip_assistant_prefix(text) == expected


def test_normalize_word_strict() -> None:
    assert normalize_word_strict("Assistant: Yes.") == "yes"
    assert normalize_word_strict("." * 40 + "x") == "x"


def test_closed_hit_strict_requires_leading_whole_words() -> None:
    assert closed_hit_strict("Assistant: not sure", "no") == 0.0
    assert closed_hit_strict("abnormal", "no") == 0.0
    assert closed_hit_strict("Assistant: No, there is not.", "no") == 1.0
    assert closed_hit_strict("Assistant: yes", "Yes") == 1.0
    assert closed_hit_strict("there is no mass", "no") == 0.0
    # option answers: "A" is erased by normalisation -> compared on alphanumeric tokens
    assert closed_hit_strict("B", "A") == 0.0
    assert closed_hit_strict("Assistant: A", "A") == 1.0
    assert closed_hit_strict("Assistant: B) left", "B") == 1.0
    # multi-word closed gt
    assert closed_hit_strict("Left lung, upper lobe", "left lung") == 1.0
    assert closed_hit_strict("lung", "left lung") == 0.0


def test_token_prf_strict_uses_sets() -> None:
    # {b} vs {b, c}: P = 1, R = 1/2, F1 = 2/3
    assert token_prf_strict("b b b b", "b c") == pytest.approx((2 / 3, 1.0, 0.5))
    assert token_prf_strict("Assistant: left lung", "left lung") == pytest.approx((1.0, 1.0, 1.0))
    assert token_prf_strict("", "lung") == (0.0, 0.0, 0.0)


def test_exact_match_strict() -> None:
    assert exact_match_strict("Assistant: Left lung.", "left lung") == 1.0
    assert exact_match_strict("left lung lung", "left lung") == 0.0


def test_open_accuracy_strict_ignores_assistant_prefix() -> None:
    assert open_accuracy_strict("Assistant: heart", "heart", CANDIDATES) == 1.0
    assert open_accuracy_strict("Assistant: liver", "heart", CANDIDATES) == 0.0


def test_score_pair_original_and_strict_keys() -> None:
    prepared = normalize_candidates(CANDIDATES)
    original = score_pair_original("Assistant: lung lung lung", "left lung", "OPEN", prepared)
    # pred {assistant:1, lung:3}, gt {left, lung}: tp 3, fp 1, fn 1
    assert original["recall"] == pytest.approx(0.75)
    assert original["precision"] == pytest.approx(0.75)
    assert original["exact_match"] == pytest.approx(0.25)
    assert original["open_hit"] == 1.0
    strict = score_pair_strict("Assistant: lung lung lung", "left lung", "OPEN", prepared)
    assert strict["recall"] == pytest.approx(0.5)
    assert strict["precision"] == pytest.approx(1.0)
    assert strict["exact_match"] == 0.0
    assert set(original) == set(strict)
    assert score_pair_original("Assistant: not", "no", "CLOSED") == {"closed_hit": 1.0}
    assert score_pair_strict("Assistant: not", "no", "CLOSED") == {"closed_hit": 0.0}
    with pytest.raises(ValueError, match="answer_type"):
        score_pair_original("x", "y", "other")
