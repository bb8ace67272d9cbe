"""Published peer numbers: each stored number must be its column's entry in the verbatim quoted row."""

import pytest

from exgramed_plugin.eval.peer_results import check_row, load_peer_rows, quoted_numbers, select_peers


def test_every_stored_number_is_in_its_quote_at_its_column():
    rows = load_peer_rows()
    assert rows, "the peer file is empty"
    for row in rows:
        assert row.url.startswith("https://") and row.quote.startswith(row.model)
        tokens = row.quote[len(row.model):].split()
        for benchmark, value in row.numbers.items():
            assert f"{value:.1f}" in tokens  # the number as printed in the quote


def test_a_number_that_differs_from_its_quote_is_refused():
    entry = {"model": "M-2", "url": "https://x", "table": "t", "header": "h", "quote": "M-2 50.1 60.0",
             "columns": ["vqa_rad", "slake"], "numbers": {"vqa_rad": 50.1, "slake": 61.0}}
    assert quoted_numbers(entry["quote"], "M-2") == [50.1, 60.0]  # the "2" of the name is not a number
    with pytest.raises(ValueError, match=r"\{'slake': 61.0\} differ from the quote"):
        check_row(entry)
    with pytest.raises(ValueError, match="lacks \\['quote'\\]"):
        check_row({**entry, "quote": ""})


def test_unknown_peer_names_are_refused_with_the_stored_ones():
    with pytest.raises(ValueError, match=r"no stored published row for \['Lingshu-7B'\]; stored .*GPT-4.1"):
        select_peers(["Lingshu-7B"])
