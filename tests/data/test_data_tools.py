"""subset, build-candidates and the LLaVA-Med <-> swift converters, against hand-worked expectations."""

import hashlib
import json
import shutil

import pytest

from conftest import DATA_TEMPLATES


def _rows(ids):
    return [{"id": i, "image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                          {"from": "gpt", "value": f"a {i}"}]} for i in ids]


@pytest.fixture
def stage_files(tmp_path):
    # Stage 1: 60 own ids + 40 shared; stage 2: the 40 shared + 20 own (as JSONL, to cover both formats).
    shared = [f"x{i}" for i in range(40)]
    stage1 = _rows([f"a{i}" for i in range(60)] + shared)
    stage2 = _rows(shared[::-1] + [f"b{i}" for i in range(20)])
    p1, p2 = tmp_path / "stage1.json", tmp_path / "stage2.jsonl"
    p1.write_text(json.dumps(stage1))
    p2.write_text("".join(json.dumps(r) + "\n" for r in stage2))
    return p1, p2, set(shared)


def _ids(path):
    text = path.read_text()
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines()]
    return [r["id"] for r in rows]


@pytest.mark.parametrize("fraction, n1, n2, n_shared", [(0.1, 10, 6, 4), (0.4, 40, 24, 16)])
def test_subset_sizes_and_shared_ids(stage_files, tmp_path, fraction, n1, n2, n_shared):
    from exgramed_plugin.data.tools import subset_main
    p1, p2, shared = stage_files
    o1, o2 = tmp_path / "s1.json", tmp_path / "s2.jsonl"
    assert subset_main(["--in", str(p1), str(p2), "--out", str(o1), str(o2), "--fraction", str(fraction),
                        "--seed", "0"]) == 0
    ids1, ids2 = _ids(o1), _ids(o2)
    # round(fraction * 100) and round(fraction * 60) ids; round(fraction * 40) of the shared ones in both.
    assert (len(ids1), len(ids2)) == (n1, n2)
    assert set(ids1) & shared == set(ids2) & shared
    assert len(set(ids1) & shared) == n_shared
    # Rows keep their input order.
    order1 = [r["id"] for r in json.loads(p1.read_text())]
    assert ids1 == sorted(ids1, key=order1.index)


def test_subset_is_deterministic_and_follows_the_documented_hash_rule(tmp_path):
    from exgramed_plugin.data.tools import make_subsets
    src = tmp_path / "in.json"
    ids = [f"r{i}" for i in range(50)]
    src.write_text(json.dumps(_rows(ids)))
    make_subsets([src], [tmp_path / "a.json"], 0.1, seed=3)
    make_subsets([src], [tmp_path / "b.json"], 0.1, seed=3)
    make_subsets([src], [tmp_path / "c.json"], 0.1, seed=4)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    expected = sorted(ids, key=lambda i: hashlib.sha256(f"3:{i}".encode()).hexdigest())[:5]
    assert set(_ids(tmp_path / "a.json")) == set(expected)
    assert set(_ids(tmp_path / "c.json")) != set(expected)


def test_subset_keeps_all_rows_of_a_chosen_id(tmp_path):
    from exgramed_plugin.data.tools import make_subsets
    src = tmp_path / "in.json"
    src.write_text(json.dumps(_rows(["d", "e", "d"])))  # 2 distinct ids
    result = make_subsets([src], [tmp_path / "o.json"], 0.5, seed=0)[0]
    kept = _ids(tmp_path / "o.json")
    assert result.ids_out == 1 and (kept == ["d", "d"] or kept == ["e"])


def test_build_candidates_by_hand(tmp_path):
    from exgramed_plugin.data.tools import build_candidates, build_candidates_main

    def row(answer, answer_type):
        return {"id": str(answer), "answer_type": answer_type,
                "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": answer}]}
    train = tmp_path / "train.json"
    train.write_text(json.dumps([row("Chest", "OPEN"), row("yes", "CLOSED"), row("liver", "OPEN"),
                                 row("chest", "OPEN"), row(5, "OPEN"), row("Brain MRI", "open")]))
    assert build_candidates([train]) == ["chest", "liver", "5", "brain mri"]
    assert build_candidates([train], order="sorted") == ["5", "brain mri", "chest", "liver"]
    assert build_candidates([train], unique=False) == ["chest", "liver", "chest", "5", "brain mri"]
    out = tmp_path / "candidate.json"
    assert build_candidates_main([str(train), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"0": ["chest", "liver", "5", "brain mri"]}


@pytest.fixture
def templates(tmp_path):
    src = tmp_path / "in"
    shutil.copytree(DATA_TEMPLATES, src)
    return src


@pytest.mark.parametrize("name", ["vqa.json", "llava_med_instruct.json"])
def test_llava_round_trip_is_exact(templates, tmp_path, name):
    from exgramed_plugin.data.tools import llava_to_swift_main, swift_to_llava_main
    src = templates / name
    swift_file, back = templates / "x.jsonl", templates / "back.json"
    assert llava_to_swift_main([str(src), str(swift_file)]) == 0
    assert swift_to_llava_main([str(swift_file), str(back)]) == 0
    assert json.loads(back.read_text()) == json.loads(src.read_text())


def test_swift_round_trip_is_exact(templates):
    from exgramed_plugin.data.tools import convert_file
    src = templates / "swift_messages.jsonl"
    convert_file(src, templates / "l.json", "to-llava")
    convert_file(templates / "l.json", templates / "s.jsonl", "to-swift")
    original = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    again = [json.loads(line) for line in (templates / "s.jsonl").read_text().splitlines()]
    assert again == original


def test_conversion_by_hand_and_image_rebase(templates, tmp_path):
    from exgramed_plugin.data.formats import row_to_standard
    from exgramed_plugin.data.tools import convert_file
    src = templates / "llava_med_instruct_typo.json"
    out = tmp_path / "elsewhere" / "typo.jsonl"
    assert convert_file(src, out, "to-swift") == len(json.loads(src.read_text()))
    first_in = json.loads(src.read_text())[0]
    first_out = json.loads(out.read_text().splitlines()[0])
    assert first_out["images"] == ["../in/images/fundus_eye.png"]
    assert first_out["messages"] == [
        {"role": "user", "content": "<image>\nProvide a brief description of the given image."},
        {"role": "assistant", "content": "Fundus photograph of the retina."}]
    assert first_out["extended_answers"] == [first_in["conversatons_long"][1]["value"]]
    assert "conversatons" not in first_out and first_out["id"] == "instruct-typo-0001"
    # The plugin reads both files to the same standard row (images resolve from each file's folder).
    assert row_to_standard(first_out, str(out)) == row_to_standard(first_in, str(src))
    back = tmp_path / "back.json"
    convert_file(out, back, "to-llava")
    row = json.loads(back.read_text())[0]
    assert row["image"] == "in/images/fundus_eye.png"  # back.json sits next to in/
    assert row["conversations"] == first_in["conversatons"]
    assert row["conversations_long"] == first_in["conversatons_long"]


def test_converter_errors_name_the_row(tmp_path):
    from exgramed_plugin.data.tools import convert_file
    src = tmp_path / "two_images.jsonl"
    src.write_text(json.dumps({"id": "r7", "messages": [{"role": "user", "content": "<image><image>q"},
                                                        {"role": "assistant", "content": "a"}],
                               "images": ["a.png", "b.png"]}) + "\n")
    with pytest.raises(ValueError, match=r"r7.*2 images"):
        convert_file(src, tmp_path / "o.json", "to-llava")


def test_line_separator_in_an_answer_survives_both_converters(templates, capsys):
    # Issue 12: llava-to-swift wrote U+2028 raw, and swift-to-llava (str.splitlines) read one row as two.
    from exgramed_plugin.commands.cli import main
    rows = json.loads((templates / "vqa.json").read_text())
    rows[0]["conversations"][1]["value"] = "first line\u2028second line\u2029third"
    src, swift_file, back = templates / "u2028.json", templates / "u2028.jsonl", templates / "back.json"
    src.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    assert main(["llava-to-swift", str(src), str(swift_file)]) == 0
    assert len(swift_file.read_text(encoding="utf-8").splitlines()) == len(rows)
    assert main(["swift-to-llava", str(swift_file), str(back)]) == 0
    assert json.loads(back.read_text(encoding="utf-8")) == rows


def test_truncated_input_names_file_line_and_column_as_the_last_line(templates, capsys):
    from exgramed_plugin.commands.cli import main
    text = (templates / "vqa.json").read_text()
    cut = text.index('"value"', len(text) // 2) + len('"value": "') + 3  # inside a string, past the middle
    src = templates / "t.json"
    src.write_text(text[:cut])
    line = text[:cut].count("\n") + 1
    column = cut - text.rfind("\n", 0, cut) - 4  # the string's opening quote (1-based)
    capsys.readouterr()
    assert main(["llava-to-swift", str(src), str(templates / "x.jsonl")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"error: {src}:{line}:{column}: invalid JSON: Unterminated string starting at"
    assert not (templates / "x.jsonl").exists()
