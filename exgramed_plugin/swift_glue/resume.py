"""``--resume_from_checkpoint`` for models that carry the alignment head (and, at the start of
training, the warning when the modules its image nodes come from are frozen).

The trainer restores the optimizer, scheduler, RNG and data position; three things it does not:

* a built-in model's graph network, which lives in the checkpoint's side file (head/side_file.py);
* for full training of a built-in model, its weights: transformers 5 saves them under the hub's
  key names (``visual.*``, ``model.embed_tokens``) and the trainer loads the file with a plain
  ``load_state_dict``, so it matches none of the renamed modules (``model.visual.*``, ...). The
  callback loads them again through the model's own key conversion;
* the head's step counter, which seeds each step's Gumbel noise (saved as mga_head_state.json
  beside each checkpoint): a resumed run draws the noise the uninterrupted run would have.

DeepSpeed restores every parameter (the network's too) from its own checkpoint files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from swift.callbacks import TrainerCallback
from torch import nn

from ..common.jsonio import read_json, write_json
from ..head.families import HEAD_ATTRIBUTE, NETWORK_NAME, frozen_image_nodes, model_with_head
from ..head.head import distributed_rank
from ..head.side_file import load_side_file, side_file_path
from ..common.weight_files import check_weight_files, load_weight_file

logger = logging.getLogger(__name__)
CALLBACK_NAME = "exgramed_mga_head"
HEAD_STATE_FILE = "mga_head_state.json"


def restore_stock_weights(model: nn.Module, checkpoint: str | os.PathLike) -> int:
    """Load a full-training checkpoint of a built-in model under the model's own parameter names.

    The saved name of each parameter is what ``save_pretrained`` makes of it
    (``revert_weight_conversion``); renames only, so each saved tensor maps back to one parameter.
    Returns the number of tensors loaded; a parameter the file lacks is an error naming the file.
    """
    from transformers.core_model_loading import revert_weight_conversion
    runtime = {key: value for key, value in model.state_dict().items() if not key.startswith(f"{NETWORK_NAME}.")}
    saved_names = revert_weight_conversion(model, dict(runtime))
    runtime_by_storage = {}
    for key, value in runtime.items():
        runtime_by_storage.setdefault(value.data_ptr(), []).append(key)
    tensors = {}
    for path in check_weight_files(checkpoint):
        tensors.update(load_weight_file(path))
    restored: dict[str, torch.Tensor] = {}
    for saved_key, value in saved_names.items():
        if saved_key in tensors:
            for key in runtime_by_storage.get(value.data_ptr(), []):
                restored[key] = tensors[saved_key]
    missing = sorted(set(runtime) - set(restored))
    if missing:
        raise KeyError(f"{checkpoint}: no saved weight for {len(missing)} parameter(s) of the model, e.g. {missing[:3]}")
    model.load_state_dict(restored, strict=False)
    return len(restored)


class AlignmentHeadCallback(TrainerCallback):
    """Completes ``--resume_from_checkpoint`` for the alignment head (see the module docstring)."""

    def on_save(self, args, state, control, **kwargs):
        model = kwargs.get("model")
        target = model_with_head(model) if model is not None else None
        if target is None or not state.is_world_process_zero or distributed_rank() != 0:
            return  # (HF's process index is 0 on every rank of a CPU/gloo launch: the process group decides)
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():  # the head's step counter, which seeds the noise (one count per micro-batch)
            write_json(folder / HEAD_STATE_FILE, {"calls": getattr(target, HEAD_ATTRIBUTE).calls})

    def on_train_begin(self, args, state, control, **kwargs):
        resume = getattr(args, "resume_from_checkpoint", None)
        model = kwargs.get("model")
        target = model_with_head(model) if model is not None else None
        if target is not None:  # after swift's model preparation: what trains is known now
            frozen = frozen_image_nodes(target, getattr(getattr(model, "model_meta", None), "model_type", None))
            if frozen is not None:
                logger.warning(frozen.message)
            network = getattr(target, HEAD_ATTRIBUTE).family.network_of(target)
            if network is not None and not any(p.requires_grad for p in network.parameters()):
                logger.warning("the MGA graph network is frozen (LoRA freezes modules it does not target): pass "
                               "--modules_to_save mga to train and save it")
        if not resume or target is None:
            return
        head = getattr(target, HEAD_ATTRIBUTE)
        head_state = Path(resume) / HEAD_STATE_FILE
        if head_state.is_file():
            head.calls = int(read_json(head_state)["calls"])
        else:  # a checkpoint written without the callback: the count of an accumulation that never ends early
            head.calls = int(state.global_step) * int(args.gradient_accumulation_steps)
        if getattr(args, "deepspeed", None) or not hasattr(target, NETWORK_NAME):
            return  # DeepSpeed restored every parameter; exgra_med keeps its network in its own weights
        if (Path(resume) / "config.json").is_file():  # full training (LoRA resumes through peft's adapter)
            count = restore_stock_weights(target, resume)
            logger.info("%d model weights restored from %s under the model's parameter names", count, resume)
        if load_side_file(getattr(target, NETWORK_NAME), resume):
            logger.info("graph network restored from %s", side_file_path(resume))


def register_resume_callback() -> None:
    """``check_swift_run`` adds the callback to every MGA training run (``--callbacks``)."""
    from swift.callbacks import callbacks_map
    callbacks_map[CALLBACK_NAME] = AlignmentHeadCallback
