"""``exgramed`` command line: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..common.jsonio import print_summary, summaries_printed


# make-tiny options that shape an exgra_med checkpoint only (refused with another --model-type).
_EXGRA_MED_TINY_OPTIONS = ("dense_connector", "image_size", "patch_size", "hidden_size", "num_layers", "projector",
                           "no_im_start_end")


def _make_tiny(args: argparse.Namespace) -> int:
    if args.model_type != "exgra_med":
        from ..tiny_checkpoints.builtin_vlms import TINY_MODEL_TEMPLATES, make_tiny_model
        given = [f"--{name.replace('_', '-')}" for name in _EXGRA_MED_TINY_OPTIONS
                 if getattr(args, name) != args.defaults[name]]
        if given:
            print(f"error: {', '.join(given)} shape(s) exgra_med checkpoints only, not --model-type {args.model_type}",
                  file=sys.stderr)
            return 2
        out = make_tiny_model(args.model_type, args.out, seed=args.seed)
        template = TINY_MODEL_TEMPLATES[args.model_type]
        print(f"tiny {args.model_type} checkpoint written to {out} (load it with --model_type {args.model_type} "
              f"--template {template})")
        print_summary({"out": str(out), "model_type": args.model_type, "template": template})
        return 0
    from ..tiny_checkpoints.exgra_med import make_tiny_checkpoint
    out = make_tiny_checkpoint(args.out, dense_connector=args.dense_connector, image_size=args.image_size,
                               patch_size=args.patch_size, hidden_size=args.hidden_size, num_layers=args.num_layers,
                               projector_type=args.projector, use_im_start_end=not args.no_im_start_end,
                               seed=args.seed)
    print(f"tiny exgra_med checkpoint written to {out}")
    print_summary({"out": str(out), "model_type": "exgra_med", "template": "exgra_med"})
    return 0


def _make_demo_data(args: argparse.Namespace) -> int:
    from ..data.demo_data import make_demo_data
    data = make_demo_data(args.out, image_size=args.image_size, seed=args.seed)
    for name, path in data.__dict__.items():
        print(f"{name:16s} {path}")
    print_summary({name: str(path) for name, path in data.__dict__.items()})
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .demo_stages import StageFailed
    try:
        result = run_demo(args.out, max_steps=args.max_steps, prompt_style=args.prompt_style, verbose=args.verbose)
    except StageFailed as error:  # its log tail is on screen already
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("\nexgramed demo finished. Written:")
    for name, path in result.__dict__.items():
        print(f"  {name:20s} {path}")
    print_summary({name: str(path) for name, path in result.__dict__.items()})
    return 0


# Subcommands that own their argument parsing: name -> (module, function taking argv, help).
DELEGATED_COMMANDS: dict[str, tuple[str, str, str]] = {
    "eval-vqa": ("exgramed_plugin.eval.eval_vqa", "main",
                 "score answers against a VQA file (original, strict, MedEvalKit metrics)"),
    "convert": ("exgramed_plugin.modeling.convert", "main",
                "convert an original LLaVA-Med / ExGra-Med checkpoint to the plugin or llava-hf layout"),
    "predict": ("exgramed_plugin.eval.predict", "main",
                "batched greedy VQA answers (answers JSONL of the original, resumable)"),
    "reproduce": ("exgramed_plugin.commands.reproduce", "main",
                  "published checkpoint + benchmark: download, predict (original prompt), score, paper's number"),
    "eval": ("exgramed_plugin.eval.suite", "main",
             "a benchmark suite (VQA-RAD ... MedXpertQA-MM): answers, MedEvalKit + corrected scores, one table"),
    "eval-zeroshot": ("exgramed_plugin.eval.zeroshot", "main",
                      "OmniMedVQA zero-shot: original prompt + difflib, and option likelihood"),
    "subset": ("exgramed_plugin.data.tools", "subset_main",
               "reproducible id subsets (e.g. 0.1 / 0.4), consistent across stage-1/stage-2 files"),
    "build-candidates": ("exgramed_plugin.data.tools", "build_candidates_main",
                         "candidate.json (OPEN answers of a training file) for open accuracy"),
    "llava-to-swift": ("exgramed_plugin.data.tools", "llava_to_swift_main",
                       "LLaVA-Med / VQA JSON -> swift messages JSONL"),
    "swift-to-llava": ("exgramed_plugin.data.tools", "swift_to_llava_main",
                       "swift messages JSON(L) -> LLaVA-Med / VQA JSON"),
    "download": ("exgramed_plugin.commands.hub", "main",
                 "MERGE-Group checkpoints and data from the Hugging Face hub (resumable, offline-aware)"),
    "report": ("exgramed_plugin.eval.report", "main",
               "Markdown/HTML report of a swift run: loss curves, eval metrics, accuracy by answer type"),
    "compare": ("exgramed_plugin.eval.compare", "main", "models' answers to the same VQA questions: paired 95 % CIs"),
    "eval-chat": ("exgramed_plugin.eval.chat_judge", "main",
                  "LLaVA-Med chatbot eval with an OpenAI-compatible judge (relative score per type/domain)"),
    "experiment": ("exgramed_plugin.commands.experiment.data_efficiency", "main",
                   "the paper's data-efficiency protocol on easy-vqa, preregistered (data-efficiency [--quick ...])"),
    "extend-captions": ("exgramed_plugin.data.extend_captions", "main",
                        "extended answers (conversations_long) from an OpenAI-compatible LLM; resumable"),
    "webui": ("exgramed_plugin.commands.webui", "main",
              "swift's web UI with the exgra_med plugin loaded (127.0.0.1 by default)"),
    "doctor": ("exgramed_plugin.commands.doctor", "main",
               "check this machine: packages and their versions, GPU, extras, data root, hub, registration"),
    "sft": ("exgramed_plugin.commands.sft", "main",
            "run a swift sft recipe from any directory (RECIPE [swift overrides]; the plugin path resolved)"),
}


def _run_delegated(name: str, argv: list[str]) -> int:
    import importlib
    module_name, function_name, _ = DELEGATED_COMMANDS[name]
    return getattr(importlib.import_module(module_name), function_name)(argv)


def build_parser() -> argparse.ArgumentParser:
    from ..tiny_checkpoints.builtin_vlms import TINY_MODEL_TYPES
    from ..modeling.configuration import DENSE_CONNECTOR_TYPES  # torch + transformers: not for delegated commands
    parser = argparse.ArgumentParser(prog="exgramed", description="ExGra-Med tools for ms-swift")
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("make-tiny", help="write a tiny random exgra_med (or qwen2_5_vl, qwen3_vl, internvl, "
                          "llava1_5_hf, gemma3_vision) checkpoint (offline)")
    tiny.add_argument("out", type=Path)
    tiny.add_argument("--model-type", "--model_type", dest="model_type", choices=("exgra_med", *TINY_MODEL_TYPES),
                      default="exgra_med", help="exgra_med (default) or a swift model type (data/tiny_models.py)")
    tiny.add_argument("--dense-connector", choices=DENSE_CONNECTOR_TYPES, default="none")
    tiny.add_argument("--image-size", type=int, default=56)
    tiny.add_argument("--patch-size", type=int, default=14)
    tiny.add_argument("--hidden-size", type=int, default=64)
    tiny.add_argument("--num-layers", type=int, default=2)
    tiny.add_argument("--projector", default="mlp2x_gelu", help="linear, identity or mlp<N>x_gelu")
    tiny.add_argument("--no-im-start-end", action="store_true", help="plain <im_patch> runs (mm_use_im_start_end false)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=_make_tiny, defaults={name: tiny.get_default(name) for name in _EXGRA_MED_TINY_OPTIONS})

    demo_data = sub.add_parser("make-demo-data", help="write the demo train/test set from real medical images")
    demo_data.add_argument("out", type=Path)
    demo_data.add_argument("--image-size", type=int, default=64)
    demo_data.add_argument("--seed", type=int, default=0)
    demo_data.set_defaults(handler=_make_demo_data)

    demo = sub.add_parser("demo", help="tiny checkpoint + demo data, swift sft, swift infer, VQA scores (CPU)")
    demo.add_argument("--out", type=Path, default=Path("exgramed_demo"))
    demo.add_argument("--max-steps", type=int, default=None, help="override the recipe's max_steps")
    demo.add_argument("--prompt-style", choices=("v0", "simple"), default="v0",
                      help="inference prompt: v0 = training format (default for the demo), simple = original eval")
    demo.add_argument("--verbose", action="store_true",
                      help="stream swift's full output (by default it goes to <out>/logs/<stage>.log only)")
    demo.set_defaults(handler=_demo)

    for name, (_, _, help_text) in DELEGATED_COMMANDS.items():
        sub.add_parser(name, help=help_text.replace("%", "%%"), add_help=False)  # argparse %-formats help
    return parser


# Errors that describe bad input (module, class). Looked up, not imported: importing those modules
# pulls in torch / transformers, and an error of such a class means its module is loaded already.
_BAD_INPUT_ERRORS = (("exgramed_plugin.common.jsonio", "JsonFileError"), ("exgramed_plugin.data.formats", "DataFormatError"),
                     ("exgramed_plugin.settings", "SettingsError"), ("exgramed_plugin.common.weight_files", "CheckpointError"))


def _is_bad_input(error: ValueError) -> bool:
    """A bad JSON file, a bad row, a bad setting or a broken checkpoint."""
    for module_name, class_name in _BAD_INPUT_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            return True
    return False


def _print_failure(command: str | None, exit_code: int, error: str | None = None) -> None:
    """The last stdout line of a failed command (``main`` skips it when the command printed its own)."""
    facts: dict[str, object] = {"command": command, "exit_code": exit_code}
    if error:
        facts["error"] = error
    print_summary(facts, ok=False)


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED_COMMANDS:
        return _run_delegated(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


def main(argv: list[str] | None = None) -> int:
    """Bad input ends with exit code 2 and its ``FILE:LINE:COLUMN: ...`` (or file, row id and field)
    as the last line of stderr, not a traceback, whichever subcommand met it. The last stdout line
    is a JSON object (``{"ok": true, ...facts}`` from the command, ``{"ok": false, ...}`` on failure)."""
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[exgramed] %(message)s")
    command = argv[0] if argv and not argv[0].startswith("-") else None
    printed = summaries_printed()
    try:
        code = _dispatch(argv)
    except SystemExit as exit_:  # argparse's usage errors, SystemExit("message"); --help exits 0
        if exit_.code not in (0, None):
            _print_failure(command, exit_.code if isinstance(exit_.code, int) else 1,
                           None if isinstance(exit_.code, int) else str(exit_.code))
        raise
    except ValueError as error:
        _print_failure(command, 2 if _is_bad_input(error) else 1, f"{type(error).__name__}: {error}")
        if not _is_bad_input(error):
            raise
        print(error, file=sys.stderr)
        return 2
    except BaseException as error:
        _print_failure(command, 130 if isinstance(error, KeyboardInterrupt) else 1, f"{type(error).__name__}: {error}")
        raise
    if code and summaries_printed() == printed:
        _print_failure(command, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
