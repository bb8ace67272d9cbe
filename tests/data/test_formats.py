"""Input formats: conversion, path resolution and every bad-input error (file, row id, field)."""

import json
import shutil

import pytest

from conftest import DATA_TEMPLATES
from exgramed_plugin.data.formats import DataFormatError, row_to_standard


def _load(name):
    return json.loads((DATA_TEMPLATES / name).read_text())


def _copy_images(tmp_path):
    shutil.copytree(DATA_TEMPLATES / "images", tmp_path / "images")
    return tmp_path / "data.json"


def test_llava_instruct_row_keeps_extended_answers_and_resolves_images(tmp_path, monkeypatch):
    source = _copy_images(tmp_path)
    monkeypatch.chdir(DATA_TEMPLATES.parent.parent)  # a working directory where images/ does not exist
    row = next(r for r in _load("llava_med_instruct.json") if "image" in r)
    out = row_to_standard(row, str(source))
    assert out["images"] == [str((tmp_path / row["image"]).resolve())]
    assert [m["role"] for m in out["messages"]] == ["user", "assistant"] * (len(row["conversations"]) // 2)
    assert out["extended_answers"] == [t["value"] for t in row["conversations_long"] if t["from"] == "gpt"]
    assert out["id"] == str(row["id"])


def test_misspelled_pair_is_accepted():
    row = _load("llava_med_instruct_typo.json")[0]
    out = row_to_standard(row, str(DATA_TEMPLATES / "llava_med_instruct_typo.json"))
    assert out["extended_answers"] == [t["value"] for t in row["conversatons_long"] if t["from"] == "gpt"]


def test_vqa_row_keeps_answer_type_and_id():
    rows = _load("vqa.json")
    out = [row_to_standard(r, str(DATA_TEMPLATES / "vqa.json")) for r in rows]
    assert {o["answer_type"] for o in out} == {"OPEN", "CLOSED"}
    assert [o["id"] for o in out] == [str(r["id"]) for r in rows]


def test_swift_messages_row_with_extended_answers():
    line = (DATA_TEMPLATES / "swift_messages.jsonl").read_text().splitlines()[0]
    row = json.loads(line)
    out = row_to_standard(row, str(DATA_TEMPLATES / "swift_messages.jsonl"))
    assert out["extended_answers"] == row["extended_answers"]
    assert out["images"][0].startswith(str(DATA_TEMPLATES))


def test_image_root_env_overrides_the_file_folder(tmp_path, monkeypatch):
    shutil.copytree(DATA_TEMPLATES / "images", tmp_path / "images")
    monkeypatch.setenv("EXGRAMED_IMAGE_ROOT", str(tmp_path))
    row = _load("vqa.json")[0]
    out = row_to_standard(row, "/nonexistent/folder/vqa.json")
    assert out["images"] == [str((tmp_path / row["image"]).resolve())]


def _vqa_row(**changes):
    row = {"id": "r1", "image": "images/mri_head.png", "answer_type": "OPEN",
           "conversations": [{"from": "human", "value": "What?\n<image>"}, {"from": "gpt", "value": "mri"}]}
    row.update(changes)
    return row


@pytest.mark.parametrize("row, field, message", [
    (_vqa_row(image="images/missing.png"), "image", "image not found"),
    (_vqa_row(conversations=[{"from": "gpt", "value": "x"}, {"from": "human", "value": "q"}]), "conversations",
     "alternate"),
    (_vqa_row(conversations=[{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": " "}]), "conversations",
     "empty answer"),
    (_vqa_row(conversations=[{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]), "conversations",
     "expected 'human' or 'gpt'"),
    (_vqa_row(conversations=None), "conversations", "missing"),
    (_vqa_row(answer_type="MAYBE"), "answer_type", "OPEN or CLOSED"),
    (_vqa_row(conversations_long=[{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                  {"from": "human", "value": "q"}, {"from": "gpt", "value": "b"}]),
     "conversations_long", "turns"),
    (_vqa_row(conversations=[{"from": "human", "value": "<image><image>q"}, {"from": "gpt", "value": "a"}]), "image",
     "2 <image> tag"),
])
def test_bad_rows_name_file_row_and_field(row, field, message):
    source = str(DATA_TEMPLATES / "vqa.json")
    with pytest.raises(DataFormatError) as error:
        row_to_standard(row, source)
    text = str(error.value)
    assert source in text and "id='r1'" in text and f"field {field!r}" in text and message in text


def test_unreadable_image_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataFormatError, match="unreadable image"):
        row_to_standard(_vqa_row(image="images/broken.png"), str(tmp_path / "data.json"))


def test_extended_answers_must_match_answers():
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
           "extended_answers": ["x", "y"]}
    with pytest.raises(DataFormatError, match="extended_answers"):
        row_to_standard(row, "f.jsonl", row_index=3)
