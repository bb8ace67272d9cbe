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


@pytest.mark.slow
def test_swift_sft_evaluates_with_exgra_mc_and_picks_the_checkpoint_on_it(tiny_checkpoint, tmp_path):
    """swift sft --val_dataset pmc_vqa_hf_test --eval_metric exgra_mc: the logged accuracy equals the one
    recomputed from swift's own predict.jsonl, where each reply sits next to its row (a join by row, not
    by position as the metric does)."""
    import glob
    import os
    import subprocess
    import sys
    from pathlib import Path

    from exgramed_plugin.metrics.medevalkit_choice import judge_multi_choice

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "EXGRAMED_PMC_VQA_DIR": str(write_pmc_vqa(tmp_path / "PMC_VQA")),
           "EXGRAMED_HUB_IMAGE_CACHE": str(tmp_path / "cache")}
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [str(Path(sys.executable).parent / "swift"), "sft", "--custom_register_path",
         str(repo / "exgramed_plugin" / "register.py"), "--model", str(tiny_checkpoint),
         "--dataset", str(repo / "data_templates" / "vqa.json"), "--val_dataset", "pmc_vqa_hf_test",
         "--predict_with_generate", "true", "--max_new_tokens", "4", "--eval_metric", "exgra_mc",
         "--metric_for_best_model", "medevalkit_corrected", "--greater_is_better", "true", "--max_steps", "2",
         "--eval_steps", "2", "--save_steps", "2", "--output_dir", str(tmp_path / "out"), "--tuner_type", "full",
         "--torch_dtype", "float32", "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2",
         "--max_length", "512", "--dataloader_num_workers", "0", "--check_model", "false", "--report_to", "none",
         "--strict", "true", "--save_only_model", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    run = Path(glob.glob(str(tmp_path / "out" / "v*-*"))[0])
    state = json.loads(next(run.glob("checkpoint-*/trainer_state.json")).read_text())
    logged = next(entry for entry in state["log_history"] if "eval_medevalkit" in entry)
    rows = [json.loads(line) for line in next(run.glob("checkpoint-*/predict.jsonl")).read_text().splitlines()]
    assert [row["id"] for row in rows] == ["pmc_vqa-test-000000", "pmc_vqa-test-000001", "pmc_vqa-test-000002"]
    infos = [json.loads(row["mc_question"]) for row in rows]
    right = [judge_multi_choice(info["choices"], info["answer"], row["response"]) for info, row in zip(infos, rows)]
    assert logged["eval_num_questions"] == 3.0
    assert logged["eval_medevalkit"] == pytest.approx(100 * sum(right) / 3)
    assert state["best_metric"] == pytest.approx(logged["eval_medevalkit_corrected"])
