"""easy-vqa (PyPI ``easy-vqa``, MIT) as the data of the data-efficiency miniature.

easy-vqa: 4,000 train / 1,000 test 64x64 images, each one coloured shape (3 shapes, 8 colours) on a
white background; 38,575 / 9,673 questions from 24 templates, answers ``yes``/``no``, a colour or a
shape. The protocol (docs/experiments.md) needs four disjoint sets of images:

* :func:`partition_train_images` splits the train images once (``data_seed``): the **downstream**
  images (their VQA rows are the one fine-tuning file of every cell), the **pre-training universe**
  (every block draws its pool from it) and the rest, which the stage-0 vision tower may train on;
  the **test** images are easy-vqa's test split.
* :func:`block_pool`: a block's pool, drawn from the universe with the block's seed;
  :func:`nested_subsets`: its 10 / 40 / 100 % subsets as prefixes, so 10 % is inside 40 %.
* Pre-training rows (LLaVA-Med instruct format, stage 2): one row per image with its first
  ``ALIGNMENT_TURNS`` questions (file order) as turns; ``conversations_long`` holds the extended
  answers of :func:`extend_answer`, written from the question and answer alone (the paper's rule,
  docs/method.md §4.2: rephrase, add context, never an image fact the answer lacks).
* VQA rows (``*_w_options_new.json`` format): yes/no questions are ``CLOSED`` with the released
  option text ``' (Answer with either "Yes" or "No").'``; colour and shape questions are ``OPEN``.
* Test items (:func:`test_indices`): open items, up to ``per_answer`` per (question text, answer)
  for every answer the text can have (each colour for colour questions, each shape for shape
  questions; all of them where the test split has fewer), so the question text alone cannot answer
  them; closed items, exactly ``per_answer`` "yes" and as many "no" per yes/no question text.
  :func:`answer_options` names the candidates a question's likelihood ranking scores.
* :func:`image_labels` reads each image's shape and colour off its questions: the stage-0 labels
  and the *description* of a pre-training row (no two rows of a batch share one, batches.py).

Image paths in the JSON files are absolute paths into the installed ``easy_vqa`` package (nothing is
copied).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...common.jsonio import read_json, write_json

logger = logging.getLogger(__name__)

YES_NO_OPTIONS = ' (Answer with either "Yes" or "No").'
COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")
ALIGNMENT_TURNS = 4
_C = "|".join(COLORS)
_S = "|".join(SHAPES)
# yes/no templates: the object asked about, and whether the question is negated
_PRESENCE = re.compile(
    rf"^(?:does the image (?P<neg1>not )?contain|is there (?P<neg2>not )?|is (?P<neg3>no |a ))\s*(?:a )?"
    rf"(?P<object>(?:{_C}) shape|{_S})(?: present| in the image)?\?$")
_COLOR_OF = re.compile(rf"^what (?:color is|is the color of) the (?P<subject>{_S}|shape)\?$")
_SHAPE_OF_COLOR = re.compile(rf"^what is the (?P<color>{_C}) shape\?$")
_SHAPE = re.compile(r"^what shape (?:does the image contain|is in the image|is present)\?$")


def extend_answer(question: str, answer: str) -> str:
    """The extended answer: the short answer, then one sentence stating the fact it answers.

    Rules (the only ones easy-vqa needs; any other question raises):

    * presence questions (``does the image [not] contain a X?``, ``is there [not] a X[ in the image]?``,
      ``is a X present?``, ``is no X present?``): ``"Yes. The image contains a X."`` or
      ``"No. The image does not contain a X."``, where "contains" is the answer flipped by a
      negation in the question (``"is there not a red shape?" - "no"`` gives ``"No. The image
      contains a red shape."``);
    * ``what color is the S?`` / ``what is the color of the S?``: ``"C. The S in the image is C."``;
    * ``what is the C shape?``: ``"S. The C shape in the image is a S."``;
    * ``what shape ...?``: ``"S. The image contains a S."``.
    """
    q, a = question.strip().lower(), answer.strip().lower()
    short = a.capitalize() + "."
    match = _PRESENCE.match(q)
    if match and a in ("yes", "no"):
        negated = bool(match.group("neg1") or match.group("neg2") or match.group("neg3") == "no ")
        present = (a == "yes") != negated
        verb = "contains" if present else "does not contain"
        return f"{short} The image {verb} a {match.group('object')}."
    match = _COLOR_OF.match(q)
    if match and a in COLORS:
        return f"{short} The {match.group('subject')} in the image is {a}."
    match = _SHAPE_OF_COLOR.match(q)
    if match and a in SHAPES:
        return f"{short} The {match.group('color')} shape in the image is a {a}."
    if _SHAPE.match(q) and a in SHAPES:
        return f"{short} The image contains a {a}."
    raise ValueError(f"no extended-answer rule for question {question!r} with answer {answer!r}")


def _package_dir() -> Path:
    try:
        import easy_vqa
    except ImportError as error:
        raise ImportError("the data-efficiency experiment uses the PyPI package 'easy-vqa': pip install easy-vqa "
                          "(or pip install 'exgramed-plugin[experiment]')") from error
    return Path(easy_vqa.__file__).resolve().parent / "data"


def _questions(split: str) -> list[tuple[str, str, int]]:
    rows = read_json(_package_dir() / split / "questions.json")
    return [(str(q), str(a), int(i)) for q, a, i in rows]


def _image(split: str, image_id: int) -> str:
    path = _package_dir() / split / "images" / f"{image_id}.png"
    if not path.is_file():
        raise FileNotFoundError(f"easy-vqa image {path} is missing")
    return str(path)


def _vqa_row(row_id: str, image: str, question: str, answer: str) -> dict[str, Any]:
    closed = answer in ("yes", "no")
    options = YES_NO_OPTIONS if closed else ""
    human = f"{question}{options}\n<image>"
    return {"id": row_id, "image": image, "answer_type": "CLOSED" if closed else "OPEN",
            "conversations": [{"from": "human", "value": human},
                              {"from": "gpt", "value": answer}]}


def _alignment_row(image_id: int, image: str, qas: list[tuple[str, str]]) -> dict[str, Any]:
    conversations, conversations_long = [], []
    for turn, (question, answer) in enumerate(qas[:ALIGNMENT_TURNS]):
        human = f"<image>\n{question}" if turn == 0 else question
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
        conversations_long += [{"from": "human", "value": human}, {"from": "gpt", "value": extend_answer(question, answer)}]
    return {"id": f"align-{image_id:04d}", "image": image, "conversations": conversations,
            "conversations_long": conversations_long}


def _write(path: Path, obj: Any) -> str:
    """Write ``obj`` as JSON; returns the file's sha256 (what the cells record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj, indent=1)
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def image_labels(split: str) -> dict[int, tuple[str, str]]:
    """``{image id: (shape, colour)}`` for the images of ``split`` whose questions tell both.

    A colour / shape comes from an open question's answer (``what color is the S?`` gives C and S,
    ``what is the C shape?`` gives C and S, ``what shape ...?`` gives S) or from the presence
    questions (a positive answer, or all other shapes / colours answered absent). About 90 % of
    the images are labelled this way (3,578 of 4,000 train, 888 of 1,000 test images).
    """
    shape: dict[int, str] = {}
    color: dict[int, str] = {}
    absent_shapes: dict[int, set[str]] = {}
    absent_colors: dict[int, set[str]] = {}
    image_ids = set()
    for question, answer, image_id in _questions(split):
        image_ids.add(image_id)
        q = question.strip().lower()
        match = _COLOR_OF.match(q)
        if match:
            color[image_id] = answer
            if match.group("subject") != "shape":
                shape[image_id] = match.group("subject")
            continue
        match = _SHAPE_OF_COLOR.match(q)
        if match:
            color[image_id], shape[image_id] = match.group("color"), answer
            continue
        if _SHAPE.match(q):
            shape[image_id] = answer
            continue
        match = _PRESENCE.match(q)
        if match:
            negated = bool(match.group("neg1") or match.group("neg2") or match.group("neg3") == "no ")
            present = (answer == "yes") != negated
            thing = match.group("object")
            if thing.endswith(" shape"):
                target, absent = color, absent_colors
                thing = thing.split()[0]
            else:
                target, absent = shape, absent_shapes
            if present:
                target[image_id] = thing
            else:
                absent.setdefault(image_id, set()).add(thing)
    for image_id in image_ids:
        if image_id not in shape and len(absent_shapes.get(image_id, ())) == len(SHAPES) - 1:
            shape[image_id] = (set(SHAPES) - absent_shapes[image_id]).pop()
        if image_id not in color and len(absent_colors.get(image_id, ())) == len(COLORS) - 1:
            color[image_id] = (set(COLORS) - absent_colors[image_id]).pop()
    return {i: (shape[i], color[i]) for i in sorted(image_ids) if i in shape and i in color}




def answer_options(question: str) -> tuple[str, ...]:
    """Every answer a question text can have: yes/no, the 8 colours or the 3 shapes."""
    q = question.strip().lower()
    if _PRESENCE.match(q):
        return ("yes", "no")
    if _COLOR_OF.match(q):
        return COLORS
    if _SHAPE_OF_COLOR.match(q) or _SHAPE.match(q):
        return SHAPES
    raise ValueError(f"no answer kind for question {question!r}")


@dataclass(frozen=True)
class ImagePartition:
    """Train image ids, disjoint: the downstream (fine-tuning) set, the pre-training universe, the rest."""

    downstream: tuple[int, ...]
    universe: tuple[int, ...]
    rest: tuple[int, ...]


def partition_train_images(downstream_images: int, universe_images: int, data_seed: int = 0) -> ImagePartition:
    """Split the labelled train images (one permutation drawn with ``data_seed``): the first
    ``downstream_images`` are the downstream set, the next ``universe_images`` the pre-training
    universe; every other train image (labelled or not) is in ``rest``."""
    labels = image_labels("train")
    image_ids = sorted({image_id for _, _, image_id in _questions("train")})
    order = [image_ids[i] for i in np.random.default_rng(data_seed).permutation(len(image_ids))]
    labelled = [image_id for image_id in order if image_id in labels]
    if downstream_images + universe_images > len(labelled):
        raise ValueError(f"downstream ({downstream_images}) + pre-training universe ({universe_images}) images "
                         f"exceed the {len(labelled)} labelled easy-vqa train images")
    downstream = tuple(labelled[:downstream_images])
    universe = tuple(labelled[downstream_images:downstream_images + universe_images])
    taken = set(downstream) | set(universe)
    return ImagePartition(downstream, universe, tuple(i for i in image_ids if i not in taken))


def block_pool(universe: Sequence[int], pool_images: int, block: int, data_seed: int = 0) -> list[int]:
    """The pool of one block: ``pool_images`` universe images in an order drawn with (``data_seed``, block)."""
    if pool_images > len(universe):
        raise ValueError(f"a pool of {pool_images} images does not fit in a universe of {len(universe)}")
    rng = np.random.default_rng([data_seed, block])
    return [universe[i] for i in rng.permutation(len(universe))[:pool_images]]


def nested_subsets(pool: Sequence[int], fractions: Sequence[float]) -> dict[float, list[int]]:
    """``{fraction: the first round(fraction x pool) images}``: prefixes, so every subset holds the smaller ones."""
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction {fraction} is not in (0, 1]")
    return {fraction: list(pool[:max(1, round(fraction * len(pool)))]) for fraction in fractions}


def _questions_by_image(split: str) -> dict[int, list[tuple[str, str]]]:
    by_image: dict[int, list[tuple[str, str]]] = {}
    for question, answer, image_id in _questions(split):
        by_image.setdefault(image_id, []).append((question, answer))
    return by_image


def write_pretraining_rows(path: Path, image_ids: Sequence[int]) -> tuple[list[tuple[str, str]], str]:
    """The stage-2 rows of ``image_ids`` (in order) at ``path``; returns each row's description
    (shape, colour) and the file's sha256."""
    by_image = _questions_by_image("train")
    labels = image_labels("train")
    rows = [_alignment_row(image_id, _image("train", image_id), by_image[image_id]) for image_id in image_ids]
    return [labels[image_id] for image_id in image_ids], _write(path, rows)


def write_vqa_rows(path: Path, image_ids: Sequence[int]) -> str:
    """VQA rows of every question of ``image_ids`` (in order) at ``path``; returns the file's sha256."""
    by_image = _questions_by_image("train")
    rows = [_vqa_row(f"train-{image_id:04d}-{k:02d}", _image("train", image_id), question, answer)
            for image_id in image_ids for k, (question, answer) in enumerate(by_image[image_id])]
    return _write(path, rows)


def test_indices(test: list[tuple[str, str, int]], per_answer: int, *, closed: bool, seed: int) -> list[int]:
    """Indices into ``test`` (see the module doc). Closed: exactly ``per_answer`` "yes" and "no" per
    yes/no text (raises where the split has fewer); open: up to ``per_answer`` per (text, answer)
    for every possible answer. Items are drawn without replacement with ``seed``."""
    rng = np.random.default_rng(seed)
    by_text: dict[str, dict[str, list[int]]] = {}
    for index, (question, answer, _) in enumerate(test):
        if (answer in ("yes", "no")) == closed:
            by_text.setdefault(question, {}).setdefault(answer, []).append(index)
    picked: list[int] = []
    for question in sorted(by_text):
        answers = by_text[question]
        for answer in answer_options(question):
            items = answers.get(answer, [])
            if closed and len(items) < per_answer:
                raise ValueError(f"question {question!r} has {len(items)} test item(s) with answer {answer!r}; "
                                 f"the closed test set needs {per_answer}")
            take = min(per_answer, len(items))
            picked += rng.choice(items, size=take, replace=False).tolist() if take else []
    return sorted(picked)


def write_test_rows(path: Path, per_answer: int, *, closed: bool, seed: int = 0) -> int:
    """The open or closed test items of :func:`test_indices` as VQA rows at ``path``; returns their count."""
    test = _questions("test")
    picked = test_indices(test, per_answer, closed=closed, seed=seed)
    _write(path, [_vqa_row(f"test-{i:05d}", _image("test", test[i][2]), test[i][0], test[i][1]) for i in picked])
    return len(picked)


def write_candidates(path: Path) -> None:
    """``candidate.json`` of ``eval-vqa``: every open answer."""
    _write(path, {"0": sorted({*COLORS, *SHAPES})})
