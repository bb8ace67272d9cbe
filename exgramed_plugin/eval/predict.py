"""`exgramed predict`: batched greedy VQA answers through swift's inference engine (method-spec §6.1).

Why a command of our own next to ``swift infer``: the original evaluation reads the answers JSONL of
``model_vqa_med.py`` (``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``,
``metadata``) in question-file order, and long runs (PathVQA: 6.7 K questions) must survive being
interrupted. Here every finished batch is appended and flushed at once; a rerun skips the ids already
answered and finally rewrites the file in question-file order.

Prompt and answer post-processing are the ``exgra_med`` template's (§2.3/§2.4; switches
``EXGRAMED_PROMPT_STYLE`` and ``EXGRAMED_RESPONSE_MODE``, also settable with ``--prompt-style`` /
``--response-mode``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IMAGE_TAG = "<image>"
# shortuuid's default alphabet (the original stored ``shortuuid.uuid()`` as answer_id).
_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class VQAPrompt:
    """One question to answer: its id as written in the file, the user text and resolved images."""

    question_id: Any
    text: str  # the human turn, with its <image> tag(s)
    images: tuple[str, ...]

    @property
    def key(self) -> str:
        """Ids are compared as strings (JSON ints and strings both occur in released files)."""
        return str(self.question_id)

    @property
    def prompt_field(self) -> str:
        """The ``prompt`` field of model_vqa_med.py: question without tags, stripped, + ``\\n<image>``."""
        question = self.text.replace(IMAGE_TAG, "").strip()
        return f"{question}\n{IMAGE_TAG}" if self.images else question


def short_uuid() -> str:
    """A 22-character id in shortuuid's alphabet (what the original wrote), without the dependency."""
    number = uuid.uuid4().int
    digits = []
    base = len(_SHORTUUID_ALPHABET)
    for _ in range(22):
        number, remainder = divmod(number, base)
        digits.append(_SHORTUUID_ALPHABET[remainder])
    return "".join(reversed(digits))


def load_prompts(questions_path: str | Path, image_root: str | Path | None = None) -> list[VQAPrompt]:
    """First human turn and resolved images of every row of a VQA JSON / swift JSON(L) file.

    Rows are read with the plugin's own format code, so a missing image is an error naming the file,
    the row id and the field (nothing is skipped). Duplicated ids are an error too, because the
    answers are paired with the questions by id.
    """
    from exgramed_plugin.data.formats import row_to_standard
    from exgramed_plugin.eval.eval_vqa import _read_json_or_jsonl

    source = str(Path(questions_path).resolve())
    root = None if image_root is None else str(Path(image_root).expanduser().resolve())
    if root is None:
        root = str(Path(source).parent)
    prompts: list[VQAPrompt] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(_read_json_or_jsonl(questions_path)):
        if "id" not in row:
            raise ValueError(f"{questions_path}: row {index} has no 'id'; answers are paired with questions by id")
        standard = row_to_standard(row, source, root, index)
        user_turns = [m for m in standard["messages"] if m["role"] == "user"]
        if not user_turns:
            raise ValueError(f"{questions_path}: row id={row['id']!r} has no human turn")
        text = user_turns[0]["content"]
        if standard["images"] and IMAGE_TAG not in text:  # swift rows may leave the tag out
            text = f"{text}\n{IMAGE_TAG}"
        # Single-turn VQA: only the images of the first question are used.
        images = tuple(standard["images"][: text.count(IMAGE_TAG)])
        prompt = VQAPrompt(question_id=row["id"], text=text, images=images)
        if prompt.key in seen:
            raise ValueError(f"{questions_path}: id {row['id']!r} occurs in rows {seen[prompt.key]} and {index}")
        seen[prompt.key] = index
        prompts.append(prompt)
    return prompts


def read_existing_answers(out_path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a previous (possibly interrupted) run, by question id string.

    A truncated last line (the process was killed while writing) is dropped with a warning; any other
    unreadable line is an error, since silently re-answering would hide a corrupted file.
    """
    if not out_path.is_file():
        return {}
    lines = out_path.read_text(encoding="utf-8").splitlines()
    rows: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                logger.warning("%s: dropping the truncated last line %d of an interrupted run", out_path, number)
                continue
            raise ValueError(f"{out_path}:{number}: invalid JSON line: {error}") from error
        if "question_id" not in row:
            raise ValueError(f"{out_path}:{number}: no 'question_id'; is this an answers file of `exgramed predict`?")
        rows[str(row["question_id"])] = row
    return rows


def _write_rows_atomically(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _batches(items: Sequence[VQAPrompt], size: int) -> Iterator[Sequence[VQAPrompt]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def resolve_dtype(name: str):
    """``auto``: bfloat16 on a GPU that supports it, else float32 (CPU half precision is slow)."""
    import torch
    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def load_engine(model: str, *, adapters: Sequence[str] = (), batch_size: int = 8, dtype: str = "auto",
                device_map: str | None = None):
    """swift's ``TransformersEngine`` for an ``exgra_med`` checkpoint, with the plugin registered."""
    import exgramed_plugin.register  # noqa: F401  (model type, template, datasets)
    from swift.infer_engine import TransformersEngine
    return TransformersEngine(model, adapters=list(adapters) or None, max_batch_size=batch_size,
                              torch_dtype=resolve_dtype(dtype), device_map=device_map)


def generate_answers(engine, prompts: Sequence[VQAPrompt], *, max_new_tokens: int) -> list[str]:
    """Greedy answers for one batch (temperature 0 = ``do_sample=False`` in swift)."""
    from swift.infer_engine import InferRequest, RequestConfig
    requests = [InferRequest(messages=[{"role": "user", "content": p.text}], images=list(p.images))
                for p in prompts]
    config = RequestConfig(max_tokens=max_new_tokens, temperature=0)
    responses = engine.infer(requests, config, use_tqdm=False)
    return [response.choices[0].message.content for response in responses]


def answer_row(prompt: VQAPrompt, text: str, model_id: str) -> dict[str, Any]:
    """One line of the §6.1 answers JSONL."""
    return {"question_id": prompt.question_id, "prompt": prompt.prompt_field, "text": text,
            "answer_id": short_uuid(), "model_id": model_id, "metadata": {}}


def predict(model: str, questions: str | Path, out: str | Path, *, images: str | Path | None = None,
            batch_size: int = 8, max_new_tokens: int = 1024, adapters: Sequence[str] = (),
            model_id: str | None = None, dtype: str = "auto", device_map: str | None = None,
            limit: int | None = None, engine=None, show_progress: bool = True) -> Path:
    """Answer every question of ``questions`` not yet in ``out``; returns ``out``.

    ``engine`` may be passed to reuse a loaded ``TransformersEngine``. ``limit`` answers only the
    first N questions (smoke tests). The finished file holds one row per question, in file order.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_path = Path(out)
    prompts = load_prompts(questions, images)
    if limit is not None:
        prompts = prompts[:limit]
    existing = read_existing_answers(out_path)
    wanted = {p.key for p in prompts}
    foreign = [key for key in existing if key not in wanted]
    if foreign:
        raise ValueError(f"{out_path} holds answers for {len(foreign)} id(s) that are not questions of {questions} "
                         f"(e.g. {foreign[:5]}); use another --out or delete it")
    todo = [p for p in prompts if p.key not in existing]
    logger.info("%d question(s), %d already answered in %s, %d to do", len(prompts), len(prompts) - len(todo),
                out_path, len(todo))
    model_id = model_id or str(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if todo:
        if existing:  # rewrite without a possibly truncated last line before appending
            _write_rows_atomically(out_path, [existing[p.key] for p in prompts if p.key in existing])
        if engine is None:
            engine = load_engine(model, adapters=adapters, batch_size=batch_size, dtype=dtype, device_map=device_map)
        with open(out_path, "a", encoding="utf-8") as handle, \
                tqdm(total=len(todo), desc="predict", unit="q", disable=not show_progress) as bar:
            for batch in _batches(todo, batch_size):
                for prompt, text in zip(batch, generate_answers(engine, batch, max_new_tokens=max_new_tokens)):
                    row = answer_row(prompt, text, model_id)
                    existing[prompt.key] = row
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(len(batch))
    # Question-file order, whatever order earlier runs appended in.
    _write_rows_atomically(out_path, [existing[p.key] for p in prompts])
    return out_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed predict",
        description="Greedy VQA answers with swift's TransformersEngine and the exgra_med template; writes the "
                    "answers JSONL of model_vqa_med.py in question-file order; rerunning skips answered ids.")
    parser.add_argument("--model", required=True, help="exgra_med checkpoint folder (or base model with --adapters)")
    parser.add_argument("--adapters", nargs="*", default=[], help="LoRA checkpoint folder(s) trained with swift")
    parser.add_argument("--questions", required=True, help="VQA JSON (test_w_options_new.json) or swift rows")
    parser.add_argument("--images", default=None, help="image root for relative paths (default: the questions "
                                                       "file's folder)")
    parser.add_argument("--out", required=True, help="answers JSONL (appended to and resumed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="original: 1024 (generation stops at ###)")
    parser.add_argument("--prompt-style", choices=("simple", "v0"), default=None,
                        help="sets EXGRAMED_PROMPT_STYLE (default: environment, else simple = original)")
    parser.add_argument("--response-mode", choices=("original", "clean", "raw"), default=None,
                        help="sets EXGRAMED_RESPONSE_MODE (default: environment, else original)")
    parser.add_argument("--model-id", default=None, help="model_id field (default: --model as given)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--device-map", default=None, help="e.g. cuda:0 or auto (default: swift's choice)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    return parser


def apply_template_switches(prompt_style: str | None, response_mode: str | None) -> None:
    """The template reads its switches from the environment; CLI flags override it."""
    if prompt_style is not None:
        os.environ["EXGRAMED_PROMPT_STYLE"] = prompt_style
    if response_mode is not None:
        os.environ["EXGRAMED_RESPONSE_MODE"] = response_mode


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    apply_template_switches(args.prompt_style, args.response_mode)
    try:
        out = predict(args.model, args.questions, args.out, images=args.images, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, adapters=args.adapters, model_id=args.model_id,
                      dtype=args.dtype, device_map=args.device_map, limit=args.limit)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = sum(1 for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    print(json.dumps({"answers": str(out), "rows": count}))
    print(f"wrote {count} answers to {out}; score them with: exgramed eval-vqa --gt {args.questions} --pred {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
