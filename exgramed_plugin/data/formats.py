"""Input formats → swift's standard row (``messages`` + ``images`` + our extra fields), without swift.

Supported (docs/method.md §4.1, one example each in ``data_templates/``):

* LLaVA-Med alignment / instruct JSON: ``id``, ``image``, ``conversations`` (``from``/``value``),
  optional ``conversations_long`` (extended answers); the misspelled pair
  ``conversatons``/``conversatons_long`` is accepted as a pair, as the original did;
* VQA JSON: the same plus ``answer_type`` (``OPEN``/``CLOSED``);
* swift's ``messages`` + ``images`` JSONL with an optional ``extended_answers`` list (one per answer).

Every problem raises :class:`DataFormatError` naming the file, the row id and the field; nothing is
skipped or replaced.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from .conversation import IMAGE_TAG, ROLE_FROM, check_turns, find_conversation_pair

# Extra columns that must survive swift's column filtering (added to RowPreprocessor.standard_keys).
# mc_question: what multiple-choice scoring needs (choices, answer; metrics/multiple_choice.py), as JSON.
CHOICE_COLUMN = "mc_question"
EXTRA_COLUMNS = ("id", "answer_type", "extended_answers", CHOICE_COLUMN)
IMAGE_ROOT_ENV = "EXGRAMED_IMAGE_ROOT"


class DataFormatError(ValueError):
    """A malformed row; the message names the file, the row and the field."""


def _where(source: str | None, row_id: Any, field: str) -> str:
    return f"{source or '<dataset>'}, row id={row_id!r}, field {field!r}"


def resolve_image_path(path: str, source: str | None, row_id: Any, field: str = "image",
                       image_root: str | None = None) -> str:
    """Absolute path of an image: relative paths resolve against ``image_root`` (argument or
    ``EXGRAMED_IMAGE_ROOT``) or else the data file's folder, never the current directory. The image
    must exist and be readable."""
    if not isinstance(path, str) or not path:
        raise DataFormatError(f"{_where(source, row_id, field)}: expected an image path, got {path!r}")
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        root = image_root or os.environ.get(IMAGE_ROOT_ENV)
        if root is None:
            if source is None:
                raise DataFormatError(f"{_where(source, row_id, field)}: relative image path {path!r} "
                                      f"needs a data file folder or {IMAGE_ROOT_ENV}")
            root = str(Path(source).parent)
        candidate = Path(root).expanduser() / candidate
    if not candidate.is_file():
        raise DataFormatError(f"{_where(source, row_id, field)}: image not found: {candidate}")
    try:
        with Image.open(candidate) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataFormatError(f"{_where(source, row_id, field)}: unreadable image {candidate}: {error}") from error
    return str(candidate.resolve())


def _turns_from_llava(turns: Any, source: str | None, row_id: Any, field: str) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise DataFormatError(f"{_where(source, row_id, field)}: expected a non-empty list of turns")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataFormatError(f"{_where(source, row_id, field)}: turn {index} needs 'from' and 'value'")
        role = ROLE_FROM.get(turn["from"])
        if role is None:
            raise DataFormatError(f"{_where(source, row_id, field)}: turn {index} has from={turn['from']!r}, "
                                  "expected 'human' or 'gpt'")
        value = turn["value"]
        messages.append({"role": role, "content": value if isinstance(value, str) else str(value)})
    try:
        check_turns(messages)
    except ValueError as error:
        raise DataFormatError(f"{_where(source, row_id, field)}: {error}") from error
    return messages


def _answers(messages: list[dict[str, str]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "assistant"]


def llava_row_to_standard(row: dict[str, Any], source: str | None = None, image_root: str | None = None,
                          row_index: int | None = None, *, read_images: bool = True) -> dict[str, Any]:
    """One LLaVA-Med / VQA row → ``{"messages", "images", "id", "answer_type", "extended_answers"}``
    (``read_images``: see :func:`row_to_standard`)."""
    row_id = row.get("id", f"#{row_index}" if row_index is not None else None)
    pair = find_conversation_pair(row)
    if pair is None:
        raise DataFormatError(f"{_where(source, row_id, 'conversations')}: missing (also tried 'conversatons')")
    messages = _turns_from_llava(row[pair[0]], source, row_id, pair[0])
    extended = None
    if row.get(pair[1]) is not None:
        long_messages = _turns_from_llava(row[pair[1]], source, row_id, pair[1])
        if len(long_messages) != len(messages):
            raise DataFormatError(f"{_where(source, row_id, pair[1])}: {len(long_messages)} turns but "
                                  f"{pair[0]} has {len(messages)}")
        extended = _answers(long_messages)
    images = _checked_images(row, messages, source, row_id, image_root, read_images)
    answer_type = row.get("answer_type")
    if answer_type is not None:
        answer_type = str(answer_type).upper()
        if answer_type not in ("OPEN", "CLOSED"):
            raise DataFormatError(f"{_where(source, row_id, 'answer_type')}: expected OPEN or CLOSED, "
                                  f"got {row.get('answer_type')!r}")
    return {"messages": messages, "images": images, "id": None if row_id is None else str(row_id),
            "answer_type": answer_type, "extended_answers": extended}


def messages_row_to_standard(row: dict[str, Any], source: str | None = None, image_root: str | None = None,
                             row_index: int | None = None, *, read_images: bool = True) -> dict[str, Any]:
    """One swift ``messages`` row (optionally with ``extended_answers``) → the standard row
    (``read_images``: see :func:`row_to_standard`)."""
    row_id = row.get("id", f"#{row_index}" if row_index is not None else None)
    raw_messages = row.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise DataFormatError(f"{_where(source, row_id, 'messages')}: expected a non-empty list")
    system = [m for m in raw_messages if isinstance(m, dict) and m.get("role") == "system"]
    messages = [{"role": m.get("role"), "content": m.get("content")} for m in raw_messages
                if isinstance(m, dict) and m.get("role") != "system"]
    try:
        check_turns(messages)
    except ValueError as error:
        raise DataFormatError(f"{_where(source, row_id, 'messages')}: {error}") from error
    extended = row.get("extended_answers")
    if extended is not None:
        if not isinstance(extended, list) or len(extended) != len(_answers(messages)):
            raise DataFormatError(f"{_where(source, row_id, 'extended_answers')}: expected one string per "
                                  f"assistant turn ({len(_answers(messages))})")
        if not all(isinstance(e, str) and e.strip() for e in extended):
            raise DataFormatError(f"{_where(source, row_id, 'extended_answers')}: empty extended answer")
    images = _checked_images(row, messages, source, row_id, image_root, read_images)
    answer_type = row.get("answer_type")
    standard = {"messages": [{"role": "system", "content": system[0]["content"]}] + messages if system else messages,
                "images": images, "id": None if row_id is None else str(row_id),
                "answer_type": None if answer_type is None else str(answer_type).upper(),
                "extended_answers": extended}
    if row.get(CHOICE_COLUMN) is not None:  # a multiple-choice question row (exgramed eval's questions.jsonl)
        if not isinstance(row[CHOICE_COLUMN], str):
            raise DataFormatError(f"{_where(source, row_id, CHOICE_COLUMN)}: expected a JSON string")
        standard[CHOICE_COLUMN] = row[CHOICE_COLUMN]
    return standard


def _checked_images(row: dict[str, Any], messages: list[dict[str, str]], source: str | None, row_id: Any,
                    image_root: str | None, read_images: bool) -> list[str] | None:
    if not read_images:
        return None
    images = _images_of(row, source, row_id, image_root)
    _check_image_tags(messages, images, source, row_id)
    return images


def _images_of(row: dict[str, Any], source: str | None, row_id: Any, image_root: str | None) -> list[str]:
    for field in ("images", "image"):
        value = row.get(field)
        if value is None or value == []:
            continue
        paths = value if isinstance(value, list) else [value]
        resolved = []
        for path in paths:
            if isinstance(path, dict):  # swift's {"bytes", "path"} form
                path = path.get("path")
            resolved.append(resolve_image_path(path, source, row_id, field, image_root))
        return resolved
    return []


def _check_image_tags(messages: list[dict[str, str]], images: list[str], source: str | None, row_id: Any) -> None:
    tags = sum(m["content"].count(IMAGE_TAG) for m in messages if m["role"] == "user")
    if images and tags == 0:
        return  # swift's template adds the tag in front of the first question
    if tags != len(images):
        raise DataFormatError(f"{_where(source, row_id, 'image')}: {tags} <image> tag(s) but {len(images)} image(s)")


def detect_format(row: dict[str, Any]) -> str:
    """``llava`` (conversations/from/value) or ``messages`` (swift's standard)."""
    if find_conversation_pair(row) is not None:
        return "llava"
    if row.get("messages") is not None:
        return "messages"
    raise DataFormatError("missing: expected 'conversations' (LLaVA-Med/VQA, or the misspelled 'conversatons') "
                          "or 'messages' (swift)")


def row_to_standard(row: dict[str, Any], source: str | None = None, image_root: str | None = None,
                    row_index: int | None = None, *, read_images: bool = True) -> dict[str, Any]:
    """Dispatch on the row's format.

    ``read_images=False`` leaves the image fields unread (``"images"`` is None): neither resolved nor
    checked against the ``<image>`` tags, for readers of the text only (scoring answers runs
    without the images at hand).
    """
    try:
        fmt = detect_format(row)
    except DataFormatError as error:
        raise DataFormatError(f"{_where(source, row.get('id', row_index), 'conversations')}: {error}") from None
    convert = llava_row_to_standard if fmt == "llava" else messages_row_to_standard
    return convert(row, source, image_root, row_index, read_images=read_images)
