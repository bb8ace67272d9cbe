"""The alignment head on swift's built-in VLMs (Qwen2.5-VL, Qwen3-VL, InternVL3-hf, llava-hf, Gemma 3).

Their families (head/families.py) share transformers' layout ``model.model.language_model`` (the
text decoder, after its final norm), ``model.model.get_image_features`` and ``config.image_token_id``.
:func:`attach_alignment_head` gives a loaded model:

* ``model.mga``: the graph network (trainable; LoRA trains it with ``--modules_to_save mga``);
* a forward that, in training with the ``mga_*`` batch keys, records what the language model
  receives (its ``inputs_embeds``), runs the text passes and sets ``outputs.align_loss`` /
  ``outputs.align_terms`` (everything inside forward: DDP, ZeRO-3 and FSDP see every use);
* a ``save_pretrained`` that writes the graph network to a side file (head/side_file.py), so that
  the checkpoint's weights have exactly the stock class's keys (stock loaders and vLLM accept it).

Image node: per image, the mean over its token positions of the language model's input there (the
merger / projector output, swift's ``_post_encode`` or the model's own merge put it there); per
sample, the mean over its images. A sample without an image: the node of a black 32x32 image
through the model's own processor and ``get_image_features`` (swift's own text-only dummy image).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from torch import nn

from ..settings import MGASettings
from .families import BUILTIN_FAMILIES, HEAD_ATTRIBUTE, NETWORK_NAME, unsupported_model_type_error
from .head import AlignmentHead, attach_head, build_alignment_network
from .side_file import save_side_file

logger = logging.getLogger(__name__)


def text_hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    return int(getattr(text, "hidden_size", None) or config.hidden_size)


def attach_alignment_head(model: nn.Module, model_type: str, settings: MGASettings, processor: Any) -> nn.Module:
    """Give a loaded built-in ``model`` the graph network, the aligning forward and the side-file save
    (an ``exgra_med`` model builds its graph network and head itself, from its config)."""
    if model_type not in BUILTIN_FAMILIES:
        raise unsupported_model_type_error(model_type)
    if getattr(model, HEAD_ATTRIBUTE, None) is not None:
        return model
    parameter = next(model.parameters())
    network = build_alignment_network(settings, text_hidden_size(model.config))
    setattr(model, NETWORK_NAME, network.to(device=parameter.device, dtype=parameter.dtype))
    head = AlignmentHead(settings, BUILTIN_FAMILIES[model_type], processor)
    attach_head(model, head)
    _wrap_save_pretrained(model, head)
    logger.info("alignment head attached to the %s model (%s, %d graph-network parameters)", model_type,
                settings.objective, sum(p.numel() for p in network.parameters()))
    return model


def _wrap_save_pretrained(model: nn.Module, head: AlignmentHead) -> None:
    original = model.save_pretrained

    @functools.wraps(original)
    def save_pretrained(save_directory, *args, state_dict=None, is_main_process: bool = True, **kwargs):
        if state_dict is None:
            state_dict = model.state_dict()
        prefix = f"{NETWORK_NAME}."
        network = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
        stock = {key: value for key, value in state_dict.items() if not key.startswith(prefix)}
        result = original(save_directory, *args, state_dict=stock, is_main_process=is_main_process, **kwargs)
        if is_main_process and network:
            save_side_file(save_directory, network, head.settings, head.family.model_type)
        return result

    model.save_pretrained = save_pretrained
