"""jsonio: line-safe JSONL, and every error at FILE:LINE:COLUMN (1-based), checked against positions
worked out from the text by hand."""

import json
import re

import pytest

from exgramed_plugin.common.jsonio import (
    JsonFileError,
    JsonlAppender,
    dumps_line,
    read_json,
    read_json_or_jsonl,
    read_jsonl,
    read_jsonl_records,
    write_json,
    write_jsonl,
)

LINE_BREAKERS = "a\u2028b\u2029c\x85d"  # str.splitlines() breaks at all three


def _column(line: str, fragment: str) -> int:
    return line.index(fragment) + 1


def test_line_breaking_characters_round_trip_one_line_per_row(tmp_path):
    rows = [{"id": 1, "text": LINE_BREAKERS}, {"id": 2, "text": "é ü 中"}, {"id": 3, LINE_BREAKERS: "key too"}]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    text = path.read_text(encoding="utf-8")
    # One line per row, even for readers that split with str.splitlines() (the bug of issue 12).
    assert len(text.splitlines()) == len(rows) == text.count("\n")
    assert [row for _, row in read_jsonl(path)] == rows
    assert "é ü 中" in text  # other UTF-8 stays readable
    assert [json.loads(line) for line in text.splitlines()] == rows


def test_ascii_output_is_byte_identical_to_json_dumps(tmp_path):
    rows = [{"question_id": "q-1", "text": "yes", "metadata": {}}, {"question_id": 2, "text": 'say "no"\n'}]
    assert (write_jsonl(tmp_path / "a.jsonl", rows).read_bytes()
            == "".join(json.dumps(r) + "\n" for r in rows).encode())
    obj = {"0": ["a", "b"], "n": 1.5}
    assert write_json(tmp_path / "a.json", obj).read_text() == json.dumps(obj, indent=2) + "\n"
    assert write_json(tmp_path / "b.json", obj, indent=1).read_text() == json.dumps(obj, indent=1) + "\n"
    assert dumps_line({"t": LINE_BREAKERS}) == '{"t": "a\\u2028b\\u2029c\\u0085d"}'


def test_json_file_with_line_breakers_reads_back(tmp_path):
    path = write_json(tmp_path / "a.json", [{"text": LINE_BREAKERS}])
    assert read_json(path) == [{"text": LINE_BREAKERS}]
    assert len(path.read_text(encoding="utf-8").splitlines()) == path.read_text().count("\n")


def test_rows_carry_their_file_line(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"id": 1}\n\n   \n{"id": 2}\r\n{"id": 3}')  # blank lines, CRLF, no final newline
    assert [(line, row["id"]) for line, row in read_jsonl(jsonl)] == [(1, 1), (4, 2), (5, 3)]
    listed = tmp_path / "a.json"
    listed.write_text('[\n  {"id": 1},\n\n  {"id": 2,\n   "x": [1, 2]}, {"id": 3}\n]\n')
    assert [(line, row["id"]) for line, row in read_json_or_jsonl(listed)] == [(2, 1), (4, 2), (5, 3)]
    assert read_json_or_jsonl(tmp_path / "a.jsonl") == read_jsonl(jsonl)
    empty = tmp_path / "empty.json"
    empty.write_text(" [ ]\n")
    assert read_json_or_jsonl(empty) == []


def _error(call, path, **kwargs) -> JsonFileError:
    with pytest.raises(JsonFileError) as caught:
        call(path, **kwargs)
    assert re.match(rf"{re.escape(str(path))}:\d+:\d+: \S", str(caught.value)), str(caught.value)
    return caught.value


def test_truncated_json_list_names_line_and_column(tmp_path):
    path = tmp_path / "t.json"
    lines = ["[", '  {"id": "a", "image": "x.png"},', '  {"id": "b", "image": "y.p']
    path.write_text("\n".join(lines))
    for call in (read_json, read_json_or_jsonl):
        error = _error(call, path)
        # The unterminated string starts at the quote before y.p on line 3.
        assert (error.line, error.column) == (3, _column(lines[2], '"y.p'))
        assert "Unterminated string" in error.what


def test_bad_jsonl_line_names_its_file_line_and_column(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = ['{"id": 1}', "", '{"id": 2}', '{"id": 3, "text": tru}', '{"id": 4}']
    path.write_text("\n".join(lines) + "\n")
    for call in (read_jsonl, read_json_or_jsonl):
        error = _error(call, path)
        assert (error.line, error.column) == (4, _column(lines[3], "tru}"))
    # Not forgiven even where a torn last line would be: it is not the last line.
    assert _error(read_jsonl, path, drop_torn_last_line=True).line == 4


def test_raw_u2028_is_no_line_break_for_the_reader(tmp_path):
    # Files written before the fix hold U+2028 raw: still one row per "\n" line.
    path = tmp_path / "old.jsonl"
    path.write_text('{"text": "a\u2028b"}\n{"text": "c"}\n', encoding="utf-8")
    assert [row["text"] for _, row in read_jsonl(path)] == ["a\u2028b", "c"]


def test_rows_must_be_objects(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text('{"id": 1}\n  [1, 2]\n')
    error = _error(read_jsonl, jsonl)
    assert (error.line, error.column) == (2, 3) and "object" in error.what
    listed = tmp_path / "a.json"
    listed.write_text('[{"id": 1},\n "oops"]')
    error = _error(read_json_or_jsonl, listed)
    assert (error.line, error.column) == (2, 2) and "row 1" in error.what


@pytest.mark.parametrize("text, line, column", [
    ('[{"id": 1}] {"id": 2}', 1, 13),   # data after the list
    ('[{"id": 1}\n {"id": 2}]', 2, 2),  # missing comma
    ('[{"id": 1},]', 1, 12),            # trailing comma
    ('{"a": 1,\n "b" 2}', 2, 6),        # read_json: missing colon
])
def test_structure_errors(tmp_path, text, line, column):
    path = tmp_path / "x.json"
    path.write_text(text)
    call = read_json if text.startswith("{") else read_json_or_jsonl
    error = _error(call, path)
    assert (error.line, error.column) == (line, column)
    if text.startswith("["):  # the same position json.loads gives for the whole text
        with pytest.raises(json.JSONDecodeError) as reference:
            json.loads(text)
        assert (reference.value.lineno, reference.value.colno) == (line, column)


def test_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"id": 1}\n{"id": "\xff"}\n')
    error = _error(read_jsonl, path)
    assert (error.line, error.column) == (2, 9) and "UTF-8" in error.what


def test_torn_last_line_is_dropped_only_when_asked(tmp_path, caplog):
    path = tmp_path / "progress.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    error = _error(read_jsonl, path)
    assert error.line == 3
    assert [row["id"] for _, row in read_jsonl(path, drop_torn_last_line=True)] == [1, 2]
    assert "progress.jsonl:3" in caplog.text
    # A whole last line without its newline is a row, not a torn one.
    path.write_text('{"id": 1}\n{"id": 2}')
    assert [row["id"] for _, row in read_jsonl(path, drop_torn_last_line=True)] == [1, 2]
    # A bad last line that was written out completely (newline and all) is corruption: an error.
    path.write_text('{"id": 1}\n{"id": 2\n')
    assert _error(read_jsonl, path, drop_torn_last_line=True).line == 2



def test_progress_records_of_a_first_run_and_of_a_crashed_one(tmp_path):
    path = tmp_path / "progress.jsonl"
    assert read_jsonl_records(path) == []  # no progress file yet: nothing done
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "te')
    assert read_jsonl_records(path) == [{"id": 1}, {"id": 2}]  # the torn tail of a killed writer
    path.write_text('{"id": 1}\n{"id": 2\n{"id": 3}\n')
    assert _error(read_jsonl_records, path).line == 2  # corruption before the end stays an error

def test_writers_are_atomic(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": 1}])
    before = path.read_bytes()

    def rows():
        yield {"id": 2}
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_jsonl(path, rows())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]  # no temp file left behind
    with pytest.raises(TypeError):
        write_json(tmp_path / "a.jsonl", {"x": object()})
    assert path.read_bytes() == before


def test_appender_cuts_a_torn_tail_and_completes_a_whole_one(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1}\n{"id": 2, "te')
    with JsonlAppender(path) as writer:
        writer.append({"id": 3, "text": LINE_BREAKERS})
    assert [row for _, row in read_jsonl(path)] == [{"id": 1}, {"id": 3, "text": LINE_BREAKERS}]
    path.write_text('{"id": 1}\n{"id": 2}')
    with JsonlAppender(path) as writer:
        writer.append({"id": 3})
    assert path.read_text() == '{"id": 1}\n{"id": 2}\n{"id": 3}\n'


def test_cli_ends_with_the_position_for_a_subcommand_without_own_handling(tmp_path, capsys):
    # `exgramed convert` lets errors propagate; the exgramed entry point turns a bad file into one line.
    from exgramed_plugin.commands.cli import main
    src = tmp_path / "original"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llava",\n  "hidden_size": 64\n  "vocab_size": 32}')
    assert main(["convert", "--src", str(src), "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"{src / 'config.json'}:3:3: invalid JSON: Expecting ',' delimiter"
    assert "Traceback" not in err


def test_a_growing_file_gives_its_complete_rows_split_on_newlines_only(tmp_path):
    from exgramed_plugin.common.jsonio import read_growing_jsonl
    path = tmp_path / "logging.jsonl"
    assert read_growing_jsonl(path) == []  # not written yet
    rows = [{"text": "line\u2028separator\u0085next"}, {"loss": 0.5}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows) + '{"loss": 0.', encoding="utf-8")
    assert read_growing_jsonl(path) == rows  # the row still being written is left out
    assert path.read_text(encoding="utf-8").endswith('{"loss": 0.')  # and the file is not touched
