"""The one VQA question-file reader (predict and eval-vqa): fields, images, tags, errors; expectations by hand."""

import json
import shutil

import pytest

from conftest import DATA_TEMPLATES
from exgramed_plugin.data.formats import DataFormatError
from exgramed_plugin.data.vqa_questions import read_vqa_questions


def _write(path, rows, jsonl=False):
    text = "".join(json.dumps(r) + "\n" for r in rows) if jsonl else json.dumps(rows)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def folder(tmp_path):
    shutil.copytree(DATA_TEMPLATES / "images", tmp_path / "images")
    return tmp_path


def test_vqa_json_row(folder):
    path = _write(folder / "q.json", [
        {"id": 7, "image": "images/mri_head.png", "answer_type": "closed", "q_lang": "zh",
         "conversations": [{"from": "human", "value": "Is it? \n<image>"}, {"from": "gpt", "value": "yes"},
                           {"from": "human", "value": "And?"}, {"from": "gpt", "value": "no"}]}])
    [question] = read_vqa_questions(path)
    assert question.question_id == 7 and question.id == "7"
    assert question.text == "Is it? \n<image>"
    assert question.question == "Is it?"
    assert question.images == (str(folder / "images" / "mri_head.png"),)
    assert (question.answer, question.answer_type, question.language) == ("yes", "CLOSED", "zh")


def test_swift_rows_get_a_tag_and_keep_the_first_turns_images(folder):
    path = _write(folder / "q.jsonl", [
        {"id": "a", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What?"},
                                 {"role": "assistant", "content": "a lung"}],
         "images": ["images/xray_chest.png"]},
        {"id": "b", "images": ["images/ct_spine.png", "images/fundus_eye.png"],
         "messages": [{"role": "user", "content": "<image>One?"}, {"role": "assistant", "content": "x"},
                      {"role": "user", "content": "<image>Two?"}, {"role": "assistant", "content": "y"}]},
        {"id": "c", "messages": [{"role": "user", "content": "No image, no answer?"}]},
    ], jsonl=True)
    first, second, third = read_vqa_questions(path)
    assert (first.text, first.answer, first.answer_type, first.language) == ("What?\n<image>", "a lung", None, "en")
    assert first.images == (str(folder / "images" / "xray_chest.png"),)
    assert (second.text, second.images) == ("<image>One?", (str(folder / "images" / "ct_spine.png"),))
    assert (third.text, third.images, third.answer) == ("No image, no answer?", (), None)


def test_image_root_replaces_the_file_folder(folder, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    path = _write(elsewhere / "q.json", [
        {"id": 1, "image": "images/mri_head.png",
         "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]}])
    assert next(read_vqa_questions(path, image_root=folder)).images == (str(folder / "images" / "mri_head.png"),)


def test_text_only_reading_needs_no_images_and_keeps_any_answer_type(tmp_path):
    path = _write(tmp_path / "q.json", [
        {"id": 1, "image": "absent.png", "answer_type": "number",
         "conversations": [{"from": "human", "value": "How many?\n<image>"}, {"from": "gpt", "value": "2"}]},
        {"id": 2, "messages": [{"role": "user", "content": "<image>Tag, no image field"},
                               {"role": "assistant", "content": "ok"}]},
    ])
    first, second = read_vqa_questions(path, read_images=False)
    assert (first.text, first.images, first.answer_type, first.answer) == ("How many?\n<image>", None, "NUMBER", "2")
    assert (second.question, second.images) == ("Tag, no image field", None)


@pytest.mark.parametrize("row, needles", [
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
     ["row 0, field 'id'", "missing", "paired with questions by id"]),
    ({"id": "r1", "image": "images/none.png",
      "conversations": [{"from": "human", "value": "<image>q"}, {"from": "gpt", "value": "a"}]},
     ["id='r1'", "field 'image'", "image not found"]),
    ({"id": "r1", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
     ["id='r1'", "field 'conversations'", "alternate"]),
    ({"id": "r1", "question": "q"}, ["id='r1'", "field 'conversations'", "'messages'"]),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, needles):
    path = _write(tmp_path / "bad.json", [row])
    with pytest.raises(DataFormatError) as error:
        list(read_vqa_questions(path))
    message = str(error.value)
    assert "bad.json" in message and all(needle in message for needle in needles), message
