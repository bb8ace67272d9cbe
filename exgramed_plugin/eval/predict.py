"""`exgramed predict`: batched greedy VQA answers through swift's inference engine (docs/method.md §6.1).

Why a command of our own next to ``swift infer``: the original evaluation reads the answers JSONL of
``model_vqa_med.py`` (``question_id``, ``prompt``, ``text``, ``answer_id``, ``model_id``,
``metadata``) in question-file order, and long runs (PathVQA: 6.7 K questions) must survive being
interrupted. Here every finished batch is appended and flushed at once; a rerun skips the ids already
answered and finally rewrites the file in question-file order.

Any swift model answers the same questions (``--model_type`` / ``--template`` are swift's;
``--infer_backend vllm`` builds swift's ``VllmEngine`` instead of ``TransformersEngine``, for GPU
users). The text sent depends on the template and on ``--prompt``:

* ``exgra_med`` template, ``--prompt plain`` (default): the human turn of the question file as it is;
  the template wraps it in the original prompt (§2.3/§2.4; switches ``EXGRAMED_PROMPT_STYLE`` and
  ``EXGRAMED_RESPONSE_MODE``, also ``--prompt-style`` / ``--response-mode``). ``metadata`` stays ``{}``
  as in the original.
* any other template, ``--prompt plain``: the question without its ``<image>`` tags, images first
  (``<image>`` tags, then the text: the order of MedEvalKit's Qwen2.5-VL wrapper,
  ``models/Qwen2_5_VL/Qwen2_5_VL_hf.py`` ``process_messages``), in the model's own chat template.
* ``--prompt medevalkit`` (any template): MedEvalKit's instruction per question type, see
  :func:`medevalkit_prompt`.

Other models' rows record ``metadata = {"model_type", "template", "prompt"}``; resuming a file that
holds another run's answers is refused.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import shlex
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exgramed_plugin.data.conversation import IMAGE_TAG
from exgramed_plugin.data.vqa_questions import VQAQuestion, read_vqa_questions
from exgramed_plugin.common.jsonio import (JsonFileError, append_jsonl, print_summary, read_jsonl,
                                         write_jsonl)
from exgramed_plugin.settings import TemplateSettings, current_settings

logger = logging.getLogger(__name__)

# shortuuid's default alphabet (the original stored ``shortuuid.uuid()`` as answer_id).
_SHORTUUID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
DTYPES = ("auto", "float32", "bfloat16", "float16")
INFER_BACKENDS = ("transformers", "vllm")
PROMPT_MODES = ("plain", "medevalkit")
EXGRA_MED = "exgra_med"  # model type and template of the plugin
MEDEVALKIT_DATASETS = ("vqa_rad", "slake", "pathvqa")
_ENGINE_CLASSES = {"transformers": "TransformersEngine", "vllm": "VllmEngine"}
_HOW_TO_LIST_MODEL_TYPES = ("all of them: python -c \"import exgramed_plugin.register; from swift.model import "
                            "MODEL_MAPPING; print(sorted(MODEL_MAPPING))\" (swift's 'Supported models' docs list them "
                            "with their hub ids)")
_HOW_TO_LIST_TEMPLATES = ("all of them: python -c \"import exgramed_plugin.register; from swift.template import "
                          "TEMPLATE_MAPPING; print(sorted(TEMPLATE_MAPPING))\"")

# MedEvalKit's instructions (alibaba-damo-academy/MedEvalKit @ 9b12e3b, utils/question_formats.py,
# non-reasoning variants, i.e. REASONING unset): get_judgement_prompt, get_open_ended_prompt,
# get_close_ended_prompt; each is "question + '\n' + instruction".
MEDEVALKIT_INSTRUCTIONS: dict[str, dict[str, str]] = {
    "judgement": {"en": "Please output 'yes' or 'no'(no extra output).", "zh": "请输出'是'或'否'(不要有任何其它输出)。"},
    "open_ended": {"en": "Please answer the question concisely.", "zh": "请简要回答该问题。"},
    "close_ended": {"en": "Answer the question using a single word or phrase.", "zh": "请用一个单词或者短语回答该问题。"},
}


def prompt_field(text: str, with_image: bool) -> str:
    """``model_vqa_med.py``'s ``prompt`` field for the text sent: ``text`` + ``\n<image>`` with an image."""
    return f"{text}\n{IMAGE_TAG}" if with_image else text


def short_uuid() -> str:
    """A 22-character id in shortuuid's alphabet (what the original wrote), without the dependency."""
    number = uuid.uuid4().int
    digits = []
    base = len(_SHORTUUID_ALPHABET)
    for _ in range(22):
        number, remainder = divmod(number, base)
        digits.append(_SHORTUUID_ALPHABET[remainder])
    return "".join(reversed(digits))


def load_prompts(questions_path: str | Path, image_root: str | Path | None = None) -> list[VQAQuestion]:
    """The questions of a VQA JSON / swift JSON(L) file (``data.vqa_questions``) with their images
    resolved (``image_root``, default the file's folder) and present.

    A missing image is an error naming the file, the row id and the field (nothing is skipped).
    Duplicated ids are an error too, because the answers are paired with the questions by id.
    """
    prompts: list[VQAQuestion] = []
    seen: dict[str, int] = {}
    for index, prompt in enumerate(read_vqa_questions(questions_path, image_root=image_root)):
        if prompt.id in seen:
            raise ValueError(f"{questions_path}: id {prompt.question_id!r} occurs in rows {seen[prompt.id]} and {index}")
        seen[prompt.id] = index
        prompts.append(prompt)
    return prompts


def read_existing_answers(out_path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a previous (possibly interrupted) run, by question id string.

    A truncated last line (the process was killed while writing) is dropped with a warning; any other
    unreadable line is an error, since silently re-answering would hide a corrupted file.
    """
    if not out_path.is_file():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    for number, row in read_jsonl(out_path, drop_torn_last_line=True):
        if "question_id" not in row:
            raise JsonFileError(out_path, number, 1, "no 'question_id'; is this an answers file of `exgramed predict`?")
        rows[str(row["question_id"])] = row
    return rows


def _batches(items: Sequence[VQAQuestion], size: int) -> Iterator[Sequence[VQAQuestion]]:
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


# --------------------------------------------------------------------------------------------------
# Engines
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineRequest:
    """Which swift engine class to build, with which arguments (built by :func:`build_engine`)."""

    backend: str
    engine_class: str  # a class of swift.infer_engine
    model: str
    kwargs: dict[str, Any]


def _close(name: str, known: Sequence[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    return f"close ones: {', '.join(matches)}; " if matches else ""


def _check_known(name: str, mapping, flag: str, what: str, how_to_list: str) -> None:
    if name not in mapping:
        raise ValueError(f"unknown {what} {name!r} ({flag}): swift has {len(mapping)} {what}s, "
                         f"{_close(name, mapping)}{how_to_list}")


def check_model_type(model_type: str | None) -> None:
    """Refuse a model type swift does not know, before any loading (swift's own error lists ~600 names)."""
    if model_type is None:
        return
    from exgramed_plugin.swift_glue import register_all
    register_all()  # exgra_med is one of them
    from swift.model import MODEL_MAPPING
    _check_known(model_type, MODEL_MAPPING, "--model_type", "model type", _HOW_TO_LIST_MODEL_TYPES)


def check_template(template: str | None) -> None:
    """Refuse a template type swift does not know."""
    if template is None:
        return
    from exgramed_plugin.swift_glue import register_all
    register_all()
    from swift.template import TEMPLATE_MAPPING
    _check_known(template, TEMPLATE_MAPPING, "--template", "template", _HOW_TO_LIST_TEMPLATES)


def engine_request(model: str, *, infer_backend: str = "transformers", model_type: str | None = None,
                   template: str | None = None, adapters: Sequence[str] = (), batch_size: int = 8,
                   dtype: str = "auto", device_map: str | None = None) -> EngineRequest:
    """The engine for ``model``: checked arguments mapped onto swift's engine signature.

    ``transformers``: ``TransformersEngine(model, adapters, max_batch_size, torch_dtype, model_type,
    template_type, device_map)``. ``vllm``: ``VllmEngine(model, adapters (one, with enable_lora),
    torch_dtype, model_type, template_type, max_num_seqs)``; vLLM places the model itself (no
    ``device_map``) and does not run the ``exgra_med`` architecture.
    """
    if infer_backend not in INFER_BACKENDS:
        raise ValueError(f"unknown --infer_backend {infer_backend!r}; choose from {', '.join(INFER_BACKENDS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_model_type(model_type)
    check_template(template)
    common = {"torch_dtype": resolve_dtype(dtype), "model_type": model_type, "template_type": template}
    if infer_backend == "transformers":
        kwargs = {**common, "adapters": list(adapters) or None, "max_batch_size": batch_size, "device_map": device_map}
        return EngineRequest(infer_backend, _ENGINE_CLASSES[infer_backend], str(model), kwargs)
    from exgramed_plugin.common.weight_files import checkpoint_model_type  # torch: only for vLLM requests
    if EXGRA_MED in (model_type, checkpoint_model_type(str(model))):
        raise ValueError(f"{model}: model type {EXGRA_MED} is not a vLLM architecture; "
                         "use --infer_backend transformers")
    if device_map is not None:
        raise ValueError("--device-map applies to --infer_backend transformers only (vLLM places the model itself; "
                         "use CUDA_VISIBLE_DEVICES)")
    if len(adapters) > 1:
        raise ValueError(f"swift's VllmEngine takes one adapter, got {len(adapters)}: {list(adapters)}")
    kwargs = {**common, "adapters": list(adapters) or None, "enable_lora": bool(adapters), "max_num_seqs": batch_size}
    return EngineRequest(infer_backend, _ENGINE_CLASSES[infer_backend], str(model), kwargs)


def build_engine(request: EngineRequest):
    """Instantiate the swift engine ``request`` names (the plugin registered first)."""
    from exgramed_plugin.swift_glue import register_all
    register_all()  # model type, template, datasets
    import swift.infer_engine as infer_engine
    return getattr(infer_engine, request.engine_class)(request.model, **request.kwargs)


def engine_template_type(engine) -> str | None:
    """The template an engine formats prompts with (None for an engine that is not swift's)."""
    template = getattr(engine, "template", None)
    return getattr(getattr(template, "template_meta", None), "template_type", None)


def engine_model_type(engine) -> str | None:
    return getattr(getattr(engine, "model_meta", None), "model_type", None)


def load_engine(model: str, *, adapters: Sequence[str] = (), batch_size: int = 8, dtype: str = "auto",
                device_map: str | None = None, template_settings: TemplateSettings | None = None,
                model_type: str | None = None, template: str | None = None, infer_backend: str = "transformers"):
    """swift's engine for ``model`` (see :func:`engine_request`), with the plugin registered;
    ``template_settings`` (prompt style, response mode) replace the process's for an ``exgra_med``
    template and are refused for any other."""
    engine = build_engine(engine_request(model, infer_backend=infer_backend, model_type=model_type, template=template,
                                         adapters=adapters, batch_size=batch_size, dtype=dtype, device_map=device_map))
    if template_settings is not None:
        if engine_template_type(engine) != EXGRA_MED:
            raise ValueError(f"--prompt-style / --response-mode are switches of the {EXGRA_MED} template; {model} uses "
                             f"template {engine_template_type(engine)!r}")
        engine.template.settings = template_settings
    return engine


def template_settings(prompt_style: str | None = None, response_mode: str | None = None) -> TemplateSettings:
    """The process's template settings with the command line's choices (None = keep) applied."""
    settings = current_settings()
    overrides = {key: value for key, value in (("exgramed_prompt_style", prompt_style),
                                               ("exgramed_response_mode", response_mode)) if value is not None}
    return settings.replace(**overrides).template if overrides else settings.template


# --------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------


def medevalkit_kind(prompt: VQAQuestion, dataset: str, source: str | Path = "") -> str:
    """Which MedEvalKit instruction a question gets, by MedEvalKit's per-dataset rule (@ 9b12e3b):

    * ``vqa_rad`` (``utils/VQA_RAD/VQA_RAD.py`` ``construct_messages``): ``answer.lower()`` in
      yes/no → judgement, else open-ended;
    * ``pathvqa`` (``utils/PATH_VQA/PATH_VQA.py`` ``construct_messages``): ``answer`` in yes/no
      (case-sensitive, as there) → judgement, else open-ended;
    * ``slake`` (``utils/SLAKE/SLAKE.py`` ``load_data``): ``answer_type == "OPEN"`` → open-ended,
      else close-ended.

    The rule reads the ground truth, as MedEvalKit does.
    """
    if dataset not in MEDEVALKIT_DATASETS:
        raise ValueError(f"--dataset must be one of {', '.join(MEDEVALKIT_DATASETS)} for --prompt medevalkit "
                         f"(its instruction rule is per dataset), got {dataset!r}")
    if dataset == "slake":
        if prompt.answer_type is None:
            raise ValueError(f"{source}: row id={prompt.question_id!r} has no 'answer_type' (SLAKE's rule needs it)")
        return "open_ended" if prompt.answer_type == "OPEN" else "close_ended"
    if prompt.answer is None:
        raise ValueError(f"{source}: row id={prompt.question_id!r} has no answer turn ({dataset}'s MedEvalKit rule "
                         "picks the instruction by the ground-truth answer)")
    answer = prompt.answer.lower() if dataset == "vqa_rad" else prompt.answer
    return "judgement" if answer in ("yes", "no") else "open_ended"


def medevalkit_prompt(prompt: VQAQuestion, dataset: str, source: str | Path = "") -> str:
    """``question + "\\n" + instruction`` as MedEvalKit's ``get_*_prompt`` builds it (its ``lang``:
    ``zh`` for SLAKE rows whose ``q_lang`` is ``zh``, else English)."""
    instructions = MEDEVALKIT_INSTRUCTIONS[medevalkit_kind(prompt, dataset, source)]
    if prompt.language not in instructions:
        raise ValueError(f"{source}: row id={prompt.question_id!r} has q_lang {prompt.language!r}; MedEvalKit's "
                         f"prompts exist for {', '.join(instructions)}")
    return f"{prompt.question}\n{instructions[prompt.language]}"


@dataclass(frozen=True)
class PromptBuilder:
    """The user turn sent for each question: see the module docstring."""

    mode: str = "plain"
    exgra_med: bool = True  # the engine's template is exgra_med's
    dataset: str | None = None  # for mode medevalkit
    source: str = ""  # questions file, for error messages

    def __post_init__(self) -> None:
        if self.mode not in PROMPT_MODES:
            raise ValueError(f"unknown --prompt {self.mode!r}; choose from {', '.join(PROMPT_MODES)}")
        if self.mode == "medevalkit" and self.dataset not in MEDEVALKIT_DATASETS:
            raise ValueError(f"--prompt medevalkit needs --dataset {'|'.join(MEDEVALKIT_DATASETS)} (MedEvalKit picks "
                             f"its instruction per dataset), got {self.dataset!r}")

    def text(self, prompt: VQAQuestion) -> str:
        """What is sent, without image tags (``prompt`` field) ..."""
        if self.mode == "medevalkit":
            return medevalkit_prompt(prompt, self.dataset or "", self.source)
        return prompt.question

    def content(self, prompt: VQAQuestion) -> str:
        """... and with them, where the template expects them."""
        if self.mode == "plain" and self.exgra_med:
            return prompt.text  # the original run's input, tags where the file has them
        if self.exgra_med:
            return prompt_field(self.text(prompt), bool(prompt.images))
        return IMAGE_TAG * len(prompt.images) + self.text(prompt)

    def prompt_field(self, prompt: VQAQuestion) -> str:
        return prompt_field(self.text(prompt), bool(prompt.images))


def generate_answers(engine, prompts: Sequence[VQAQuestion], *, max_new_tokens: int,
                     builder: PromptBuilder = PromptBuilder()) -> list[str]:
    """Greedy answers for one batch (temperature 0 = ``do_sample=False`` in swift)."""
    from swift.infer_engine import InferRequest, RequestConfig
    requests = [InferRequest(messages=[{"role": "user", "content": builder.content(p)}], images=list(p.images))
                for p in prompts]
    config = RequestConfig(max_tokens=max_new_tokens, temperature=0)
    responses = engine.infer(requests, config, use_tqdm=False)
    return [response.choices[0].message.content for response in responses]


def answer_row(prompt: VQAQuestion, text: str, model_id: str, *, prompt_text: str | None = None,
               metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """One line of the §6.1 answers JSONL."""
    if prompt_text is None:
        prompt_text = prompt_field(prompt.question, bool(prompt.images))
    return {"question_id": prompt.question_id, "prompt": prompt_text,
            "text": text, "answer_id": short_uuid(), "model_id": model_id, "metadata": metadata or {}}


def run_metadata(engine, builder: PromptBuilder) -> dict[str, Any]:
    """``{}`` for the original set-up (exgra_med, plain), else what made the answers."""
    if builder.exgra_med and builder.mode == "plain":
        return {}
    metadata = {"model_type": engine_model_type(engine), "template": engine_template_type(engine),
                "prompt": builder.mode}
    if builder.mode == "medevalkit":
        metadata["dataset"] = builder.dataset
    return metadata


def _check_same_run(out_path: Path, existing: dict[str, dict[str, Any]], metadata: dict[str, Any]) -> None:
    other = [key for key, row in existing.items() if (row.get("metadata") or {}) != metadata]
    if other:
        found = existing[other[0]].get("metadata") or {}
        raise ValueError(f"{out_path} holds answers of another run for {len(other)} id(s) (e.g. {other[:5]}): their "
                         f"metadata is {found}, this run's {metadata}; use another --out or delete it")


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def predict(model: str, questions: str | Path, out: str | Path, *, images: str | Path | None = None,
            batch_size: int = 8, max_new_tokens: int = 1024, adapters: Sequence[str] = (),
            model_id: str | None = None, dtype: str = "auto", device_map: str | None = None,
            limit: int | None = None, engine=None, show_progress: bool = True,
            template_settings: TemplateSettings | None = None, model_type: str | None = None,
            template: str | None = None, infer_backend: str = "transformers", prompt: str = "plain",
            dataset: str | None = None, progress_desc: str = "predict") -> Path:
    """Answer every question of ``questions`` not yet in ``out``; returns ``out``.

    ``engine`` may be passed to reuse a loaded swift engine. ``limit`` answers only the first N
    questions (smoke tests). The finished file holds one row per question, in file order.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    PromptBuilder(mode=prompt, dataset=dataset)  # bad --prompt / --dataset: before loading anything
    out_path = Path(out)
    prompts = load_prompts(questions, images)
    if limit is not None:
        prompts = prompts[:limit]
    existing = read_existing_answers(out_path)
    wanted = {p.id for p in prompts}
    foreign = [key for key in existing if key not in wanted]
    if foreign:
        raise ValueError(f"{out_path} holds answers for {len(foreign)} id(s) that are not questions of {questions} "
                         f"(e.g. {foreign[:5]}); use another --out or delete it")
    todo = [p for p in prompts if p.id not in existing]
    logger.info("%d question(s), %d already answered in %s, %d to do", len(prompts), len(prompts) - len(todo),
                out_path, len(todo))
    model_id = model_id or str(model)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if todo:
        if engine is None:
            engine = load_engine(model, adapters=adapters, batch_size=batch_size, dtype=dtype, device_map=device_map,
                                 template_settings=template_settings, model_type=model_type, template=template,
                                 infer_backend=infer_backend)
        builder = PromptBuilder(mode=prompt, exgra_med=engine_template_type(engine) == EXGRA_MED, dataset=dataset,
                                source=str(questions))
        metadata = run_metadata(engine, builder)
        _check_same_run(out_path, existing, metadata)
        texts = {p.id: builder.prompt_field(p) for p in todo}  # every medevalkit rule checked before generating
        if existing:  # rewrite without a possibly truncated last line before appending
            write_jsonl(out_path, [existing[p.id] for p in prompts if p.id in existing])
        with open(out_path, "a", encoding="utf-8") as handle, \
                tqdm(total=len(todo), desc=progress_desc, unit="q", disable=not show_progress) as bar:
            for batch in _batches(todo, batch_size):
                answers = generate_answers(engine, batch, max_new_tokens=max_new_tokens, builder=builder)
                for item, text in zip(batch, answers):
                    row = answer_row(item, text, model_id, prompt_text=texts[item.id], metadata=metadata)
                    existing[item.id] = row
                    append_jsonl(handle, row)
                handle.flush()
                os.fsync(handle.fileno())
                bar.update(len(batch))
    # Question-file order, whatever order earlier runs appended in.
    write_jsonl(out_path, [existing[p.id] for p in prompts])
    return out_path


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model_type`` / ``--template`` / ``--infer_backend`` (swift's names; dashed spellings too)."""
    parser.add_argument("--model_type", "--model-type", dest="model_type", default=None,
                        help="swift model type (default: what swift infers from the checkpoint; exgra_med checkpoints "
                             "are recognised). Unknown names are refused with the close ones")
    parser.add_argument("--template", default=None,
                        help="swift template type (default: the model type's; needed where swift finds several, e.g. "
                             "qwen2_5_vl for a local folder)")
    parser.add_argument("--infer_backend", "--infer-backend", dest="infer_backend", choices=INFER_BACKENDS,
                        default="transformers", help="transformers (default; CPU or GPU) or vllm (swift's VllmEngine: "
                                                     "GPU, pip install vllm; not for exgra_med)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exgramed predict",
        description="Greedy VQA answers with swift's inference engine (exgra_med or any swift model); writes the "
                    "answers JSONL of model_vqa_med.py in question-file order; rerunning skips answered ids.")
    parser.add_argument("--model", required=True, help="checkpoint folder or hub id (exgra_med or any swift model; "
                                                       "a base model with --adapters)")
    parser.add_argument("--adapters", nargs="*", default=[], help="LoRA checkpoint folder(s) trained with swift")
    add_engine_arguments(parser)
    parser.add_argument("--questions", required=True, help="VQA JSON (test_w_options_new.json) or swift rows")
    parser.add_argument("--images", default=None, help="image root for relative paths (default: the questions "
                                                       "file's folder)")
    parser.add_argument("--out", required=True, help="answers JSONL (appended to and resumed)")
    parser.add_argument("--prompt", choices=PROMPT_MODES, default="plain",
                        help="plain (default): the question as is (exgra_med: the original prompt); medevalkit: "
                             "MedEvalKit's judgement / open-ended / close-ended instruction per question "
                             "(needs --dataset)")
    parser.add_argument("--dataset", choices=MEDEVALKIT_DATASETS, default=None,
                        help="benchmark whose MedEvalKit rule picks the instruction (--prompt medevalkit)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="original: 1024 (generation stops at ###)")
    parser.add_argument("--prompt-style", choices=("simple", "v0"), default=None,
                        help="exgra_med only; default: EXGRAMED_PROMPT_STYLE, else simple = original")
    parser.add_argument("--response-mode", choices=("original", "clean", "raw"), default=None,
                        help="exgra_med only; default: EXGRAMED_RESPONSE_MODE, else original")
    parser.add_argument("--model-id", default=None, help="model_id field (default: --model as given)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto")
    parser.add_argument("--device-map", default=None, help="e.g. cuda:0 or auto (default: swift's choice; "
                                                           "transformers backend only)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    return parser


def _saved_answers(out_path: Path) -> int:
    """Answers an interrupted run left in ``out_path`` (what a rerun will not redo)."""
    try:
        return len(read_existing_answers(out_path))
    except (ValueError, OSError):
        return 0


def cli_template_settings(prompt_style: str | None, response_mode: str | None) -> TemplateSettings | None:
    """The exgra_med template switches of a command line, None when it names none (the template's own)."""
    if prompt_style is None and response_mode is None:
        return None
    return template_settings(prompt_style, response_mode)


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input, 130 interrupted (Ctrl-C; rerunning the command resumes)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        out = predict(args.model, args.questions, args.out, images=args.images, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, adapters=args.adapters, model_id=args.model_id,
                      dtype=args.dtype, device_map=args.device_map, limit=args.limit,
                      template_settings=cli_template_settings(args.prompt_style, args.response_mode),
                      model_type=args.model_type, template=args.template, infer_backend=args.infer_backend,
                      prompt=args.prompt, dataset=args.dataset)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: {_saved_answers(Path(args.out))} answers saved in {args.out}; resume with the same "
              f"command (same --out): exgramed predict {shlex.join(argv)}", file=sys.stderr)
        return 130
    count = len(read_jsonl(out))
    print(f"wrote {count} answers to {out}; score them with: exgramed eval-vqa --gt {args.questions} --pred {out}")
    print_summary({"answers": str(out), "rows": count})
    return 0


if __name__ == "__main__":
    sys.exit(main())
