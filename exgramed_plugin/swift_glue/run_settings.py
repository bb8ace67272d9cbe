"""The plugin's settings of a swift run, read once from swift's arguments, and the start-up adjustments.

swift builds its arguments object, imports the plugin, then exports ``--model_kwargs`` as
environment variables (``BaseArguments._init_model_kwargs``). Wrapping that one step gives the
plugin every arguments object swift builds in this process (``sft``, ``infer``, ``export``,
``deploy``, the web UI's runs), after the model kwargs are known and before any model, template or
dataset is made: the one place where the settings are parsed and the run is checked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from swift.arguments.base_args.base_args import BaseArguments

from ..alignment.step_cost import global_graph_warning
from ..settings import MGASettings, PluginSettings, parse_settings, use_settings, with_saved_mga
from .run_checks import local_folder, refuse_what_cannot_run, world_size

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
    from ..common.jsonio import read_json
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
    from ..common.jsonio import read_json
    config = read_json(config_path)
    if not isinstance(config, dict) or "mga_alpha" not in config:
        return None
    return MGASettings.from_config(_Namespace(config))


class _Namespace:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def check_swift_run(args: Any, settings: PluginSettings) -> None:
    """Start-up checks and adjustments of a swift run that uses the plugin.

    * what cannot run is refused (run_checks.py: machine, precision, model type, sequence parallel,
      graph size, checkpointing, truncated weight files);
    * a global graph above 512 nodes gets a warning with its estimated CPU time per step;
    * ``--strict`` is turned on for training: a row that fails to encode stops the run instead of
      being replaced by a random row;
    * ``--check_model`` is turned off for a local ``--model`` folder: it asks the ModelScope hub
      about a local folder and waits on the network when there is none (logged once).
    """
    training = hasattr(args, "per_device_train_batch_size")
    refuse_what_cannot_run(args, settings, training=training)
    if training and settings.mga.active:
        per_device = int(args.per_device_train_batch_size or 1)
        if settings.mga.global_graph and (warning := global_graph_warning(per_device, world_size())):
            logger.warning("exgramed: %s", warning)
        callbacks = getattr(args, "callbacks", None)
        if isinstance(callbacks, list) and HEAD_CALLBACK not in callbacks:
            callbacks.append(HEAD_CALLBACK)  # restores a built-in model's graph network on resume
    if training and hasattr(args, "strict") and not args.strict:
        args.strict = True
        logger.info("exgramed: --strict turned on (a row that fails to encode stops the run, naming itself, "
                    "instead of being replaced by a random row)")
    if getattr(args, "check_model", False) and local_folder(getattr(args, "model", None)):
        args.check_model = False
        if not _LOGGED_CHECK_MODEL:
            _LOGGED_CHECK_MODEL.append(True)
            logger.info("exgramed: --check_model turned off for the local checkpoint %s (it would query the hub)",
                        args.model)


_LOGGED_CHECK_MODEL: list[bool] = []


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
