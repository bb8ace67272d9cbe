"""The model families the alignment head serves: one declarative entry per swift model type.

Every family gives the head the same three things in the same way: the language model's input at
the image-token positions (image nodes: per image the mean over its positions, per sample the mean
over its images), the text decoder after its final norm (text nodes), and the graph network. A
:class:`ModelFamily` says where each of them sits in a model of that type, and where a sample
without an image gets its node from. ``exgra_med`` is one family among the others: its
``<im_patch>`` positions hold the projector outputs, the original's image nodes.

Adding a family is one entry of :data:`FAMILIES`, a tiny checkpoint and the shared tests
(docs/extending.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

HEAD_ATTRIBUTE = "alignment_head"
NETWORK_NAME = "mga"  # the graph network's module name in every family (--modules_to_save mga)


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


@dataclass(frozen=True)
class ModelFamily:
    """Where the head finds its inputs in a model of one swift model type.

    ``decoder``: the text decoder's attribute path (its output is after the final norm);
    ``network``: the graph network's path; ``image_token``: the config fields naming the token
    whose positions hold the image features; ``zero_image``: what a sample without an image is
    run as, ``"black"`` (the processor's black 32x32 image, swift's own text-only dummy) or
    ``"zeros"`` (an all-zero pixel tensor of the vision config's size, as the original);
    ``tokens_per_image``: the config field giving each image's token count, for a batch without
    the template's bookkeeping (``None``: the template's counts are required);
    ``position_rows``: 4 for M-RoPE text models (``[text, t, h, w]`` position ids).
    """

    model_type: str
    template: str
    image_node_source: str
    image_node_modules: ImageNodeModules
    position_rows: int = 0
    decoder: str = "model.language_model"
    network: str = "mga"
    image_token: tuple[str, ...] = ("image_token_id", "image_token_index")
    zero_image: str = "black"
    tokens_per_image: str | None = None

    def decoder_of(self, model: nn.Module) -> nn.Module:
        return _attribute(model, self.decoder)

    def network_of(self, model: nn.Module) -> nn.Module | None:
        try:
            return _attribute(model, self.network)
        except AttributeError:
            return None

    def image_token_id(self, config: Any) -> int:
        for name in self.image_token:
            value = getattr(config, name, None)
            if value is not None:
                return int(value)
        raise ValueError(f"{type(config).__name__} names no image token ({' / '.join(self.image_token)})")

    def zero_image_inputs(self, model: nn.Module, processor: Any) -> dict[str, Any]:
        """The vision inputs of the image a sample without an image gets its node from."""
        if self.zero_image == "zeros":
            size = model.config.vision_config.image_size
            return {"pixel_values": torch.zeros(1, 3, size, size)}
        from PIL import Image
        return dict(processor.image_processor(images=[Image.new("RGB", (32, 32), (0, 0, 0))], return_tensors="pt"))


def _attribute(model: nn.Module, path: str) -> Any:
    return functools.reduce(getattr, path.split("."), model)


_PROJECTOR = ImageNodeModules(("model.vision_tower.", "model.multi_modal_projector."), "multi_modal_projector")

FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (
    ModelFamily("exgra_med", "exgra_med", "mm_projector output (the <im_patch> embeddings it replaces)",
                ImageNodeModules(("model.vision_tower.", "model.mm_projector."), "mm_projector"),
                decoder="model", network="model.mga", image_token=("im_patch_token_id",), zero_image="zeros",
                tokens_per_image="num_image_tokens"),
    ModelFamily("qwen2_5_vl", "qwen2_5_vl", "merger output (swift's _post_encode merges it)",
                ImageNodeModules(("model.visual.",), "merger"), position_rows=4),
    ModelFamily("qwen3_vl", "qwen3_vl", "merger output (the model merges it; deepstack features not included)",
                ImageNodeModules(("model.visual.",), "merger"), position_rows=4),
    ModelFamily("internvl", "internvl_hf", "multi_modal_projector output (pixel-shuffled tiles)", _PROJECTOR),
    ModelFamily("llava1_5_hf", "llava1_5_hf", "multi_modal_projector output", _PROJECTOR),
    ModelFamily("gemma3_vision", "gemma3_vision", "multi_modal_projector output (pooled soft tokens)",
                ImageNodeModules(_PROJECTOR.prefixes, _PROJECTOR.aligner, aligner_has_linear=False)),
)}
BUILTIN_FAMILIES: dict[str, ModelFamily] = {name: family for name, family in FAMILIES.items() if name != "exgra_med"}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
IMAGE_NODE_MODULES: dict[str, ImageNodeModules] = {name: family.image_node_modules for name, family in FAMILIES.items()}


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


def zero_image_node(model: nn.Module, media: dict[str, Any]) -> Tensor:
    """The image node ``[hidden]`` of the image ``media`` (:meth:`ModelFamily.zero_image_inputs`)."""
    vision = model.model
    device = next(model.parameters()).device
    inputs = {key: value.to(device) for key, value in media.items() if isinstance(value, Tensor)}
    dtype = getattr(getattr(vision, "visual", None) or getattr(vision, "vision_tower", None), "dtype", None)
    if dtype is not None:
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    inputs.pop("num_patches", None)  # InternVL's image processor: not an argument of get_image_features
    return image_feature_rows(vision.get_image_features(**inputs)).mean(dim=0)
