"""easy-vqa (PyPI ``easy-vqa``, MIT) as ExGra-Med VQA + alignment files.

easy-vqa: 4,000 train / 1,000 test 64x64 images, each one coloured shape (3 shapes, 8 colours) on a
white background; 38,575 / 9,673 questions from 24 templates, answers ``yes``/``no``, a colour or a
shape. Here:

* VQA rows (``*_w_options_new.json`` format): yes/no questions are ``CLOSED`` with the released
  option text ``' (Answer with either "Yes" or "No").'``; colour and shape questions are ``OPEN``.
* Alignment rows (LLaVA-Med instruct format, stage 2): one row per image with its first
  ``ALIGNMENT_TURNS`` questions (file order) as turns; ``conversations_long`` holds the extended
  answers of :func:`extend_answer`, a deterministic rewriting of each (question, answer) pair.
* Fractions are of a *pool* of training **images** (each with all its questions): the first
  ``pool_images`` of one permutation drawn with ``data_seed`` (all 4,000 when ``None``); a fraction
  is a prefix of the pool, so the 10 % images are inside the 40 % ones.
* The test set (``test_per_answer`` set): **balanced** per question text, so that the question
  text alone cannot answer it: every yes/no question text with ``test_per_answer`` "yes" and as many
  "no" items, every open question text with ``test_per_answer`` items per possible answer (each
  colour for colour questions, each shape for shape questions). The question-only prior is then
  chance: 50 % closed, 1/8 or 1/3 open. Without it: ``n_open`` OPEN + ``n_closed`` CLOSED questions
  drawn at random (the first version of the miniature; its closed questions are ~85 % "no").
* ``balance_closed`` (training rows only; off by default): easy-vqa's yes/no answers are ~83 % one
  way per question text ("is there a red shape?" is "yes" for 1 image in 8; negated texts the other
  way), so answering from the text alone is a deep local optimum. With it, every yes/no question
  text of a fraction gets as many "yes" as "no" rows: the rows of the rarer answer are repeated
  (cyclically, in file order; the repeats carry the id suffix ``-rN``), no row is dropped; texts
  with only one answer in the fraction stay as they are.
* ``image_first`` (off by default): VQA rows (train and test) as ``<image>\\n{question}{options}``,
  the order of the alignment rows, instead of the released ``{question}{options}\\n<image>``. The
  idea: the named colour / shape word can then attend to the image tokens itself (a match is a
  large attention score) instead of the answer position comparing two fetched vectors.
  Neither option made the yes/no answers depend on the image in the pilots (closed accuracy
  45-51 %, see :mod:`.data_efficiency`); they stay as switches for further work.
* :func:`image_labels` reads each image's shape and colour off its questions (for the stage-0
  vision pre-training of :mod:`.vision_pretrain`, on train images outside the pool).

Image paths in the JSON files are absolute paths into the installed ``easy_vqa`` package (nothing is
copied).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.jsonio import read_json, write_json

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


@dataclass(frozen=True)
class EasyVqaFiles:
    """Paths of one prepared fraction plus the shared test files."""

    alignment: Path
    vqa_train: Path
    num_images: int
    num_questions: int
    num_rows: int = 0  # VQA training rows written: num_questions plus the repeats of ``balance_closed``


@dataclass(frozen=True)
class EasyVqaData:
    root: Path
    fractions: dict[float, EasyVqaFiles]
    vqa_test: Path
    candidates: Path
    counts: dict[str, Any]


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


def _vqa_row(row_id: str, image: str, question: str, answer: str, image_first: bool = False) -> dict[str, Any]:
    closed = answer in ("yes", "no")
    options = YES_NO_OPTIONS if closed else ""
    human = f"<image>\n{question}{options}" if image_first else f"{question}{options}\n<image>"
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


def _write(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj, indent=1)


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


def pool_order(data_seed: int = 0) -> list[int]:
    """All train image ids in the seeded order whose prefix is the experiment's pool."""
    image_ids = sorted({image_id for _, _, image_id in _questions("train")})
    return [image_ids[i] for i in np.random.default_rng(data_seed).permutation(len(image_ids))]


def non_pool_images(pool_images: int | None, data_seed: int = 0) -> list[int]:
    """Train image ids outside the pool (stage 0 may use them; no stage-2 or VQA row does)."""
    order = pool_order(data_seed)
    return [] if pool_images is None else sorted(order[pool_images:])


def balanced_test_indices(test: list[tuple[str, str, int]], per_answer: int, seed: int) -> list[int]:
    """Indices into ``test``: for every question text ``per_answer`` items per possible answer.

    Possible answers: yes/no for yes/no questions, the 8 colours for colour questions, the 3
    shapes for shape questions. Images are drawn without replacement per (text, answer); raises
    if a (text, answer) has fewer than ``per_answer`` test items.
    """
    rng = np.random.default_rng(seed)
    by_text: dict[str, dict[str, list[int]]] = {}
    for index, (question, answer, _) in enumerate(test):
        by_text.setdefault(question, {}).setdefault(answer, []).append(index)
    picked: list[int] = []
    for question in sorted(by_text):
        answers = by_text[question]
        if set(answers) <= {"yes", "no"}:
            possible: tuple[str, ...] = ("yes", "no")
        elif set(answers) <= set(COLORS):
            possible = COLORS
        elif set(answers) <= set(SHAPES):
            possible = SHAPES
        else:
            raise ValueError(f"question {question!r} mixes answer kinds: {sorted(answers)}")
        for answer in possible:
            items = answers.get(answer, [])
            if len(items) < per_answer:
                raise ValueError(f"question {question!r} has {len(items)} test item(s) with answer {answer!r}; "
                                 f"the balanced test set needs {per_answer}")
            picked += rng.choice(items, size=per_answer, replace=False).tolist()
    return sorted(picked)


def _question_text(row: dict[str, Any]) -> str:
    return row["conversations"][0]["value"]


def balance_closed_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` plus repeats of yes/no rows so that every closed question text has as many "yes" as
    "no" rows (the rarer answer's rows repeated cyclically in order, ids suffixed ``-r1``, ``-r2``, ...).

    Open rows and texts with a single answer are left alone; the repeats follow the originals.
    """
    by_text: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        if row["answer_type"] == "CLOSED":
            by_text.setdefault(_question_text(row), {}).setdefault(row["conversations"][1]["value"], []).append(row)
    extra: list[dict[str, Any]] = []
    for text in sorted(by_text):
        answers = by_text[text]
        if len(answers) < 2:
            continue
        most = max(len(items) for items in answers.values())
        for answer in sorted(answers):
            items = answers[answer]
            for k in range(most - len(items)):
                original = items[k % len(items)]
                extra.append({**original, "id": f"{original['id']}-r{k // len(items) + 1}"})
    return rows + extra


def prepare_easy_vqa(out_dir: str | Path, fractions: tuple[float, ...] = (0.1, 0.4, 1.0), *, n_open: int = 100,
                     n_closed: int = 100, data_seed: int = 0, pool_images: int | None = None,
                     test_per_answer: int | None = None, balance_closed: bool = False,
                     image_first: bool = False) -> EasyVqaData:
    """Write the alignment / VQA-train file of each fraction, the test subset and ``candidate.json``.

    ``test_per_answer``: the balanced test set (see the module doc); ``None``: ``n_open`` +
    ``n_closed`` random test questions. ``balance_closed``: repeat the rarer answer's yes/no training rows
    of each question text until both answers have as many rows (see the module doc). ``image_first``: the
    VQA rows (train and test) put ``<image>`` before the question, as the alignment rows do (see the
    module doc); else after it, as the released ``*_w_options_new.json`` files do.
    """
    root = Path(out_dir).resolve()
    rng = np.random.default_rng(data_seed)
    train = _questions("train")
    by_image: dict[int, list[tuple[str, str]]] = {}
    for question, answer, image_id in train:
        by_image.setdefault(image_id, []).append((question, answer))
    image_ids = sorted(by_image)
    order = [image_ids[i] for i in rng.permutation(len(image_ids))][:pool_images]
    files: dict[float, EasyVqaFiles] = {}
    for fraction in fractions:
        chosen = order[:max(1, round(fraction * len(order)))]
        vqa_rows, alignment_rows = [], []
        for image_id in chosen:
            image = _image("train", image_id)
            alignment_rows.append(_alignment_row(image_id, image, by_image[image_id]))
            for k, (question, answer) in enumerate(by_image[image_id]):
                vqa_rows.append(_vqa_row(f"train-{image_id:04d}-{k:02d}", image, question, answer, image_first))
        num_questions = len(vqa_rows)
        if balance_closed:
            vqa_rows = balance_closed_rows(vqa_rows)
        tag = f"{round(fraction * 100):03d}"
        entry = EasyVqaFiles(root / f"alignment_{tag}.json", root / f"train_{tag}_w_options_new.json",
                             len(chosen), num_questions, len(vqa_rows))
        _write(entry.alignment, alignment_rows)
        _write(entry.vqa_train, vqa_rows)
        files[fraction] = entry

    test = _questions("test")
    if test_per_answer is not None:
        picked = balanced_test_indices(test, test_per_answer, seed=data_seed)
    else:
        open_idx = [i for i, (_, a, _) in enumerate(test) if a not in ("yes", "no")]
        closed_idx = [i for i, (_, a, _) in enumerate(test) if a in ("yes", "no")]
        picked = sorted([*rng.choice(open_idx, size=min(n_open, len(open_idx)), replace=False).tolist(),
                         *rng.choice(closed_idx, size=min(n_closed, len(closed_idx)), replace=False).tolist()])
    test_rows = [_vqa_row(f"test-{i:05d}", _image("test", test[i][2]), test[i][0], test[i][1], image_first)
                 for i in picked]
    vqa_test = root / "test_w_options_new.json"
    _write(vqa_test, test_rows)
    candidates = root / "candidate.json"
    _write(candidates, {"0": sorted({*COLORS, *SHAPES})})
    counts = {"train_images": len(image_ids), "pool_images": len(order), "train_questions": len(train),
              "test_questions_total": len(test), "balance_closed": balance_closed,
              "image_first": image_first,
              "test_set": "balanced" if test_per_answer is not None else "random",
              "test_per_answer": test_per_answer, "test_images": len({test[i][2] for i in picked}),
              "test_open": sum(r["answer_type"] == "OPEN" for r in test_rows),
              "test_closed": sum(r["answer_type"] == "CLOSED" for r in test_rows),
              "fractions": {str(f): {"images": e.num_images, "questions": e.num_questions, "vqa_rows": e.num_rows}
                            for f, e in files.items()}}
    _write(root / "counts.json", counts)
    logger.info("easy-vqa prepared in %s: %s", root, counts)
    return EasyVqaData(root, files, vqa_test, candidates, counts)
