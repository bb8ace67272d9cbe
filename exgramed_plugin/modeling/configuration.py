"""Configuration of the ExGra-Med model (LLaVA-Med v1 layout, docs/method.md §1).

The config is *flat* like the original LLaVA-Med ``config.json``: the LLaMA fields sit at the top
level (so swift and DeepSpeed see ``hidden_size``), the ``mm_*`` fields of §1.8 sit beside them, and
the CLIP vision tower is a nested ``vision_config`` (so swift recognises the model as multimodal).
"""

from __future__ import annotations

import re
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, LlamaConfig

from ..settings import DENSE_CONNECTORS, MGASettings

DENSE_CONNECTOR_TYPES = DENSE_CONNECTORS
_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
_MGA_DEFAULTS = MGASettings()


@strict
class ExGraMedConfig(LlamaConfig):
    """LLaMA config plus the multimodal fields of the original ``LlavaLlamaForCausalLM``.

    Args:
        vision_config: CLIP vision tower config (dict or ``CLIPVisionConfig``).
        mm_vision_tower: where the vision weights come from when the checkpoint does not bundle
            them: a local CLIP directory or a hub id (§1.3).
        mm_vision_tower_type: ``clip`` (transformers CLIP) or ``open_clip`` (BiomedCLIP, §1.3).
        mm_hidden_size: projector input width; ``vision hidden`` or ``3 * vision hidden`` for the
            ``sci``/``dci`` dense connectors (§1.4).
        mm_projector_type: ``linear``, ``identity`` or ``mlp<N>x_gelu`` (§1.5).
        mm_vision_select_layer: index into the vision tower's ``hidden_states`` (-2 in every recipe).
        mm_use_im_start_end: wrap the image patches in ``<im_start>`` / ``<im_end>`` (§1.6).
        mm_dense_connector_type: ``none``, ``sci``, ``dci`` or ``sti`` (§1.4); the original did not
            store it in the config, we do.
        im_patch_token_id, im_start_token_id, im_end_token_id: ids of the added image tokens, taken
            from the tokenizer when the checkpoint is built (never hard-coded).
    """

    model_type = "exgra_med"
    sub_configs = {"vision_config": CLIPVisionConfig}

    vision_config: dict | CLIPVisionConfig | None = None
    mm_vision_tower: str | None = None
    mm_vision_tower_type: str = "clip"
    mm_hidden_size: int | None = None
    mm_projector_type: str = "mlp2x_gelu"
    mm_vision_select_layer: int = -2
    mm_use_im_start_end: bool = True
    mm_dense_connector_type: str = "none"
    num_l: int = 6
    use_mm_proj: bool = True
    im_patch_token_id: int | None = None
    im_start_token_id: int | None = None
    im_end_token_id: int | None = None
    mm_legacy_tokenization: bool = False
    # Multi-graph alignment (docs/method.md §3); the module exists only when mga_enabled. The defaults are
    # MGASettings' so that a config without an mga_* key trains as an unset MGA_* variable would.
    mga_enabled: bool = _MGA_DEFAULTS.enabled
    mga_alpha: float = _MGA_DEFAULTS.alpha
    mga_k: int = _MGA_DEFAULTS.k
    mga_lambda: float = _MGA_DEFAULTS.lambda_val
    mga_gumbel_scale: float = _MGA_DEFAULTS.gumbel_scale
    mga_solver: str = _MGA_DEFAULTS.solver
    mga_solver_search: int = _MGA_DEFAULTS.solver_search
    mga_hidden_features: int | None = _MGA_DEFAULTS.hidden_features
    mga_message_flow: str = _MGA_DEFAULTS.message_flow
    mga_use_message_passing: bool = _MGA_DEFAULTS.use_message_passing
    mga_fidelity: bool = _MGA_DEFAULTS.fidelity
    mga_pooling: str = _MGA_DEFAULTS.pooling
    mga_after_de: bool = _MGA_DEFAULTS.after_de
    # text passes packed without padding (head/text_packing.py); false: padded
    mga_text_packing: bool = _MGA_DEFAULTS.text_packing
    mga_global_graph: bool = _MGA_DEFAULTS.global_graph
    mga_seed: int = _MGA_DEFAULTS.seed
    # "mga", or a pairwise baseline "infonce" / "siglip" (alignment/contrastive.py)
    mga_objective: str = _MGA_DEFAULTS.objective

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.vision_config, dict):
            self.vision_config = CLIPVisionConfig(**{k: v for k, v in self.vision_config.items() if k != "model_type"})
        elif self.vision_config is None:
            # CLIP ViT-L/14 at 224 px, the tower of every published ExGra-Med checkpoint (§1.3).
            self.vision_config = CLIPVisionConfig(
                hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=224, patch_size=14, projection_dim=768)
        if self.mm_dense_connector_type not in DENSE_CONNECTOR_TYPES:
            raise ValueError(f"mm_dense_connector_type must be one of {DENSE_CONNECTOR_TYPES}, "
                             f"got {self.mm_dense_connector_type!r}")
        if self.mm_hidden_size is None:
            width = self.vision_config.hidden_size
            self.mm_hidden_size = 3 * width if self.mm_dense_connector_type in ("sci", "dci") else width
        if self.mm_projector_type not in ("linear", "identity") and not _MLP_GELU.match(self.mm_projector_type):
            raise ValueError(f"unknown mm_projector_type {self.mm_projector_type!r}: "
                             "expected 'linear', 'identity' or 'mlp<N>x_gelu'")
        super().__post_init__(**kwargs)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image produced by the vision tower (CLS dropped): 256 for CLIP-L/14@224."""
        side = self.vision_config.image_size // self.vision_config.patch_size
        return side * side

    @property
    def num_image_tokens(self) -> int:
        """``<im_patch>`` placeholders per image, consistent with what the connector outputs.

        ``sti`` appends two 8x average-pooled copies of intermediate layers along the token axis
        (§1.4); the original kept 256 placeholders and crashed, we count the extra tokens instead.
        """
        if self.mm_dense_connector_type == "sti":
            return self.num_patches + 2 * (self.num_patches // 8)
        return self.num_patches


def projector_depth(projector_type: str) -> int:
    """Number of Linear layers in an ``mlp<N>x_gelu`` projector (1 for ``linear``)."""
    match = _MLP_GELU.match(projector_type)
    return int(match.group(1)) if match else 1
