"""Tests for the demo data builder and the data_templates/ examples.

Why: every later stage (swift preprocessing, MGA training, VQA scoring) is tested on these files,
so their formats are pinned here against docs/method.md §4.1 by hand-written assertions, not by reusing
the loaders under test.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from exgramed_plugin.data import demo_data, demo_sources
from exgramed_plugin.data.demo_data import YES_NO_OPTIONS, DemoData, make_demo_data

TEMPLATES = Path(__file__).resolve().parents[2] / "data_templates"
REQUIRED_MODALITIES = {"x-ray", "ct", "mri", "fundus photograph", "histology"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoData:
    return make_demo_data(tmp_path_factory.mktemp("demo"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _sources_by_image(demo: DemoData) -> dict[str, dict[str, Any]]:
    return {entry["image"]: entry for entry in _load(demo.sources)["images"]}


def _resolve(json_path: Path, rel: str) -> Path:
    assert isinstance(rel, str) and rel, rel
    assert not Path(rel).is_absolute(), f"image path must be relative: {rel}"
    path = json_path.parent / rel
    assert path.is_file(), f"{rel} does not resolve relative to {json_path.parent}"
    return path


def _check_vqa_rows(rows: Any, json_path: Path) -> None:
    """docs/method.md §4.1: list of {id, image, answer_type, conversations=[human, gpt]}.

    The human value is question + options + "\\n<image>", the gpt value the lower-case answer.
    """
    assert isinstance(rows, list) and rows
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), "ids must be unique"
    for row in rows:
        assert set(row) == {"id", "image", "answer_type", "conversations"}, row
        assert isinstance(row["id"], str)
        _resolve(json_path, row["image"])
        assert row["answer_type"] in {"OPEN", "CLOSED"}
        human, gpt = row["conversations"]
        assert set(human) == {"from", "value"} and set(gpt) == {"from", "value"}
        assert human["from"] == "human" and gpt["from"] == "gpt"
        question, answer = human["value"], gpt["value"]
        assert question.endswith("\n<image>") and question.count("<image>") == 1
        assert isinstance(answer, str) and answer and answer == answer.lower()
        if row["answer_type"] == "CLOSED":
            assert question.endswith(YES_NO_OPTIONS + "\n<image>")
            assert answer in {"yes", "no"}
        else:
            assert "(Answer with either" not in question
    types = {row["answer_type"] for row in rows}
    assert types == {"OPEN", "CLOSED"}
    closed_answers = {
        row["conversations"][1]["value"] for row in rows if row["answer_type"] == "CLOSED"
    }
    assert closed_answers == {"yes", "no"}


def _check_instruct_rows(rows: Any, json_path: Path, *, keys: tuple[str, str]) -> None:
    """LLaVA-Med instruct: conversations + conversations_long with identical human turns."""
    short_key, long_key = keys
    assert isinstance(rows, list) and rows
    for row in rows:
        assert {"id", short_key, long_key} <= set(row) <= {"id", "image", short_key, long_key}, row
        short, long = row[short_key], row[long_key]
        assert len(short) == len(long) >= 2 and len(short) % 2 == 0
        for i, (s_turn, l_turn) in enumerate(zip(short, long, strict=True)):
            expected = "human" if i % 2 == 0 else "gpt"
            assert s_turn["from"] == l_turn["from"] == expected
            assert isinstance(s_turn["value"], str) and isinstance(l_turn["value"], str)
            if expected == "human":
                assert s_turn["value"] == l_turn["value"]
            else:
                assert len(l_turn["value"]) > len(s_turn["value"])
        n_tags = sum(turn["value"].count("<image>") for turn in short)
        if "image" in row:
            _resolve(json_path, row["image"])
            assert short[0]["value"].startswith("<image>\n") and n_tags == 1
        else:
            assert n_tags == 0


# --------------------------------------------------------------------------------------------------
# make_demo_data
# --------------------------------------------------------------------------------------------------


def test_layout_and_frozen(demo: DemoData) -> None:
    for field in dataclasses.fields(DemoData):
        path = getattr(demo, field.name)
        assert isinstance(path, Path) and path.is_absolute()
        assert path.exists(), field.name
        assert path == demo.root or demo.root in path.parents
    assert demo.images_dir.is_dir()
    with pytest.raises(dataclasses.FrozenInstanceError):
        demo.root = Path("/elsewhere")  # type: ignore[misc]


@pytest.mark.parametrize("split", ["train", "test"])
def test_vqa_files(demo: DemoData, split: str) -> None:
    path = demo.vqa_train if split == "train" else demo.vqa_test
    rows = _load(path)
    _check_vqa_rows(rows, path)
    sources = _sources_by_image(demo)
    assert {sources[row["image"]]["split"] for row in rows} == {split}
    modalities = {sources[row["image"]]["modality"] for row in rows}
    assert REQUIRED_MODALITIES <= modalities
    # the OPEN modality answers are the recorded modalities
    for row in rows:
        if row["answer_type"] == "OPEN" and "modality" in row["conversations"][0]["value"]:
            assert row["conversations"][1]["value"] == sources[row["image"]]["modality"]


def test_images_open_with_expected_size(demo: DemoData) -> None:
    entries = _load(demo.sources)["images"]
    on_disk = sorted(p.name for p in demo.images_dir.iterdir())
    assert on_disk == sorted(Path(e["image"]).name for e in entries)
    for entry in entries:
        with Image.open(_resolve(demo.sources, entry["image"])) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            assert min(im.size) == 64
            assert list(im.size) == [entry["width"], entry["height"]]
    train = {e["image"] for e in entries if e["split"] == "train"}
    test = {e["image"] for e in entries if e["split"] == "test"}
    assert train.isdisjoint(test) and train | test == {e["image"] for e in entries}
    assert 18 <= len(train) <= 30 and 6 <= len(test) <= 12


def test_alignment_file(demo: DemoData) -> None:
    rows = _load(demo.alignment_train)
    _check_instruct_rows(rows, demo.alignment_train, keys=("conversations", "conversations_long"))
    assert all("image" in row for row in rows)
    assert any(len(row["conversations"]) > 2 for row in rows), "needs multi-turn rows"
    assert any(len(row["conversations"]) == 2 for row in rows)
    assert not any("conversatons" in row for row in rows), "typo keys belong in data_templates only"
    sources = _sources_by_image(demo)
    assert {sources[row["image"]]["split"] for row in rows} == {"train"}
    assert len({row["id"] for row in rows}) == len(rows)
    # extended answers start with the short answer (the documented rewriting)
    for row in rows:
        for s_turn, l_turn in zip(row["conversations"], row["conversations_long"], strict=True):
            if s_turn["from"] == "gpt":
                assert l_turn["value"].startswith(s_turn["value"] + " ")


def test_candidates_are_the_open_train_answers(demo: DemoData) -> None:
    candidates = _load(demo.candidates)
    assert list(candidates) == ["0"]
    open_answers = {
        row["conversations"][1]["value"].lower()
        for row in _load(demo.vqa_train)
        if row["answer_type"] == "OPEN"
    }
    assert candidates["0"] == sorted(open_answers)


def test_sources_record_provenance(demo: DemoData) -> None:
    manifest = _load(demo.sources)
    assert manifest["seed"] == 0 and manifest["image_size"] == 64
    required = {"source_package", "file_in_package", "modality", "licence", "derivation", "split"}
    for entry in manifest["images"]:
        assert required <= set(entry)
        assert entry["source_package"] in manifest["packages"]
        assert entry["licence"]
        module, _, rest = entry["file_in_package"].partition("/")
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.submodule_search_locations
        assert (Path(next(iter(spec.submodule_search_locations))) / rest).is_file()
        if entry["variant"] == 0:
            assert entry["derivation"] == {}
        else:
            assert set(entry["derivation"]) == {"rotate_degrees", "crop_box", "mirror_left_right"}
    packages = {e["source_package"] for e in manifest["images"]}
    assert {"pydicom", "pydicom-data", "scikit-image"} <= packages
    files = {e["file_in_package"] for e in manifest["images"]}
    assert {
        "data_store/data/RG1_UNCI.dcm",
        "pydicom/data/test_files/CT_small.dcm",
        "pydicom/data/test_files/MR_small.dcm",
        "skimage/data/retina.jpg",
        "skimage/data/ihc.png",
    } <= files


def _snapshot(data: DemoData) -> dict[str, bytes]:
    return {
        str(p.relative_to(data.root)): p.read_bytes()
        for p in sorted(data.root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_and_leaves_global_rngs_alone(demo: DemoData, tmp_path: Path) -> None:
    np_state = np.random.get_state()
    py_state = random.getstate()
    again = make_demo_data(tmp_path / "again")
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert np_state[0] == after[0] and np.array_equal(np_state[1], after[1])
    assert _snapshot(again) == _snapshot(demo)


def test_other_seed_changes_the_variants(demo: DemoData, tmp_path: Path) -> None:
    other = make_demo_data(tmp_path / "seed1", seed=1, image_size=16)
    assert [e["derivation"] for e in _load(other.sources)["images"]] != [
        e["derivation"] for e in _load(demo.sources)["images"]
    ]
    for path in other.images_dir.iterdir():
        with Image.open(path) as im:
            assert min(im.size) == 16


def test_rerun_on_same_dir_overwrites_cleanly(demo: DemoData, tmp_path: Path) -> None:
    out = tmp_path / "rerun"
    first = make_demo_data(out, image_size=32)
    # a stale image a previous run listed must go; an unrelated user file must stay
    stale = first.images_dir / "stale_v9.png"
    stale.write_bytes(b"old")
    manifest = _load(first.sources)
    manifest["images"].append({"image": "images/stale_v9.png"})
    first.sources.write_text(json.dumps(manifest), encoding="utf-8")
    user_file = out / "notes.txt"
    user_file.write_text("mine", encoding="utf-8")
    second = make_demo_data(out)
    assert second == first
    assert not stale.exists() and user_file.read_text(encoding="utf-8") == "mine"
    snap = _snapshot(second)
    del snap["notes.txt"]
    assert snap == _snapshot(demo)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ModuleNotFoundError, match=r"pip install no-such-dist"):
        demo_sources.resolve_source_file("exgramed_no_such_module", "no-such-dist", "x.dcm")
    missing = dataclasses.replace(
        demo_data.SOURCES[0], module="exgramed_no_such_module", distribution="no-such-dist"
    )
    monkeypatch.setattr(demo_data, "SOURCES", (*demo_data.SOURCES, missing))
    out = tmp_path / "never"
    with pytest.raises(ModuleNotFoundError, match=r"'no-such-dist'"):
        make_demo_data(out)
    assert not out.exists(), "nothing is written when a source is missing"


def test_missing_file_in_installed_package() -> None:
    with pytest.raises(FileNotFoundError, match=r"pydicom"):
        demo_sources.resolve_source_file("pydicom", "pydicom", "data/test_files/NOPE.dcm")


@pytest.mark.parametrize("bad", [0, 4, 64.0, "64", True])
def test_rejects_bad_image_size(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="image_size"):
        make_demo_data(tmp_path, image_size=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "0"])
def test_rejects_bad_seed(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ValueError, match="seed"):
        make_demo_data(tmp_path, seed=bad)


# --------------------------------------------------------------------------------------------------
# data_templates/
# --------------------------------------------------------------------------------------------------


def test_template_llava_med_instruct() -> None:
    path = TEMPLATES / "llava_med_instruct.json"
    rows = _load(path)
    _check_instruct_rows(rows, path, keys=("conversations", "conversations_long"))
    assert any("image" not in row for row in rows), "needs a text-only row"
    assert any("image" in row and len(row["conversations"]) > 2 for row in rows), "needs multi-turn"


def test_template_llava_med_instruct_typo() -> None:
    path = TEMPLATES / "llava_med_instruct_typo.json"
    rows = _load(path)
    _check_instruct_rows(rows, path, keys=("conversatons", "conversatons_long"))
    for row in rows:  # the typo is accepted only as a pair
        assert "conversations" not in row and "conversations_long" not in row


def test_template_vqa_and_candidates() -> None:
    path = TEMPLATES / "vqa.json"
    rows = _load(path)
    _check_vqa_rows(rows, path)
    candidates = _load(TEMPLATES / "candidate.json")
    open_answers = {
        row["conversations"][1]["value"].lower() for row in rows if row["answer_type"] == "OPEN"
    }
    assert candidates == {"0": sorted(open_answers)}


def test_template_swift_messages() -> None:
    path = TEMPLATES / "swift_messages.jsonl"
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    multi_turn = False
    for line in lines:
        row = json.loads(line)
        assert set(row) <= {"messages", "images", "extended_answers"} and "messages" in row
        messages = row["messages"]
        assert len(messages) % 2 == 0 and messages
        for i, msg in enumerate(messages):
            assert set(msg) == {"role", "content"}
            assert msg["role"] == ("user" if i % 2 == 0 else "assistant")
            assert isinstance(msg["content"], str) and msg["content"]
            if msg["role"] == "assistant":
                assert "<image>" not in msg["content"]
        images = row.get("images", [])
        assert sum(m["content"].count("<image>") for m in messages) == len(images)
        for rel in images:
            _resolve(path, rel)
        assistants = [m["content"] for m in messages if m["role"] == "assistant"]
        extended = row["extended_answers"]
        assert len(extended) == len(assistants)
        assert all(
            isinstance(e, str) and len(e) > len(a)
            for e, a in zip(extended, assistants, strict=True)
        )
        multi_turn |= len(assistants) > 1
    assert multi_turn


def test_template_images_are_small_real_and_referenced(tmp_path: Path) -> None:
    images = sorted((TEMPLATES / "images").glob("*.png"))
    assert images
    referenced = set()
    for name in ("llava_med_instruct.json", "llava_med_instruct_typo.json", "vqa.json"):
        referenced |= {row["image"] for row in _load(TEMPLATES / name) if "image" in row}
    for line in (TEMPLATES / "swift_messages.jsonl").read_text(encoding="utf-8").splitlines():
        referenced |= set(json.loads(line).get("images", []))
    assert {f"images/{p.name}" for p in images} == referenced
    readme = (TEMPLATES / "README.md").read_text(encoding="utf-8")
    regenerated = make_demo_data(tmp_path, image_size=48)
    for path in images:
        assert path.stat().st_size <= 8 * 1024, path.name
        assert f"images/{path.name}" in readme, f"{path.name} missing from the README table"
        with Image.open(path) as im:
            assert im.mode == "RGB" and max(im.size) <= 64
            pixels = np.asarray(im, dtype=np.int16)
        # provenance: the committed file is variant 0 of the same-named demo source at 48 px
        with Image.open(regenerated.images_dir / f"{path.stem}_v0.png") as im:
            expected = np.asarray(im, dtype=np.int16)
        assert pixels.shape == expected.shape
        assert np.abs(pixels - expected).mean() < 2.0, path.name
