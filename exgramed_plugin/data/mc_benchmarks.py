"""The multiple-choice benchmarks of recent medical-VLM papers, read as MedEvalKit reads them (no swift).

Why: PMC-VQA, OmniMedVQA, MMMU-Med and MedXpertQA-MM are what Lingshu and the models it compares report
through MedEvalKit; the same questions, choices and answers are needed to compare with them. Each loader
follows MedEvalKit (alibaba-damo-academy/MedEvalKit @ ``9b12e3b34232a8779cc1275417bf4f72f03d28e0``,
Apache-2.0) and the dataset cards:

* PMC-VQA (``RadGenome/PMC-VQA``, ``utils/PMC_VQA/PMC_VQA.py`` L39-50): ``test_2.csv``, header skipped and
  each row unpacked as ``index, Figure_path, Caption, Question, Choice A, Choice B, Choice C, Choice D,
  Answer, split``; choices are the CSV's strings as they are (``"A:Diffuse uptake pattern"``, the card's
  sample row); the answer is a letter; images ``figures/<Figure_path>``.
* OmniMedVQA (``foreverbeliever/OmniMedVQA``, ``utils/OmniMedVQA/OmniMedVQA.py`` L69-110): every JSON list
  under ``QA_information/Open-access/`` (the restricted-access half is not read), rows with
  ``question``, ``option_A``-``option_D``, ``gt_answer`` (an option's text), ``question_type``,
  ``modality_type``, ``image_path`` (relative to the OmniMedVQA folder); choices ``"A. <option>"``; the
  answer is the letter of the *last* option whose text equals ``gt_answer`` (L93-97).
* MMMU-Med (``MMMU/MMMU``, ``utils/MMMU/eval_val.py`` L58-70, ``eval_test.py`` L51-69): the five Health &
  Medicine subjects, each ``<Subject>/<split>-*.parquet`` (``id, question, options, explanation,
  image_1..image_7, img_type, answer, topic_difficulty, question_type, subfield``; ``options`` is the
  string of a Python list, parsed by MedEvalKit with ``eval``, here with ``ast.literal_eval``); the test
  split's answers come from MedEvalKit's ``utils/MMMU/answer.json`` (``{id: {question_type,
  ground_truth}}``).
* MedXpertQA-MM (``TsinghuaC3I/MedXpertQA``, config ``MM``, ``utils/MedXpertQA/MedXpertQA.py`` L38-72):
  ``MM/<split>.jsonl`` rows ``id, question, options ({"A": ..., "E": ...}), label, images, medical_task,
  body_system, question_type``; choices ``"A. <option>"``; images ``images/<name>``.

A folder in the wrong layout is a :class:`DataFormatError` naming the file and the field expected. A bad
question (an answer that is not one of its options, options that do not parse, a missing image) is an
:class:`InvalidQuestion` naming its id, file and field; the caller stops on them or skips and lists them.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .formats import DataFormatError
from .hub_benchmarks import HubBenchmark, benchmark_folder, extract_folder_once, image_cache_dir, store_image
from ..common.jsonio import read_json, read_jsonl

logger = logging.getLogger(__name__)

MULTIPLE_CHOICE = "multiple-choice"
PMC_VQA_HEADER = ("Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D", "Answer",
                  "split")  # after the first (index) column, which MedEvalKit ignores
OMNIMED_OPTIONS = ("A", "B", "C", "D")  # OmniMedVQA.py L93: MedEvalKit reads option_A-D only
OMNIMED_REQUIRED = ("question", "gt_answer", "image_path", "question_type", "modality_type")
MMMU_SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                 "Public_Health")  # MedEvalKit utils/MMMU/data_utils.py L13, in its order
MMMU_COLUMNS = ("id", "question", "options", "answer", "question_type") + tuple(f"image_{i}" for i in range(1, 8))
MMMU_ANSWERS_ENV = "EXGRAMED_MMMU_ANSWERS"
MEDXPERTQA_REQUIRED = ("id", "question", "options", "label", "images", "medical_task", "question_type")
_IMAGE_PLACEHOLDER = re.compile(r"<image (\d+)>")


@dataclass(frozen=True)
class ChoiceQuestion:
    """One question as MedEvalKit sees it: ``choices`` as its prompt lists them, ``answer`` a letter
    (or, for an MMMU open question, the gold text or list), ``images`` every image of the question in
    order (absolute paths), ``groups`` the fields MedEvalKit reports accuracy by."""

    id: str
    benchmark: str
    question: str
    choices: tuple[str, ...]
    answer: str | tuple[str, ...]
    images: tuple[str, ...]
    groups: dict[str, str] = field(default_factory=dict)
    question_type: str = MULTIPLE_CHOICE


@dataclass(frozen=True)
class InvalidQuestion:
    """A question that cannot be scored as it is, with where and why."""

    id: str
    source: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}, id={self.id!r}, field {self.field!r}: {self.reason}"


@dataclass
class LoadedBenchmark:
    """The questions of one benchmark split, and those that are invalid (never silently dropped)."""

    name: str
    split: str
    folder: Path
    questions: list[ChoiceQuestion]
    invalid: list[InvalidQuestion]

    def require_valid(self, max_listed: int = 20) -> None:
        """Raise :class:`DataFormatError` listing the invalid questions, if any."""
        if self.invalid:
            shown = "\n  ".join(str(problem) for problem in self.invalid[:max_listed])
            more = f"\n  ... and {len(self.invalid) - max_listed} more" if len(self.invalid) > max_listed else ""
            raise DataFormatError(f"{self.name} ({self.split}): {len(self.invalid)} invalid question(s) (exgramed eval "
                                  f"--skip-invalid scores the others and lists these):\n  {shown}{more}")


@dataclass(frozen=True)
class ChoiceBenchmark:
    """A multiple-choice benchmark: its hub copy, its folder name under a data root (MedEvalKit's
    ``DATASETS_PATH`` names, so a MedEvalKit data folder works as it is) and its archives."""

    hub: HubBenchmark
    folder_name: str
    archives: tuple[tuple[str, str], ...] = ()  # (zip, the folder it holds), extracted where that folder is missing
    top_archive: tuple[str, str] | None = None  # a zip holding the whole data folder (OmniMedVQA.zip -> OmniMedVQA/)
    marker: str = ""  # a path every data folder has (tells it from a folder holding top_archive)

    @property
    def name(self) -> str:
        return self.hub.name


BENCHMARKS: dict[str, ChoiceBenchmark] = {b.name: b for b in (
    ChoiceBenchmark(HubBenchmark("pmc_vqa", "RadGenome/PMC-VQA", ("test",), "pmc_vqa", "EXGRAMED_PMC_VQA_DIR",
                                 files=("test_2.csv", "images_2.zip")), "PMC_VQA", (("images_2.zip", "figures"),)),
    ChoiceBenchmark(HubBenchmark("omnimedvqa", "foreverbeliever/OmniMedVQA", ("test",), "omnimedvqa",
                                 "EXGRAMED_OMNIMEDVQA_DIR", files=("OmniMedVQA.zip",)), "OmniMedVQA",
                    top_archive=("OmniMedVQA.zip", "OmniMedVQA"), marker="QA_information"),
    ChoiceBenchmark(HubBenchmark("mmmu_med", "MMMU/MMMU", ("dev", "validation", "test"), "mmmu", "EXGRAMED_MMMU_DIR",
                                 files=tuple(f"{subject}/{{split}}-*.parquet" for subject in MMMU_SUBJECTS)), "MMMU"),
    ChoiceBenchmark(HubBenchmark("medxpertqa_mm", "TsinghuaC3I/MedXpertQA", ("dev", "test"), "medxpertqa",
                                 "EXGRAMED_MEDXPERTQA_DIR", files=("MM/{split}.jsonl", "images.zip")), "MedXpertQA",
                    (("images.zip", "images"),)),
)}


def get_choice_benchmark(name: str, split: str) -> ChoiceBenchmark:
    benchmark = BENCHMARKS.get(name)
    if benchmark is None:
        raise ValueError(f"unknown multiple-choice benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if split not in benchmark.hub.splits:
        raise ValueError(f"{benchmark.hub.repo_id} has no split {split!r}; splits: {list(benchmark.hub.splits)}")
    return benchmark


def data_folder(benchmark: ChoiceBenchmark, split: str, *, data_root: str | os.PathLike | None = None,
                local_dir: str | os.PathLike | None = None) -> Path:
    """The benchmark's folder: ``local_dir``, else ``<data_root>/<folder_name>`` when it exists, else
    ``$<dir_env>``, else a snapshot of the hub copy; archives extracted once where a folder lacks them."""
    if local_dir is None and data_root is not None and (Path(data_root).expanduser() / benchmark.folder_name).is_dir():
        local_dir = Path(data_root).expanduser() / benchmark.folder_name
    folder = benchmark_folder(benchmark.hub, split, local_dir)
    if benchmark.top_archive is not None and not (folder / benchmark.marker).exists():
        archive, member = benchmark.top_archive
        if not (folder / member).is_dir() and not (folder / archive).is_file():
            raise DataFormatError(f"{folder}: no {benchmark.marker}/ (nor {member}/{benchmark.marker}/ or {archive}); "
                                  f"expected the layout of {benchmark.hub.repo_id}")
        folder = extract_folder_once(folder, archive, member, benchmark.hub.repo_id)
    for archive, member in benchmark.archives:
        extract_folder_once(folder, archive, member, benchmark.hub.repo_id)
    return folder


# --------------------------------------------------------------------------------------------------
# Shared row checks
# --------------------------------------------------------------------------------------------------


def _image(folder: Path, relative: Any, qid: str, source: str, field_name: str,
           invalid: list[InvalidQuestion]) -> str | None:
    path = folder / str(relative) if isinstance(relative, str) and relative else None
    if path is None or not path.is_file():
        invalid.append(InvalidQuestion(qid, source, field_name, f"image not found: {path or relative!r}"))
        return None
    return str(path.resolve())


def _answer_letter(answer: Any, choices: Sequence[str], qid: str, source: str, field_name: str,
                   invalid: list[InvalidQuestion]) -> str | None:
    letters = [chr(ord("A") + i) for i in range(len(choices))]
    letter = str(answer).strip() if answer is not None else ""
    if letter not in letters:
        invalid.append(InvalidQuestion(qid, source, field_name, f"answer {answer!r} is not one of the option letters "
                                                                f"{letters}"))
        return None
    return letter


def _check_unique(questions: list[ChoiceQuestion], source: str) -> None:
    seen: set[str] = set()
    for question in questions:
        if question.id in seen:
            raise DataFormatError(f"{source}: question id {question.id!r} occurs more than once; answers are paired "
                                  "with questions by id")
        seen.add(question.id)


# --------------------------------------------------------------------------------------------------
# PMC-VQA
# --------------------------------------------------------------------------------------------------


def load_pmc_vqa(folder: Path) -> tuple[list[ChoiceQuestion], list[InvalidQuestion]]:
    """``test_2.csv`` rows in file order; ids ``pmc_vqa-test-<row:06d>`` (position among the data rows)."""
    path = folder / "test_2.csv"
    if not path.is_file():
        raise DataFormatError(f"{path}: not found; a PMC-VQA folder holds test_2.csv and figures/ (RadGenome/PMC-VQA)")
    questions: list[ChoiceQuestion] = []
    invalid: list[InvalidQuestion] = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(header[1:]) != PMC_VQA_HEADER:
            raise DataFormatError(f"{path}: header {header}; expected a first (index) column then "
                                  f"{list(PMC_VQA_HEADER)} (MedEvalKit unpacks the columns in this order)")
        for position, row in enumerate(reader):
            qid = f"pmc_vqa-test-{position:06d}"
            where = f"{path}, line {position + 2}"
            if len(row) != len(PMC_VQA_HEADER) + 1:
                invalid.append(InvalidQuestion(qid, where, "row", f"{len(row)} columns, expected "
                                                                  f"{len(PMC_VQA_HEADER) + 1}"))
                continue
            _, figure_path, _, question, *choices, answer, _ = row
            letter = _answer_letter(answer, choices, qid, where, "Answer", invalid)
            image = _image(folder / "figures", figure_path, qid, where, "Figure_path", invalid)
            if letter is None or image is None:
                continue
            questions.append(ChoiceQuestion(qid, "pmc_vqa", question, tuple(choices), letter, (image,)))
    _check_unique(questions, str(path))
    return questions, invalid


# --------------------------------------------------------------------------------------------------
# OmniMedVQA
# --------------------------------------------------------------------------------------------------


def load_omnimedvqa(folder: Path) -> tuple[list[ChoiceQuestion], list[InvalidQuestion]]:
    """Every ``QA_information/Open-access/*.json`` (sorted by name), rows in file order; id = ``question_id``."""
    qa_folder = folder / "QA_information" / "Open-access"
    files = sorted(qa_folder.glob("*.json"))
    if not files:
        raise DataFormatError(f"{qa_folder}: no *.json; an OmniMedVQA folder holds QA_information/Open-access/*.json "
                              "and the images their 'image_path' names")
    questions: list[ChoiceQuestion] = []
    invalid: list[InvalidQuestion] = []
    for path in files:
        rows = read_json(path)
        if not isinstance(rows, list):
            raise DataFormatError(f"{path}: expected a JSON list of questions, got {type(rows).__name__}")
        for position, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}, row {position}: expected an object, got {type(row).__name__}")
            qid = str(row.get("question_id", f"{path.stem}#{position}"))
            where = f"{path}, row {position}"
            missing = [name for name in OMNIMED_REQUIRED if name not in row]
            if missing:
                raise DataFormatError(f"{where} (question_id={qid!r}): missing field(s) {missing}; OmniMedVQA rows "
                                      f"have {list(OMNIMED_REQUIRED)} and option_A..option_D")
            options = [(letter, str(row[f"option_{letter}"])) for letter in OMNIMED_OPTIONS if f"option_{letter}" in row]
            matches = [letter for letter, text in options if text == row["gt_answer"]]
            if len(options) < 2:
                invalid.append(InvalidQuestion(qid, where, "option_A", f"{len(options)} option(s)"))
                continue
            if not matches:
                invalid.append(InvalidQuestion(qid, where, "gt_answer", f"{row['gt_answer']!r} is not the text of "
                                                                        "option_A..option_D"))
                continue
            image = _image(folder, row["image_path"], qid, where, "image_path", invalid)
            if image is None:
                continue
            questions.append(ChoiceQuestion(
                qid, "omnimedvqa", str(row["question"]), tuple(f"{letter}. {text}" for letter, text in options),
                matches[-1], (image,), {"question_type": str(row["question_type"]),
                                        "modality_type": str(row["modality_type"])}))
    _check_unique(questions, str(qa_folder))
    return questions, invalid


# --------------------------------------------------------------------------------------------------
# MMMU (Health & Medicine)
# --------------------------------------------------------------------------------------------------


def _mmmu_options(raw: Any, qid: str, where: str, invalid: list[InvalidQuestion]) -> list[str] | None:
    try:
        options = ast.literal_eval(raw) if isinstance(raw, str) else None
    except (ValueError, SyntaxError) as error:
        invalid.append(InvalidQuestion(qid, where, "options", f"does not parse as a Python list: {error}"))
        return None
    if not isinstance(options, list) or not all(isinstance(option, str) for option in options):
        invalid.append(InvalidQuestion(qid, where, "options", f"expected the string of a list of strings, got {raw!r}"))
        return None
    return options


def _mmmu_images(record: dict[str, Any], options: Sequence[str], qid: str, where: str, cache: Path,
                 invalid: list[InvalidQuestion]) -> tuple[str, ...] | None:
    """Every present ``image_N`` in N order; a ``<image N>`` placeholder without its image is invalid."""
    referenced = {int(n) for text in (record["question"], *options) for n in _IMAGE_PLACEHOLDER.findall(text)}
    images: list[str] = []
    for number in range(1, 8):
        value = record.get(f"image_{number}")
        data = value.get("bytes") if isinstance(value, dict) else None
        if data:
            images.append(store_image(data, cache, f"{where}, column 'image_{number}'"))
        elif number in referenced or number == 1:
            invalid.append(InvalidQuestion(qid, where, f"image_{number}", "missing image"
                                           + (f" (the question refers to <image {number}>)" if number in referenced
                                              else "")))
            return None
    return tuple(images)


def read_mmmu_answers(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """MedEvalKit's ``utils/MMMU/answer.json``: ``{id: {"question_type", "ground_truth"}}``."""
    answers = read_json(path)
    if not isinstance(answers, dict) or not all(isinstance(v, dict) and "ground_truth" in v for v in answers.values()):
        raise DataFormatError(f"{path}: expected {{id: {{'question_type', 'ground_truth'}}}} (MedEvalKit's "
                              "utils/MMMU/answer.json)")
    return answers


def load_mmmu_med(folder: Path, split: str, *, answers_path: str | os.PathLike | None = None,
                  image_cache: str | os.PathLike | None = None) -> tuple[list[ChoiceQuestion], list[InvalidQuestion]]:
    """The five medical subjects' ``split`` rows in MedEvalKit's subject order. The test split needs
    ``answers_path`` (default ``$EXGRAMED_MMMU_ANSWERS``, else ``<folder>/answer.json``)."""
    answers = None
    if split == "test":
        answers_path = answers_path or os.environ.get(MMMU_ANSWERS_ENV) or folder / "answer.json"
        if not Path(answers_path).is_file():
            raise DataFormatError(f"{answers_path}: not found; MMMU's test answers are not in the hub copy: copy "
                                  f"MedEvalKit's utils/MMMU/answer.json there (or set {MMMU_ANSWERS_ENV})")
        answers = read_mmmu_answers(answers_path)
    cache = image_cache_dir(image_cache)
    questions: list[ChoiceQuestion] = []
    invalid: list[InvalidQuestion] = []
    for subject in MMMU_SUBJECTS:
        files = sorted((folder / subject).glob(f"{split}-*.parquet"))
        if not files:
            raise DataFormatError(f"{folder / subject}/{split}-*.parquet: not found; an MMMU folder holds "
                                  f"<Subject>/<split>-*.parquet for {list(MMMU_SUBJECTS)} (MMMU/MMMU)")
        for path in files:
            names = set(pq.read_schema(path).names)
            missing = [column for column in MMMU_COLUMNS if column not in names]
            if missing:
                raise DataFormatError(f"{path}: missing column(s) {missing}; MMMU rows have {list(MMMU_COLUMNS)}")
            for position, record in enumerate(pq.read_table(path, columns=list(MMMU_COLUMNS)).to_pylist()):
                question = _mmmu_question(record, subject, f"{path}, row {position}", answers, cache, invalid)
                if question is not None:
                    questions.append(question)
    _check_unique(questions, str(folder))
    return questions, invalid


def _mmmu_question(record: dict[str, Any], subject: str, where: str, answers: dict[str, Any] | None, cache: Path,
                   invalid: list[InvalidQuestion]) -> ChoiceQuestion | None:
    qid = str(record["id"])
    question_type, answer = str(record["question_type"]), record["answer"]
    if answers is not None:
        if qid not in answers:
            invalid.append(InvalidQuestion(qid, where, "id", "no ground truth in the answers file"))
            return None
        question_type, answer = str(answers[qid].get("question_type", question_type)), answers[qid]["ground_truth"]
    options = _mmmu_options(record["options"], qid, where, invalid)
    if options is None:
        return None
    if question_type == MULTIPLE_CHOICE:
        if not options:
            invalid.append(InvalidQuestion(qid, where, "options", "a multiple-choice question without options"))
            return None
        letters = [chr(ord("A") + i) for i in range(len(options))]
        golds = answer if isinstance(answer, list) else [answer]
        if not golds or any(str(gold) not in letters for gold in golds):
            invalid.append(InvalidQuestion(qid, where, "answer", f"answer {answer!r} is not one of the option "
                                                                 f"letters {letters}"))
            return None
    images = _mmmu_images(record, options, qid, where, cache, invalid)
    if images is None:
        return None
    gold = tuple(str(a) for a in answer) if isinstance(answer, list) else str(answer)
    return ChoiceQuestion(qid, "mmmu_med", str(record["question"]), tuple(options), gold, images,
                          {"subject": subject}, question_type)


# --------------------------------------------------------------------------------------------------
# MedXpertQA (MM)
# --------------------------------------------------------------------------------------------------


def load_medxpertqa_mm(folder: Path, split: str) -> tuple[list[ChoiceQuestion], list[InvalidQuestion]]:
    """``MM/<split>.jsonl`` rows in file order; id = the row's ``id`` (``MM-26``)."""
    path = folder / "MM" / f"{split}.jsonl"
    if not path.is_file():
        raise DataFormatError(f"{path}: not found; a MedXpertQA folder holds MM/{{dev,test}}.jsonl and images/ "
                              "(TsinghuaC3I/MedXpertQA)")
    questions: list[ChoiceQuestion] = []
    invalid: list[InvalidQuestion] = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        missing = [name for name in MEDXPERTQA_REQUIRED if name not in row]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}; MedXpertQA MM rows have "
                                  f"{list(MEDXPERTQA_REQUIRED)}")
        qid = str(row["id"])
        options = row["options"]
        if not isinstance(options, dict) or not options or list(options) != [chr(ord("A") + i)
                                                                             for i in range(len(options))]:
            invalid.append(InvalidQuestion(qid, where, "options", f"expected {{'A': ..., 'B': ...}} in letter order, "
                                                                  f"got {json.dumps(options)[:80]}"))
            continue
        choices = tuple(f"{letter}. {text}" for letter, text in options.items())
        letter = _answer_letter(row["label"], choices, qid, where, "label", invalid)
        if not isinstance(row["images"], list):
            invalid.append(InvalidQuestion(qid, where, "images", f"expected a list of file names, got {row['images']!r}"))
            continue
        images = [_image(folder / "images", name, qid, where, "images", invalid) for name in row["images"]]
        if letter is None or None in images:
            continue
        questions.append(ChoiceQuestion(qid, "medxpertqa_mm", str(row["question"]), choices, letter,
                                        tuple(str(image) for image in images),
                                        {"question_type": str(row["question_type"]),
                                         "medical_task": str(row["medical_task"])}))
    _check_unique(questions, str(path))
    return questions, invalid


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def load_choice_benchmark(name: str, split: str = "test", *, data_root: str | os.PathLike | None = None,
                          local_dir: str | os.PathLike | None = None, mmmu_answers: str | os.PathLike | None = None,
                          image_cache: str | os.PathLike | None = None) -> LoadedBenchmark:
    """The questions of ``name`` / ``split`` and the invalid ones (see :func:`data_folder` for where from)."""
    benchmark = get_choice_benchmark(name, split)
    folder = data_folder(benchmark, split, data_root=data_root, local_dir=local_dir)
    if name == "pmc_vqa":
        questions, invalid = load_pmc_vqa(folder)
    elif name == "omnimedvqa":
        questions, invalid = load_omnimedvqa(folder)
    elif name == "mmmu_med":
        questions, invalid = load_mmmu_med(folder, split, answers_path=mmmu_answers, image_cache=image_cache)
    else:
        questions, invalid = load_medxpertqa_mm(folder, split)
    if not questions and not invalid:
        raise DataFormatError(f"{folder}: {name} ({split}) has no question")
    logger.info("%s (%s): %d question(s), %d invalid, from %s", name, split, len(questions), len(invalid), folder)
    return LoadedBenchmark(name, split, folder, questions, invalid)
