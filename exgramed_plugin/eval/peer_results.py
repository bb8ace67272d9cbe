"""Published numbers of other models, for the ``exgramed eval`` table: only those stored with their URL and
the verbatim table row they were read from (``peer_results.json``); never a number from memory.

Why a check at load time: a number typed next to its quote can drift from it; :func:`check_row` refuses a
row whose numbers are not, column by column, the numbers of its quote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

PEER_FILE = "peer_results.json"
REQUIRED = ("model", "url", "table", "header", "quote", "columns", "numbers")


@dataclass(frozen=True)
class PeerRow:
    """One quoted row: the model, where it was read, the quote and its numbers by benchmark."""

    model: str
    url: str
    table: str
    quote: str
    numbers: dict[str, float]
    note: str = ""


def quoted_numbers(quote: str, model: str) -> list[float]:
    """The numbers of a quoted row, in order, after the model's name (which may contain digits)."""
    if not quote.startswith(model):
        raise ValueError(f"quote {quote!r} does not start with the model name {model!r}")
    return [float(token) for token in quote[len(model):].split()]


def check_row(entry: dict[str, Any]) -> PeerRow:
    """A :class:`PeerRow` from one stored entry, after checking each number against its quote's column."""
    missing = [key for key in REQUIRED if not entry.get(key)]
    if missing:
        raise ValueError(f"{PEER_FILE}: entry {entry.get('model')!r} lacks {missing}")
    values = quoted_numbers(entry["quote"], entry["model"])
    if len(values) != len(entry["columns"]):
        raise ValueError(f"{PEER_FILE}: {entry['model']!r}: {len(values)} numbers in the quote, "
                         f"{len(entry['columns'])} columns")
    quoted = dict(zip(entry["columns"], values))
    wrong = {key: value for key, value in entry["numbers"].items() if quoted.get(key) != value}
    if wrong:
        raise ValueError(f"{PEER_FILE}: {entry['model']!r}: {wrong} differ from the quote {entry['quote']!r}")
    return PeerRow(entry["model"], entry["url"], entry["table"], entry["quote"], dict(entry["numbers"]),
                   entry.get("note", ""))


def load_peer_rows() -> list[PeerRow]:
    """Every stored row, checked."""
    data = json.loads(resources.files("exgramed_plugin.eval").joinpath(PEER_FILE).read_text(encoding="utf-8"))
    return [check_row(entry) for entry in data["rows"]]


def select_peers(names: list[str]) -> list[PeerRow]:
    """The stored rows of ``names``; an unknown name is an error listing the stored ones."""
    rows = {row.model: row for row in load_peer_rows()}
    unknown = [name for name in names if name not in rows]
    if unknown:
        raise ValueError(f"no stored published row for {unknown}; stored (with their quotes): {sorted(rows)}")
    return [rows[name] for name in names]
