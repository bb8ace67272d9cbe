"""`exgramed eval-chat`: the LLaVA-Med medical visual chatbot protocol (docs/method.md §6.3).

Why: ExGra-Med's chatbot numbers come from a GPT-4 review of the model's answers against GPT-4's own
text-only answers (relative score = mean(s2/s1) × 100). The original script is tied to an Azure
GPT-4 deployment, pairs answers with questions by file order, retries 30 silent rounds and crashes
on a reply whose first line is not two numbers. Here any OpenAI-compatible judge works, pairing is
by ``question_id``, retries are bounded, and an unparsable reply is recorded and counted (and left
out of the means) instead of crashing or being guessed.

Prompts: the system string (with its leading quote, sic) and the user template are those of
docs/method.md §6.3; the rating instruction is reconstructed from its description there.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exgramed_plugin.common.concurrency import run_concurrently
from exgramed_plugin.data.conversation import IMAGE_TAG
from exgramed_plugin.common.jsonio import JsonlAppender, print_summary, read_jsonl, write_json, write_jsonl
from exgramed_plugin.eval.eval_vqa import id_pairing_problems, load_answers
from exgramed_plugin.common.openai_client import ChatClient, ChatRequestError, add_client_arguments, api_key_from_env

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "'You are a helpful and precise assistant for checking the quality of the answer."
# Reconstructed from the description in docs/method.md §6.3 (the original wording is not shipped
# here): rate helpfulness, relevance, accuracy and level of detail, one overall 1-10 score per
# assistant, first line = the two scores separated by a space, then an explanation free of order
# bias. Judge scores are comparable across runs of this tool, not exactly with published tables.
INSTRUCT_PROMPT = (
    "Judge the two AI assistants' answers to the question above about a biomedical image; the image is "
    "described to you only through its caption and context. Rate the helpfulness, relevance, accuracy and "
    "level of detail of each answer, and give each assistant one overall score from 1 to 10 (higher is better). "
    "On the first line write only the two scores, Assistant 1 then Assistant 2, separated by a space. On the "
    "following lines explain your rating, without letting the order in which the answers were shown affect it."
)
ROLE = "Assistant"
IMAGE_SUFFIX = f"\n{IMAGE_TAG}"
DOMAINS = ("chest_xray", "mri", "histology", "gross", "ct_scan")
QUESTION_TYPES = ("conversation", "detailed_description")
OVERALL = "overall"
UNKNOWN_DOMAIN = "unknown"
CONTEXT_STYLES = ("original", "joined")
MAX_ERROR_LIST = 20

STATUS_OK = "ok"
STATUS_UNPARSABLE = "unparsable"
STATUS_REQUEST_FAILED = "request_failed"

_SCORE_LINE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(?:,\s*|\s+)(\d+(?:\.\d+)?)\s*")


def review_user_message(fig_label: Any, fig_caption: Any, fig_context: Any, question: str, ans1: str, ans2: str) -> str:
    """The user message, character for character the original ``conv_to_str``."""
    return (f"[Context]\n"
            f"Figure Caption:\n{fig_label}: {fig_caption}\n\n"
            f"Figure Context:\n\t- {fig_context}\n\n"
            f"[Question]\n{question}\n\n"
            f"[{ROLE} 1]\n{ans1}\n\n[End of {ROLE} 1]\n\n"
            f"[{ROLE} 2]\n{ans2}\n\n[End of {ROLE} 2]\n\n"
            f"[System]\n{INSTRUCT_PROMPT}\n\n")


def figure_context(in_text_mention: Any, style: str = "original") -> Any:
    """``original``: the field as is (the original f-string prints a list of mention dicts as its
    Python repr); ``joined``: the mentions' ``tokens`` joined by ``\\n\\t- `` as LLaVA-Med's
    instruction-generation code formats them."""
    if style == "original" or not isinstance(in_text_mention, list):
        return in_text_mention
    parts = [m.get("tokens", "") if isinstance(m, dict) else str(m) for m in in_text_mention]
    return "\n\t- ".join(p for p in parts if p)


def question_text(text: str) -> str:
    """The question without its trailing ``"\\n<image>"``; the original cut ``text[:-8]`` blindly,
    which is the same on the released file; other text is kept whole."""
    return text[: -len(IMAGE_SUFFIX)] if text.endswith(IMAGE_SUFFIX) else text


def question_domain(question: dict[str, Any]) -> str:
    """First true flag of ``domain`` in the original's order; a plain string is taken as is."""
    domain = question.get("domain")
    if isinstance(domain, str) and domain:
        return domain
    if isinstance(domain, dict):
        for name in DOMAINS:
            if domain.get(name):
                return name
    return UNKNOWN_DOMAIN


def parse_scores(reply: str) -> tuple[float, float] | None:
    """``(s1, s2)`` from the reply's first line ("8 7", also "8, 7" and "8.5 7"), else None."""
    lines = reply.strip().split("\n")
    match = _SCORE_LINE.fullmatch(lines[0]) if lines else None
    if match is None:
        return None
    s1, s2 = float(match.group(1)), float(match.group(2))
    return (s1, s2) if math.isfinite(s1) and math.isfinite(s2) else None


@dataclass(frozen=True)
class ChatQuestion:
    question_id: str
    type: str
    domain: str
    messages: list[dict[str, str]]


def build_questions(questions_path: str | Path, answers_path: str | Path,
                    context_style: str = "original") -> list[ChatQuestion]:
    """Pair answers with questions by ``question_id`` (not by line order as the original) and build
    the judge messages; missing, extra or duplicated ids are an error listing them."""
    questions = [row for _, row in read_jsonl(questions_path)]
    answers = load_answers(answers_path)
    required = ("question_id", "text", "fig_label", "fig_caption", "in_text_mention", "gpt4_answer", "type")
    for number, row in enumerate(questions, start=1):
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(f"{questions_path}: question {number}: missing field(s) {missing}")
    question_ids = [str(q["question_id"]) for q in questions]
    answer_ids = [a.id for a in answers]
    problems = id_pairing_problems(question_ids, answer_ids, question="question", answer="answer",
                                   missing="no answer for", extra="answers without a question for")
    answer_by_id = {a.id: a.text for a in answers}
    if problems:
        raise ValueError("questions and answers do not match: " + "; ".join(problems))
    built = []
    for row, question_id in zip(questions, question_ids, strict=True):
        user = review_user_message(row["fig_label"], row["fig_caption"],
                                   figure_context(row["in_text_mention"], context_style),
                                   question_text(str(row["text"])), row["gpt4_answer"], answer_by_id[question_id])
        built.append(ChatQuestion(question_id=question_id, type=str(row["type"]), domain=question_domain(row),
                                  messages=[{"role": "system", "content": SYSTEM_PROMPT},
                                            {"role": "user", "content": user}]))
    return built


def judge_one(client: ChatClient, question: ChatQuestion, *, max_tokens: int | None,
              parse_attempts: int = 1) -> dict[str, Any]:
    """One review at temperature 0 → a per-question record; never raises for a bad reply."""
    record: dict[str, Any] = {"question_id": question.question_id, "type": question.type, "domain": question.domain}
    requests = 0
    for _ in range(parse_attempts):
        try:
            reply = client.chat(question.messages, temperature=0.0, max_tokens=max_tokens)
        except ChatRequestError as error:
            return {**record, "status": STATUS_REQUEST_FAILED, "error": str(error),
                    "requests": requests + error.attempts}
        requests += reply.attempts
        scores = parse_scores(reply.content)
        record["reply"] = reply.content
        if scores is None:
            record.update(status=STATUS_UNPARSABLE, error="first line is not two scores")
            continue
        if scores[0] <= 0:
            record.update(status=STATUS_UNPARSABLE, error=f"Assistant 1 score {scores[0]:g}: relative score undefined",
                          gpt4_score=scores[0], pred_score=scores[1])
            continue
        record.pop("error", None)
        return {**record, "status": STATUS_OK, "gpt4_score": scores[0], "pred_score": scores[1],
                "relative": scores[1] / scores[0], "requests": requests}
    return {**record, "requests": requests}


@dataclass
class ChatReport:
    groups: dict[str, dict[str, Any]]
    counts: dict[str, int]
    unscored: list[dict[str, Any]]
    per_question: list[dict[str, Any]] = field(default_factory=list)
    judge: dict[str, Any] = field(default_factory=dict)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per type, per domain and overall: mean s1 (``gpt4_score``), mean s2 (``pred_score``),
    ``relative_score`` = mean(s2/s1)×100 over scored questions, plus scored/unscored counts."""
    members: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        for group in (record["type"], record["domain"], OVERALL):
            members[group].append(record)
    ordered = [g for g in (*QUESTION_TYPES, *DOMAINS) if g in members]
    ordered += sorted(g for g in members if g not in ordered and g != OVERALL) + [OVERALL]
    groups = {}
    for group in ordered:
        scored = [r for r in members[group] if r["status"] == STATUS_OK]
        relative = _mean([r["relative"] for r in scored])
        groups[group] = {
            "gpt4_score": _mean([r["gpt4_score"] for r in scored]),
            "pred_score": _mean([r["pred_score"] for r in scored]),
            "relative_score": None if relative is None else relative * 100,
            "scored": len(scored),
            "unscored": len(members[group]) - len(scored),
        }
    return groups


def format_table(report: ChatReport) -> str:
    """Groups as rows: relative score first (the number the papers report)."""
    header = f"{'group':22s} {'relative':>9s} {'gpt4 s1':>8s} {'model s2':>9s} {'scored':>7s} {'unscored':>9s}"
    lines = [header, "-" * len(header)]
    for name, g in report.groups.items():
        def fmt(value: float | None, width: int) -> str:
            return f"{value:{width}.2f}" if value is not None else f"{'-':>{width}s}"
        lines.append(f"{name:22s} {fmt(g['relative_score'], 9)} {fmt(g['gpt4_score'], 8)} {fmt(g['pred_score'], 9)} "
                     f"{g['scored']:7d} {g['unscored']:9d}")
    counts = report.counts
    lines.append(f"\nquestions: {counts['questions']}  scored: {counts[STATUS_OK]}  unparsable replies: "
                 f"{counts[STATUS_UNPARSABLE]}  request failures: {counts[STATUS_REQUEST_FAILED]}")
    if report.unscored:
        shown = ", ".join(f"{r['question_id']} ({r['status']})" for r in report.unscored[:MAX_ERROR_LIST])
        more = " ..." if len(report.unscored) > MAX_ERROR_LIST else ""
        lines.append(f"not scored (excluded from the means): {shown}{more}")
    return "\n".join(lines)


def evaluate_chat(questions_path: str | Path, answers_path: str | Path, client: ChatClient, *,
                  per_question_path: str | Path | None = None, concurrency: int = 3, max_tokens: int | None = None,
                  parse_attempts: int = 1, context_style: str = "original",
                  show_progress: bool | None = None) -> ChatReport:
    """Judge every question; per-question records are appended to ``per_question_path`` as they arrive
    (so an interrupted run keeps what it paid for). Raises KeyboardInterrupt after saving on Ctrl-C."""
    questions = build_questions(questions_path, answers_path, context_style)
    results: dict[str, dict[str, Any]] = {}
    writer = None
    if per_question_path is not None:
        Path(per_question_path).write_text("", encoding="utf-8")  # a fresh file per run
        writer = JsonlAppender(per_question_path, fsync=False)

    def on_result(question: ChatQuestion, record: dict[str, Any]) -> None:
        results[question.question_id] = record
        if writer is not None:
            writer.append(record)

    try:
        interrupted = run_concurrently(
            questions, lambda q: judge_one(client, q, max_tokens=max_tokens, parse_attempts=parse_attempts),
            on_result, concurrency=concurrency, desc="eval-chat", show_progress=show_progress)
    finally:
        if writer is not None:
            writer.close()
    if interrupted:
        raise KeyboardInterrupt
    records = [results[q.question_id] for q in questions]
    counts = Counter(r["status"] for r in records)
    report = ChatReport(
        groups=aggregate(records),
        counts={"questions": len(records), STATUS_OK: counts[STATUS_OK], STATUS_UNPARSABLE: counts[STATUS_UNPARSABLE],
                STATUS_REQUEST_FAILED: counts[STATUS_REQUEST_FAILED]},
        unscored=[{"question_id": r["question_id"], "status": r["status"], "error": r.get("error")}
                  for r in records if r["status"] != STATUS_OK],
        per_question=records,
        judge={"base_url": client.base_url, "model": client.model, "temperature": 0.0,
               "context_style": context_style, "questions": str(questions_path), "answers": str(answers_path)})
    return report


def write_report(report: ChatReport, json_path: str | Path, per_question_path: str | Path) -> None:
    """Summary JSON (groups, counts, unscored list) and the per-question JSONL in question order."""
    write_json(json_path, {"groups": report.groups, "counts": report.counts, "unscored": report.unscored,
                           "judge": report.judge,
                           "relative_score_definition": "mean(s2/s1) x 100 over scored questions"})
    write_jsonl(per_question_path, report.per_question)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed eval-chat",
        description="LLaVA-Med chatbot evaluation (docs/method.md §6.3) with any OpenAI-compatible judge: relative "
                    "score = mean(s2/s1) x 100 per question type, per domain and overall.")
    parser.add_argument("--answers", required=True, help="model answers JSONL (question_id + text, or swift infer "
                        "rows with id + response)")
    parser.add_argument("--questions", required=True, help="llava_med_eval_qa50_qa.jsonl")
    parser.add_argument("--judge-base-url", required=True, help="OpenAI-compatible base URL")
    parser.add_argument("--judge-model", required=True, help="judge model name, e.g. gpt-4o")
    parser.add_argument("--out-json", default=None, help="summary JSON (default <answers>.chat_review.json)")
    parser.add_argument("--out-jsonl", default=None, help="per-question JSONL (default <answers>.chat_review.jsonl)")
    parser.add_argument("--concurrency", type=int, default=3, help="requests in flight (default 3, as the original)")
    add_client_arguments(parser)
    parser.add_argument("--parse-attempts", type=int, default=1,
                        help="requests per question while the reply is unparsable (default 1: temperature 0)")
    parser.add_argument("--max-tokens", type=int, default=None, help="judge reply limit (default: the server's)")
    parser.add_argument("--context-style", choices=CONTEXT_STYLES, default="original",
                        help="figure context: 'original' = the in_text_mention field as the original printed it "
                             "(Python repr of a list); 'joined' = the mention sentences")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every question scored, 1 some not scored (report still written), 2 bad input,
    130 interrupted."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[exgramed] %(message)s")
    answers = Path(args.answers)
    out_json = Path(args.out_json) if args.out_json else answers.with_suffix(".chat_review.json")
    out_jsonl = Path(args.out_jsonl) if args.out_jsonl else answers.with_suffix(".chat_review.jsonl")
    if args.concurrency < 1 or args.max_attempts < 1 or args.parse_attempts < 1:
        print("error: --concurrency, --max-attempts and --parse-attempts must be >= 1", file=sys.stderr)
        return 2
    try:
        client = ChatClient(base_url=args.judge_base_url, model=args.judge_model,
                            api_key=api_key_from_env(args.api_key_env), timeout=args.timeout,
                            max_attempts=args.max_attempts, backoff_base=args.backoff)
        report = evaluate_chat(args.questions, answers, client, per_question_path=out_jsonl,
                               concurrency=args.concurrency, max_tokens=args.max_tokens,
                               parse_attempts=args.parse_attempts, context_style=args.context_style,
                               show_progress=False if args.no_progress_bar else None)
    except KeyboardInterrupt:
        print(f"interrupted; the reviews received so far are in {out_jsonl}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_report(report, out_json, out_jsonl)
    print(format_table(report))
    print(f"\nwrote {out_json} and {out_jsonl}")
    complete = report.counts[STATUS_OK] == report.counts["questions"]
    print_summary({"report": str(out_json), "reviews": str(out_jsonl), "counts": report.counts}, ok=complete)
    return 0 if report.counts[STATUS_OK] == report.counts["questions"] else 1


if __name__ == "__main__":
    sys.exit(main())
