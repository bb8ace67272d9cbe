"""ExGra-Med model: LLaMA + frozen CLIP tower + projector + image splice (docs/method.md §1).

Parameter names follow the original LLaVA-Med layout (``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``model.mm_projector.{0,2}``, ``lm_head``) so that published checkpoints load
without renaming. Unlike the original, the vision tower is a registered submodule
(``model.vision_tower``): swift can freeze it by prefix, and a checkpoint may bundle its weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import GenerationMixin, LlamaModel, PreTrainedModel
from transformers import initialization as hf_init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from ..alignment.contrastive import ContrastiveAlignment
from ..head.families import FAMILIES
from ..head.head import AlignmentHead, any_rank, attach_head, build_alignment_network
from ..settings import MGASettings
from .configuration import ExGraMedConfig, projector_depth
from .biomedclip import OpenClipVisionTower, biomed_dense_features
from .dense_connector import select_vision_features
from .vision import build_vision_tower

logger = logging.getLogger(__name__)


def build_vision_projector(config: ExGraMedConfig) -> nn.Module:
    """``linear`` / ``identity`` / ``mlp<N>x_gelu`` exactly as the original ``build_vision_projector``."""
    if config.mm_projector_type == "identity":
        return nn.Identity()
    if config.mm_projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, projector_depth(config.mm_projector_type)):
        layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*layers)


@dataclass
class ExGraMedCausalLMOutput(ModelOutput):
    """Causal-LM output plus the projected image features (the image nodes of the alignment)."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    image_hidden_states: Tensor | None = None
    align_loss: Tensor | None = None
    align_terms: dict[str, Tensor] | None = None


class ExGraMedPreTrainedModel(PreTrainedModel):
    config_class = ExGraMedConfig
    config: ExGraMedConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # Old checkpoints carry the rotary buffer; modern LLaMA recomputes it.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, CLIPVisionEmbeddings):
            std = module.config.initializer_range * module.config.initializer_factor
            nn.init.normal_(module.class_embedding, mean=0.0, std=module.embed_dim ** -0.5)
            nn.init.normal_(module.patch_embedding.weight, std=std)
            nn.init.normal_(module.position_embedding.weight, std=std)
            module.position_ids.copy_(torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, ContrastiveAlignment):  # its temperature / bias are bare nn.Parameters
            for name, value in module.initial_values().items():
                hf_init.constant_(getattr(module, name), value)


class ExGraMedModel(ExGraMedPreTrainedModel, LlamaModel):
    """The LLaMA decoder with the vision tower and projector attached (the original ``model.*``)."""

    def __init__(self, config: ExGraMedConfig):
        LlamaModel.__init__(self, config)
        self.vision_tower = build_vision_tower(config)
        self.mm_projector = build_vision_projector(config)
        if config.mga_enabled:
            self.mga = build_alignment_network(MGASettings.from_config(config), config.hidden_size)
        self.post_init()

    def get_image_features(self, pixel_values: Tensor) -> Tensor:
        """Projected patch features ``[num_images, num_image_tokens, hidden]``.

        The tower runs under ``no_grad`` while it is frozen (the original always did).
        """
        tower_trainable = any(p.requires_grad for p in self.vision_tower.parameters())
        pixel_values = pixel_values.to(self.vision_tower.dtype)
        with torch.set_grad_enabled(tower_trainable and torch.is_grad_enabled()):
            outputs = self.vision_tower(pixel_values, output_hidden_states=True)
            if isinstance(self.vision_tower, OpenClipVisionTower):
                features = biomed_dense_features(outputs.hidden_states, self.config.mm_vision_select_layer,
                                                 self.config.mm_dense_connector_type, self.config.num_l)
            else:
                features = select_vision_features(
                    outputs.hidden_states, self.config.mm_vision_select_layer, self.config.mm_dense_connector_type)
        return self.mm_projector(features.to(self.mm_projector_dtype))

    @property
    def mm_projector_dtype(self) -> torch.dtype:
        for parameter in self.mm_projector.parameters():
            return parameter.dtype
        return self.embed_tokens.weight.dtype

    def splice_image_features(self, input_ids: Tensor, inputs_embeds: Tensor, image_features: Tensor) -> Tensor:
        """Replace the ``<im_patch>`` embeddings by projector outputs, image after image (§1.6)."""
        patch_mask = input_ids == self.config.im_patch_token_id
        num_slots = int(patch_mask.sum())
        num_features = image_features.shape[0] * image_features.shape[1]
        if num_slots != num_features:
            raise ValueError(
                f"the batch has {num_slots} <im_patch> tokens but {image_features.shape[0]} image(s) x "
                f"{image_features.shape[1]} tokens = {num_features} image features; every image needs exactly "
                f"{self.config.num_image_tokens} <im_patch> tokens (config.num_image_tokens)")
        flat = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(patch_mask.unsqueeze(-1), flat)


class ExGraMedForCausalLM(ExGraMedPreTrainedModel, GenerationMixin):
    """LLaVA-Med v1 style multimodal causal LM (``architectures: ["ExGraMedForCausalLM"]``)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ExGraMedConfig):
        super().__init__(config)
        self.model = ExGraMedModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # the MGA head of every model family (head/head.py), its settings read once from this config;
        # the graph network is model.mga (ExGraMedModel)
        self.alignment_head = None
        if config.mga_enabled:
            attach_head(self, AlignmentHead(MGASettings.from_config(config), FAMILIES["exgra_med"]))

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def embed_multimodal(self, input_ids: Tensor, pixel_values: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Token embeddings with image features spliced in, and the image features themselves.

        In training, a text-only batch still runs the modules an image batch runs, times zero: the
        projector (DDP / FSDP, as llava_pre.py does), and the vision tower too when another rank has
        images (ZeRO-3 gathers the tower's weights in every call: all ranks must make the same calls).
        """
        inputs_embeds = self.model.embed_tokens(input_ids)
        other_rank_has_images = self.training and any_rank(pixel_values is not None, inputs_embeds.device)
        if pixel_values is None:
            if other_rank_has_images:
                size = self.config.vision_config.image_size
                zero_image = torch.zeros(1, 3, size, size, device=inputs_embeds.device)
                unused = self.model.get_image_features(zero_image)
                inputs_embeds = inputs_embeds + 0.0 * unused.sum().to(inputs_embeds.dtype)
            elif self.training and isinstance(self.model.mm_projector, nn.Module):
                dummy = torch.zeros(1, self.config.mm_hidden_size, device=inputs_embeds.device,
                                    dtype=self.model.mm_projector_dtype)
                inputs_embeds = inputs_embeds + 0.0 * self.model.mm_projector(dummy).sum().to(inputs_embeds.dtype)
            return inputs_embeds, None
        image_features = self.model.get_image_features(pixel_values)
        return self.model.splice_image_features(input_ids, inputs_embeds, image_features), image_features

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        pixel_values: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        **kwargs,
    ) -> ExGraMedCausalLMOutput:
        """The language model on the spliced embeddings; in training with MGA the alignment head wraps
        this call (head/head.py ``AlignmentHead.run``) and adds ``align_loss`` / ``align_terms``."""
        image_features = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds, image_features = self.embed_multimodal(input_ids, pixel_values)
        if use_cache is None and self.training:
            use_cache = False  # no cache in training: sdpa then reads packed samples from restarting positions
        outputs = self.model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return ExGraMedCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )
