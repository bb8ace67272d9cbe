"""Data tools: reproducible subsets, ``candidate.json``, LLaVA-Med JSON <-> swift JSONL converters.

* ``exgramed subset``: the 10 % / 40 % subsets of docs/method.md §4.3. How the original sampled them is
  not in its repository, so we define a reproducible rule: every id gets the key
  ``sha256(f"{seed}:{id}")``; a file keeps exactly ``round(fraction * distinct ids)`` ids, lowest keys
  first. Given a stage-1 and a stage-2 file, ids present in both are chosen first, from the shared
  ids alone, so an id is kept in both files or in neither (the two stages see the same samples where
  they overlap). No global RNG is touched and the rule does not depend on row order.
* ``exgramed build-candidates``: ``candidate.json = {"0": [lower-cased OPEN answers]}`` (§4.1), the
  file ``run_eval.py`` needs for "open accuracy".
* ``exgramed llava-to-swift`` / ``swift-to-llava``: lossless conversion of rows (extra keys kept,
  ``conversations_long`` <-> ``extended_answers``), image paths re-based so they still resolve from
  the output file's folder.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exgramed_plugin.data.conversation import ROLE_FROM, find_conversation_pair
from exgramed_plugin.common.jsonio import print_summary, read_json_or_jsonl, write_json, write_jsonl

logger = logging.getLogger(__name__)

_FROM_ROLE = {role: speaker for speaker, role in ROLE_FROM.items()}
IMAGE_PATH_MODES = ("rebase", "keep", "absolute")


# --------------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------------


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list or JSON Lines file of objects (both occur: LLaVA-Med JSON, swift JSONL)."""
    return [row for _, row in read_json_or_jsonl(path)]


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]], *, jsonl: bool | None = None) -> Path:
    """Write rows as JSONL (``.jsonl``) or an indented JSON list, via a temp file + rename."""
    path = Path(path)
    jsonl = path.suffix == ".jsonl" if jsonl is None else jsonl
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(path, rows) if jsonl else write_json(path, list(rows))


# --------------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------------


def subset_key(seed: int, row_id: Any) -> str:
    """Sort key of an id: a hash, so the choice is reproducible and independent of row order."""
    return hashlib.sha256(f"{seed}:{row_id}".encode()).hexdigest()


def _ids_of(rows: Sequence[dict[str, Any]], source: str) -> list[str]:
    ids = []
    for index, row in enumerate(rows):
        if "id" not in row:
            raise ValueError(f"{source}: row {index} has no 'id'; subsets are chosen by id")
        ids.append(str(row["id"]))
    return ids


def _lowest(ids: Iterable[str], count: int, seed: int) -> list[str]:
    return sorted(ids, key=lambda i: (subset_key(seed, i), i))[:count]


def choose_subset_ids(id_lists: Sequence[Sequence[str]], fraction: float, seed: int) -> list[set[str]]:
    """Chosen ids per file: exactly ``round(fraction * distinct ids)`` each, consistent on shared ids.

    With two files the ids in both are ranked among themselves and the lowest
    ``round(fraction * |shared|)`` are kept in both; each file then fills up to its own target with
    its own ids. ``round`` is monotone, so the shared picks never exceed a file's target.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 1 <= len(id_lists) <= 2:
        raise ValueError("give one file, or two (stage 1 and stage 2) to keep their shared ids consistent")
    distinct = [set(ids) for ids in id_lists]
    targets = [round(fraction * len(ids)) for ids in distinct]
    if len(distinct) == 1:
        return [set(_lowest(distinct[0], targets[0], seed))]
    shared = distinct[0] & distinct[1]
    shared_chosen = set(_lowest(shared, round(fraction * len(shared)), seed))
    chosen = []
    for ids, target in zip(distinct, targets):
        own = _lowest(ids - shared, target - len(shared_chosen), seed)
        chosen.append(shared_chosen | set(own))
    return chosen


@dataclass(frozen=True)
class SubsetResult:
    source: str
    out: str
    rows_in: int
    rows_out: int
    ids_in: int
    ids_out: int
    shared_ids_out: int


def make_subsets(inputs: Sequence[str | Path], outputs: Sequence[str | Path], fraction: float,
                 seed: int = 0) -> list[SubsetResult]:
    """Write the subset of each input (rows in their original order, every row of a chosen id)."""
    if len(inputs) != len(outputs):
        raise ValueError(f"{len(inputs)} input file(s) but {len(outputs)} output file(s)")
    row_lists = [read_rows(path) for path in inputs]
    id_lists = [_ids_of(rows, str(path)) for rows, path in zip(row_lists, inputs)]
    chosen = choose_subset_ids(id_lists, fraction, seed)
    shared = set.intersection(*chosen) if len(chosen) == 2 else set()
    results = []
    for path, out, rows, ids, keep in zip(inputs, outputs, row_lists, id_lists, chosen):
        kept = [row for row, row_id in zip(rows, ids) if row_id in keep]
        write_rows(out, kept, jsonl=Path(out).suffix == ".jsonl")
        results.append(SubsetResult(str(path), str(out), len(rows), len(kept), len(set(ids)), len(keep),
                                    len(shared)))
        logger.info("%s: kept %d of %d ids (%d rows) -> %s", path, len(keep), len(set(ids)), len(kept), out)
    return results


def default_subset_path(path: str | Path, fraction: float, seed: int) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}_{round(fraction * 100):g}pct_seed{seed}{path.suffix}")


def subset_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exgramed subset",
        description="Reproducible subsets by id (hash of seed and id). Give the stage-1 and stage-2 files together "
                    "to keep the ids they share consistent (in both subsets or in neither).")
    parser.add_argument("--in", dest="inputs", nargs="+", required=True, help="one or two JSON/JSONL files")
    parser.add_argument("--out", nargs="+", default=None,
                        help="one output per input (default: <stem>_<pct>pct_seed<seed>.<ext> next to the input)")
    parser.add_argument("--fraction", type=float, required=True, help="e.g. 0.1 or 0.4")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    outputs = args.out or [default_subset_path(p, args.fraction, args.seed) for p in args.inputs]
    try:
        results = make_subsets(args.inputs, outputs, args.fraction, args.seed)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for r in results:
        print(f"{r.source}: {r.ids_out}/{r.ids_in} ids, {r.rows_out}/{r.rows_in} rows -> {r.out}")
    if len(results) == 2:
        print(f"ids kept in both files: {results[0].shared_ids_out}")
    print_summary({"fraction": args.fraction, "seed": args.seed, "files": [r.__dict__ for r in results]})
    return 0


# --------------------------------------------------------------------------------------------------
# candidate.json
# --------------------------------------------------------------------------------------------------


def _first_answer(row: dict[str, Any], source: str, index: int) -> str:
    pair = find_conversation_pair(row)
    if pair is not None:
        answers = [t.get("value") for t in row[pair[0]] if t.get("from") == "gpt"]
    elif "messages" in row:
        answers = [m.get("content") for m in row["messages"] if m.get("role") == "assistant"]
    else:
        raise ValueError(f"{source}: row {index} (id={row.get('id')!r}) has neither 'conversations' nor 'messages'")
    if not answers:
        raise ValueError(f"{source}: row {index} (id={row.get('id')!r}) has no answer turn")
    return str(answers[0])


def build_candidates(paths: Sequence[str | Path], *, order: str = "first-seen", unique: bool = True) -> list[str]:
    """Lower-cased first answers of the OPEN rows (``answer_type`` case-insensitive).

    The order matters: ``run_eval.py`` breaks similarity ties by the first candidate. The original
    file's order is unknown; ``first-seen`` keeps file order, ``sorted`` sorts. ``unique=False`` keeps
    duplicates (the tie-breaking result is the same, the file larger).
    """
    if order not in ("first-seen", "sorted"):
        raise ValueError(f"order must be 'first-seen' or 'sorted', got {order!r}")
    answers: list[str] = []
    for path in paths:
        for index, row in enumerate(read_rows(path)):
            if str(row.get("answer_type", "")).upper() != "OPEN":
                continue
            answers.append(_first_answer(row, str(path), index).lower())
    if unique:
        answers = list(dict.fromkeys(answers))
    return sorted(answers) if order == "sorted" else answers


def build_candidates_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="exgramed build-candidates",
        description='candidate.json {"0": [lower-cased OPEN answers of the training set]} for open accuracy.')
    parser.add_argument("train", nargs="+", help="training VQA JSON file(s), e.g. train_w_options_new.json")
    parser.add_argument("--out", required=True, help="candidate.json to write")
    parser.add_argument("--order", choices=("first-seen", "sorted"), default="first-seen")
    parser.add_argument("--keep-duplicates", action="store_true")
    args = parser.parse_args(argv)
    try:
        answers = build_candidates(args.train, order=args.order, unique=not args.keep_duplicates)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, {"0": answers})
    print(f"{len(answers)} candidate answers -> {out}")
    print_summary({"out": str(out), "candidates": len(answers)})
    return 0


# --------------------------------------------------------------------------------------------------
# Converters
# --------------------------------------------------------------------------------------------------


def _convert_image_path(path: str, source_dir: Path, out_dir: Path, mode: str, image_root: Path | None) -> str:
    """Keep, make absolute, or re-base a relative image path from the input's folder to the output's."""
    if mode == "keep" or Path(path).expanduser().is_absolute():
        return path
    absolute = (image_root or source_dir) / path
    if mode == "absolute":
        return str(absolute.resolve())
    return os.path.relpath(absolute.resolve(), out_dir.resolve())


def llava_row_to_swift(row: dict[str, Any], *, where: str, image_fn=lambda p: p) -> dict[str, Any]:
    """LLaVA-Med/VQA row -> swift row; unknown keys are kept so the conversion is reversible."""
    pair = find_conversation_pair(row)
    if pair is None:
        raise ValueError(f"{where}: no 'conversations' (or 'conversatons')")
    turns = row[pair[0]]
    messages = []
    for index, turn in enumerate(turns):
        role = ROLE_FROM.get(turn.get("from"))
        if role is None:
            raise ValueError(f"{where}: turn {index} has from={turn.get('from')!r}, expected 'human' or 'gpt'")
        value = turn.get("value")
        messages.append({"role": role, "content": value if isinstance(value, str) else str(value)})
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in pair or key == "image":
            continue
        out[key] = value
    out["messages"] = messages
    image = row.get("image")
    if image is not None:
        out["images"] = [image_fn(p) for p in (image if isinstance(image, list) else [image])]
    if row.get(pair[1]) is not None:
        long_turns = row[pair[1]]
        if len(long_turns) != len(turns):
            raise ValueError(f"{where}: {pair[1]} has {len(long_turns)} turns, {pair[0]} {len(turns)}")
        for index, (short, long) in enumerate(zip(turns, long_turns)):
            if short.get("from") != long.get("from") or (short.get("from") == "human"
                                                         and short.get("value") != long.get("value")):
                raise ValueError(f"{where}: turn {index} of {pair[1]} differs from {pair[0]} outside the answers; "
                                 "extended_answers could not represent it")
        out["extended_answers"] = [str(t.get("value")) for t in long_turns if t.get("from") == "gpt"]
    return out


def swift_row_to_llava(row: dict[str, Any], *, where: str, image_fn=lambda p: p) -> dict[str, Any]:
    """swift row -> LLaVA-Med/VQA row (the correctly spelled ``conversations`` pair)."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: no 'messages'")
    conversations = []
    for index, message in enumerate(messages):
        speaker = _FROM_ROLE.get(message.get("role"))
        if speaker is None:
            raise ValueError(f"{where}: message {index} has role {message.get('role')!r}; the LLaVA-Med format has "
                             "only human and gpt turns (no system prompt)")
        conversations.append({"from": speaker, "value": message.get("content")})
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("messages", "images", "extended_answers"):
            continue
        out[key] = value
    images = row.get("images") or []
    images = [image.get("path") if isinstance(image, dict) else image for image in images]
    if len(images) > 1:
        raise ValueError(f"{where}: {len(images)} images; the LLaVA-Med format holds one 'image' per row")
    if images:
        out["image"] = image_fn(images[0])
    out["conversations"] = conversations
    extended = row.get("extended_answers")
    if extended is not None:
        answers = [t for t in conversations if t["from"] == "gpt"]
        if len(extended) != len(answers):
            raise ValueError(f"{where}: {len(extended)} extended answers for {len(answers)} answers")
        long_iter = iter(extended)
        out["conversations_long"] = [
            {"from": t["from"], "value": next(long_iter) if t["from"] == "gpt" else t["value"]} for t in conversations
        ]
    return out


def convert_file(src: str | Path, dst: str | Path, direction: str, *, image_paths: str = "rebase",
                 image_root: str | Path | None = None) -> int:
    """Convert every row of ``src`` (``direction`` = ``to-swift`` or ``to-llava``); returns the row count."""
    if image_paths not in IMAGE_PATH_MODES:
        raise ValueError(f"image_paths must be one of {IMAGE_PATH_MODES}")
    source_dir, out_dir = Path(src).resolve().parent, Path(dst).resolve().parent
    root = None if image_root is None else Path(image_root).expanduser()

    def image_fn(path: str) -> str:
        return _convert_image_path(path, source_dir, out_dir, image_paths, root)

    if direction not in ("to-swift", "to-llava"):
        raise ValueError(f"direction must be 'to-swift' or 'to-llava', got {direction!r}")
    convert = llava_row_to_swift if direction == "to-swift" else swift_row_to_llava
    rows = [convert(row, where=f"{src}: row {i} (id={row.get('id')!r})", image_fn=image_fn)
            for i, row in enumerate(read_rows(src))]
    write_rows(dst, rows)
    return len(rows)


def _converter_main(direction: str, argv: list[str] | None) -> int:
    name = "llava-to-swift" if direction == "to-swift" else "swift-to-llava"
    what = ("LLaVA-Med / VQA JSON -> swift messages JSONL (conversations_long -> extended_answers)"
            if direction == "to-swift" else
            "swift messages JSON(L) -> LLaVA-Med / VQA JSON (extended_answers -> conversations_long)")
    parser = argparse.ArgumentParser(prog=f"exgramed {name}", description=what + "; other keys are kept.")
    parser.add_argument("src")
    parser.add_argument("dst", help=".jsonl writes JSON Lines, anything else a JSON list")
    parser.add_argument("--image-paths", choices=IMAGE_PATH_MODES, default="rebase",
                        help="rebase (default): relative paths rewritten to resolve from dst's folder; keep; absolute")
    parser.add_argument("--image-root", default=None, help="folder relative image paths of src are relative to "
                                                         "(default: src's folder)")
    args = parser.parse_args(argv)
    try:
        count = convert_file(args.src, args.dst, direction, image_paths=args.image_paths, image_root=args.image_root)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{count} rows -> {args.dst}")
    print_summary({"src": args.src, "dst": args.dst, "rows": count})
    return 0


def llava_to_swift_main(argv: list[str] | None = None) -> int:
    return _converter_main("to-swift", argv)


def swift_to_llava_main(argv: list[str] | None = None) -> int:
    return _converter_main("to-llava", argv)
