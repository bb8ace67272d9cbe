"""Dataset loading through swift: file routing, registered names, extra columns kept."""

import json

import pytest

from conftest import DATA_TEMPLATES


def _load(name):
    from swift.dataset import load_dataset
    train, _ = load_dataset([name], strict=True)
    return train


def test_llava_file_goes_through_our_preprocessor(registered, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative images must not resolve against the working directory
    rows = _load(str(DATA_TEMPLATES / "llava_med_instruct.json"))
    source = json.loads((DATA_TEMPLATES / "llava_med_instruct.json").read_text())
    assert len(rows) == len(source)  # nothing dropped
    assert {"messages", "images", "id", "extended_answers"} <= set(rows.column_names)
    with_image = next(r for r in rows if r["images"])
    assert with_image["images"][0]["path"].startswith(str(DATA_TEMPLATES))


def test_swift_jsonl_with_relative_images_resolves_against_its_folder(registered, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    rows = _load(str(DATA_TEMPLATES / "swift_messages.jsonl"))
    assert all(img["path"].startswith(str(DATA_TEMPLATES)) for r in rows for img in r["images"])
    assert rows[0]["extended_answers"]


def test_registered_demo_names_resolve_under_the_demo_dir(registered, monkeypatch, tmp_path):
    from exgramed_plugin.data.demo_data import make_demo_data
    data = make_demo_data(tmp_path / "demo")
    monkeypatch.setenv("EXGRAMED_DEMO_DIR", str(data.root))
    test_rows = _load("exgra_med_demo_vqa_test")
    assert len(test_rows) == len(json.loads(data.vqa_test.read_text()))
    assert set(test_rows["answer_type"]) == {"OPEN", "CLOSED"}
    assert _load("exgra_med_demo_alignment")["extended_answers"][0]


def test_registered_name_with_missing_file_says_what_to_set(registered, monkeypatch, tmp_path):
    monkeypatch.setenv("EXGRAMED_DATA_ROOT", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VQA-RAD/train_w_options_new.json"):
        _load("vqa_rad_train")


def test_register_is_idempotent(registered):
    import importlib

    import exgramed_plugin.register as register
    from swift.dataset import DATASET_MAPPING
    from swift.model import MODEL_MAPPING
    from swift.template import TEMPLATE_MAPPING
    before = (len(DATASET_MAPPING), len(MODEL_MAPPING), len(TEMPLATE_MAPPING))
    importlib.reload(register)
    assert (len(DATASET_MAPPING), len(MODEL_MAPPING), len(TEMPLATE_MAPPING)) == before
    assert "exgra_med" in MODEL_MAPPING and "exgra_med" in TEMPLATE_MAPPING
