"""The public hub copies of VQA-RAD, PathVQA and SLAKE → the plugin's standard rows (no swift).

Why: recent papers (Lingshu, HuatuoGPT-Vision, MedGemma via MedEvalKit) evaluate on these hub
copies, not on the MERGE-Group release layout (``*_w_options_new.json``) read by
``swift_glue/datasets.py``; comparing with them needs the same questions, in the same order.

Schemas (checked against the dataset cards, the repositories' file lists and MedEvalKit's loaders,
alibaba-damo-academy/MedEvalKit ``utils/VQA_RAD/VQA_RAD.py``, ``utils/PATH_VQA/PATH_VQA.py``,
``utils/SLAKE/SLAKE.py``, ``utils/base_dataset.py``):

* ``flaviagiammarino/vqa-rad`` (https://huggingface.co/datasets/flaviagiammarino/vqa-rad, README
  ``dataset_info``): parquet ``data/{train,test}-*.parquet`` (1793 / 451 rows), columns ``image``
  (a ``datasets.Image`` feature: struct ``{bytes, path}`` with the image embedded), ``question``,
  ``answer`` (both strings).
* ``flaviagiammarino/path-vqa`` (https://huggingface.co/datasets/flaviagiammarino/path-vqa):
  the same three columns, splits ``train`` / ``validation`` / ``test`` (19654 / 6259 / 6719 rows),
  each split in several shards ``data/{split}-0000k-of-0000n-<hash>.parquet``.
  Neither has an answer-type column. As MedEvalKit does (``cal_metrics`` of both loaders:
  ``answer.lower().strip() in ["yes", "no"]``), a question is CLOSED when its answer is yes/no and
  OPEN otherwise.
* ``BoKelvin/SLAKE`` (https://huggingface.co/datasets/BoKelvin/SLAKE, files ``train.json``,
  ``validation.json``, ``test.json``, ``imgs.zip``, ``KG.zip``, ``mask.txt``): each JSON is a list
  of rows ``img_id, img_name, question, answer, q_lang, location, modality, answer_type, base_type,
  content_type, triple, qid``; ``answer_type`` is ``OPEN``/``CLOSED``, ``q_lang`` ``en``/``zh``
  (English and Chinese questions on the same images). Images are not embedded: MedEvalKit unzips
  ``imgs.zip`` next to the JSON files and opens ``<folder>/imgs/<img_name>``.

Ids are stable across runs and machines: ``<benchmark>-<split>-<row index>`` (6 digits, index in the
split's file order, shards sorted by name as ``datasets.load_dataset`` reads them, hence MedEvalKit's
order) for the parquet sets, ``slake-<split>-<qid>`` for SLAKE. Embedded images are written once to
a cache folder under their content hash (``<sha256>.<ext>``), so reruns and repeated images reuse
one file. Every problem is a :class:`DataFormatError` naming the file, the row and the column.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from .formats import DataFormatError, resolve_image_path
from ..common.jsonio import read_json, write_jsonl

logger = logging.getLogger(__name__)

IMAGE_CACHE_ENV = "EXGRAMED_HUB_IMAGE_CACHE"
DEFAULT_IMAGE_CACHE = "~/.cache/exgramed/hub_images"
LANGUAGES = ("en", "zh")
PARQUET_COLUMNS = ("image", "question", "answer")
SLAKE_REQUIRED = ("img_name", "question", "answer", "answer_type", "q_lang", "qid")
SLAKE_COLUMNS = frozenset(SLAKE_REQUIRED + ("img_id", "location", "modality", "base_type", "content_type",
                                            "triple"))
_CLOSED_ANSWERS = ("yes", "no")
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif"}
_READ_BATCH = 256


@dataclass(frozen=True)
class HubBenchmark:
    """One hub dataset: where it lives, its splits, its layout, and the folder override."""

    name: str
    repo_id: str
    splits: tuple[str, ...]
    layout: str  # "parquet" (embedded images), "slake" (JSON + imgs.zip), or another loader's own
    dir_env: str
    files: tuple[str, ...] = ()  # download patterns with a {split} placeholder, for layouts other than these two

    def allow_patterns(self, split: str) -> list[str]:
        """Only the files one split needs (SLAKE's 212 MB imgs.zip is shared by all splits)."""
        if self.files:
            return [pattern.format(split=split) for pattern in self.files]
        if self.layout == "parquet":
            return [f"data/{split}-*.parquet"]
        return [f"{split}.json", "imgs.zip"]


BENCHMARKS = {b.name: b for b in (
    HubBenchmark("vqa_rad", "flaviagiammarino/vqa-rad", ("train", "test"), "parquet", "EXGRAMED_VQA_RAD_HF_DIR"),
    HubBenchmark("pathvqa", "flaviagiammarino/path-vqa", ("train", "validation", "test"), "parquet",
                 "EXGRAMED_PATHVQA_HF_DIR"),
    HubBenchmark("slake", "BoKelvin/SLAKE", ("train", "validation", "test"), "slake", "EXGRAMED_SLAKE_HF_DIR"),
)}


def get_benchmark(name: str, split: str) -> HubBenchmark:
    benchmark = BENCHMARKS.get(name)
    if benchmark is None:
        raise ValueError(f"unknown hub benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    if split not in benchmark.splits:
        raise ValueError(f"{benchmark.repo_id} has no split {split!r}; splits: {list(benchmark.splits)}")
    return benchmark


# --------------------------------------------------------------------------------------------------
# Finding the files: a local folder, else the Hugging Face cache / hub
# --------------------------------------------------------------------------------------------------


def benchmark_folder(benchmark: HubBenchmark, split: str, local_dir: str | os.PathLike | None = None,
                     revision: str | None = None) -> Path:
    """Folder laid out like the hub repository: ``local_dir``, else ``$<dir_env>``, else a snapshot
    of the repository (from the HF cache when offline, downloaded otherwise)."""
    chosen = local_dir or os.environ.get(benchmark.dir_env)
    if chosen:
        folder = Path(chosen).expanduser()
        if not folder.is_dir():
            origin = "local_dir" if local_dir else f"${benchmark.dir_env}"
            raise FileNotFoundError(f"{benchmark.repo_id}: {origin} = {folder} is not a folder")
        return folder
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        folder = snapshot_download(benchmark.repo_id, repo_type="dataset", revision=revision,
                                   allow_patterns=benchmark.allow_patterns(split))
    except LocalEntryNotFoundError as error:
        raise FileNotFoundError(
            f"{benchmark.repo_id} ({split}): not in the Hugging Face cache and the hub cannot be reached; run once "
            f"online, or set {benchmark.dir_env} to a folder holding {benchmark.allow_patterns(split)} "
            f"({type(error).__name__}: {error})") from error
    logger.info("%s: using %s", benchmark.repo_id, folder)
    return Path(folder)


# --------------------------------------------------------------------------------------------------
# VQA-RAD / PathVQA: parquet with embedded images
# --------------------------------------------------------------------------------------------------


def answer_type_from_answer(answer: str) -> str:
    """CLOSED for a yes/no answer, OPEN otherwise (MedEvalKit's rule for VQA-RAD and PathVQA)."""
    return "CLOSED" if answer.lower().strip() in _CLOSED_ANSWERS else "OPEN"


def split_parquet_files(folder: Path, benchmark: HubBenchmark, split: str) -> list[Path]:
    """The split's shards in name order (the order ``datasets.load_dataset`` concatenates them)."""
    files = sorted(folder.glob(f"data/{split}-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{benchmark.repo_id} ({split}): no {folder / 'data'}/{split}-*.parquet")
    return files


def check_parquet_columns(path: Path) -> None:
    """Exactly ``image`` (struct with ``bytes``), ``question``, ``answer``; anything else is named."""
    schema = pq.read_schema(path)
    names = set(schema.names)
    missing = [c for c in PARQUET_COLUMNS if c not in names]
    unexpected = sorted(names - set(PARQUET_COLUMNS))
    if missing or unexpected:
        raise DataFormatError(f"{path}: columns do not match the hub schema {list(PARQUET_COLUMNS)}: "
                              f"missing {missing}, unexpected {unexpected}")
    image_type = schema.field("image").type
    if not (pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0):
        raise DataFormatError(f"{path}: column 'image' has type {image_type}, expected a datasets Image "
                              "struct {bytes, path} with the image embedded")
    for column in ("question", "answer"):
        column_type = schema.field(column).type
        if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
            raise DataFormatError(f"{path}: column {column!r} has type {column_type}, expected string")


def image_cache_dir(image_cache: str | os.PathLike | None = None) -> Path:
    return Path(image_cache or os.environ.get(IMAGE_CACHE_ENV) or DEFAULT_IMAGE_CACHE).expanduser()


def store_image(data: bytes, cache_dir: Path, where: str) -> str:
    """Write ``data`` once as ``<sha256>.<ext>`` (atomically) and return its absolute path."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataFormatError(f"{where}: unreadable embedded image: {error}") from error
    name = hashlib.sha256(data).hexdigest() + _EXTENSIONS.get(image_format, f".{str(image_format).lower()}")
    path = cache_dir / name
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return str(path.resolve())


def _text(value: Any, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(f"{where}, column {column!r}: expected a non-empty string, got {value!r}")
    return value


def standard_row(row_id: str, question: str, answer: str, image: str, answer_type: str) -> dict[str, Any]:
    """The plugin's standard row (as ``formats.row_to_standard`` returns it)."""
    return {"messages": [{"role": "user", "content": f"<image>\n{question}"},
                         {"role": "assistant", "content": answer}],
            "images": [image], "id": row_id, "answer_type": answer_type, "extended_answers": None}


def parquet_rows(files: list[Path], benchmark: HubBenchmark, split: str, cache_dir: Path) -> list[dict[str, Any]]:
    """Standard rows of one split of VQA-RAD / PathVQA, ids numbered across the shards."""
    rows: list[dict[str, Any]] = []
    for path in files:
        check_parquet_columns(path)
        file_row = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=_READ_BATCH, columns=list(PARQUET_COLUMNS)):
            for record in batch.to_pylist():
                row_id = f"{benchmark.name}-{split}-{len(rows):06d}"
                where = f"{path}, row {file_row} (id={row_id!r})"
                file_row += 1
                image = record["image"]
                data = image.get("bytes") if isinstance(image, dict) else None
                if not data:
                    raise DataFormatError(f"{where}, column 'image': no embedded image bytes "
                                          f"(path={image.get('path') if isinstance(image, dict) else image!r})")
                question = _text(record["question"], where, "question")
                answer = _text(record["answer"], where, "answer")
                rows.append(standard_row(row_id, question, answer, store_image(data, cache_dir, f"{where}, "
                                         "column 'image'"), answer_type_from_answer(answer)))
    return rows


# --------------------------------------------------------------------------------------------------
# SLAKE: JSON rows + imgs.zip
# --------------------------------------------------------------------------------------------------


def extract_folder_once(folder: Path, archive_name: str, member: str, what: str) -> Path:
    """``<folder>/<member>``, extracted once from ``<folder>/<archive_name>`` (whose top level must hold
    ``member/``) when missing; safe when several processes extract at the same time."""
    target = folder / member
    if target.is_dir():
        return target
    archive = folder / archive_name
    if not archive.is_file():
        raise FileNotFoundError(f"{what}: neither {target}/ nor {archive} exists")
    logger.info("%s: extracting %s", what, archive)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=f".{member}-extracting-"))
    try:
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(tmp)
        if not (tmp / member).is_dir():
            raise DataFormatError(f"{archive}: expected a top-level '{member}/' folder, found "
                                  f"{sorted(p.name for p in tmp.iterdir())}")
        try:
            os.replace(tmp / member, target)
        except OSError:
            if not target.is_dir():  # another process extracting at the same time is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_slake_images(folder: Path) -> Path:
    """``<folder>/imgs``, extracted once from ``<folder>/imgs.zip`` when missing (as MedEvalKit does)."""
    return extract_folder_once(folder, "imgs.zip", "imgs", "SLAKE")


def _slake_row(record: Any, path: Path, position: int, split: str, images: Path) -> tuple[str, dict[str, Any]]:
    """(language, standard row) of one SLAKE JSON row."""
    if not isinstance(record, dict):
        raise DataFormatError(f"{path}, row {position}: expected an object, got {type(record).__name__}")
    qid = record.get("qid")
    where = f"{path}, row {position} (qid={qid!r})"
    missing = [c for c in SLAKE_REQUIRED if c not in record]
    unexpected = sorted(set(record) - SLAKE_COLUMNS)
    if missing or unexpected:
        raise DataFormatError(f"{where}: columns do not match the SLAKE schema: missing {missing}, "
                              f"unexpected {unexpected}")
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise DataFormatError(f"{where}, column 'qid': expected an integer")
    language = record["q_lang"]
    if language not in LANGUAGES:
        raise DataFormatError(f"{where}, column 'q_lang': expected one of {list(LANGUAGES)}, got {language!r}")
    answer_type = str(record["answer_type"]).upper()
    if answer_type not in ("OPEN", "CLOSED"):
        raise DataFormatError(f"{where}, column 'answer_type': expected OPEN or CLOSED, got "
                              f"{record['answer_type']!r}")
    question = _text(record["question"], where, "question")
    answer = _text(record["answer"], where, "answer")
    image = resolve_image_path(record["img_name"], str(path), qid, "img_name", str(images))
    # q_lang kept: MedEvalKit's SLAKE prompt is in the question's language (exgramed predict --prompt medevalkit).
    return language, {**standard_row(f"slake-{split}-{qid}", question, answer, image, answer_type), "q_lang": language}


def slake_rows(path: Path, images: Path, split: str, language: str = "all") -> list[dict[str, Any]]:
    """Standard rows of a SLAKE split, in file order, keeping ``language`` (``en``, ``zh`` or ``all``)."""
    records = read_json(path)
    if not isinstance(records, list):
        raise DataFormatError(f"{path}: expected a JSON list of rows, got {type(records).__name__}")
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for position, record in enumerate(records):
        row_language, row = _slake_row(record, path, position, split, images)
        if row["id"] in seen:
            raise DataFormatError(f"{path}, column 'qid': qid {record['qid']!r} occurs in rows {seen[row['id']]} "
                                  f"and {position}")
        seen[row["id"]] = position
        if language in ("all", row_language):
            rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def check_language(benchmark: HubBenchmark, language: str) -> None:
    choices = ("all",) + LANGUAGES if benchmark.layout == "slake" else ("all",)
    if language not in choices:
        raise ValueError(f"{benchmark.repo_id}: language {language!r} is not one of {list(choices)}")


def load_benchmark(name: str, split: str, *, language: str = "all", local_dir: str | os.PathLike | None = None,
                   image_cache: str | os.PathLike | None = None, revision: str | None = None) -> list[dict[str, Any]]:
    """Standard rows of ``name`` (``vqa_rad``, ``pathvqa``, ``slake``) / ``split`` (hub split names).

    ``language`` filters SLAKE (``en``, ``zh``, ``all``); ``image_cache`` (or
    ``$EXGRAMED_HUB_IMAGE_CACHE``, default ``~/.cache/exgramed/hub_images``) receives embedded images.
    """
    benchmark = get_benchmark(name, split)
    check_language(benchmark, language)
    folder = benchmark_folder(benchmark, split, local_dir, revision)
    if benchmark.layout == "parquet":
        rows = parquet_rows(split_parquet_files(folder, benchmark, split), benchmark, split,
                            image_cache_dir(image_cache))
    else:
        path = folder / f"{split}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{benchmark.repo_id} ({split}): {path} not found")
        rows = slake_rows(path, ensure_slake_images(folder), split, language)
    if not rows:
        raise ValueError(f"{benchmark.repo_id} ({split}, language {language}): no rows in {folder}")
    logger.info("%s %s (%s): %d rows", benchmark.repo_id, split, language, len(rows))
    return rows


def export_benchmark(name: str, split: str, out: str | os.PathLike, **kwargs: Any) -> Path:
    """Write the standard rows as a swift JSONL, the question file ``exgramed predict`` / ``eval-vqa`` read."""
    return write_jsonl(out, load_benchmark(name, split, **kwargs))
