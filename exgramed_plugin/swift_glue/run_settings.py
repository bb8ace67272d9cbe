"""The plugin's settings of a swift run, read once from swift's arguments, and the start-up checks.

swift builds its arguments object, imports the plugin, then exports ``--model_kwargs`` as
environment variables (``BaseArguments._init_model_kwargs``). Wrapping that one step gives the
plugin every arguments object swift builds in this process (``sft``, ``infer``, ``export``,
``deploy``, the web UI's runs), after the model kwargs are known and before any model, template or
dataset is made: the one place where the settings are parsed and the run is checked.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from swift.arguments.base_args.base_args import BaseArguments

from ..modeling.weight_files import (check_checkpoint_folder, check_weight_files, checkpoint_model_type,
                                      has_weight_files)
from ..settings import LOSS_TYPE, MGASettings, PluginSettings, SettingsError, parse_settings, use_settings, \
    with_saved_mga

logger = logging.getLogger(__name__)
HEAD_CALLBACK = "exgramed_mga_head"  # swift_glue/builtin_models.py registers it
_PATCH_MARK = "_exgramed_patched"


def settings_from_swift_args(args: Any, environ: dict[str, str] | None = None) -> PluginSettings:
    """Parse the settings of the run ``args`` describes; a resumed run takes its checkpoint's."""
    model_kwargs = args.model_kwargs if isinstance(getattr(args, "model_kwargs", None), dict) else {}
    settings = parse_settings(os.environ if environ is None else environ, model_kwargs,
                              loss_type=getattr(args, "loss_type", None))
    resume = getattr(args, "resume_from_checkpoint", None)
    if resume and settings.mga.enabled:
        saved = saved_mga_settings(resume)
        if saved is not None:
            settings = with_saved_mga(settings, saved, str(resume))
    training = hasattr(args, "per_device_train_batch_size")
    settings = dataclasses.replace(settings, training=training)
    if not training and not settings.mga.enabled and any(adapter_saves_mga(a) for a in getattr(args, "adapters", [])):
        # swift infer/export of a LoRA checkpoint trained with --modules_to_save mga: build the module so
        # that its trained weights load, and a merged export (--merge_lora) keeps them.
        settings = settings.replace(mga_enabled=True)
    return settings


def adapter_saves_mga(adapter_dir: str | os.PathLike) -> bool:
    """Whether a LoRA checkpoint holds a trained graph network (``--modules_to_save mga``)."""
    from ..data.jsonio import read_json
    for config_path in (Path(adapter_dir) / "adapter_config.json", Path(adapter_dir) / "default" / "adapter_config.json"):
        if config_path.is_file():
            return "mga" in (read_json(config_path).get("modules_to_save") or [])
    return False


def saved_mga_settings(checkpoint_dir: str | os.PathLike) -> MGASettings | None:
    """The MGA settings a checkpoint stores: its side file's (built-in models) or its config.json's
    ``mga_*`` fields (exgra_med); None when it stores none."""
    from ..head.side_file import read_side_file
    saved = read_side_file(checkpoint_dir)
    if saved is not None:
        return saved[1]
    config_path = Path(checkpoint_dir) / "config.json"
    if not config_path.is_file():
        return None
    from ..data.jsonio import read_json
    config = read_json(config_path)
    if not isinstance(config, dict) or "mga_alpha" not in config:
        return None
    return MGASettings.from_config(_Namespace(config))


class _Namespace:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _local_folder(path: Any) -> str | None:
    return path if isinstance(path, str) and os.path.isdir(os.path.expanduser(path)) else None


def check_swift_run(args: Any, settings: PluginSettings) -> None:
    """Start-up checks and adjustments of a swift run that uses the plugin.

    * a training run this machine cannot honour (bf16 without a GPU, flash attention without the
      package, ...) is refused with one message listing every argument to change;
    * full training in float16 without DeepSpeed (fp16 weights under fp16 AMP) is refused;
    * with ``--loss_type exgra_mga``, ``--sequence_parallel_size > 1`` is refused (the text passes
      would be split inside the language model), and a ``--model_type`` that does not fit the local checkpoint's
      architecture is refused (swift would fail inside its loader), naming the types that fit;
    * training with MGA on and no step able to hold a graph of >= 2 samples is refused;
    * the weight files of a local ``--model``, ``--adapters`` and ``--resume_from_checkpoint`` are
      checked (a truncated file is named with what is wrong, for every model type);
    * ``--strict`` is turned on for training: a row that fails to encode stops the run instead of
      being replaced by a random row;
    * ``--check_model`` is turned off for a local ``--model`` folder: it asks the ModelScope hub
      about a local folder and waits on the network when there is none.
    """
    training = hasattr(args, "per_device_train_batch_size")
    if training:
        _check_machine(args)
        problem = precision_problem(args)
        if problem:
            raise SettingsError(problem)
    if settings.mga.enabled:
        _check_model_type(args)
    if training and settings.mga.active:
        if int(getattr(args, "sequence_parallel_size", 1) or 1) > 1:
            raise SettingsError(f"--sequence_parallel_size {args.sequence_parallel_size} with --loss_type {LOSS_TYPE}: "
                                "the alignment's text passes run the whole language model on unsplit sequences, "
                                "which sequence parallelism does not support yet; use --sequence_parallel_size 1 "
                                "(or MGA_ALPHA=0)")
        _check_graph_size(args, settings)
        from swift.utils import get_dist_setting
        problem = reentrant_checkpointing_problem(args, world_size=max(1, get_dist_setting()[2]))
        if problem:
            raise SettingsError(problem)
        callbacks = getattr(args, "callbacks", None)
        if isinstance(callbacks, list) and HEAD_CALLBACK not in callbacks:
            callbacks.append(HEAD_CALLBACK)  # restores a built-in model's graph network on resume
    _check_checkpoint_files(args)
    if training and hasattr(args, "strict") and not args.strict:
        args.strict = True
        logger.info("exgramed: --strict turned on (a row that fails to encode stops the run, naming itself, "
                    "instead of being replaced by a random row)")
    if getattr(args, "check_model", False) and _local_folder(getattr(args, "model", None)):
        args.check_model = False
        if not _LOGGED_CHECK_MODEL:
            _LOGGED_CHECK_MODEL.append(True)
            logger.info("exgramed: --check_model turned off for the local checkpoint %s (it would query the hub)",
                        args.model)


_LOGGED_CHECK_MODEL: list[bool] = []
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


def _check_machine(args: Any) -> None:
    problems = machine_problems(args, accelerator=accelerator_available(),
                                flash_attn_installed=importlib.util.find_spec("flash_attn") is not None,
                                deepspeed_installed=importlib.util.find_spec("deepspeed") is not None)
    if problems:
        raise SettingsError("this machine cannot run the training as configured (a GPU recipe on a CPU?); change: "
                            + "; ".join(problems))


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
        from ..data.jsonio import read_json
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

    from ..data.jsonio import read_json
    from ..modeling.original_config import is_original_checkpoint
    if is_original_checkpoint(model_dir):
        return ["exgra_med"]
    config = read_json(Path(model_dir) / "config.json")
    return get_matched_model_types(config.get("architectures") if isinstance(config, dict) else None)


def _check_model_type(args: Any) -> None:
    model_type = getattr(args, "model_type", None)
    folder = _local_folder(getattr(args, "model", None))
    if not model_type or folder is None or checkpoint_model_type(folder) is None:
        return
    fitting = fitting_model_types(folder)
    if not fitting or model_type in fitting:
        return
    from ..head.builtin import FAMILIES, SUPPORTED_MODEL_TYPES
    supported = [t for t in fitting if t in SUPPORTED_MODEL_TYPES]
    use = ", ".join(f"--model_type {t} --template {FAMILIES[t].template if t in FAMILIES else t}" for t in supported)
    raise SettingsError(
        f"--model_type {model_type} does not fit {folder}: its config.json has model_type "
        f"{checkpoint_model_type(folder)!r}, which swift loads as {', '.join(fitting)}; "
        + (f"with --loss_type {LOSS_TYPE} use {use}" if use else
           f"--loss_type {LOSS_TYPE} supports none of them ({', '.join(SUPPORTED_MODEL_TYPES)})"))


def _check_checkpoint_files(args: Any) -> None:
    """Name a truncated or missing weight file of the checkpoints a run loads, before any loader does."""
    model = _local_folder(getattr(args, "model", None))
    if model is not None and has_weight_files(model):
        check_weight_files(model)
    for folder in [*(getattr(args, "adapters", None) or []), getattr(args, "resume_from_checkpoint", None)]:
        if _local_folder(folder):
            check_checkpoint_folder(folder)


def _check_graph_size(args: Any, settings: PluginSettings) -> None:
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        return  # a packed row holds many samples: counted per step by the model
    from swift.utils import get_dist_setting
    world_size = max(1, get_dist_setting()[2])
    per_device = int(args.per_device_train_batch_size or 1)
    graph = per_device * (world_size if settings.mga.global_graph else 1)
    if graph < 2:
        hint = "" if settings.mga.global_graph else " or MGA_GLOBAL_GRAPH=1 with several processes"
        raise SettingsError(
            f"--loss_type {LOSS_TYPE}: a graph needs >= 2 samples per step, but --per_device_train_batch_size "
            f"is {per_device} on {world_size} process(es){' (global graph)' if settings.mga.global_graph else ''}; "
            f"raise --per_device_train_batch_size to >= 2{hint} (every step would have align_loss 0)")


def capture_swift_arguments() -> None:
    """Parse the settings and check the run for every swift arguments object (idempotent)."""
    original = BaseArguments._init_model_kwargs
    if getattr(original, _PATCH_MARK, False):
        return

    def _init_model_kwargs(self: BaseArguments) -> None:
        original(self)
        settings = use_settings(settings_from_swift_args(self))
        check_swift_run(self, settings)

    setattr(_init_model_kwargs, _PATCH_MARK, True)
    BaseArguments._init_model_kwargs = _init_model_kwargs
