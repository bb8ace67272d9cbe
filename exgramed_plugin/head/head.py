"""The alignment head: everything around the MGA loss that does not depend on the architecture.

One way in for every model family (head/families.py: ``exgra_med`` and swift's built-in VLMs):
:meth:`AlignmentHead.run` wraps the model's forward (:func:`attach_head`), records what the language
model receives, and in training builds three node sets and the alignment output:

* image nodes: per image, the mean of what the language model receives at that image's token
  positions; per sample, the mean over its images (:func:`image_nodes`);
* text nodes: the language model's last hidden state (after its final norm), masked mean over the
  merged answers and merged extended answers of each sample, one packed text pass per step
  (:meth:`AlignmentHead.text_nodes`, head/text_packing.py);
* the alignment itself (:meth:`AlignmentHead.align`): the global-graph gather, the per-step seeded
  Gumbel noise, the loss scale the ``exgra_mga`` loss hands over (:class:`StepLossScale`) and the
  once-only small-batch warning.

The trainable part, the graph network (:func:`build_alignment_network`), is a submodule of the
model (``model.mga`` in exgra_med, ``mga`` on a built-in model), so that the optimizer, LoRA's
``--modules_to_save mga``, DDP, ZeRO-3 and FSDP see it. The head itself holds no parameters.
"""

from __future__ import annotations

import atexit
import functools
import logging
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from ..alignment import MultiGraphAlignment, MultiGraphAlignmentOutput, ProblemSplit
from ..alignment.contrastive import CONTRASTIVE_OBJECTIVES, ContrastiveAlignment
from ..settings import POOLINGS, MGASettings
from .families import HEAD_ATTRIBUTE, ModelFamily, zero_image_node
from .text_packing import pack_padded, packed_text_nodes

logger = logging.getLogger(__name__)

_EXIT_HOOK: list[bool] = []


def build_alignment_network(settings: MGASettings, hidden_size: int) -> nn.Module:
    """The trainable graph network (or a pairwise contrastive baseline) for ``hidden_size`` nodes."""
    if settings.pooling not in POOLINGS:
        raise ValueError(f"mga_pooling must be one of {POOLINGS}, got {settings.pooling!r}")
    if settings.objective in CONTRASTIVE_OBJECTIVES:  # the paper's pairwise baselines, same nodes
        return ContrastiveAlignment(objective=settings.objective)
    if settings.objective != "mga":
        raise ValueError(f"mga_objective must be 'mga' or one of {CONTRASTIVE_OBJECTIVES}, got {settings.objective!r}")
    return MultiGraphAlignment(
        in_features=hidden_size, hidden_features=settings.hidden_features, k=settings.k,
        lambda_val=settings.lambda_val, gumbel_scale=settings.gumbel_scale, solver=settings.solver,
        solver_search=settings.solver_search, message_flow=settings.message_flow, fidelity=settings.fidelity,
        use_message_passing=settings.use_message_passing, seed=settings.seed)


def destroy_process_group_at_exit() -> None:
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


def distributed_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any process: modules some rank runs must run on every rank (ZeRO-3)."""
    if distributed_world() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_with_local_grad(nodes: Tensor) -> Tensor:
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


def image_nodes(image_states: Tensor, tokens_per_image: Sequence[int], images_per_sample: Sequence[int],
                zero_node: Tensor | None) -> Tensor:
    """Per-sample image nodes ``[B, hidden]`` from the states at the image-token positions.

    ``image_states`` ``[sum(tokens_per_image), hidden]`` are the image positions of the batch in
    order (sample after sample, image after image); each image's node is its mean, each sample's
    the mean of its images' nodes. A sample without an image gets ``zero_node`` (the node of an
    all-zero image, as the original).
    """
    if image_states.shape[0] != sum(tokens_per_image):
        raise ValueError(f"the batch has {image_states.shape[0]} image-token positions but its images have "
                         f"{sum(tokens_per_image)} tokens ({list(tokens_per_image)})")
    if sum(images_per_sample) != len(tokens_per_image):
        raise ValueError(f"{len(tokens_per_image)} image(s) in the batch but the samples hold {sum(images_per_sample)}")
    per_image = [part.mean(dim=0) for part in image_states.split(list(tokens_per_image))]
    nodes, start = [], 0
    for count in images_per_sample:
        if count == 0:
            if zero_node is None:
                raise ValueError("a sample without an image needs the zero-image node")
            nodes.append(zero_node.to(image_states.dtype))
        else:
            nodes.append(torch.stack(per_image[start:start + count]).mean(dim=0))
            start += count
    stacked = torch.stack(nodes)
    if zero_node is not None and 0 not in images_per_sample:
        # computed because another rank needed it: keep it in this rank's backward too, so that ZeRO-3
        # gathers the same parameters in the same order on every rank
        stacked = stacked + 0.0 * zero_node.sum().to(stacked.dtype)
    return stacked


def alignment_terms(alignment: MultiGraphAlignmentOutput) -> dict[str, Tensor]:
    """The scalars the ``exgra_mga`` loss logs next to ``align_loss``."""
    terms = {f"hamming_{name}": value for name, value in alignment.hamming.items()}
    terms["matching_accuracy"] = alignment.matching_accuracy
    terms["mga_graph_nodes"] = torch.tensor(float(alignment.num_nodes))
    return terms


class AlignmentHead:
    """The MGA orchestration of one model of any family (no parameters of its own).

    ``settings``: the run's effective MGA settings, read once (for ``exgra_med`` the checkpoint's
    ``mga_*`` fields with this run's explicit ones applied; for the built-in models the run's).
    ``family``: where the model keeps what the head reads (head/families.py; needed by :meth:`run`,
    not by the parts :meth:`text_nodes` and :meth:`align`); ``processor``: the
    model's processor, for families whose image-less samples run the processor's black image.
    What the ``exgra_mga`` loss needs it finds in the step's outputs (:meth:`run`): ``align_loss``,
    ``align_terms``, ``align_settings`` (these settings: alpha, global graph) and ``align_loss_scale``
    (a :class:`StepLossScale` the loss hands the applied loss scale to).
    """

    def __init__(self, settings: MGASettings, family: ModelFamily | None = None, processor: Any = None) -> None:
        self.settings = settings
        self.family = family
        self.processor = processor
        self.calls = 0
        self.warned_small_batch = False
        self._logged_padded_text_pass = False
        self._zero_image: dict[str, Any] | None = None

    # -- one training step --------------------------------------------------------------------

    def run(self, model: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Any:
        """``forward(*args, **kwargs)`` of ``model``, and in training the alignment of its batch
        (``outputs.align_loss`` / ``outputs.align_terms``): inside the call DDP, ZeRO-3 and FSDP wrap,
        so gradient synchronisation sees every module the alignment uses."""
        batch = {key: kwargs.pop(key) for key in list(kwargs) if key.startswith("mga_")}
        input_ids = kwargs.get("input_ids")
        if input_ids is None:
            input_ids = batch.pop("mga_input_ids", None)
        if not model.training:
            return forward(*args, **kwargs)
        if "mga_text_ids" not in batch:
            raise ValueError(f"the alignment head of this {self.family.model_type} model got a training batch "
                             f"without merged answers (mga_text_ids): train with --template {self.family.template} "
                             "(the plugin's version of it emits them) and rows with extended answers")
        if input_ids is None:
            raise ValueError("the alignment head needs the batch's input_ids to find the image tokens")
        with recorded_inputs_embeds(self.family.decoder_of(model)) as seen:
            outputs = forward(*args, **kwargs)
        if "inputs_embeds" not in seen:
            raise RuntimeError("the language model was not called with inputs_embeds: cannot read the image nodes")
        loss_scale = StepLossScale()
        alignment = self.alignment(model, seen["inputs_embeds"], input_ids, batch, loss_scale)
        _set_output(outputs, "align_loss", alignment.loss)
        _set_output(outputs, "align_terms", alignment_terms(alignment))
        _set_output(outputs, "align_settings", self.settings)
        _set_output(outputs, "align_loss_scale", loss_scale)
        return outputs

    def alignment(self, model: nn.Module, lm_inputs_embeds: Tensor, input_ids: Tensor, batch: dict[str, Tensor],
                  loss_scale: StepLossScale | None = None) -> MultiGraphAlignmentOutput:
        """The alignment output of one training step of ``model`` (``batch``: the template's ``mga_*`` keys)."""
        family = self.family
        mask = input_ids == family.image_token_id(model.config)
        states = lm_inputs_embeds[mask.to(lm_inputs_embeds.device)]
        tokens_per_image, images_per_sample = self._image_bookkeeping(model, mask, batch)
        zero_node = None
        if any_rank(0 in images_per_sample, input_ids.device):
            if self._zero_image is None:  # processed once, not at every step that needs it
                self._zero_image = family.zero_image_inputs(model, self.processor)
            zero_node = zero_image_node(model, self._zero_image)
        z_image = image_nodes(states, tokens_per_image, images_per_sample, zero_node)
        text = self.text_nodes_of(model, batch["mga_text_ids"], batch.get("mga_text_mask"), batch.get("mga_text_lengths"))
        samples = len(images_per_sample)
        if text.shape[0] != 2 * samples:
            raise ValueError(f"the text passes have {text.shape[0]} samples, expected 2 x batch = {2 * samples} "
                             "(answers then extended answers)")
        return self.align(family.network_of(model), z_image.to(text.dtype), text[:samples], text[samples:],
                          loss_scale=loss_scale)

    def _image_bookkeeping(self, model: nn.Module, image_mask: Tensor, batch: dict[str, Tensor]
                           ) -> tuple[list[int], list[int]]:
        """Each image's token count and each sample's image count: the template's, or (families with a
        fixed count per image, called without them) counted per row, one sample per row unless the batch
        says how many images each sample holds (a padding-free row holds several samples)."""
        if "mga_image_tokens" in batch and "mga_images_per_sample" in batch:
            return batch["mga_image_tokens"].tolist(), batch["mga_images_per_sample"].tolist()
        if self.family.tokens_per_image is None:
            raise ValueError(f"the alignment head of this {self.family.model_type} model needs the template's image "
                             "bookkeeping (mga_image_tokens, mga_images_per_sample)")
        tokens = int(getattr(model.config, self.family.tokens_per_image))
        if "mga_images_per_sample" in batch:
            per_sample = batch["mga_images_per_sample"].tolist()
        else:
            per_sample = (image_mask.sum(dim=1) // tokens).tolist()
        return [tokens] * sum(per_sample), per_sample

    def text_nodes_of(self, model: nn.Module, text_ids: Tensor, text_mask: Tensor | None = None,
                      text_lengths: Tensor | None = None) -> Tensor:
        """:meth:`text_nodes` through ``model``'s own text decoder."""
        return self.text_nodes(self.family.decoder_of(model), text_ids, text_mask, text_lengths,
                               position_rows=self.family.position_rows)

    # -- text nodes -------------------------------------------------------------------------

    def text_nodes(self, decoder: nn.Module, text_ids: Tensor, text_mask: Tensor | None = None,
                   text_lengths: Tensor | None = None, *, position_rows: int = 0) -> Tensor:
        """Pooled ``decoder`` states (after its final norm) of the merged answers ``[N, hidden]``.

        Packed (``text_lengths``: ``text_ids`` ``[1, T]`` back to back) or padded (``text_mask``,
        ``[N, L]``, packed here unless ``text_packing`` is off): the masked mean is the same.
        ``after_de`` off pools the raw token embeddings instead; ``pooling`` ``padded`` averages
        over padding too, as the original did, so it needs the padded batch. ``position_rows``: see
        :func:`packed_text_nodes` (4 for M-RoPE decoders).
        """
        settings = self.settings
        if settings.pooling == "padded" or not settings.text_packing:
            if text_mask is None:
                raise ValueError(
                    f"mga_pooling={settings.pooling!r}, mga_text_packing={settings.text_packing}: the padded text "
                    "pass needs the padded [2B, L] batch (mga_text_mask), got a packed one (mga_text_lengths); the "
                    "plugin's templates emit the padded batch for these settings")
            if settings.pooling == "padded" and not self._logged_padded_text_pass:
                logger.info("alignment text passes run padded [2B, L] (not packed) because mga_pooling=padded: "
                            "the original's mean over padding depends on the padded length")
                self._logged_padded_text_pass = True
            return self._padded_text_nodes(decoder, text_ids, text_mask, position_rows)
        if text_lengths is None:
            text_ids, text_lengths = pack_padded(text_ids, text_mask)
        return packed_text_nodes(decoder, text_ids, text_lengths, after_de=settings.after_de,
                                 position_rows=position_rows)

    def _padded_text_nodes(self, decoder: nn.Module, text_ids: Tensor, text_mask: Tensor,
                           position_rows: int) -> Tensor:
        """The original layout: one padded ``[N, L]`` pass, masked (or, ``padded``, plain) mean."""
        embeds = decoder.embed_tokens(text_ids)
        if self.settings.after_de:
            kwargs = {}
            if position_rows:
                positions = (text_mask.long().cumsum(dim=1) - 1).clamp_min(0)
                kwargs["position_ids"] = positions[None].expand(position_rows - 1, -1, -1)
            hidden = decoder(inputs_embeds=embeds, attention_mask=text_mask, use_cache=False, **kwargs).last_hidden_state
        else:
            hidden = embeds
        if self.settings.pooling == "padded":
            return hidden.mean(dim=1)
        mask = text_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    # -- the alignment ----------------------------------------------------------------------

    def global_graph(self) -> bool:
        return bool(self.settings.global_graph) and distributed_world() > 1

    def noise_generator(self, global_graph: bool) -> torch.Generator:
        """Seeded per step (and per rank for per-device graphs), never the global RNG."""
        self.calls += 1
        rank = 0 if global_graph else distributed_rank()
        seed = (self.settings.seed * 1_000_003 + self.calls * 7919 + rank) % (2 ** 63)
        return torch.Generator().manual_seed(seed)

    def align(self, network: nn.Module, z_image: Tensor, z_text: Tensor, z_extended: Tensor, *,
              loss_scale: StepLossScale | None = None) -> MultiGraphAlignmentOutput:
        """The alignment output of one step's nodes ``[B, hidden]`` (gathered over ranks for the global graph);
        its black-box backward divides ``loss_scale`` out (1 without one)."""
        # several GPUs per process (device_map auto): image nodes come from the first, text nodes from the last
        device = next(network.parameters()).device
        nodes = [z.to(device) for z in (z_image, z_text, z_extended)]
        global_graph = self.global_graph()
        if global_graph:
            # One gather for the three node sets (2 collectives per step instead of 6).
            gathered = gather_with_local_grad(torch.cat(nodes, dim=1))
            nodes = [part.to(z.dtype) for part, z in zip(gathered.split([z.shape[1] for z in nodes], dim=1), nodes)]
            destroy_process_group_at_exit()
        # every rank holds the same global graph: each solves a block of its problems (alignment/split.py)
        split = ProblemSplit.over_processes() if global_graph else None
        output = network(*nodes, generator=self.noise_generator(global_graph),
                         loss_scale=StepLossScale() if loss_scale is None else loss_scale, split=split)
        if output.skipped_reason and output.num_nodes < 2 and not self.warned_small_batch:
            # (a non-finite node also skips the matching: a NaN loss, which the trainer's guard reports)
            logger.warning("alignment loss is zero for this batch: %s (warned once)", output.skipped_reason)
            self.warned_small_batch = True
        return output


class StepLossScale:
    """The loss scale one step's black-box backward divides out (1 until told otherwise).

    The ``exgra_mga`` loss hands over its source (a number, or a function read when the backward
    runs) with the step's outputs, after the forward and before the backward: a source read at
    forward time made the first micro-batch of a run use 1.0.
    """

    def __init__(self) -> None:
        self.source: Callable[[], float] | float | None = None

    def __call__(self) -> float:
        source = self.source
        if source is None:
            return 1.0
        return float(source() if callable(source) else source)


def _set_output(outputs: Any, name: str, value: Any) -> None:
    """``outputs.<name> = value``, as an entry too where the output class declares the field."""
    fields = getattr(type(outputs), "__dataclass_fields__", {})
    if name in fields:
        outputs[name] = value
    else:
        setattr(outputs, name, value)


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


def attach_head(model: nn.Module, head: AlignmentHead) -> None:
    """Give ``model`` the head: ``model.alignment_head``, and a forward that runs :meth:`AlignmentHead.run`
    (the model's own forward, its signature kept, stays what it computes the language model with)."""
    object.__setattr__(model, HEAD_ATTRIBUTE, head)
    original = model.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        return head.run(model, original, args, kwargs)

    model.forward = forward
