"""Prompt formats and label masks of the original code (docs/method.md §2), independent of swift.

Training (§2.1, ``conv_v1_2`` / ``_add_speaker_and_signal``)::

    {system}\\n\\n### Human: {q1}\\n### Assistant: {a1}\\n### Human: {q2}\\n### Assistant: {a2}\\n###{space}

Inference (§2.3, ``simple``; the prompt ends with ``###`` and the model continues with
`` Assistant: ...``)::

    {system}###Human: Hi!###Assistant: Hi there!  How can I help you today?\\n###Human: {q}\\n{image}###

Label mask (a deliberate fix of §2.6): exactly each assistant answer plus the ``\\n###`` that ends
it are trained; the original's tokenizer-dependent drift is not reproduced.

The names of the data formats' conversation fields (``from`` values, the ``conversations`` /
``conversations_long`` pairs, the ``<image>`` tag) live here too, so every reader and converter
uses the same ones. The light data CLIs (``subset``, ``extend-captions``, ...) import them, so the
image-token strings of ``modeling.configuration`` (which pulls transformers and torch) are only
imported when a prompt is built or tokenized.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
SIMPLE_FEW_SHOT = "Human: Hi!###Assistant: Hi there!  How can I help you today?\n"
SEPARATOR = "###"
IMAGE_TAG = "<image>"
ROLE_NAMES = {"user": "Human", "assistant": "Assistant"}
# LLaVA-Med rows: turn ``from`` value -> chat role, and the (short, extended) conversation fields;
# the misspelled ``conversatons`` pair of the released files is accepted as a pair (docs/method.md §4.1).
ROLE_FROM = {"human": "user", "gpt": "assistant"}
CONVERSATION_PAIRS = (("conversations", "conversations_long"), ("conversatons", "conversatons_long"))


def find_conversation_pair(row: dict[str, Any]) -> tuple[str, str] | None:
    """The (short, extended) field names of the first pair whose short field ``row`` has, or None."""
    return next((pair for pair in CONVERSATION_PAIRS if row.get(pair[0]) is not None), None)


@functools.cache
def _special_token_pattern() -> re.Pattern[str]:
    from ..common.tokens import ADDED_TOKENS
    return re.compile("(" + "|".join(re.escape(t) for t in ADDED_TOKENS) + ")")


@dataclass(frozen=True)
class Segment:
    """A piece of prompt text and whether its tokens are trained (carry labels)."""

    text: str
    trainable: bool = False


def image_block(num_image_tokens: int, use_im_start_end: bool = True) -> str:
    """What one ``<image>`` becomes: ``<im_start>`` + N x ``<im_patch>`` + ``<im_end>`` (§1.6)."""
    from ..common.tokens import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN
    patches = IMAGE_PATCH_TOKEN * num_image_tokens
    return f"{IMAGE_START_TOKEN}{patches}{IMAGE_END_TOKEN}" if use_im_start_end else patches


def check_turns(messages: Sequence[dict], *, context: str = "") -> None:
    """Raise unless roles alternate user/assistant starting with user and answers are non-empty."""
    where = f" ({context})" if context else ""
    if not messages:
        raise ValueError(f"conversation has no turns{where}")
    for index, message in enumerate(messages):
        expected = "user" if index % 2 == 0 else "assistant"
        if message.get("role") != expected:
            raise ValueError(f"turn {index} has role {message.get('role')!r}, expected {expected!r}: turns must "
                             f"alternate human/gpt starting with human{where}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"turn {index} content must be a string, got {type(content).__name__}{where}")
        if expected == "assistant" and not content.strip():
            raise ValueError(f"turn {index} has an empty answer{where}")


def training_segments(messages: Sequence[dict], system: str, image_text: str) -> list[Segment]:
    """Segments of the §2.1 training text; each ``<image>`` in a human turn becomes ``image_text``."""
    segments = [Segment(f"{system}\n\n{SEPARATOR} ")]
    for message in messages:
        is_answer = message["role"] == "assistant"
        value = message["content"] if is_answer else message["content"].replace(IMAGE_TAG, image_text)
        segments.append(Segment(f"{ROLE_NAMES[message['role']]}: "))
        segments.append(Segment(value, trainable=is_answer))
        segments.append(Segment(f"\n{SEPARATOR}", trainable=is_answer))
        segments.append(Segment(" "))
    return segments


def inference_prompt(messages: Sequence[dict], system: str, image_text: str) -> str:
    """The §2.3 ``simple`` prompt for a conversation that ends with a human turn.

    As in ``model_vqa_med.py``, ``<image>`` tags are removed from the question, which is stripped,
    and one image block per removed tag is appended after a newline.
    """
    turns = []
    for message in messages:
        content = message["content"]
        if message["role"] == "user":
            num_images = content.count(IMAGE_TAG)
            content = content.replace(IMAGE_TAG, "").strip()
            if num_images:
                content = content + "\n" + image_text * num_images
        turns.append(f"{ROLE_NAMES[message['role']]}: {content}")
    return system + SEPARATOR + SIMPLE_FEW_SHOT + SEPARATOR + SEPARATOR.join(turns) + SEPARATOR


def tokenize_segments(
    tokenizer,
    segments: Sequence[Segment],
    *,
    bos_token_id: int | None,
    strip_around_special: bool = False,
) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 where untrained) for the concatenated segments.

    The text is split at the added tokens (``[PAD]``, ``<im_patch>``, ``<im_start>``, ``<im_end>``),
    which map to their ids; each text chunk is encoded on its own, as the original slow tokenizer
    did. ``strip_around_special`` reproduces that tokenizer's whitespace stripping on both sides of
    the added tokens (§2.5). A text token is trained when the last character it covers is trained.
    BOS (the checkpoint's, ``</s>`` in the LLaVA-Med lineage) is prepended and never trained.
    """
    text = "".join(s.text for s in segments)
    trainable_chars = [flag for s in segments for flag in [s.trainable] * len(s.text)]
    input_ids: list[int] = [] if bos_token_id is None else [bos_token_id]
    labels: list[int] = [] if bos_token_id is None else [-100]
    pieces = _special_token_pattern().split(text)
    offset = 0
    for index, piece in enumerate(pieces):
        start, end = offset, offset + len(piece)
        offset = end
        if index % 2 == 1:  # an added token
            token_id = tokenizer.convert_tokens_to_ids(piece)
            input_ids.append(token_id)
            labels.append(token_id if trainable_chars[start] else -100)
            continue
        if strip_around_special:
            if index > 0:
                start = end - len(text[start:end].lstrip())
            if index < len(pieces) - 1:
                end = start + len(text[start:end].rstrip())
        chunk = text[start:end]
        if not chunk:
            continue
        encoding = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for token_id, (token_start, token_end) in zip(encoding["input_ids"], encoding["offset_mapping"]):
            last_char = min(max(token_end - 1, token_start, 0), len(chunk) - 1)
            input_ids.append(token_id)
            labels.append(token_id if trainable_chars[start + last_char] else -100)
    return input_ids, labels


def merge_answers(answers: Sequence[str]) -> str:
    """All answers of a sample as one text, as ``merge_sentences_preprocess`` built it (§3.1).

    ``"\n"`` and the image tokens are removed and the answers joined with ``". "``; answers that
    already end in a period therefore produce ``".. "``, exactly as in the original.
    """
    from ..common.tokens import IMAGE_END_TOKEN, IMAGE_PATCH_TOKEN, IMAGE_START_TOKEN

    cleaned = []
    for answer in answers:
        for token in ("\n", IMAGE_PATCH_TOKEN, IMAGE_END_TOKEN, IMAGE_START_TOKEN):
            answer = answer.replace(token, "")
        cleaned.append(answer)
    return ". ".join(cleaned)


def postprocess_response(raw: str, mode: str = "original") -> str:
    """Answer text from generated text (§2.4).

    ``original``: cut at the first ``###`` and strip, keeping a leading ``Assistant:`` as the VQA
    scripts did. ``clean``: also drop that prefix (as the chatbot script did). ``raw``: unchanged.
    """
    if mode == "raw":
        return raw
    answer = raw.split(SEPARATOR, 1)[0].strip()
    if mode == "clean":
        answer = re.sub(r"^(Assistant:|Response:)\s*", "", answer).strip()
    elif mode != "original":
        raise ValueError(f"unknown response mode {mode!r}; expected 'original', 'clean' or 'raw'")
    return answer
