"""`exgramed extend-captions`: the extended answers of docs/method.md §4.2 from any OpenAI-compatible LLM.

Why: ExGra-Med's stage-1/2 training needs ``conversations_long`` (every gpt answer rewritten longer
by an LLM). The original script retried forever, rewrote its whole output after every sample and
left the merge of short and long conversations out of the repository. Here:

* one request per (row, gpt turn): system = the shipped prompt (``prompts/extend_caption.txt``, a
  reconstruction, see docs/data.md), user = ``json.dumps({"instruction": <human value incl. "<image>">,
  "answer": <gpt value>})`` as in the original;
* bounded: ``max_attempts`` HTTP tries per request (exponential backoff) and ``parse_attempts``
  requests per turn when the reply does not hold a usable ``revision``;
* every finished turn is appended to ``<out>.progress.jsonl`` (flushed per line), so a crash or
  Ctrl-C loses nothing and the same command resumes; a turn that already has an ``ok`` record is
  never requested again;
* the final ``--out`` JSON holds, in input order, every row whose turns were all extended, with
  both ``conversations`` and ``conversations_long``. Rows with a failed turn are NOT written there
  (no silent substitution of the short answer): they are listed in ``<out>.failures.jsonl``, counted
  in ``<out>.summary.json``, and retried by the next run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from exgramed_plugin.common.concurrency import run_concurrently
from exgramed_plugin.data.conversation import find_conversation_pair
from exgramed_plugin.common.jsonio import (JsonlAppender, print_summary, read_json, read_jsonl_records, write_json,
                                         write_jsonl)
from exgramed_plugin.common.openai_client import ChatClient, ChatRequestError, add_client_arguments, api_key_from_env

logger = logging.getLogger(__name__)

PROMPT_RESOURCE = "prompts/extend_caption.txt"
MAX_RECORDED_REPLY = 2000

STATUS_OK = "ok"
STATUS_MALFORMED = "malformed"
STATUS_REQUEST_FAILED = "request_failed"


class InputError(ValueError):
    """The input file or the progress file cannot be used; the message says where and why."""


class MalformedReply(ValueError):
    """A reply without a usable ``revision``."""


def load_prompt(path: str | os.PathLike | None = None) -> str:
    """The system prompt: ``path`` if given, else the one shipped with the package."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    return resources.files("exgramed_plugin.data").joinpath(PROMPT_RESOURCE).read_text(encoding="utf-8")


@dataclass(frozen=True)
class TurnItem:
    """One gpt answer to extend: row position and id, the turn's pair index, and the request text."""

    index: int
    row_id: str
    turn: int
    instruction: str
    answer: str

    @property
    def key(self) -> tuple[int, int]:
        return (self.index, self.turn)

    def user_message(self) -> str:
        return json.dumps({"instruction": self.instruction, "answer": self.answer})

    def fingerprint(self) -> str:
        """Identifies the request text, so a progress file made from another input is refused."""
        return hashlib.sha1(self.user_message().encode("utf-8")).hexdigest()[:16]


def _conversation_key(row: dict[str, Any]) -> str | None:
    pair = find_conversation_pair(row)
    return None if pair is None else pair[0]


def load_rows(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[TurnItem]]:
    """The LLaVA-Med JSON list and one :class:`TurnItem` per (human, gpt) pair.

    Turns must alternate human, gpt, human, gpt, ...; anything else is an error naming the row.
    """
    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{path}: expected a JSON list of objects (LLaVA-Med format)")
    items: list[TurnItem] = []
    for index, row in enumerate(rows):
        row_id = str(row.get("id", f"#{index}"))
        where = f"{path}, row {index} (id={row_id!r})"
        key = _conversation_key(row)
        if key is None:
            raise InputError(f"{where}: missing 'conversations' (also tried 'conversatons')")
        turns = row[key]
        if not isinstance(turns, list) or not turns or len(turns) % 2:
            raise InputError(f"{where}, field {key!r}: expected a non-empty list of human/gpt pairs")
        for position, turn in enumerate(turns):
            expected = "human" if position % 2 == 0 else "gpt"
            if not isinstance(turn, dict) or turn.get("from") != expected or "value" not in turn:
                raise InputError(f"{where}, field {key!r}: turn {position} should be "
                                 f"{{'from': {expected!r}, 'value': ...}}")
        for pair in range(len(turns) // 2):
            items.append(TurnItem(index=index, row_id=row_id, turn=pair, instruction=str(turns[2 * pair]["value"]),
                                  answer=str(turns[2 * pair + 1]["value"])))
    return rows, items


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*(.*?)\s*```$", re.DOTALL)
_REVISION_STRING = re.compile(r'"revision"\s*:\s*("(?:[^"\\]|\\.)*")', re.DOTALL)


def parse_extension_reply(text: str) -> tuple[str, dict[str, Any] | None]:
    """``(revision, explanation)`` from a reply, or :class:`MalformedReply`.

    Accepts the JSON object alone, inside a code fence, after a ``<think>`` block or surrounded by
    text; as a last resort takes the ``"revision": "..."`` string literal (the original also had a
    string fallback). The revision must be a non-empty string.
    """
    cleaned = _THINK.sub("", text).strip()
    fenced = _FENCE.match(cleaned)
    if fenced:
        cleaned = fenced.group(1)
    candidates = [cleaned]
    start, end = cleaned.find("{"), cleaned.rfind("}")
    if 0 <= start < end:
        candidates.append(cleaned[start:end + 1])
    for candidate in candidates:
        try:
            parsed = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            revision = parsed.get("revision")
            if isinstance(revision, str) and revision.strip():
                explanation = parsed.get("explanation")
                return revision.strip(), explanation if isinstance(explanation, dict) else None
            raise MalformedReply("JSON reply without a non-empty string 'revision'")
    match = _REVISION_STRING.search(cleaned)
    if match:
        try:
            revision = json.loads(match.group(1))
        except ValueError:
            revision = ""
        if revision.strip():
            return revision.strip(), None
    raise MalformedReply("no JSON object with a 'revision' in the reply")


@dataclass(frozen=True)
class GenerationSettings:
    """What is sent with every request (temperature/max_tokens None = the server's default)."""

    temperature: float | None = None
    max_tokens: int | None = None
    parse_attempts: int = 3


def extend_one(client: ChatClient, system_prompt: str, item: TurnItem, settings: GenerationSettings) -> dict[str, Any]:
    """One turn → a progress record (``status`` ok / malformed / request_failed); never raises for a
    bad reply or an unreachable server, so one failure cannot stop the run."""
    record: dict[str, Any] = {"index": item.index, "id": item.row_id, "turn": item.turn,
                              "fingerprint": item.fingerprint(), "model": client.model}
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": item.user_message()}]
    requests = 0
    for _ in range(settings.parse_attempts):
        try:
            reply = client.chat(messages, temperature=settings.temperature, max_tokens=settings.max_tokens)
        except ChatRequestError as error:
            requests += error.attempts
            return {**record, "status": STATUS_REQUEST_FAILED, "error": str(error), "requests": requests}
        requests += reply.attempts
        try:
            revision, explanation = parse_extension_reply(reply.content)
        except MalformedReply as error:
            record.update(status=STATUS_MALFORMED, error=str(error), reply=reply.content[:MAX_RECORDED_REPLY])
            continue
        record.pop("error", None)
        record.pop("reply", None)
        return {**record, "status": STATUS_OK, "revision": revision, "explanation": explanation,
                "requests": requests}
    return {**record, "requests": requests}


@dataclass
class ExtendReport:
    """Counts and paths of one run (also written as ``<out>.summary.json``)."""

    input: str
    out: str | None
    progress: str
    failures: str | None
    summary: str | None
    rows: int
    turns: int
    turns_done_before: int
    turns_requested: int
    turns_ok: int
    turns_malformed: int
    turns_request_failed: int
    rows_written: int
    rows_failed: int
    interrupted: bool
    model: str
    base_url: str
    failed_rows: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.interrupted and self.rows_failed == 0


def default_progress_path(out: str | os.PathLike) -> Path:
    return Path(f"{out}.progress.jsonl")


def _load_progress(path: Path, items: list[TurnItem]) -> tuple[dict[tuple[int, int], dict[str, Any]],
                                                                dict[tuple[int, int], dict[str, Any]]]:
    """(ok records, latest failure records) by (row index, turn); refuses a file from another input."""
    by_key = {item.key: item for item in items}
    done: dict[tuple[int, int], dict[str, Any]] = {}
    failed: dict[tuple[int, int], dict[str, Any]] = {}
    for number, record in enumerate(read_jsonl_records(path), start=1):
        try:
            key = (int(record["index"]), int(record["turn"]))
            status, fingerprint = record["status"], record["fingerprint"]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: record {number} is not an extend-captions progress record") from error
        item = by_key.get(key)
        if item is None or item.fingerprint() != fingerprint:
            raise InputError(f"{path}: record {number} (row {key[0]}, turn {key[1]}) does not match the input "
                             "file; it was written for another input. Use another --out or --progress.")
        if status == STATUS_OK:
            done.setdefault(key, record)  # the first ok record wins; later duplicates are ignored
            failed.pop(key, None)
        elif key not in done:
            failed[key] = record
    return done, failed


def _output_row(row: dict[str, Any], revisions: list[str]) -> dict[str, Any]:
    """The input row with ``conversations`` (the input turns) and ``conversations_long`` (gpt values
    replaced by the revisions); the misspelled ``conversatons`` pair is written with the correct name."""
    key = _conversation_key(row)
    turns = row[key]
    long_turns = []
    for position, turn in enumerate(turns):
        long_turns.append({**turn, "value": revisions[position // 2]} if position % 2 else dict(turn))
    out = {k: v for k, v in row.items() if k not in ("conversatons", "conversatons_long", "conversations_long")}
    out["conversations"] = turns
    out["conversations_long"] = long_turns
    return out


def extend_captions(in_path: str | os.PathLike, out_path: str | os.PathLike, client: ChatClient, *,
                    concurrency: int = 4, settings: GenerationSettings | None = None,
                    system_prompt: str | None = None, progress_path: str | os.PathLike | None = None,
                    limit: int | None = None, show_progress: bool | None = None) -> ExtendReport:
    """Extend every pending turn, then (unless interrupted) write ``out_path`` and its side files.

    ``limit`` keeps only the first ``limit`` rows (to try a model or prompt cheaply).
    """
    settings = settings or GenerationSettings()
    if settings.parse_attempts < 1:
        raise ValueError("parse_attempts must be >= 1")
    system_prompt = load_prompt() if system_prompt is None else system_prompt
    out_path = Path(out_path)
    progress = Path(progress_path) if progress_path is not None else default_progress_path(out_path)
    rows, items = load_rows(in_path)
    done, failed = _load_progress(progress, items)
    if limit is not None:
        rows = rows[:limit]
        items = [item for item in items if item.index < limit]
        done = {key: record for key, record in done.items() if key[0] < limit}
        failed = {key: record for key, record in failed.items() if key[0] < limit}
    pending = [item for item in items if item.key not in done]
    if done:
        logger.info("resuming from %s: %d of %d turns already extended", progress, len(done), len(items))
    counts: Counter[str] = Counter()

    progress.parent.mkdir(parents=True, exist_ok=True)
    with JsonlAppender(progress) as writer:
        def on_result(item: TurnItem, record: dict[str, Any]) -> None:
            writer.append(record)
            counts[record["status"]] += 1
            if record["status"] == STATUS_OK:
                done[item.key] = record
                failed.pop(item.key, None)
            else:
                failed[item.key] = record
                logger.debug("row %s turn %d: %s: %s", item.row_id, item.turn, record["status"], record.get("error"))

        interrupted = run_concurrently(pending, lambda item: extend_one(client, system_prompt, item, settings),
                                       on_result, concurrency=concurrency, desc="extend-captions",
                                       show_progress=show_progress)

    failed_rows = sorted({key[0] for key in failed})
    report = ExtendReport(
        input=str(in_path), out=None, progress=str(progress), failures=None, summary=None, rows=len(rows),
        turns=len(items), turns_done_before=len(items) - len(pending), turns_requested=sum(counts.values()),
        turns_ok=counts[STATUS_OK], turns_malformed=counts[STATUS_MALFORMED],
        turns_request_failed=counts[STATUS_REQUEST_FAILED], rows_written=0, rows_failed=len(failed_rows),
        interrupted=interrupted, model=client.model, base_url=client.base_url,
        failed_rows=[str(rows[i].get("id", f"#{i}")) for i in failed_rows])
    if interrupted:
        logger.warning("interrupted: %d turn(s) saved in %s; run the same command again to resume",
                       len(done), progress)
        return report

    revisions: dict[int, list[str]] = {}
    for item in items:
        if item.key in done:
            revisions.setdefault(item.index, []).append(done[item.key]["revision"])
    turns_per_row = Counter(item.index for item in items)
    output = [_output_row(row, revisions[i]) for i, row in enumerate(rows)
              if len(revisions.get(i, [])) == turns_per_row[i]]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_path, output)
    failures_path = Path(f"{out_path}.failures.jsonl")
    if failed:
        write_jsonl(failures_path, [failed[key] for key in sorted(failed)])
        report.failures = str(failures_path)
    else:
        failures_path.unlink(missing_ok=True)
    report.out, report.rows_written = str(out_path), len(output)
    summary_path = Path(f"{out_path}.summary.json")
    report.summary = str(summary_path)
    summary = asdict(report)
    summary.update(complete=report.complete, turns_failed_now=len(failed),
                   failed_turns_by_status=dict(Counter(r["status"] for r in failed.values())))
    write_json(summary_path, summary)
    return report


def format_report(report: ExtendReport) -> str:
    """Human-readable summary of a run."""
    lines = [
        f"rows: {report.rows}   turns (gpt answers): {report.turns}",
        f"already extended before this run: {report.turns_done_before}",
        f"requested now: {report.turns_requested}  ok: {report.turns_ok}  malformed replies: "
        f"{report.turns_malformed}  request failures: {report.turns_request_failed}",
    ]
    if report.interrupted:
        lines.append(f"INTERRUPTED: progress kept in {report.progress}; rerun the same command to resume")
        return "\n".join(lines)
    lines.append(f"rows written with conversations_long: {report.rows_written} -> {report.out}")
    if report.rows_failed:
        shown = ", ".join(report.failed_rows[:10]) + (" ..." if len(report.failed_rows) > 10 else "")
        lines.append(f"rows NOT written (a turn failed; see {report.failures}): {report.rows_failed} [{shown}]")
        lines.append("rerun the same command to retry only the failed turns")
    lines.append(f"summary: {report.summary}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed extend-captions",
        description="Extended answers (conversations_long) for a LLaVA-Med JSON with any OpenAI-compatible "
                    "LLM (docs/method.md §4.2). Resumable: rerun the same command after a crash or Ctrl-C.")
    parser.add_argument("--in", dest="in_path", metavar="IN", required=True,
                        help="LLaVA-Med JSON (list of rows with conversations)")
    parser.add_argument("--out", required=True, help="output JSON: rows with conversations and conversations_long")
    parser.add_argument("--base-url", required=True,
                        help="OpenAI-compatible base URL, e.g. https://openrouter.ai/api/v1")
    parser.add_argument("--model", required=True, help="model name sent to the endpoint, e.g. openai/gpt-4o-mini")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--prompt-file", default=None, help="system prompt file (default: the shipped "
                        "reconstruction of the paper's prompts/extend_caption.txt)")
    parser.add_argument("--progress", default=None, help="progress file (default <out>.progress.jsonl)")
    add_client_arguments(parser)
    parser.add_argument("--parse-attempts", type=int, default=3,
                        help="requests per turn while the reply holds no usable revision (default 3)")
    parser.add_argument("--temperature", type=float, default=None, help="default: the server's")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the server's")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every row extended, 1 some rows failed (listed), 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[exgramed] %(message)s")
    if args.concurrency < 1 or args.max_attempts < 1 or args.parse_attempts < 1:
        print("error: --concurrency, --max-attempts and --parse-attempts must be >= 1", file=sys.stderr)
        return 2
    try:
        client = ChatClient(base_url=args.base_url, model=args.model, api_key=api_key_from_env(args.api_key_env),
                            timeout=args.timeout, max_attempts=args.max_attempts, backoff_base=args.backoff)
        prompt = load_prompt(args.prompt_file)
        report = extend_captions(args.in_path, args.out, client, concurrency=args.concurrency,
                                 settings=GenerationSettings(args.temperature, args.max_tokens, args.parse_attempts),
                                 system_prompt=prompt, progress_path=args.progress, limit=args.limit,
                                 show_progress=False if args.no_progress_bar else None)
    except (InputError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_report(report))
    print_summary(asdict(report), ok=report.complete)
    if report.interrupted:
        return 130
    return 0 if report.complete else 1


if __name__ == "__main__":
    sys.exit(main())
