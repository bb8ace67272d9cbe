"""Dataset loading through swift: file routing, registered names, extra columns kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DATA_TEMPLATES, REPO_ROOT


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


def _truncated_copy(src: Path, dst: Path) -> tuple[int, int]:
    """``src`` cut inside the string value of the last turn; returns that string's (line, column)."""
    text = src.read_text()
    quote = text.rindex('"value": "') + len('"value": ')
    dst.write_text(text[:quote + 2])  # the opening quote and one character
    return text.count("\n", 0, quote) + 1, quote - text.rfind("\n", 0, quote)


def test_truncated_file_of_ours_is_named_with_line_and_column(registered, tmp_path):
    from exgramed_plugin.common.jsonio import JsonFileError
    path = tmp_path / "t.json"
    line, column = _truncated_copy(DATA_TEMPLATES / "llava_med_instruct.json", path)
    with pytest.raises(JsonFileError) as error:
        _load(str(path))
    assert str(error.value) == f"{path}:{line}:{column}: invalid JSON: Unterminated string starting at"


def test_one_bad_jsonl_line_is_named_by_its_1_based_line(registered, tmp_path):
    from exgramed_plugin.common.jsonio import JsonFileError
    (tmp_path / "images").symlink_to(DATA_TEMPLATES / "images")
    lines = (DATA_TEMPLATES / "swift_messages.jsonl").read_text().splitlines()
    lines[1] = lines[1][:-1]  # the second row loses its closing brace
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(JsonFileError) as error:
        _load(str(path))
    assert (error.value.path, error.value.line, error.value.column) == (str(path), 2, len(lines[1]) + 1)


def test_registered_name_with_a_truncated_file_names_it(registered, monkeypatch, tmp_path):
    from exgramed_plugin.data.demo_data import make_demo_data
    from exgramed_plugin.common.jsonio import JsonFileError
    data = make_demo_data(tmp_path / "demo")
    line, column = _truncated_copy(data.vqa_test, data.vqa_test)
    monkeypatch.setenv("EXGRAMED_DEMO_DIR", str(data.root))
    with pytest.raises(JsonFileError) as error:
        _load("exgra_med_demo_vqa_test")
    assert (error.value.path, error.value.line, error.value.column) == (str(data.vqa_test.resolve()), line, column)


@pytest.mark.slow
def test_swift_sft_on_a_truncated_file_ends_with_its_position(tiny_checkpoint, tmp_path):
    data = tmp_path / "t.json"
    line, column = _truncated_copy(DATA_TEMPLATES / "vqa.json", data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "swift"), "sft", "--custom_register_path",
         str(REPO_ROOT / "exgramed_plugin" / "register.py"), "--model", str(tiny_checkpoint), "--dataset", str(data),
         "--tuner_type", "full", "--torch_dtype", "float32", "--max_steps", "1", "--check_model", "false",
         "--report_to", "none", "--dataloader_num_workers", "0", "--output_dir", str(tmp_path / "out")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.endswith(f"JsonFileError: {data}:{line}:{column}: invalid JSON: Unterminated string starting at")
