"""The graph network of a built-in model's checkpoint, in a file beside its weights.

Stock loaders and vLLM refuse (or warn about) parameter names their class does not have, so a
built-in model trained with MGA saves ``model.safetensors`` with exactly the stock keys and its
graph network in ``mga_head.safetensors``, with the settings it was built with in the file's
metadata. ``swift infer`` / ``deploy`` never read it; continued training and resuming do.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from torch import Tensor, nn

from ..common.weight_files import CheckpointError, check_weight_file
from ..settings import MGASettings

SIDE_FILE = "mga_head.safetensors"
_SETTINGS_KEY = "exgramed_mga_settings"
_MODEL_TYPE_KEY = "exgramed_model_type"


def side_file_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / SIDE_FILE


def save_side_file(directory: str | os.PathLike, network_state: dict[str, Tensor], settings: MGASettings,
                   model_type: str) -> Path:
    """Write the graph network's weights (keys relative to ``mga.``) and its settings."""
    from safetensors.torch import save_file
    path = side_file_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in network_state.items()}
    metadata = {_SETTINGS_KEY: json.dumps(dataclasses.asdict(settings), sort_keys=True), _MODEL_TYPE_KEY: model_type}
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_side_file(directory: str | os.PathLike) -> tuple[dict[str, Tensor], MGASettings, str] | None:
    """The weights, settings and model type saved in ``directory`` (None when it has no side file)."""
    from safetensors import safe_open
    path = side_file_path(directory)
    if not path.is_file():
        return None
    check_weight_file(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if _SETTINGS_KEY not in metadata:
        raise CheckpointError(f"{path}: no {_SETTINGS_KEY!r} in its metadata: not a graph network saved by exgramed")
    settings = MGASettings(**json.loads(metadata[_SETTINGS_KEY]))
    return tensors, settings, metadata.get(_MODEL_TYPE_KEY, "")


def load_side_file(network: nn.Module, directory: str | os.PathLike) -> bool:
    """Load ``directory``'s graph network into ``network`` (a LoRA ``modules_to_save`` copy too).

    Returns whether the directory had one; a file whose keys do not match is an error naming it.
    """
    saved = read_side_file(directory)
    if saved is None:
        return False
    tensors, _, _ = saved
    targets = [network]
    copies = getattr(network, "modules_to_save", None)  # peft's ModulesToSaveWrapper
    if copies is not None:
        targets = [network.original_module, *copies.values()]
    for target in targets:
        missing, unexpected = target.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{side_file_path(directory)}: does not fit the graph network (missing {missing}, "
                                  f"unexpected {unexpected}): was it trained with other mga_* settings?")
    return True
