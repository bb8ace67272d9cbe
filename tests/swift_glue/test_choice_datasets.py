"""The multiple-choice ``*_hf_*`` names through ``swift.dataset.load_dataset``: MedEvalKit's prompt, the
answer letter, the mc_question column kept; a benchmark with an invalid question is refused."""

import json

import pytest
from mc_benchmark_files import MEDXPERT_ROWS, write_medxpertqa, write_pmc_vqa
from test_hub_datasets import _load

from exgramed_plugin.data.formats import DataFormatError

NAMES = ["pmc_vqa_hf_test", "omnimedvqa_hf_test", "mmmu_med_hf_dev", "mmmu_med_hf_val", "mmmu_med_hf_test",
         "medxpertqa_mm_hf_dev", "medxpertqa_mm_hf_test"]


@pytest.fixture
def choice_registered(registered, tmp_path, monkeypatch):
    from exgramed_plugin.swift_glue.choice_datasets import register_choice_benchmarks
    register_choice_benchmarks()
    monkeypatch.setenv("EXGRAMED_HUB_IMAGE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_names_are_registered_with_their_splits(choice_registered):
    from swift.dataset import DATASET_MAPPING
    assert all(name in DATASET_MAPPING for name in NAMES)
    assert DATASET_MAPPING["mmmu_med_hf_val"].split == ["validation"]


def test_pmc_vqa_through_swift_keeps_ids_prompts_and_the_scoring_column(choice_registered, monkeypatch):
    monkeypatch.setenv("EXGRAMED_PMC_VQA_DIR", str(write_pmc_vqa(choice_registered / "PMC_VQA")))
    rows = list(_load("pmc_vqa_hf_test"))
    assert [r["id"] for r in rows] == ["pmc_vqa-test-000000", "pmc_vqa-test-000001", "pmc_vqa-test-000002"]
    assert rows[1]["messages"][0]["content"] == (
        "<image>\nQuestion: Which imaging modality is shown?\nOptions: \nA:CT\nB:MRI\nC:PET\nD:X-ray\n"
        "Answer with the option's letter from the given choices directly.")
    assert rows[1]["messages"][1]["content"] == "A"
    assert json.loads(rows[1]["mc_question"])["choices"] == ["A:CT", "B:MRI", "C:PET", "D:X-ray"]


def test_an_invalid_question_stops_the_load_naming_it(choice_registered, monkeypatch):
    folder = write_medxpertqa(choice_registered / "MedXpertQA", [{**MEDXPERT_ROWS[0], "label": "Z"}])
    monkeypatch.setenv("EXGRAMED_MEDXPERTQA_DIR", str(folder))
    with pytest.raises(DataFormatError, match=r"MM-1.*field 'label': answer 'Z' is not one of the option letters"):
        _load("medxpertqa_mm_hf_test")
