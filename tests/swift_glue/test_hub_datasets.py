"""The ``*_hf_*`` names through ``swift.dataset.load_dataset``: rows, ids and answer types kept,
SLAKE's language subsets, bad files named."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from test_hub_benchmarks import VQA_RAD_ROWS, write_parquet, write_slake  # noqa: E402

from exgramed_plugin.data.formats import DataFormatError  # noqa: E402

NAMES = ["vqa_rad_hf_train", "vqa_rad_hf_test", "pathvqa_hf_train", "pathvqa_hf_val", "pathvqa_hf_test",
         "slake_hf_train", "slake_hf_val", "slake_hf_test"]


@pytest.fixture
def hub_registered(registered, tmp_path, monkeypatch):
    from exgramed_plugin.swift_glue.hub_datasets import register_hub_benchmarks
    register_hub_benchmarks()
    monkeypatch.setenv("EXGRAMED_HUB_IMAGE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _load(name):
    from swift.dataset import load_dataset
    train, _ = load_dataset([name], strict=True)
    return train


def test_all_names_are_registered_once(hub_registered):
    from swift.dataset import DATASET_MAPPING

    from exgramed_plugin.swift_glue.hub_datasets import register_hub_benchmarks
    before = len(DATASET_MAPPING)
    register_hub_benchmarks()
    assert len(DATASET_MAPPING) == before
    assert all(name in DATASET_MAPPING for name in NAMES)
    assert DATASET_MAPPING["pathvqa_hf_val"].split == ["validation"]


def test_vqa_rad_through_swift_keeps_ids_and_answer_types(hub_registered, monkeypatch):
    root = hub_registered / "vqa-rad"
    write_parquet(root / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", VQA_RAD_ROWS)
    monkeypatch.setenv("EXGRAMED_VQA_RAD_HF_DIR", str(root))
    rows = _load("vqa_rad_hf_test")
    assert rows["id"] == ["vqa_rad-test-000000", "vqa_rad-test-000001", "vqa_rad-test-000002"]
    assert rows["answer_type"] == ["CLOSED", "OPEN", "CLOSED"]
    assert rows[1]["messages"] == [{"role": "user", "content": "<image>\nwhat modality is used?"},
                                   {"role": "assistant", "content": "x-ray"}]
    assert rows[1]["images"][0]["path"].startswith(str((hub_registered / "cache").resolve()))
    assert _load("vqa_rad_hf_test")["id"] == rows["id"]


@pytest.mark.parametrize("dataset, qids", [("slake_hf_test", [11934, 11935, 11990]),
                                           ("slake_hf_test:en", [11934, 11935]), ("slake_hf_test:zh", [11990]),
                                           ("slake_hf_test:en/zh", [11934, 11935, 11990])])
def test_slake_language_subsets(hub_registered, monkeypatch, dataset, qids):
    monkeypatch.setenv("EXGRAMED_SLAKE_HF_DIR", str(write_slake(hub_registered / "SLAKE")))
    rows = _load(dataset)
    assert rows["id"] == [f"slake-test-{q}" for q in qids]
    assert all(Path(r["images"][0]["path"]).is_file() for r in rows)


def test_unknown_subsets_are_refused(hub_registered, monkeypatch):
    monkeypatch.setenv("EXGRAMED_SLAKE_HF_DIR", str(write_slake(hub_registered / "SLAKE")))
    with pytest.raises(ValueError, match=r"'slake_hf_test': unknown subset\(s\) \['fr'\]; subsets: \['en', 'zh'\]"):
        _load("slake_hf_test:fr")
    with pytest.raises(ValueError, match=r"'vqa_rad_hf_test': unknown subset\(s\) \['en'\]; subsets: none"):
        _load("vqa_rad_hf_test:en")


def test_a_wrong_column_through_swift_names_file_and_column(hub_registered, monkeypatch):
    root = hub_registered / "path-vqa"
    path = write_parquet(root / "data" / "test-00000-of-00001-aaaa.parquet", VQA_RAD_ROWS,
                         ("image", "query", "answer"))
    monkeypatch.setenv("EXGRAMED_PATHVQA_HF_DIR", str(root))
    with pytest.raises(DataFormatError) as error:
        _load("pathvqa_hf_test")
    assert str(error.value) == (f"{path}: columns do not match the hub schema ['image', 'question', 'answer']: "
                                "missing ['question'], unexpected ['query']")
