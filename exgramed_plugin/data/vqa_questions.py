"""The one reader of a VQA question file, for `exgramed predict` (answers it) and `exgramed eval-vqa`
(scores answers against it).

Why one: both commands must agree on what a question file says (ids, question text, ground truth,
``answer_type``), so both read it through :func:`~exgramed_plugin.data.formats.row_to_standard`'s
rules: a VQA JSON with ``conversations`` (docs/method.md §4.1) or swift rows with ``messages``, as a
JSON list or JSON Lines. Scoring reads the text only, so the images need not be present then.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.jsonio import read_json_or_jsonl
from .conversation import IMAGE_TAG
from .formats import DataFormatError, row_to_standard


@dataclass(frozen=True)
class VQAQuestion:
    """One question: its id as written in the file, the first user turn, its images, the ground truth."""

    question_id: Any  # int or str as in the file (the answers JSONL repeats it)
    text: str  # the first user turn, with its <image> tag(s)
    images: tuple[str, ...] | None  # resolved paths of that turn's images; None: not read
    answer: str | None = None  # the first assistant turn; None for a question without one
    answer_type: str | None = None  # upper-cased (OPEN / CLOSED in the benchmarks; scoring skips others)
    language: str = "en"  # SLAKE's q_lang where the row has it

    @property
    def id(self) -> str:
        """Ids are compared as strings (JSON ints and strings both occur in released files)."""
        return str(self.question_id)

    @property
    def question(self) -> str:
        """The user turn without ``<image>`` tags, stripped."""
        return self.text.replace(IMAGE_TAG, "").strip()


def read_vqa_questions(path: str | Path, *, read_images: bool = True,
                       image_root: str | Path | None = None) -> Iterator[VQAQuestion]:
    """Each row of a VQA question file as a :class:`VQAQuestion`, in file order.

    Every row needs an ``id`` (answers are paired with questions by id) and passes
    ``row_to_standard``'s checks; a bad row raises :class:`DataFormatError` naming the file, the row
    and the field. ``read_images``: resolve the images (relative paths against ``image_root``,
    default the file's folder) and require them to exist and be readable; ``False`` reads the text
    only. ``answer_type`` is read here, any value upper-cased: a benchmark file may hold other types,
    which the original's scoring skips and counts. Single-turn VQA: only the first user turn and its
    images are kept; a swift row that leaves its ``<image>`` tag out gets one after the question.
    """
    source = str(Path(path).resolve())
    root = str(Path(image_root).expanduser().resolve() if image_root is not None else Path(source).parent)
    for index, (_, row) in enumerate(read_json_or_jsonl(path)):
        if "id" not in row:
            raise DataFormatError(f"{path}, row {index}, field 'id': missing; answers are paired with questions by id")
        standard = row_to_standard({**row, "answer_type": None}, source, root, index, read_images=read_images)
        messages = [m for m in standard["messages"] if m["role"] != "system"]
        text = messages[0]["content"]  # row_to_standard's turns start with a user turn
        images = standard["images"]
        if images is not None:
            if images and IMAGE_TAG not in text:
                text = f"{text}\n{IMAGE_TAG}"
            images = tuple(images[:text.count(IMAGE_TAG)])
        answer_type = row.get("answer_type")
        yield VQAQuestion(question_id=row["id"], text=text, images=images,
                          answer=messages[1]["content"] if len(messages) > 1 else None,
                          answer_type=None if answer_type is None else str(answer_type).upper(),
                          language=str(row.get("q_lang") or "en"))
