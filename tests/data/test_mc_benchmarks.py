"""The multiple-choice benchmark loaders on small folders written in each benchmark's released schema
(tests/mc_benchmark_files.py): questions, choices and answers as MedEvalKit builds them, wrong layouts
named by file and field, invalid questions named by id."""

import json
import zipfile

import pytest
from mc_benchmark_files import (
    MEDXPERT_ROWS,
    OMNIMED_ROWS,
    PMC_ROWS,
    mmmu_rows,
    write_medxpertqa,
    write_mmmu,
    write_mmmu_parquet,
    write_omnimedvqa,
    write_pmc_vqa,
)

from exgramed_plugin.data.formats import DataFormatError
from exgramed_plugin.data.mc_benchmarks import load_choice_benchmark


def _load(name, root, split="test", **kwargs):
    return load_choice_benchmark(name, split, data_root=root, image_cache=root / "cache", **kwargs)


def test_pmc_vqa_questions_keep_the_csv_choices_and_the_answer_letter(tmp_path):
    write_pmc_vqa(tmp_path / "PMC_VQA")
    loaded = _load("pmc_vqa", tmp_path)
    assert [q.id for q in loaded.questions] == ["pmc_vqa-test-000000", "pmc_vqa-test-000001", "pmc_vqa-test-000002"]
    first = loaded.questions[0]
    assert first.choices == tuple(PMC_ROWS[0][2]) and first.answer == "B" and first.question == PMC_ROWS[0][1]
    assert first.images == (str((tmp_path / "PMC_VQA" / "figures" / "PMC1_F1.jpg").resolve()),)
    assert loaded.invalid == []


def test_omnimedvqa_maps_gt_text_to_its_letter_and_keeps_the_groups(tmp_path):
    write_omnimedvqa(tmp_path / "OmniMedVQA")
    questions = {q.id: q for q in _load("omnimedvqa", tmp_path).questions}
    assert questions["omni-0"].choices == ("A. CT", "B. MRI", "C. X-ray", "D. Ultrasound")
    assert [questions[i].answer for i in ("omni-0", "omni-1", "omni-2")] == ["A", "B", "C"]
    assert questions["omni-1"].choices == ("A. Yes", "B. No")  # two options only
    assert questions["omni-2"].groups == {"question_type": "Disease Diagnosis", "modality_type": "Fundus Photography"}


def test_omnimedvqa_duplicate_option_text_takes_the_last_letter_as_medevalkit(tmp_path):
    # OmniMedVQA.py L93-97: every option equal to gt_answer overwrites the letter; the last one stays.
    row = {**OMNIMED_ROWS[0], "option_C": "CT"}
    write_omnimedvqa(tmp_path / "OmniMedVQA", [row])
    assert _load("omnimedvqa", tmp_path).questions[0].answer == "C"


def test_mmmu_reads_the_five_subjects_in_medevalkit_order_with_every_image(tmp_path):
    write_mmmu(tmp_path / "MMMU")
    loaded = _load("mmmu_med", tmp_path, split="validation")
    assert [q.groups["subject"] for q in loaded.questions][:4] == ["Basic_Medical_Science", "Clinical_Medicine",
                                                                  "Clinical_Medicine",
                                                                  "Diagnostics_and_Laboratory_Medicine"]
    two = next(q for q in loaded.questions if q.id == "validation_Clinical_Medicine_2")
    assert two.choices == ("Same", "Different") and two.answer == "A" and len(two.images) == 2
    opened = next(q for q in loaded.questions if q.question_type == "open")
    assert (opened.id, opened.answer, opened.choices) == ("validation_Pharmacy_2", "24", ())


@pytest.mark.parametrize("mode, sent", [("first", 1), ("all", 2)])
def test_mmmu_sends_image_1_only_as_medevalkit_or_every_image(tmp_path, mode, sent):
    # Quirk first_image_only (utils/MMMU/data_utils.py L87-100): image_1 only; --mmmu-images all: both.
    from exgramed_plugin.metrics.multiple_choice import build_prompt, question_row
    write_mmmu(tmp_path / "MMMU")
    questions = {q.id: q for q in _load("mmmu_med", tmp_path, split="validation").questions}
    two, one = questions["validation_Clinical_Medicine_2"], questions["validation_Clinical_Medicine_1"]
    assert build_prompt(two, mode).images == two.images[:sent]
    assert build_prompt(one, mode).images == one.images  # a one-image question is the same either way
    row = question_row(two, "validation", mode)
    assert row["messages"][0]["content"].startswith("<image>" * sent + "\nCompare <image 1> and <image 2>.")
    assert row["images"] == list(two.images[:sent])


def test_mmmu_test_split_takes_medevalkits_answer_file(tmp_path):
    write_mmmu(tmp_path / "MMMU", split="test")
    with pytest.raises(DataFormatError, match=r"answer.json: not found.*utils/MMMU/answer.json"):
        _load("mmmu_med", tmp_path)
    answers = {row["id"]: {"question_type": row["question_type"], "ground_truth": "C" if row["question_type"] ==
                           "multiple-choice" else ["24", "24.0"]}
               for subject in ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                               "Pharmacy", "Public_Health") for row in mmmu_rows(subject, "test")}
    del answers["test_Public_Health_1"]
    (tmp_path / "MMMU" / "answer.json").write_text(json.dumps(answers))
    loaded = _load("mmmu_med", tmp_path)
    # "C" is no letter of the two-option question: invalid, as is the question without a ground truth.
    assert {(p.id, p.field) for p in loaded.invalid} == {("test_Clinical_Medicine_2", "answer"),
                                                         ("test_Public_Health_1", "id")}
    assert next(q for q in loaded.questions if q.id == "test_Pharmacy_2").answer == ("24", "24.0")


def test_medxpertqa_builds_lettered_choices_and_sends_every_image(tmp_path):
    write_medxpertqa(tmp_path / "MedXpertQA")
    questions = _load("medxpertqa_mm", tmp_path).questions
    assert questions[0].choices == ("A. US", "B. CT", "C. MRI", "D. ERCP", "E. HIDA")
    assert [q.answer for q in questions] == ["A", "C"]
    assert len(questions[1].images) == 2
    assert questions[1].groups == {"question_type": "Understanding", "medical_task": "Basic Medicine"}


def test_medxpertqa_images_are_extracted_once_from_the_zip(tmp_path):
    folder = write_medxpertqa(tmp_path / "MedXpertQA")
    with zipfile.ZipFile(folder / "images.zip", "w") as archive:
        for path in sorted((folder / "images").iterdir()):
            archive.write(path, f"images/{path.name}")
    for path in (folder / "images").iterdir():
        path.unlink()
    (folder / "images").rmdir()
    assert len(_load("medxpertqa_mm", tmp_path).questions) == 2
    assert (folder / "images" / "MM-2-b.jpeg").is_file()


@pytest.mark.parametrize("name, write, expected", [
    ("pmc_vqa", lambda f: f.mkdir(), r"PMC_VQA/test_2.csv: not found"),
    ("omnimedvqa", lambda f: (f / "QA_information").mkdir(parents=True), r"QA_information/Open-access: no \*.json"),
    ("omnimedvqa", lambda f: f.mkdir(), r"OmniMedVQA: no QA_information/ .*foreverbeliever/OmniMedVQA"),
    ("mmmu_med", lambda f: f.mkdir(), r"MMMU/Basic_Medical_Science/validation-\*.parquet: not found"),
    ("medxpertqa_mm", lambda f: f.mkdir(), r"MedXpertQA/MM/test.jsonl: not found"),
])
def test_a_folder_in_the_wrong_layout_names_the_file_expected(tmp_path, name, write, expected):
    folder = tmp_path / {"pmc_vqa": "PMC_VQA", "omnimedvqa": "OmniMedVQA", "mmmu_med": "MMMU",
                         "medxpertqa_mm": "MedXpertQA"}[name]
    write(folder)
    if name == "pmc_vqa":
        (folder / "figures").mkdir()
    if name == "medxpertqa_mm":
        (folder / "images").mkdir()
    with pytest.raises(DataFormatError, match=expected):
        _load(name, tmp_path, split="validation" if name == "mmmu_med" else "test")


def test_wrong_columns_are_named(tmp_path):
    folder = write_pmc_vqa(tmp_path / "PMC_VQA")
    text = (folder / "test_2.csv").read_text().replace("Choice A", "Option A", 1)
    (folder / "test_2.csv").write_text(text)
    with pytest.raises(DataFormatError, match=r"test_2.csv: header .*expected .*'Choice A'"):
        _load("pmc_vqa", tmp_path)
    write_omnimedvqa(tmp_path / "OmniMedVQA", [{k: v for k, v in OMNIMED_ROWS[0].items() if k != "modality_type"}])
    with pytest.raises(DataFormatError, match=r"Chest CT Scan.json, row 0 \(question_id='omni-0'\): missing field\(s\) "
                                              r"\['modality_type'\]"):
        _load("omnimedvqa", tmp_path)
    rows = mmmu_rows("Basic_Medical_Science", "validation")
    write_mmmu(tmp_path / "MMMU")
    write_mmmu_parquet(tmp_path / "MMMU" / "Pharmacy" / "validation-00000-of-00001.parquet",
                       [{**row, "question_type": row["question_type"]} for row in rows])
    path = tmp_path / "MMMU" / "Pharmacy" / "validation-00000-of-00001.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pq.read_table(path).drop(["options"]), path)
    with pytest.raises(DataFormatError, match=r"Pharmacy/validation-00000-of-00001.parquet: missing column\(s\) "
                                              r"\['options'\]"):
        _load("mmmu_med", tmp_path, split="validation")


def test_invalid_questions_are_named_by_id_and_field(tmp_path):
    write_pmc_vqa(tmp_path / "PMC_VQA", [PMC_ROWS[0], (*PMC_ROWS[1][:3], "E"), PMC_ROWS[2]])
    (tmp_path / "PMC_VQA" / "figures" / "PMC3_F2.jpg").unlink()
    loaded = _load("pmc_vqa", tmp_path)
    assert [q.id for q in loaded.questions] == ["pmc_vqa-test-000000"]
    assert [(p.id, p.field) for p in loaded.invalid] == [("pmc_vqa-test-000001", "Answer"),
                                                         ("pmc_vqa-test-000002", "Figure_path")]
    assert "answer 'E' is not one of the option letters ['A', 'B', 'C', 'D']" in str(loaded.invalid[0])
    with pytest.raises(DataFormatError, match=r"pmc_vqa \(test\): 2 invalid question\(s\).*--skip-invalid"
                                              r"(.|\n)*pmc_vqa-test-000001(.|\n)*pmc_vqa-test-000002"):
        loaded.require_valid()


def test_mmmu_options_that_do_not_parse_and_missing_images_are_invalid(tmp_path):
    write_mmmu(tmp_path / "MMMU")
    rows = mmmu_rows("Clinical_Medicine", "validation")
    rows[0]["options"] = "['Liver', 'Lung'"
    rows[1]["image_2"] = None
    write_mmmu_parquet(tmp_path / "MMMU" / "Clinical_Medicine" / "validation-00000-of-00001.parquet", rows)
    invalid = {p.id: p for p in _load("mmmu_med", tmp_path, split="validation").invalid}
    assert invalid["validation_Clinical_Medicine_1"].field == "options"
    assert "does not parse as a Python list" in invalid["validation_Clinical_Medicine_1"].reason
    assert invalid["validation_Clinical_Medicine_2"].field == "image_2"
    assert "refers to <image 2>" in invalid["validation_Clinical_Medicine_2"].reason


def test_medxpertqa_label_outside_the_options_is_invalid(tmp_path):
    write_medxpertqa(tmp_path / "MedXpertQA", [{**MEDXPERT_ROWS[0], "label": "F"}, MEDXPERT_ROWS[1]])
    loaded = _load("medxpertqa_mm", tmp_path)
    assert [(p.id, p.field) for p in loaded.invalid] == [("MM-1", "label")]
    assert [q.id for q in loaded.questions] == ["MM-2"]


def test_without_a_local_folder_the_hub_copy_is_used_and_offline_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("EXGRAMED_PMC_VQA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"RadGenome/PMC-VQA \(test\): not in the Hugging Face cache.*"
                                                r"EXGRAMED_PMC_VQA_DIR.*\['test_2.csv', 'images_2.zip'\]"):
        load_choice_benchmark("pmc_vqa", "test", data_root=tmp_path)
