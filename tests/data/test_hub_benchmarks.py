"""Hub copies of VQA-RAD / PathVQA / SLAKE: small files written locally in exactly the hub schema.

The parquet files are written by the ``datasets`` library with the cards' features
(``image: Image``, ``question``/``answer``: string), i.e. the same encoding the hub files have;
the SLAKE files follow the card's JSON rows and MedEvalKit's ``<folder>/imgs/<img_name>`` layout.
"""

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from exgramed_plugin.data.formats import DataFormatError
from exgramed_plugin.data.hub_benchmarks import export_benchmark, load_benchmark

VQA_RAD_ROWS = [("red", "PNG", "are the lungs normal appearing?", "no"),
                ("blue", "JPEG", "what modality is used?", "x-ray"),
                ("red", "PNG", "Is there a pneumothorax?", " Yes")]


def image_bytes(color: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_parquet(path: Path, rows, columns=("image", "question", "answer")) -> Path:
    """A parquet as the hub has it: the ``datasets`` library's Image feature (struct bytes/path)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature
    features = {"image": ImageFeature(), "question": Value("string"), "answer": Value("string")}
    data = {"image": [{"bytes": image_bytes(c, f), "path": None} for c, f, _, _ in rows],
            "question": [q for _, _, q, _ in rows], "answer": [a for _, _, _, a in rows]}
    renamed = dict(zip(("image", "question", "answer"), columns))
    data = {renamed[k]: v for k, v in data.items()}
    features = Features({renamed[k]: v for k, v in features.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(data, features=features).to_parquet(str(path))
    return path


@pytest.fixture
def vqa_rad_dir(tmp_path) -> Path:
    root = tmp_path / "vqa-rad"
    write_parquet(root / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet", VQA_RAD_ROWS)
    write_parquet(root / "data" / "train-00000-of-00001-eb8844602202be60.parquet",
                  [("green", "PNG", "is this a ct?", "yes")])
    return root


def test_vqa_rad_rows_are_standard_rows(vqa_rad_dir, tmp_path):
    rows = load_benchmark("vqa_rad", "test", local_dir=vqa_rad_dir, image_cache=tmp_path / "cache")
    assert [r["id"] for r in rows] == ["vqa_rad-test-000000", "vqa_rad-test-000001", "vqa_rad-test-000002"]
    assert rows[0]["messages"] == [{"role": "user", "content": "<image>\nare the lungs normal appearing?"},
                                   {"role": "assistant", "content": "no"}]
    assert [r["answer_type"] for r in rows] == ["CLOSED", "OPEN", "CLOSED"]  # " Yes" is yes/no too
    assert all(r["extended_answers"] is None for r in rows)
    for row, (color, fmt, _, _) in zip(rows, VQA_RAD_ROWS):
        path = Path(row["images"][0])
        assert path.is_absolute() and path.read_bytes() == image_bytes(color, fmt)
        assert path.name == hashlib.sha256(image_bytes(color, fmt)).hexdigest() + (".png" if fmt == "PNG" else ".jpg")
    assert rows[0]["images"] == rows[2]["images"]  # the same image is stored once
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_ids_and_image_files_are_stable_across_loads(vqa_rad_dir, tmp_path):
    first = load_benchmark("vqa_rad", "test", local_dir=vqa_rad_dir, image_cache=tmp_path / "cache")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    second = load_benchmark("vqa_rad", "test", local_dir=vqa_rad_dir, image_cache=tmp_path / "cache")
    assert first == second
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == stamps  # not rewritten


def test_split_selects_its_own_files(vqa_rad_dir, tmp_path):
    rows = load_benchmark("vqa_rad", "train", local_dir=vqa_rad_dir, image_cache=tmp_path / "cache")
    assert [(r["id"], r["messages"][1]["content"]) for r in rows] == [("vqa_rad-train-000000", "yes")]


def test_pathvqa_ids_run_across_shards_in_name_order(tmp_path):
    root = tmp_path / "path-vqa"
    write_parquet(root / "data" / "test-00001-of-00002-bbbb.parquet", [("blue", "PNG", "what is shown?", "fibrosis")])
    write_parquet(root / "data" / "test-00000-of-00002-aaaa.parquet", [("red", "PNG", "is it benign?", "no"),
                                                                       ("green", "PNG", "where?", "liver")])
    write_parquet(root / "data" / "validation-00000-of-00001-cccc.parquet", [("white", "PNG", "x?", "y")])
    rows = load_benchmark("pathvqa", "test", local_dir=root, image_cache=tmp_path / "cache")
    assert [(r["id"], r["messages"][1]["content"], r["answer_type"]) for r in rows] == [
        ("pathvqa-test-000000", "no", "CLOSED"), ("pathvqa-test-000001", "liver", "OPEN"),
        ("pathvqa-test-000002", "fibrosis", "OPEN")]
    assert [r["id"] for r in load_benchmark("pathvqa", "validation", local_dir=root,
                                            image_cache=tmp_path / "cache")] == ["pathvqa-validation-000000"]


def test_a_bad_row_in_a_later_shard_is_named_by_its_row_in_that_file(tmp_path):
    root = tmp_path / "path-vqa"
    write_parquet(root / "data" / "test-00000-of-00002-aaaa.parquet", [("red", "PNG", "is it benign?", "no")])
    second = write_parquet(root / "data" / "test-00001-of-00002-bbbb.parquet",
                           [("blue", "PNG", "what is shown?", "fibrosis"), ("green", "PNG", "where?", "  ")])
    with pytest.raises(DataFormatError) as error:
        load_benchmark("pathvqa", "test", local_dir=root, image_cache=tmp_path / "cache")
    assert str(error.value) == (f"{second}, row 1 (id='pathvqa-test-000002'), column 'answer': expected a "
                                "non-empty string, got '  '")


def test_local_folder_from_the_environment(vqa_rad_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EXGRAMED_VQA_RAD_HF_DIR", str(vqa_rad_dir))
    monkeypatch.setenv("EXGRAMED_HUB_IMAGE_CACHE", str(tmp_path / "env-cache"))
    rows = load_benchmark("vqa_rad", "test")
    assert len(rows) == 3 and rows[0]["images"][0].startswith(str((tmp_path / "env-cache").resolve()))


@pytest.mark.parametrize("columns, named", [(("img", "question", "answer"), "missing ['image'], unexpected ['img']"),
                                            (("image", "question", "answers"),
                                             "missing ['answer'], unexpected ['answers']")])
def test_a_parquet_with_a_wrong_column_names_file_and_column(tmp_path, columns, named):
    path = write_parquet(tmp_path / "vqa-rad" / "data" / "test-00000-of-00001.parquet", VQA_RAD_ROWS, columns)
    with pytest.raises(DataFormatError) as error:
        load_benchmark("vqa_rad", "test", local_dir=tmp_path / "vqa-rad", image_cache=tmp_path / "cache")
    assert str(error.value).startswith(f"{path}: columns do not match") and named in str(error.value)


def test_an_extra_column_is_an_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = write_parquet(tmp_path / "vqa-rad" / "data" / "test-00000-of-00001.parquet", VQA_RAD_ROWS)
    table = pq.read_table(path)
    pq.write_table(table.append_column("answer_type", pa.array(["CLOSED"] * 3)), path)
    with pytest.raises(DataFormatError, match=r"missing \[\], unexpected \['answer_type'\]"):
        load_benchmark("vqa_rad", "test", local_dir=tmp_path / "vqa-rad", image_cache=tmp_path / "cache")


def test_an_unreadable_image_names_file_row_and_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = write_parquet(tmp_path / "vqa-rad" / "data" / "test-00000-of-00001.parquet", VQA_RAD_ROWS)
    rows = pq.read_table(path).to_pylist()
    rows[1]["image"] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)
    with pytest.raises(DataFormatError) as error:
        load_benchmark("vqa_rad", "test", local_dir=tmp_path / "vqa-rad", image_cache=tmp_path / "cache")
    assert str(error.value).startswith(f"{path}, row 1 (id='vqa_rad-test-000001'), column 'image': unreadable")


def test_a_missing_split_says_which_files(vqa_rad_dir):
    with pytest.raises(ValueError, match=r"no split 'validation'; splits: \['train', 'test'\]"):
        load_benchmark("vqa_rad", "validation", local_dir=vqa_rad_dir)
    (vqa_rad_dir / "data" / "test-00000-of-00001-e5bc3d208bb4deeb.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"data/test-\*\.parquet"):
        load_benchmark("vqa_rad", "test", local_dir=vqa_rad_dir)


# --------------------------------------------------------------------------------------------------
# SLAKE
# --------------------------------------------------------------------------------------------------


def slake_record(qid, img_id, question, answer, lang, answer_type, **changes):
    row = {"img_id": img_id, "img_name": f"xmlab{img_id}/source.jpg", "question": question, "answer": answer,
           "q_lang": lang, "location": "Lung", "modality": "CT", "answer_type": answer_type, "base_type": "vqa",
           "content_type": "Modality", "triple": ["vhead", "_", "_"], "qid": qid}
    row.update(changes)
    return row


SLAKE_ROWS = [slake_record(11934, 102, "What modality is used to take this image?", "CT", "en", "OPEN"),
              slake_record(11935, 102, "Does the picture contain lung?", "Yes", "en", "CLOSED"),
              slake_record(11990, 7, "这张图片的成像方式是什么?", "CT", "zh", "OPEN")]


def write_slake(root: Path, rows=SLAKE_ROWS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "test.json").write_text(json.dumps(rows, ensure_ascii=False, indent=4), encoding="utf-8")
    with zipfile.ZipFile(root / "imgs.zip", "w") as archive:
        for img_id, color in ((102, "red"), (7, "blue")):
            archive.writestr(f"imgs/xmlab{img_id}/source.jpg", image_bytes(color, "JPEG"))
    return root


@pytest.mark.parametrize("language, qids", [("all", [11934, 11935, 11990]), ("en", [11934, 11935]),
                                            ("zh", [11990])])
def test_slake_language_filter(tmp_path, language, qids):
    rows = load_benchmark("slake", "test", language=language, local_dir=write_slake(tmp_path / "SLAKE"))
    assert [r["id"] for r in rows] == [f"slake-test-{q}" for q in qids]


def test_slake_rows_are_standard_rows_with_images_from_the_zip(tmp_path):
    root = write_slake(tmp_path / "SLAKE")
    rows = load_benchmark("slake", "test", local_dir=root)
    assert rows[1] == {"messages": [{"role": "user", "content": "<image>\nDoes the picture contain lung?"},
                                    {"role": "assistant", "content": "Yes"}],
                       "images": [str((root / "imgs" / "xmlab102" / "source.jpg").resolve())],
                       "id": "slake-test-11935", "answer_type": "CLOSED", "extended_answers": None, "q_lang": "en"}
    assert Path(rows[2]["images"][0]).read_bytes() == image_bytes("blue", "JPEG")
    assert rows[2]["messages"][0]["content"] == "<image>\n这张图片的成像方式是什么?"
    assert rows[2]["q_lang"] == "zh"  # MedEvalKit's SLAKE prompt is in the question's language


def test_slake_zip_is_extracted_once(tmp_path):
    root = write_slake(tmp_path / "SLAKE")
    first = load_benchmark("slake", "test", local_dir=root)
    stamp = (root / "imgs" / "xmlab7" / "source.jpg").stat().st_mtime_ns
    (root / "imgs.zip").unlink()  # a second load must not need it
    assert load_benchmark("slake", "test", local_dir=root) == first
    assert (root / "imgs" / "xmlab7" / "source.jpg").stat().st_mtime_ns == stamp
    assert not list(root.glob(".imgs-extracting-*"))


def test_slake_row_with_a_wrong_column_names_file_row_and_column(tmp_path):
    rows = [dict(r) for r in SLAKE_ROWS]
    rows[2]["image_name"] = rows[2].pop("img_name")
    root = write_slake(tmp_path / "SLAKE", rows)
    with pytest.raises(DataFormatError) as error:
        load_benchmark("slake", "test", local_dir=root)
    assert str(error.value) == (f"{root / 'test.json'}, row 2 (qid=11990): columns do not match the SLAKE schema: "
                                "missing ['img_name'], unexpected ['image_name']")


@pytest.mark.parametrize("change, message", [
    ({"q_lang": "fr"}, "column 'q_lang': expected one of ['en', 'zh'], got 'fr'"),
    ({"answer_type": "OTHER"}, "column 'answer_type': expected OPEN or CLOSED"),
    ({"answer": ""}, "column 'answer': expected a non-empty string, got ''"),
    ({"img_name": "xmlab999/source.jpg"}, "field 'img_name': image not found"),
])
def test_slake_bad_values_are_named(tmp_path, change, message):
    rows = [dict(r) for r in SLAKE_ROWS]
    rows[1].update(change)
    root = write_slake(tmp_path / "SLAKE", rows)
    with pytest.raises(DataFormatError) as error:
        load_benchmark("slake", "test", local_dir=root)
    assert str(root / "test.json") in str(error.value) and "11935" in str(error.value)
    assert message in str(error.value)


def test_slake_duplicate_qid_is_an_error(tmp_path):
    rows = SLAKE_ROWS + [dict(SLAKE_ROWS[0])]
    with pytest.raises(DataFormatError, match=r"qid 11934 occurs in rows 0 and 3"):
        load_benchmark("slake", "test", local_dir=write_slake(tmp_path / "SLAKE", rows))


def test_a_language_without_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"BoKelvin/SLAKE \(test, language zh\): no rows"):
        load_benchmark("slake", "test", language="zh", local_dir=write_slake(tmp_path / "SLAKE", SLAKE_ROWS[:2]))


def test_language_filter_is_refused_where_there_are_no_languages(vqa_rad_dir):
    with pytest.raises(ValueError, match=r"language 'en' is not one of \['all'\]"):
        load_benchmark("vqa_rad", "test", language="en", local_dir=vqa_rad_dir)


# --------------------------------------------------------------------------------------------------
# By hub id: the Hugging Face cache, offline
# --------------------------------------------------------------------------------------------------


def fake_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """The cache layout huggingface_hub writes: refs/main → snapshots/<commit>/<files>."""
    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(source.read_bytes())
    return snapshot


def test_loads_by_hub_id_from_the_hf_cache_offline(vqa_rad_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants
    assert constants.HF_HUB_OFFLINE
    name = "data/test-00000-of-00001-e5bc3d208bb4deeb.parquet"
    snapshot = fake_hf_cache(tmp_path / "hf", "flaviagiammarino/vqa-rad", {name: vqa_rad_dir / name})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("EXGRAMED_VQA_RAD_HF_DIR", raising=False)
    rows = load_benchmark("vqa_rad", "test", image_cache=tmp_path / "cache")
    assert [r["id"] for r in rows] == ["vqa_rad-test-000000", "vqa_rad-test-000001", "vqa_rad-test-000002"]
    assert snapshot.is_dir()


def test_not_cached_offline_says_what_to_set(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.delenv("EXGRAMED_SLAKE_HF_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match=r"BoKelvin/SLAKE \(test\): not in the Hugging Face cache.*"
                                                r"EXGRAMED_SLAKE_HF_DIR.*\['test.json', 'imgs.zip'\]"):
        load_benchmark("slake", "test")


# --------------------------------------------------------------------------------------------------
# The exported JSONL is a question file for exgramed predict / eval-vqa
# --------------------------------------------------------------------------------------------------


def test_export_is_read_by_predict_and_eval_vqa(tmp_path):
    from exgramed_plugin.eval.eval_vqa import load_vqa_questions
    from exgramed_plugin.eval.predict import load_prompts
    root = write_slake(tmp_path / "SLAKE")
    out = export_benchmark("slake", "test", tmp_path / "slake_test_en.jsonl", language="en", local_dir=root)
    questions = load_vqa_questions(out)
    assert [(q.id, q.answer_type, q.question, q.answer) for q in questions] == [
        ("slake-test-11934", "OPEN", "What modality is used to take this image?", "CT"),
        ("slake-test-11935", "CLOSED", "Does the picture contain lung?", "Yes")]
    prompts = load_prompts(out)
    assert prompts[0].images == (str((root / "imgs" / "xmlab102" / "source.jpg").resolve()),)


def test_every_environment_variable_is_known_to_the_settings():
    """The settings refuse unknown EXGRAMED_* variables (typos); ours must be listed there."""
    from exgramed_plugin.data.hub_benchmarks import BENCHMARKS, IMAGE_CACHE_ENV
    from exgramed_plugin.settings import ours_in_environment
    names = [b.dir_env for b in BENCHMARKS.values()] + [IMAGE_CACHE_ENV]
    assert ours_in_environment({name: "/somewhere" for name in names}) == {}
