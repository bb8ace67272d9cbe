"""Small benchmark folders in MedEvalKit's ``DATASETS_PATH`` layout, each in its benchmark's released schema.

Schemas (see exgramed_plugin/data/mc_benchmarks.py for the sources): PMC-VQA ``test_2.csv`` (index,
Figure_path, Caption, Question, Choice A-D as "A:text", Answer letter, split) + ``figures/``; OmniMedVQA
``QA_information/Open-access/<dataset>.json`` rows + ``Images/``; MMMU ``<Subject>/<split>-00000-of-00001.parquet``
written by the ``datasets`` library with the card's features (``image_1..7``: Image, the rest strings);
MedXpertQA ``MM/test.jsonl`` + ``images/``; VQA-RAD / PathVQA parquet and SLAKE JSON as their hub copies.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from PIL import Image

MMMU_SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
                 "Public_Health")

PMC_ROWS = [  # Figure_path, Question, choices, Answer
    ("PMC1_F1.jpg", "What is the uptake pattern in the breast?",
     ["A:Diffuse uptake pattern", "B:Focal uptake pattern", "C:No uptake pattern", "D:Cannot determine"], "B"),
    ("PMC2_F1.jpg", "Which imaging modality is shown?", ["A:CT", "B:MRI", "C:PET", "D:X-ray"], "A"),
    ("PMC3_F2.jpg", "Where is the lesion?", ["A:Left lobe", "B:Right lobe", "C:Both lobes", "D:None"], "C"),
]
OMNIMED_ROWS = [
    {"question_id": "omni-0", "dataset": "Chest CT Scan", "question_type": "Modality Recognition",
     "question": "What imaging modality is this?", "gt_answer": "CT", "image_path": "Images/ct/0.png",
     "option_A": "CT", "option_B": "MRI", "option_C": "X-ray", "option_D": "Ultrasound", "modality_type": "CT(Computed Tomography)"},
    {"question_id": "omni-1", "dataset": "Chest CT Scan", "question_type": "Disease Diagnosis",
     "question": "Is there an abnormality?", "gt_answer": "No", "image_path": "Images/ct/1.png",
     "option_A": "Yes", "option_B": "No", "modality_type": "CT(Computed Tomography)"},
    {"question_id": "omni-2", "dataset": "Fundus", "question_type": "Disease Diagnosis",
     "question": "What is the diagnosis?", "gt_answer": "Glaucoma", "image_path": "Images/fundus/2.png",
     "option_A": "Normal", "option_B": "Cataract", "option_C": "Glaucoma", "modality_type": "Fundus Photography"},
]
MEDXPERT_ROWS = [
    {"id": "MM-1", "question": "A 62-year-old woman ... Which is next? Answer Choices: (A) US (B) CT (C) MRI (D) ERCP (E) HIDA",
     "options": {"A": "US", "B": "CT", "C": "MRI", "D": "ERCP", "E": "HIDA"}, "label": "A",
     "images": ["MM-1-a.jpeg"], "medical_task": "Diagnosis", "body_system": "Digestive", "question_type": "Reasoning"},
    {"id": "MM-2", "question": "Which artery labeled in Figure A ...? Answer Choices: (A) C (B) D (C) A (D) B (E) None",
     "options": {"A": "C", "B": "D", "C": "A", "D": "B", "E": "None of the above"}, "label": "C",
     "images": ["MM-2-a.jpeg", "MM-2-b.jpeg"], "medical_task": "Basic Medicine", "body_system": "Cardiovascular",
     "question_type": "Understanding"},
]


def image_bytes(color: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


def save_image(path: Path, color: str = "gray") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(color, "JPEG" if path.suffix in (".jpg", ".jpeg") else "PNG"))


def write_pmc_vqa(folder: Path, rows=PMC_ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "test_2.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
                         "Answer", "split"])
        for index, (figure, question, choices, answer) in enumerate(rows):
            writer.writerow([index, figure, "a caption", question, *choices, answer, "test"])
            save_image(folder / "figures" / figure, ("red", "green", "blue", "gray")[index % 4])
    return folder


def write_omnimedvqa(folder: Path, rows=OMNIMED_ROWS) -> Path:
    qa = folder / "QA_information" / "Open-access"
    qa.mkdir(parents=True, exist_ok=True)
    by_dataset: dict[str, list] = {}
    for row in rows:
        by_dataset.setdefault(row["dataset"], []).append(row)
        save_image(folder / row["image_path"])
    for dataset, dataset_rows in by_dataset.items():
        (qa / f"{dataset}.json").write_text(json.dumps(dataset_rows), encoding="utf-8")
    return folder


def mmmu_rows(subject: str, split: str) -> list[dict]:
    """Two questions per subject: a one-image multiple-choice one and (Clinical_Medicine) a two-image one;
    Pharmacy also has an open question."""
    base = {"explanation": "", "img_type": "['Photographs']", "topic_difficulty": "Medium", "subfield": "Misc"}
    images = {f"image_{n}": None for n in range(1, 8)}
    rows = [{**base, **images, "id": f"{split}_{subject}_1", "question": "<image 1> What is shown?",
             "options": "['Liver', 'Lung', 'Heart', 'Kidney']", "answer": "B", "question_type": "multiple-choice",
             "image_1": {"bytes": image_bytes("red"), "path": None}}]
    if subject == "Clinical_Medicine":
        rows.append({**base, **images, "id": f"{split}_{subject}_2", "question": "Compare <image 1> and <image 2>.",
                     "options": "['Same', 'Different']", "answer": "A", "question_type": "multiple-choice",
                     "image_1": {"bytes": image_bytes("green"), "path": None},
                     "image_2": {"bytes": image_bytes("blue"), "path": None}})
    if subject == "Pharmacy":
        rows.append({**base, **images, "id": f"{split}_{subject}_2", "question": "<image 1> How many mg?",
                     "options": "[]", "answer": "24", "question_type": "open",
                     "image_1": {"bytes": image_bytes("gray"), "path": None}})
    return rows


def write_mmmu_parquet(path: Path, rows: list[dict]) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    columns = ["id", "question", "options", "explanation", *(f"image_{n}" for n in range(1, 8)), "img_type", "answer",
               "topic_difficulty", "question_type", "subfield"]
    features = Features({c: ImageFeature() if c.startswith("image_") else Value("string") for c in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict({c: [row[c] for row in rows] for c in columns}, features=features).to_parquet(str(path))
    return path


def write_mmmu(folder: Path, split: str = "validation") -> Path:
    for subject in MMMU_SUBJECTS:
        write_mmmu_parquet(folder / subject / f"{split}-00000-of-00001.parquet", mmmu_rows(subject, split))
    return folder


def write_medxpertqa(folder: Path, rows=MEDXPERT_ROWS, split: str = "test") -> Path:
    (folder / "MM").mkdir(parents=True, exist_ok=True)
    (folder / "MM" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    for row in rows:
        for name in row["images"]:
            save_image(folder / "images" / name)
    return folder


def write_vqa_sets(root: Path) -> None:
    """VQA_RAD and PATH_VQA as their hub parquet, SLAKE as its hub JSON + imgs/ (MedEvalKit's folder names)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string")})
    for folder, rows in (("VQA_RAD", [("is there a fracture?", "no"), ("what organ is shown?", "lung")]),
                         ("PATH_VQA", [("is this benign?", "yes"), ("what stain is used?", "h&e")])):
        path = root / folder / "data" / "test-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"image": [{"bytes": image_bytes("red"), "path": None}] * len(rows),
                           "question": [q for q, _ in rows], "answer": [a for _, a in rows]},
                          features=features).to_parquet(str(path))
    slake = root / "SLAKE"
    save_image(slake / "imgs" / "xmlab1" / "source.jpg")
    base = {"img_id": 1, "img_name": "xmlab1/source.jpg", "location": "Lung", "modality": "CT", "base_type": "vqa",
            "content_type": "Organ", "triple": ["vhead", "_", "_"]}
    rows = [{**base, "qid": 1, "question": "Is this a CT?", "answer": "Yes", "q_lang": "en", "answer_type": "CLOSED"},
            {**base, "qid": 2, "question": "Which organ is abnormal?", "answer": "Lung", "q_lang": "en",
             "answer_type": "OPEN"}]
    (slake / "test.json").write_text(json.dumps(rows), encoding="utf-8")


def write_data_root(root: Path) -> Path:
    """All seven benchmarks under ``root`` in MedEvalKit's layout."""
    write_vqa_sets(root)
    write_pmc_vqa(root / "PMC_VQA")
    write_omnimedvqa(root / "OmniMedVQA")
    write_mmmu(root / "MMMU")
    write_medxpertqa(root / "MedXpertQA")
    return root
