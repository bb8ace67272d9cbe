"""A tiny, real-image demo data set in every input format the plugin reads (offline, seconds).

Why: tests, recipes and the quick-start need medical images that are real (so modality and organ
questions are meaningful), legally redistributable, available without network access and identical
on every machine. Public VQA sets (VQA-RAD, SLAKE, PathVQA) and LLaVA-Med's PMC images cannot be
downloaded in CI, so we build a small train/test set from medical images that PyPI packages ship
inside their wheels (peers-and-offline-material §4.1):

==================  =================  =============================================  =============
key                 package            file inside the package                        modality
==================  =================  =============================================  =============
``xray_chest``      ``pydicom-data``   ``data_store/data/RG1_UNCI.dcm``               x-ray (CR)
``xray_leg``        ``pydicom-data``   ``data_store/data/RG3_UNCI.dcm``               x-ray (CR)
``ct_spine``        ``pydicom``        ``pydicom/data/test_files/CT_small.dcm``       CT
``ct_head``         ``pydicom-data``   ``data_store/data/693_UNCI.dcm``               CT
``mri_head``        ``pydicom``        ``pydicom/data/test_files/MR_small.dcm``       MR
``mri_shoulder``    ``pydicom-data``   ``data_store/data/MR2_UNCI.dcm``               MR
``fundus_eye``      ``scikit-image``   ``skimage/data/retina.jpg``                    fundus photo
``histology_colon`` ``scikit-image``   ``skimage/data/ihc.png``                       histology
==================  =================  =============================================  =============

Every source gives :data:`VARIANTS_PER_SOURCE` images: variant 0 is the whole image, variants 1..3
are a seeded rotation (integer degrees in [-10, 10]) + square crop (60-90 % of the short side) +
optional left-right mirror. Variants 0-2 go to the training split, variant 3 to the test split
(:data:`TEST_VARIANTS`), so every source appears in both splits but no image does: the split tests
the pipeline (formats, metrics, open/closed handling), not generalisation to unseen anatomy.

Layout written under ``out_dir`` (all image paths in the JSON files are relative to ``out_dir``):

* ``images/<key>_v<k>.png``: RGB PNGs, short side ``image_size``.
* ``alignment_train.json``: LLaVA-Med instruct format (``conversations`` + ``conversations_long``),
  one row per training image, rows ``i % 3 == 1`` have 2 turns and rows ``i % 3 == 2`` 3 turns.
* ``train_w_options_new.json`` / ``test_w_options_new.json``: VQA format as released by ExGra-Med
  (docs/method.md §4.1); per image 2 OPEN (modality, organ) and 2 CLOSED yes/no questions.
* ``candidate.json``: ``{"0": sorted unique OPEN answers of the training VQA file}``.
* ``sources.json``: provenance of every image (package, version, file, modality, licence,
  derivation).

Extended answers (``conversations_long``) are a deterministic rewriting, not an LLM output:
``extended = short answer + " " + fixed description of the source + " " + description of the
variant`` (see :func:`extend_answer`). All randomness comes from ``numpy.random.default_rng([seed,
source index])``; the global RNGs are never touched.

This module builds the rows and files; the source images (packages, licences, DICOM decoding) are
in :mod:`exgramed_plugin.data.demo_sources` and the variants in :mod:`exgramed_plugin.data.demo_variants`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .conversation import IMAGE_TAG
from .demo_sources import SOURCES, DemoSource, load_source, package_version, resolve_source_file
from .demo_variants import describe_variant, draw_derivation, render
from ..common.jsonio import read_json, write_json

__all__ = [
    "DemoData",
    "DemoSource",
    "SOURCES",
    "make_demo_data",
    "extend_answer",
    "YES_NO_OPTIONS",
]

logger = logging.getLogger(__name__)

#: Options text appended to yes/no CLOSED questions, exactly as in the released VQA JSON files.
YES_NO_OPTIONS = ' (Answer with either "Yes" or "No").'

VARIANTS_PER_SOURCE = 4
TEST_VARIANTS = frozenset({3})

ALIGNMENT_FILE = "alignment_train.json"
VQA_TRAIN_FILE = "train_w_options_new.json"
VQA_TEST_FILE = "test_w_options_new.json"
CANDIDATE_FILE = "candidate.json"
SOURCES_FILE = "sources.json"
IMAGES_DIR = "images"

_MODALITY_QUESTIONS = (
    "What imaging modality is shown?",
    "What modality is used to take this image?",
    "How was this image taken?",
)
_ORGAN_QUESTIONS = (
    "Which organ is shown?",
    "What part of the body is shown in this image?",
    "What body region is imaged?",
)
_MODALITY_YES_NO = {
    "x-ray": "Is this an x-ray image?",
    "ct": "Is this a CT scan?",
    "mri": "Is this an MRI?",
    "fundus photograph": "Is this a fundus photograph?",
    "histology": "Is this a histology slide?",
}
_MODALITY_SENTENCE = {
    "x-ray": "This is an x-ray image.",
    "ct": "This is a CT scan.",
    "mri": "This is an MRI scan.",
    "fundus photograph": "This is a fundus photograph.",
    "histology": "This is a histology slide.",
}
_CAPTION_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "What is shown in this image?",
    "Summarize the visual content of the image.",
)


@dataclass(frozen=True)
class DemoData:
    """Where :func:`make_demo_data` wrote each file (all absolute paths)."""

    root: Path
    images_dir: Path
    alignment_train: Path  # LLaVA-Med instruct JSON (conversations + conversations_long)
    vqa_train: Path  # VQA JSON (train_w_options_new.json)
    vqa_test: Path  # VQA JSON (test_w_options_new.json)
    candidates: Path  # candidate.json
    sources: Path  # sources.json


# --------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------


def extend_answer(answer: str, source: DemoSource, derivation: dict[str, Any]) -> str:
    """Deterministic stand-in for the LLM-extended answer (docs/method.md §4.2).

    ``answer`` (a sentence) + the source's factual description + the variant's description. Why not
    an LLM: the demo must be offline and byte-identical everywhere; the MGA loss only needs an
    extended text that is longer than, and consistent with, the short answer.
    """
    return f"{answer} {source.description} {describe_variant(derivation)}"


@dataclass(frozen=True)
class _ImageRecord:
    source: DemoSource
    variant: int
    split: str
    rel_path: str  # relative to the output root
    derivation: dict[str, Any]
    rng_pick: tuple[int, ...]  # pre-drawn choices for question phrasing (keeps rows deterministic)
    width: int
    height: int


def _vqa(row_id: str, image: str, question: str, answer: str, closed: bool) -> dict[str, Any]:
    options = YES_NO_OPTIONS if closed else ""
    return {
        "id": row_id,
        "image": image,
        "answer_type": "CLOSED" if closed else "OPEN",
        "conversations": [
            {"from": "human", "value": f"{question}{options}\n{IMAGE_TAG}"},
            {"from": "gpt", "value": answer},
        ],
    }


def _vqa_rows(records: Sequence[_ImageRecord], split: str) -> list[dict[str, Any]]:
    """2 OPEN (modality, organ) + 1 CLOSED "yes" + 1 CLOSED "no" question per image."""
    all_modalities = sorted({s.modality for s in SOURCES})
    all_organs = sorted({s.organ for s in SOURCES})
    rows: list[dict[str, Any]] = []
    for rec in records:
        src = rec.source
        q_mod, q_org, yes_kind, no_kind, no_pick = rec.rng_pick
        questions: list[tuple[str, str, bool]] = [
            (_MODALITY_QUESTIONS[q_mod], src.modality, False),
            (_ORGAN_QUESTIONS[q_org], src.organ, False),
        ]
        if yes_kind == 0:
            questions.append((_MODALITY_YES_NO[src.modality], "yes", True))
        else:
            questions.append((f"Does this image show the {src.organ}?", "yes", True))
        if no_kind == 0:
            others = [m for m in all_modalities if m != src.modality]
            questions.append((_MODALITY_YES_NO[others[no_pick % len(others)]], "no", True))
        else:
            others = [o for o in all_organs if o != src.organ and o not in src.not_no]
            questions.append(
                (f"Does this image show the {others[no_pick % len(others)]}?", "no", True)
            )
        for question, answer, closed in questions:
            rows.append(_vqa(f"{split}-{len(rows):04d}", rec.rel_path, question, answer, closed))
    return rows


def _alignment_rows(records: Sequence[_ImageRecord]) -> list[dict[str, Any]]:
    """LLaVA-Med instruct rows: caption, + modality turn (i % 3 >= 1), + organ turn (i % 3 == 2)."""
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        src = rec.source
        prompt = _CAPTION_PROMPTS[rec.rng_pick[0] % len(_CAPTION_PROMPTS)]
        turns: list[tuple[str, str]] = [(f"{IMAGE_TAG}\n{prompt}", src.caption)]
        if i % 3 >= 1:
            turns.append((_MODALITY_QUESTIONS[rec.rng_pick[0]], _MODALITY_SENTENCE[src.modality]))
        if i % 3 == 2:
            turns.append((_ORGAN_QUESTIONS[rec.rng_pick[1]], f"The image shows the {src.organ}."))
        conversations: list[dict[str, str]] = []
        conversations_long: list[dict[str, str]] = []
        for human, gpt in turns:
            conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
            conversations_long += [
                {"from": "human", "value": human},
                {"from": "gpt", "value": extend_answer(gpt, src, rec.derivation)},
            ]
        rows.append(
            {
                "id": f"align-{i:04d}",
                "image": rec.rel_path,
                "conversations": conversations,
                "conversations_long": conversations_long,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _remove_previous_images(root: Path) -> None:
    """Delete the images a previous run listed in sources.json (nothing else): a clean rerun."""
    sources_path = root / SOURCES_FILE
    if not sources_path.is_file():
        return
    try:
        previous = read_json(sources_path)
        rel_paths = [entry["image"] for entry in previous.get("images", [])]
    except (ValueError, AttributeError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s from a previous run", sources_path)
        return
    for rel in rel_paths:
        candidate = (root / rel).resolve()
        if candidate.parent == (root / IMAGES_DIR).resolve() and candidate.suffix == ".png":
            candidate.unlink(missing_ok=True)


def make_demo_data(
    out_dir: str | os.PathLike[str], *, image_size: int = 64, seed: int = 0
) -> DemoData:
    """Build the demo train/test set from real medical images shipped in PyPI packages.

    Deterministic given ``seed`` and ``image_size`` (and the installed package versions, which
    ``sources.json`` records). Rerunning on the same ``out_dir`` replaces the previous run's files.
    Raises ``ModuleNotFoundError`` naming the package to install when a source package is missing.
    """
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0 (numpy SeedSequence entropy), got {seed!r}")
    started = time.perf_counter()
    root = Path(out_dir).resolve()
    images_dir = root / IMAGES_DIR
    # Resolve every source first: a missing package fails before anything is written.
    for src in SOURCES:
        resolve_source_file(src.module, src.distribution, src.file)
    root.mkdir(parents=True, exist_ok=True)
    _remove_previous_images(root)
    images_dir.mkdir(exist_ok=True)

    records: list[_ImageRecord] = []
    for index, src in enumerate(SOURCES):
        rng = np.random.default_rng([seed, index])
        base = load_source(src)
        for variant in range(VARIANTS_PER_SOURCE):
            derivation = {} if variant == 0 else draw_derivation(rng, *base.size)
            picks = (
                int(rng.integers(len(_MODALITY_QUESTIONS))),
                int(rng.integers(len(_ORGAN_QUESTIONS))),
                int(rng.integers(2)),
                int(rng.integers(2)),
                int(rng.integers(1 << 16)),
            )
            image = render(base, derivation, image_size)
            rel_path = f"{IMAGES_DIR}/{src.key}_v{variant}.png"
            image.save(root / rel_path, format="PNG")
            split = "test" if variant in TEST_VARIANTS else "train"
            records.append(
                _ImageRecord(src, variant, split, rel_path, derivation, picks, *image.size)
            )

    train = [r for r in records if r.split == "train"]
    test = [r for r in records if r.split == "test"]
    vqa_train = _vqa_rows(train, "train")
    vqa_test = _vqa_rows(test, "test")
    open_answers = sorted(
        {
            row["conversations"][1]["value"].lower()
            for row in vqa_train
            if row["answer_type"] == "OPEN"
        }
    )

    data = DemoData(
        root=root,
        images_dir=images_dir,
        alignment_train=root / ALIGNMENT_FILE,
        vqa_train=root / VQA_TRAIN_FILE,
        vqa_test=root / VQA_TEST_FILE,
        candidates=root / CANDIDATE_FILE,
        sources=root / SOURCES_FILE,
    )
    write_json(data.alignment_train, _alignment_rows(train))
    write_json(data.vqa_train, vqa_train)
    write_json(data.vqa_test, vqa_test)
    write_json(data.candidates, {"0": open_answers})
    write_json(data.sources, _sources_manifest(records, seed=seed, image_size=image_size))
    logger.info(
        "demo data: %d train / %d test images, %d / %d VQA rows, written to %s in %.2f s",
        len(train),
        len(test),
        len(vqa_train),
        len(vqa_test),
        root,
        time.perf_counter() - started,
    )
    return data


def _sources_manifest(
    records: Sequence[_ImageRecord], *, seed: int, image_size: int
) -> dict[str, Any]:
    distributions = sorted({r.source.distribution for r in records})
    return {
        "generator": f"{__name__}.make_demo_data",
        "seed": seed,
        "image_size": image_size,
        "split_rule": (
            f"variant 0 = whole image; variants >= 1 = seeded rotate/crop/mirror; variants "
            f"{sorted(TEST_VARIANTS)} -> test, others -> train"
        ),
        "derivation_fields": (
            "crop_box = [left, top, right, bottom] square in source pixels (outside = black); "
            "rotate_degrees = counter-clockwise rotation about the crop centre (PIL convention), "
            "applied before cropping; mirror_left_right applied after cropping; then resized "
            "(LANCZOS) so the short side is image_size. {} = whole image, only resized. Greyscale "
            "DICOM: 1st-99th percentile window to uint8, MONOCHROME1 inverted, copied to RGB."
        ),
        "rng": "numpy.random.default_rng([seed, index of the source in SOURCES])",
        "packages": {
            dist: {
                "version": package_version(dist),
                "licence": next(r.source.licence for r in records if r.source.distribution == dist),
            }
            for dist in distributions
        },
        "images": [
            {
                "image": r.rel_path,
                "split": r.split,
                "source_package": r.source.distribution,
                "package_version": package_version(r.source.distribution),
                "file_in_package": r.source.file_in_package,
                "modality": r.source.modality,
                "organ": r.source.organ,
                "licence": r.source.licence,
                "provenance": r.source.provenance,
                "variant": r.variant,
                "derivation": r.derivation,
                "width": r.width,
                "height": r.height,
            }
            for r in records
        ],
    }
