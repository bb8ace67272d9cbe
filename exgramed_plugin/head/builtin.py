"""The alignment head on swift's built-in VLMs (Qwen2.5-VL, Qwen3-VL, InternVL3-hf, llava-hf, Gemma 3).

The five share transformers' layout ``model.model.language_model`` (the text decoder, after its
final norm), ``model.model.get_image_features`` and ``config.image_token_id``, so one adapter
serves them; a :class:`ModelFamily` says what differs (template, M-RoPE positions).
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
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..settings import MGASettings
from .head import AlignmentHead, alignment_terms, any_rank, build_alignment_network, image_nodes
from .side_file import save_side_file

logger = logging.getLogger(__name__)

HEAD_ATTRIBUTE = "alignment_head"
NETWORK_NAME = "mga"


@dataclass(frozen=True)
class ImageNodeModules:
    """The modules a model type's image nodes come from, and how swift can train them.

    ``prefixes``: parameter-name prefixes (in the model that carries the head) of the vision tower
    and the projector / merger; ``aligner``: the projector's module name, as ``--modules_to_save``
    takes it; ``aligner_has_linear``: whether LoRA's ``all-linear`` reaches it (Gemma 3's projector
    is a bare weight matrix, no ``nn.Linear``: only ``--modules_to_save`` trains it under LoRA).
    """

    prefixes: tuple[str, ...]
    aligner: str
    aligner_has_linear: bool = True


_PROJECTOR = ImageNodeModules(("model.vision_tower.", "model.multi_modal_projector."), "multi_modal_projector")


@dataclass(frozen=True)
class ModelFamily:
    """What the head needs to know about one swift model type."""

    model_type: str
    template: str
    image_node_source: str
    image_node_modules: ImageNodeModules
    position_rows: int = 0  # 4: M-RoPE text models take [text, t, h, w] position ids


FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (
    ModelFamily("qwen2_5_vl", "qwen2_5_vl", "merger output (swift's _post_encode merges it)",
                ImageNodeModules(("model.visual.",), "merger"), position_rows=4),
    ModelFamily("qwen3_vl", "qwen3_vl", "merger output (the model merges it; deepstack features not included)",
                ImageNodeModules(("model.visual.",), "merger"), position_rows=4),
    ModelFamily("internvl", "internvl_hf", "multi_modal_projector output (pixel-shuffled tiles)", _PROJECTOR),
    ModelFamily("llava1_5_hf", "llava1_5_hf", "multi_modal_projector output", _PROJECTOR),
    ModelFamily("gemma3_vision", "gemma3_vision", "multi_modal_projector output (pooled soft tokens)",
                ImageNodeModules(_PROJECTOR.prefixes, _PROJECTOR.aligner, aligner_has_linear=False)),
)}
SUPPORTED_MODEL_TYPES = ("exgra_med", *FAMILIES)
IMAGE_NODE_MODULES: dict[str, ImageNodeModules] = {
    "exgra_med": ImageNodeModules(("model.vision_tower.", "model.mm_projector."), "mm_projector"),
    **{family.model_type: family.image_node_modules for family in FAMILIES.values()},
}


@dataclass(frozen=True)
class FrozenImageNodes:
    """The warning for a run whose image nodes come from frozen modules, and the swift arguments
    that train them for this model type and tuner (``flags``: argument -> value; a list is added to
    the run's own list)."""

    message: str
    flags: dict[str, Any]


def frozen_image_nodes(model: nn.Module, model_type: str | None) -> FrozenImageNodes | None:
    """None when something the image nodes of ``model`` (the module carrying the head, after swift's
    model preparation) come from trains; else the warning with the way to train it for this type."""
    source = IMAGE_NODE_MODULES.get(model_type)
    if source is None:
        return None
    named = list(model.named_parameters())
    # names may carry a wrapper's prefix (peft: "base_model.model.")
    sourced = [parameter for name, parameter in named if any(f".{prefix}" in f".{name}" for prefix in source.prefixes)]
    if any(parameter.requires_grad for parameter in sourced):
        return None
    where = f"the image nodes of the alignment come from frozen modules ({', '.join(source.prefixes)} of {model_type})"
    if not any("lora_" in name for name, _ in named):
        return FrozenImageNodes(f"{where}: pass --freeze_aligner false (or --freeze_vit false) to train them",
                                {"freeze_aligner": False})
    to_save = [NETWORK_NAME, source.aligner]
    how = f"add {source.aligner} to --modules_to_save (--modules_to_save {' '.join(to_save)})"
    if source.aligner_has_linear:
        how += ", or pass --freeze_aligner false with --target_modules all-linear for LoRA on its linear layers"
    else:
        how += f"; LoRA cannot reach the {model_type} {source.aligner} (no linear layers), --freeze_aligner false does not"
    return FrozenImageNodes(f"{where}: {how}", {"modules_to_save": to_save})


def model_with_head(model: nn.Module) -> nn.Module | None:
    """The (unwrapped) module that carries the alignment head: exgra_med or a built-in model."""
    for module in model.modules():
        if getattr(module, HEAD_ATTRIBUTE, None) is not None:
            return module
    return None


def unsupported_model_type_error(model_type: str | None) -> ValueError:
    from ..settings import LOSS_TYPE
    return ValueError(f"--loss_type {LOSS_TYPE} does not support model type {model_type!r}; supported model types: "
                      f"{', '.join(SUPPORTED_MODEL_TYPES)}")


def language_model(model: nn.Module) -> nn.Module:
    return model.model.language_model


def image_token_id(config: Any) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def text_hidden_size(config: Any) -> int:
    text = getattr(config, "text_config", None)
    return int(getattr(text, "hidden_size", None) or config.hidden_size)


def image_feature_rows(output: Any) -> Tensor:
    """``get_image_features`` output of any of the families as ``[tokens, hidden]`` rows.

    transformers 5 returns a ``BaseModelOutputWithPooling`` whose ``pooler_output`` holds the
    projected features (a tensor or one tensor per image), or the features themselves.
    """
    pooled = getattr(output, "pooler_output", None)
    if pooled is not None:
        output = pooled
    elif hasattr(output, "last_hidden_state"):
        output = output.last_hidden_state
    if isinstance(output, (list, tuple)):
        return torch.cat([part.reshape(-1, part.shape[-1]) for part in output])
    return output.reshape(-1, output.shape[-1])


def black_image_inputs(processor: Any) -> dict[str, Any]:
    """The image processor's output for a black 32x32 image (swift's own text-only dummy image)."""
    from PIL import Image
    return dict(processor.image_processor(images=[Image.new("RGB", (32, 32), (0, 0, 0))], return_tensors="pt"))


def zero_image_node(model: nn.Module, media: dict[str, Any]) -> Tensor:
    """The image node of the black image ``media`` (:func:`black_image_inputs`) ``[hidden]``."""
    vision = model.model
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in media.items() if isinstance(value, Tensor)}
    dtype = getattr(getattr(vision, "visual", None) or getattr(vision, "vision_tower", None), "dtype", None)
    if dtype is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    inputs.pop("num_patches", None)  # InternVL's image processor: not an argument of get_image_features
    return image_feature_rows(vision.get_image_features(**inputs)).mean(dim=0)


@contextmanager
def recorded_inputs_embeds(decoder: nn.Module):
    """Record the ``inputs_embeds`` of ``decoder``'s first call inside the block."""
    seen: dict[str, Tensor] = {}

    def hook(_module, args, kwargs):
        if "inputs_embeds" not in seen and kwargs.get("inputs_embeds") is not None:
            seen["inputs_embeds"] = kwargs["inputs_embeds"]

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


class BuiltinAlignmentHead(AlignmentHead):
    """The head of one built-in model: where its nodes come from, and its forward step."""

    def __init__(self, settings: MGASettings, family: ModelFamily, processor: Any) -> None:
        super().__init__(settings)
        self.family = family
        self.processor = processor
        self._black_image: dict[str, Any] | None = None

    def alignment(self, model: nn.Module, lm_inputs_embeds: Tensor, input_ids: Tensor, batch: dict[str, Tensor]):
        """The alignment output of one training step of ``model``."""
        decoder = language_model(model)
        mask = input_ids == image_token_id(model.config)
        states = lm_inputs_embeds[mask.to(lm_inputs_embeds.device)]
        tokens_per_image = batch["mga_image_tokens"].tolist()
        images_per_sample = batch["mga_images_per_sample"].tolist()
        zero_node = None
        if any_rank(0 in images_per_sample, input_ids.device):
            if self._black_image is None:  # processed once, not at every step that needs it
                self._black_image = black_image_inputs(self.processor)
            zero_node = zero_image_node(model, self._black_image)
        z_image = image_nodes(states, tokens_per_image, images_per_sample, zero_node)
        text = self.text_nodes(decoder, batch["mga_text_ids"], batch.get("mga_text_mask"),
                               batch.get("mga_text_lengths"), position_rows=self.family.position_rows)
        samples = len(images_per_sample)
        if text.shape[0] != 2 * samples:
            raise ValueError(f"the text passes have {text.shape[0]} samples, expected 2 x batch = {2 * samples}")
        return self.align(getattr(model, NETWORK_NAME), z_image.to(text.dtype), text[:samples], text[samples:])


def attach_alignment_head(model: nn.Module, model_type: str, settings: MGASettings, processor: Any) -> nn.Module:
    """Give a loaded built-in ``model`` the graph network, the aligning forward and the side-file save."""
    if model_type not in FAMILIES:
        raise unsupported_model_type_error(model_type)
    if getattr(model, HEAD_ATTRIBUTE, None) is not None:
        return model
    family = FAMILIES[model_type]
    parameter = next(model.parameters())
    network = build_alignment_network(settings, text_hidden_size(model.config))
    setattr(model, NETWORK_NAME, network.to(device=parameter.device, dtype=parameter.dtype))
    head = BuiltinAlignmentHead(settings, family, processor)
    object.__setattr__(model, HEAD_ATTRIBUTE, head)
    _wrap_forward(model, head)
    _wrap_save_pretrained(model, head)
    logger.info("alignment head attached to the %s model (%s, %d graph-network parameters)", model_type,
                settings.objective, sum(p.numel() for p in network.parameters()))
    return model


def _wrap_forward(model: nn.Module, head: BuiltinAlignmentHead) -> None:
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        batch = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith("mga_")}
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            input_ids = batch.pop("mga_input_ids", None)
        if not model.training:
            return original(*args, **kwargs)
        if "mga_text_ids" not in batch:
            raise ValueError(f"the alignment head of this {head.family.model_type} model got a training batch "
                             f"without merged answers (mga_text_ids): train with --template {head.family.template} "
                             "(the plugin's version of it emits them) and rows with extended answers")
        if input_ids is None:
            raise ValueError("the alignment head needs the batch's input_ids to find the image tokens")
        with recorded_inputs_embeds(language_model(model)) as seen:
            outputs = original(*args, **kwargs)
        if "inputs_embeds" not in seen:
            raise RuntimeError("the language model was not called with inputs_embeds: cannot read the image nodes")
        alignment = head.alignment(model, seen["inputs_embeds"], input_ids, batch)
        outputs.align_loss = alignment.loss
        outputs.align_terms = alignment_terms(alignment)
        return outputs

    model.forward = forward


def _wrap_save_pretrained(model: nn.Module, head: BuiltinAlignmentHead) -> None:
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
