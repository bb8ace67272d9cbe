"""ExGra-Med model: LLaMA + frozen CLIP tower + projector + image splice (method-spec §1).

Parameter names follow the original LLaVA-Med layout (``model.embed_tokens``, ``model.layers.*``,
``model.norm``, ``model.mm_projector.{0,2}``, ``lm_head``) so that published checkpoints load
without renaming. Unlike the original, the vision tower is a registered submodule
(``model.vision_tower``): swift can freeze it by prefix, and a checkpoint may bundle its weights.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch import distributed as dist
from transformers import GenerationMixin, LlamaModel, PreTrainedModel
from transformers import initialization as hf_init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import ModelOutput
from transformers.models.clip.modeling_clip import CLIPVisionEmbeddings

from ..alignment import MultiGraphAlignment, MultiGraphAlignmentOutput
from ..alignment.contrastive import CONTRASTIVE_OBJECTIVES, ContrastiveAlignment
from .configuration import ExGraMedConfig, projector_depth
from .biomedclip import OpenClipVisionTower, biomed_dense_features
from .dense_connector import select_vision_features
from .text_packing import pack_padded, packed_text_nodes
from .vision import build_vision_tower

logger = logging.getLogger(__name__)
MGA_POOLINGS = ("masked", "padded")


_EXIT_HOOK: list[bool] = []


def _destroy_process_group_at_exit() -> None:
    """Destroy the default process group before interpreter finalization (registered once).

    swift leaves the group alive at the end of training. Gloo worker threads may then still hold
    the tensors of the last collectives when Python tears down, and freeing them without an
    interpreter aborts the process ("terminate called without an active exception"), after the
    run has finished and saved.
    """
    if _EXIT_HOOK:
        return
    _EXIT_HOOK.append(True)

    def _destroy() -> None:
        if dist.is_available() and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as error:  # exiting anyway: never turn a finished run into a failure
                logger.debug("destroy_process_group at exit: %s", error)

    atexit.register(_destroy)


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
            if config.mga_pooling not in MGA_POOLINGS:
                raise ValueError(f"mga_pooling must be one of {MGA_POOLINGS}, got {config.mga_pooling!r}")
            if config.mga_objective in CONTRASTIVE_OBJECTIVES:  # the paper's pairwise baselines, same nodes
                self.mga = ContrastiveAlignment(objective=config.mga_objective)
            elif config.mga_objective != "mga":
                raise ValueError(f"mga_objective must be 'mga' or one of {CONTRASTIVE_OBJECTIVES}, "
                                 f"got {config.mga_objective!r}")
            else:
                self.mga = MultiGraphAlignment(
                    in_features=config.hidden_size, hidden_features=config.mga_hidden_features, k=config.mga_k,
                    lambda_val=config.mga_lambda, gumbel_scale=config.mga_gumbel_scale, solver=config.mga_solver,
                    message_flow=config.mga_message_flow, fidelity=config.mga_fidelity,
                    use_message_passing=config.mga_use_message_passing, seed=config.mga_seed)
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

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def embed_multimodal(self, input_ids: Tensor, pixel_values: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Token embeddings with image features spliced in, and the image features themselves."""
        inputs_embeds = self.model.embed_tokens(input_ids)
        if pixel_values is None:
            if self.training and isinstance(self.model.mm_projector, nn.Module):
                # Keep the projector in the graph for text-only batches (DDP/FSDP), as llava_pre.py does.
                dummy = torch.zeros(1, self.config.mm_hidden_size, device=inputs_embeds.device,
                                    dtype=self.model.mm_projector_dtype)
                inputs_embeds = inputs_embeds + 0.0 * self.model.mm_projector(dummy).sum().to(inputs_embeds.dtype)
            return inputs_embeds, None
        image_features = self.model.get_image_features(pixel_values)
        return self.model.splice_image_features(input_ids, inputs_embeds, image_features), image_features

    # ----------------------------------------------------------------------------------------
    # Multi-graph alignment (method-spec §3.2-§3.4), run inside forward so that DDP, ZeRO-3 and
    # FSDP see every parameter it uses.

    def image_nodes(self, input_ids: Tensor, image_features: Tensor | None) -> Tensor:
        """Per-sample mean of the projector outputs over its image tokens ``[B, hidden]``.

        A sample without an image gets the node of an all-zero image, as the original did.
        """
        batch = input_ids.shape[0]
        tokens = self.config.num_image_tokens
        images_per_sample = (input_ids == self.config.im_patch_token_id).sum(dim=1) // tokens
        if image_features is None or bool((images_per_sample == 0).any()):
            zero_image = torch.zeros(1, 3, self.config.vision_config.image_size, self.config.vision_config.image_size,
                                     device=input_ids.device)
            zero_node = self.model.get_image_features(zero_image).mean(dim=1)[0]
        nodes = []
        per_image = image_features.mean(dim=1) if image_features is not None else None
        start = 0
        for index in range(batch):
            count = int(images_per_sample[index])
            if count == 0:
                nodes.append(zero_node)
            else:
                nodes.append(per_image[start:start + count].mean(dim=0))
                start += count
        return torch.stack(nodes)

    def text_nodes(self, text_ids: Tensor, text_mask: Tensor | None = None,
                   text_lengths: Tensor | None = None) -> Tensor:
        """Pooled LLM states (after the final norm) of the merged answers ``[N, hidden]``.

        Packed (``text_lengths``: ``text_ids`` ``[1, T]`` back to back) or padded (``text_mask``,
        ``[N, L]``, packed here unless ``mga_text_packing`` is false): the masked mean is the same.
        ``mga_after_de`` false pools the raw token embeddings instead; ``mga_pooling`` ``padded``
        averages over padding too, as the original did, so it needs the padded batch.
        """
        if self.config.mga_pooling == "padded" or not self.config.mga_text_packing:
            if text_mask is None:
                raise ValueError(
                    f"mga_pooling={self.config.mga_pooling!r}, mga_text_packing={self.config.mga_text_packing}: the "
                    "padded text pass needs the padded [2B, L] batch (mga_text_mask), got a packed one "
                    "(mga_text_lengths); the exgra_med template emits the padded batch for these settings")
            if self.config.mga_pooling == "padded" and not getattr(self, "_logged_padded_text_pass", False):
                logger.info("alignment text passes run padded [2B, L] (not packed) because mga_pooling=padded: "
                            "the original's mean over padding depends on the padded length")
                self._logged_padded_text_pass = True
            return self._padded_text_nodes(text_ids, text_mask)
        if text_lengths is None:
            text_ids, text_lengths = pack_padded(text_ids, text_mask)
        return packed_text_nodes(self.model, text_ids, text_lengths, after_de=self.config.mga_after_de)

    def _padded_text_nodes(self, text_ids: Tensor, text_mask: Tensor) -> Tensor:
        """The original layout: one padded ``[N, L]`` pass, masked (or, ``padded``, plain) mean."""
        embeds = self.model.embed_tokens(text_ids)
        if self.config.mga_after_de:
            hidden = self.model(inputs_embeds=embeds, attention_mask=text_mask, use_cache=False).last_hidden_state
        else:
            hidden = embeds
        if self.config.mga_pooling == "padded":
            return hidden.mean(dim=1)
        mask = text_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def _noise_generator(self, global_graph: bool) -> torch.Generator:
        """Seeded per step (and per rank for per-device graphs), never the global RNG."""
        self._mga_calls = getattr(self, "_mga_calls", 0) + 1
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() and not global_graph else 0
        seed = (self.config.mga_seed * 1_000_003 + self._mga_calls * 7919 + rank) % (2 ** 63)
        return torch.Generator().manual_seed(seed)

    @staticmethod
    def _gather_with_local_grad(nodes: Tensor) -> Tensor:
        """All nodes of all processes; only the local slice keeps its gradient."""
        world, rank = dist.get_world_size(), dist.get_rank()
        sizes = [torch.zeros(1, dtype=torch.long, device=nodes.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([nodes.shape[0]], device=nodes.device))
        largest = int(max(s.item() for s in sizes))
        padded = torch.zeros(largest, nodes.shape[1], dtype=nodes.dtype, device=nodes.device)
        padded[:nodes.shape[0]] = nodes.detach()
        gathered = [torch.zeros_like(padded) for _ in range(world)]
        dist.all_gather(gathered, padded)
        parts = [g[:int(s.item())] for g, s in zip(gathered, sizes)]
        parts[rank] = nodes
        return torch.cat(parts)

    def multi_graph_alignment(self, input_ids: Tensor, image_features: Tensor | None, text_ids: Tensor,
                              text_mask: Tensor | None, text_lengths: Tensor | None = None
                              ) -> MultiGraphAlignmentOutput:
        """MGA over image, answer and extended-answer nodes; both text passes in one batch."""
        batch = input_ids.shape[0]
        samples = text_lengths.shape[0] if text_lengths is not None else text_ids.shape[0]
        if samples != 2 * batch:
            raise ValueError(f"the text passes have {samples} samples, expected 2 x batch = {2 * batch} "
                             "(answers then extended answers)")
        z_image = self.image_nodes(input_ids, image_features)
        text = self.text_nodes(text_ids, text_mask, text_lengths)
        nodes = [z_image, text[:batch], text[batch:]]
        global_graph = bool(self.config.mga_global_graph) and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size() > 1
        if global_graph:
            # One gather for the three node sets (2 collectives per step instead of 6).
            gathered = self._gather_with_local_grad(torch.cat(nodes, dim=1))
            nodes = [part.to(z.dtype) for part, z in zip(gathered.split([z.shape[1] for z in nodes], dim=1), nodes)]
            _destroy_process_group_at_exit()
        output = self.model.mga(*nodes, generator=self._noise_generator(global_graph),
                                loss_scale=getattr(self, "mga_loss_scale", None))
        if output.skipped_reason and not getattr(self, "_warned_small_batch", False):
            logger.warning("alignment loss is zero for this batch: %s (warned once)", output.skipped_reason)
            self._warned_small_batch = True
        return output

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
        mga_text_ids: Tensor | None = None,
        mga_text_mask: Tensor | None = None,
        mga_text_lengths: Tensor | None = None,
        **kwargs,
    ) -> ExGraMedCausalLMOutput:
        image_features = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds, image_features = self.embed_multimodal(input_ids, pixel_values)
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
        align_loss = align_terms = None
        if mga_text_ids is not None and self.training and hasattr(self.model, "mga"):
            alignment = self.multi_graph_alignment(input_ids, image_features, mga_text_ids, mga_text_mask,
                                                   mga_text_lengths)
            align_loss = alignment.loss
            align_terms = {f"hamming_{name}": value for name, value in alignment.hamming.items()}
            align_terms["matching_accuracy"] = alignment.matching_accuracy
            align_terms["mga_graph_nodes"] = torch.tensor(float(alignment.num_nodes))
        return ExGraMedCausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            align_loss=align_loss,
            align_terms=align_terms,
        )
