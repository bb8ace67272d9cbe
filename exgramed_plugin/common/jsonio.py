"""Every JSON and JSON Lines file the plugin reads or writes goes through this module.

Why one module: JSON Lines is only safe when writer and reader agree on what a line is. Writing
``ensure_ascii=False`` puts U+2028 / U+2029 (and U+0085) into the file raw, and ``str.splitlines()``
breaks lines there, so one answer became two broken lines. Here lines are split on ``"\\n"`` only,
those characters are written escaped, and every problem is a :class:`JsonFileError` whose message
starts with ``FILE:LINE:COLUMN:`` (1-based), the form editors and compilers use.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any, NamedTuple

logger = logging.getLogger(__name__)

# Characters json.dumps(ensure_ascii=False) leaves raw although str.splitlines() (U+0085, U+2028,
# U+2029) or JavaScript (U+2028, U+2029) treat them as line breaks.
_LINE_BREAKS = {"\u0085": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_LINE_BREAK_RE = re.compile("[\u0085\u2028\u2029]")
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace
_DECODER = json.JSONDecoder()


class JsonFileError(ValueError):
    """A JSON / JSONL file that cannot be used; the message is ``FILE:LINE:COLUMN: what is wrong``."""

    def __init__(self, path: str | os.PathLike, line: int, column: int, what: str) -> None:
        super().__init__(f"{path}:{line}:{column}: {what}")
        self.path, self.line, self.column, self.what = str(path), line, column, what


class JsonRow(NamedTuple):
    """One object of a JSON list or JSONL file and the 1-based file line it starts on."""

    line: int
    value: dict[str, Any]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _read_text(path: str | os.PathLike) -> str:
    """The file as UTF-8; a bad byte is reported at its line and (byte) column."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        raise JsonFileError(path, data.count(b"\n", 0, error.start) + 1, error.start - line_start + 1,
                            f"not UTF-8 text ({error.reason})") from None


def _decode_error(path: str | os.PathLike, error: json.JSONDecodeError, line_offset: int = 0) -> JsonFileError:
    return JsonFileError(path, error.lineno + line_offset, error.colno, f"invalid JSON: {error.msg}")


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of ``text[index]``, lines split on ``"\\n"`` only."""
    return text.count("\n", 0, index) + 1, index - (text.rfind("\n", 0, index) + 1) + 1


def read_json(path: str | os.PathLike) -> Any:
    """The value of a JSON file."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise _decode_error(path, error) from None


def _json_list_rows(path: str | os.PathLike, text: str) -> list[JsonRow]:
    """Objects of a JSON list, each with the line it starts on (element by element, for positions)."""
    rows: list[JsonRow] = []
    try:
        position = _WHITESPACE.match(text).end()
        if not text.startswith("[", position):
            raise json.JSONDecodeError("Expecting '['", text, position)
        position = _WHITESPACE.match(text, position + 1).end()
        if text.startswith("]", position):
            position += 1
        else:
            while True:
                start = position
                value, position = _DECODER.raw_decode(text, position)
                if not isinstance(value, dict):
                    line, column = _position(text, start)
                    raise JsonFileError(path, line, column, f"row {len(rows)}: expected a JSON object, "
                                                            f"got {type(value).__name__}")
                rows.append(JsonRow(_position(text, start)[0], value))
                position = _WHITESPACE.match(text, position).end()
                if text.startswith(",", position):
                    position = _WHITESPACE.match(text, position + 1).end()
                elif text.startswith("]", position):
                    position += 1
                    break
                else:
                    raise json.JSONDecodeError("Expecting ',' delimiter", text, position)
        position = _WHITESPACE.match(text, position).end()
        if position != len(text):
            raise json.JSONDecodeError("Extra data", text, position)
    except json.JSONDecodeError as error:
        raise _decode_error(path, error) from None
    return rows


def _jsonl_row(path: str | os.PathLike, number: int, line: str) -> JsonRow:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise _decode_error(path, error, line_offset=number - 1) from None
    if not isinstance(value, dict):
        column = len(line) - len(line.lstrip()) + 1
        raise JsonFileError(path, number, column, f"expected a JSON object, got {type(value).__name__}")
    return JsonRow(number, value)


def read_jsonl(path: str | os.PathLike, *, drop_torn_last_line: bool = False) -> list[JsonRow]:
    """Objects of a JSON Lines file (blank lines skipped), each with its 1-based line number.

    ``drop_torn_last_line``: for append-only progress files only. A last line without its final
    ``"\\n"`` that does not parse was cut short by a killed writer; it is dropped with a warning.
    Any other bad line is an error, since skipping it would hide a corrupted file.
    """
    return _jsonl_rows(path, _read_text(path), drop_torn_last_line)


def read_jsonl_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a :class:`JsonlAppender` progress file: none if it does not exist yet (a first
    run), a torn last line (crash mid-write) dropped with a warning, a bad line anywhere else an error."""
    if not os.path.exists(path):
        return []
    return [record for _, record in read_jsonl(path, drop_torn_last_line=True)]


def read_growing_jsonl(path: str | os.PathLike) -> list[Any]:
    """The complete rows of a JSON Lines file another process is still appending to (swift's
    ``logging.jsonl``, ``swift infer --result_path``): nothing if it does not exist yet, the last line
    left out while it is being written; never repairs or warns (it is polled while it grows)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].split("\n") if line.strip()]


def _jsonl_rows(path: str | os.PathLike, text: str, drop_torn_last_line: bool) -> list[JsonRow]:
    lines = text.split("\n")
    rows: list[JsonRow] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(_jsonl_row(path, number, line))
        except JsonFileError as error:
            if drop_torn_last_line and number == len(lines):
                logger.warning("%s:%d: dropping the truncated last line (%s) left by an interrupted write",
                               path, number, error.what)
                continue
            raise
    return rows


def read_json_or_jsonl(path: str | os.PathLike) -> list[JsonRow]:
    """Rows of a JSON list (the LLaVA-Med files) or of JSON Lines (swift files); every row an object."""
    text = _read_text(path)
    if text.lstrip(" \t\r\n").startswith("["):
        return _json_list_rows(path, text)
    return _jsonl_rows(path, text, drop_torn_last_line=False)


_EMPTY_DATA = re.compile(r"\s*(\[\s*\])?\s*")
_SMALL_FILE = 4096  # an empty JSON list or JSONL file with more bytes than this is only whitespace


def holds_no_rows(path: str | os.PathLike) -> bool:
    """Whether a JSON list / JSON Lines file holds no row at all (``[]``, blank lines, zero bytes);
    cheap: a file of more than a few KiB is never read."""
    path = Path(path)
    if path.stat().st_size > _SMALL_FILE:
        return False
    return _EMPTY_DATA.fullmatch(path.read_text(encoding="utf-8", errors="replace")) is not None


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _escape_line_breaks(text: str) -> str:
    # Raw line-break characters only occur inside JSON strings, where their escape means the same.
    return _LINE_BREAK_RE.sub(lambda match: _LINE_BREAKS[match.group()], text)


def dumps_line(obj: Any) -> str:
    """One JSONL line without its ``"\\n"``: UTF-8 kept readable, line-break characters escaped."""
    return _escape_line_breaks(json.dumps(obj, ensure_ascii=False))


_SUMMARIES: list[int] = [0]


def print_summary(facts: dict[str, Any], *, ok: bool = True) -> None:
    """A command's last stdout line: one JSON object with ``ok`` and its facts (paths, counts), for
    scripts (README: every ``exgramed`` command ends so; ``cli.main`` writes it on failure)."""
    _SUMMARIES[0] += 1
    print(dumps_line({"ok": ok, **facts}), flush=True)


def summaries_printed() -> int:
    """How many summaries this process printed (``cli.main``: did the command end with its own?)."""
    return _SUMMARIES[0]


def append_jsonl(handle: IO[str], obj: Any) -> None:
    """Write one line (caller flushes; see :class:`JsonlAppender` for crash-safe appends)."""
    handle.write(dumps_line(obj) + "\n")


def _replace_atomically(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Call ``write(handle)`` on a temp file next to ``path``, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C included: never leave the temp file behind
        tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """Replace ``path`` by one line per row, atomically (temp file + rename)."""
    path = Path(path)

    def write(handle: IO[str]) -> None:
        for row in rows:
            append_jsonl(handle, row)

    _replace_atomically(path, write)
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Replace ``path`` by ``obj`` as indented JSON (UTF-8, final newline), atomically."""
    path = Path(path)
    text = _escape_line_breaks(json.dumps(obj, indent=indent, ensure_ascii=False)) + "\n"
    _replace_atomically(path, lambda handle: handle.write(text))
    return path


def _repair_torn_tail(path: str | os.PathLike, block: int = 1 << 16) -> None:
    """Make ``path`` end with a whole line: a torn last line (no final newline, not JSON) is cut off,
    a whole last record without its newline gets one."""
    with open(path, "rb+") as handle:
        size = end = handle.seek(0, os.SEEK_END)
        keep = 0
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            position = handle.read(end - start).rfind(b"\n")
            if position >= 0:
                keep = start + position + 1
                break
            end = start
        if keep == size:
            return
        handle.seek(keep)
        tail = handle.read()
        try:
            json.loads(tail.decode("utf-8"))
        except ValueError:
            logger.warning("%s: dropping a truncated last line (%d bytes) left by an interrupted write",
                           path, size - keep)
            handle.truncate(keep)
        else:
            handle.write(b"\n")


class JsonlAppender:
    """Append-only JSONL writer: one flushed (and fsync'ed) line per record, so a crash or Ctrl-C
    keeps every record written so far. A torn last line left by a crash is cut off first, so every
    line of the file stays a whole record."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        if os.path.exists(path):
            _repair_torn_tail(path)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def append(self, record: Any) -> None:
        append_jsonl(self._handle, record)
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
