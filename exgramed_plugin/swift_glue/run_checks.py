"""Start-up refusals of a swift run the plugin takes part in: what cannot run is refused before any
model, template or dataset is made, with a message naming the arguments to change (called by
``run_settings.check_swift_run`` for every swift arguments object)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from ..common.weight_files import (check_checkpoint_folder, check_weight_files, checkpoint_model_type,
                                      has_weight_files)
from ..settings import LOSS_TYPE, PluginSettings, SettingsError


def local_folder(path: Any) -> str | None:
    """``path`` when it names a local folder (a checkpoint, not a hub id), else None."""
    return path if isinstance(path, str) and os.path.isdir(os.path.expanduser(path)) else None


def world_size() -> int:
    from swift.utils import get_dist_setting
    return max(1, get_dist_setting()[2])


def refuse_what_cannot_run(args: Any, settings: PluginSettings, *, training: bool) -> None:
    """Raise :class:`SettingsError` for the first argument combination that cannot run.

    * a training run this machine cannot honour (bf16 without a GPU, flash attention without the
      package, ...): one message listing every argument to change;
    * full training in float16 without DeepSpeed (fp16 weights under fp16 AMP);
    * with ``--loss_type exgra_mga``: a ``--model_type`` that does not fit the local checkpoint's
      architecture (swift would fail inside its loader), naming the types that fit; in training
      ``--sequence_parallel_size > 1``, no step able to hold a graph of >= 2 samples, and reentrant
      gradient checkpointing under DDP / ZeRO-1/2;
    * a truncated weight file of a local ``--model``, ``--adapters`` or ``--resume_from_checkpoint``
      (raised as the weight-file check's ``CheckpointError``), for every model type.
    """
    problems = [machine_problem(args) if training else None, precision_problem(args) if training else None]
    if settings.mga.enabled:
        problems.append(model_type_problem(args))
    if training and settings.mga.active:
        problems += [sequence_parallel_problem(args), graph_size_problem(args, settings, world_size()),
                     reentrant_checkpointing_problem(args, world_size=world_size())]
    problem = next((p for p in problems if p), None)
    if problem:
        raise SettingsError(problem)
    check_checkpoint_files(args)


_FLOAT16 = {"float16", "fp16", "half", "torch.float16"}
_LOW_PRECISION = {"bfloat16", "bf16", "torch.bfloat16", *_FLOAT16}
_FLASH_ATTENTION = {"flash_attn", "flash_attention_2", "flash_attention_3", "flash_attention_4"}


def accelerator_available() -> bool:
    """Whether torch sees a GPU-class device (CUDA, Ascend NPU or Intel XPU) to train on."""
    import torch
    if torch.cuda.is_available():
        return True
    return any(getattr(torch, name, None) is not None and getattr(torch, name).is_available() for name in ("npu", "xpu"))


def machine_problems(args: Any, *, accelerator: bool, flash_attn_installed: bool,
                     deepspeed_installed: bool) -> list[str]:
    """The training arguments this machine cannot honour, each as the change that fixes it."""
    problems = []
    dtype = str(getattr(args, "torch_dtype", None) or "").lower()
    if not accelerator and not getattr(args, "use_cpu", False):
        if dtype in _LOW_PRECISION:
            problems.append(f"--torch_dtype float32 (not {dtype}: bfloat16 / float16 training needs a GPU)")
        for flag in ("bf16", "fp16"):
            if getattr(args, flag, None) and dtype not in _LOW_PRECISION:
                problems.append(f"--{flag} false ({flag} mixed precision needs a GPU)")
    attention = str(getattr(args, "attn_impl", None) or "").lower()
    if attention in _FLASH_ATTENTION and not (accelerator and flash_attn_installed):
        why = "no GPU" if not accelerator else "the flash-attn package is not installed (pip install -e '.[gpu]')"
        problems.append(f"--attn_impl sdpa (not {attention}: {why})")
    if getattr(args, "deepspeed", None) and not deepspeed_installed:
        problems.append("no --deepspeed (DeepSpeed is not installed: pip install -e '.[gpu]')")
    return problems


def machine_problem(args: Any) -> str | None:
    problems = machine_problems(args, accelerator=accelerator_available(),
                                flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
                                deepspeed_installed=importlib.util.find_spec("deepspeed") is not None)
    if not problems:
        return None
    return "this machine cannot run the training as configured (a GPU recipe on a CPU?); change: " + "; ".join(problems)


def sequence_parallel_problem(args: Any) -> str | None:
    size = int(getattr(args, "sequence_parallel_size", 1) or 1)
    if size <= 1:
        return None
    return (f"--sequence_parallel_size {size} with --loss_type {LOSS_TYPE}: the alignment's text passes run the whole "
            "language model on unsplit sequences, which sequence parallelism does not support yet; use "
            "--sequence_parallel_size 1 (or MGA_ALPHA=0)")


def precision_problem(args: Any) -> str | None:
    """Why a precision / engine combination cannot train, or None. Full training in float16 without
    DeepSpeed keeps the trained weights in fp16 while swift turns on fp16 AMP, and torch refuses at
    step 1 ("Attempting to unscale FP16 gradients"); DeepSpeed's fp16 keeps fp32 master weights."""
    dtype = str(getattr(args, "torch_dtype", None) or "").lower()
    if dtype not in _FLOAT16 or getattr(args, "tuner_type", None) != "full" or getattr(args, "deepspeed", None):
        return None
    return (f"--torch_dtype {dtype} with --tuner_type full and no --deepspeed trains fp16 weights under fp16 AMP, "
            "which torch refuses at step 1 ('Attempting to unscale FP16 gradients'): use --torch_dtype bfloat16 "
            "(GPUs since Ampere), or keep float16 with --deepspeed zero2 / zero3 (fp32 master weights)")


def deepspeed_stage(deepspeed: Any) -> int | None:
    """The ZeRO stage of ``--deepspeed`` (a swift preset name, a JSON file or a dict); None without one."""
    if not deepspeed:
        return None
    config = deepspeed
    if isinstance(deepspeed, str):
        if not deepspeed.endswith(".json"):
            stages = [stage for stage in (3, 2, 1, 0) if f"zero{stage}" in deepspeed]
            return stages[0] if stages else None
        from ..common.jsonio import read_json
        config = read_json(deepspeed)
    return int((config.get("zero_optimization") or {}).get("stage", 0)) if isinstance(config, dict) else None


def reentrant_checkpointing_problem(args: Any, *, world_size: int) -> str | None:
    """Why reentrant gradient checkpointing cannot train with the alignment here, or None.

    The text passes run the checkpointed decoder layers a second time in the step; with reentrant
    checkpointing their gradients are then reduced twice: DDP stops ("Expected to mark a variable
    ready only once") and DeepSpeed ZeRO-1/2 too ("Gradient computed twice for this partition"),
    both seen on gloo. ZeRO-3 and one process without DeepSpeed train. swift's default is
    reentrant under DeepSpeed and FSDP, non-reentrant for plain multi-process runs.
    """
    if not getattr(args, "gradient_checkpointing", True):
        return None
    kwargs = getattr(args, "gradient_checkpointing_kwargs", None) or {}
    if isinstance(kwargs, str):
        import json
        kwargs = json.loads(kwargs)
    stage = deepspeed_stage(getattr(args, "deepspeed", None))
    reentrant = kwargs.get("use_reentrant")
    if reentrant is None:  # swift's default (swift/trainers/mixin.py _fix_gradient_checkpointing)
        reentrant = not (world_size > 1 and stage is None and not getattr(args, "fsdp", None))
    if not reentrant:
        return None
    if stage in (0, 1, 2):
        engine = f"DeepSpeed ZeRO-{stage}"
    elif stage is None and world_size > 1 and not getattr(args, "fsdp", None):
        engine = "DDP"
    else:
        return None
    return (f"--loss_type {LOSS_TYPE} with reentrant gradient checkpointing under {engine}: the alignment's text pass "
            "runs the checkpointed layers a second time in the step, so their gradients would be reduced twice; pass "
            "--gradient_checkpointing_kwargs '{\"use_reentrant\": false}' (every shipped recipe does)")


def fitting_model_types(model_dir: str) -> list[str]:
    """The swift model types that fit a local checkpoint's architecture (empty when unknown)."""
    from swift.model.model_meta import get_matched_model_types

    from ..common.jsonio import read_json
    from ..modeling.original_config import is_original_checkpoint
    if is_original_checkpoint(model_dir):
        return ["exgra_med"]
    config = read_json(Path(model_dir) / "config.json")
    return get_matched_model_types(config.get("architectures") if isinstance(config, dict) else None)


def model_type_problem(args: Any) -> str | None:
    model_type = getattr(args, "model_type", None)
    folder = local_folder(getattr(args, "model", None))
    if not model_type or folder is None or checkpoint_model_type(folder) is None:
        return None
    fitting = fitting_model_types(folder)
    if not fitting or model_type in fitting:
        return None
    from ..head.families import FAMILIES, SUPPORTED_MODEL_TYPES
    supported = [t for t in fitting if t in SUPPORTED_MODEL_TYPES]
    use = ", ".join(f"--model_type {t} --template {FAMILIES[t].template}" for t in supported)
    return (f"--model_type {model_type} does not fit {folder}: its config.json has model_type "
            f"{checkpoint_model_type(folder)!r}, which swift loads as {', '.join(fitting)}; "
            + (f"with --loss_type {LOSS_TYPE} use {use}" if use else
               f"--loss_type {LOSS_TYPE} supports none of them ({', '.join(SUPPORTED_MODEL_TYPES)})"))


def check_checkpoint_files(args: Any) -> None:
    """Name a truncated or missing weight file of the checkpoints a run loads, before any loader does."""
    model = local_folder(getattr(args, "model", None))
    if model is not None and has_weight_files(model):
        check_weight_files(model)
    for folder in [*(getattr(args, "adapters", None) or []), getattr(args, "resume_from_checkpoint", None)]:
        if local_folder(folder):
            check_checkpoint_folder(folder)


def graph_size_problem(args: Any, settings: PluginSettings, processes: int) -> str | None:
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        return None  # a packed row holds many samples: counted per step by the model
    per_device = int(args.per_device_train_batch_size or 1)
    if per_device * (processes if settings.mga.global_graph else 1) >= 2:
        return None
    hint = "" if settings.mga.global_graph else " or MGA_GLOBAL_GRAPH=1 with several processes"
    return (f"--loss_type {LOSS_TYPE}: a graph needs >= 2 samples per step, but --per_device_train_batch_size "
            f"is {per_device} on {processes} process(es){' (global graph)' if settings.mga.global_graph else ''}; "
            f"raise --per_device_train_batch_size to >= 2{hint} (every step would have align_loss 0)")
