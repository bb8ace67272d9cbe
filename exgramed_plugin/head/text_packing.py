"""Packed text passes of the alignment: the merged (extended) answers of a step without padding.

The text nodes (docs/method.md §3.2) are per-sample means of the LLM states of the merged answers and
merged extended answers. Padding all of them to the longest merged extended answer made about
70 % of the text-pass positions padding. Here the sequences are laid back to back, with position
ids restarting at every sample and no 2-D attention mask; transformers reads restarting position
ids as packed sequences:

* sdpa / eager / flex (``masking_utils.find_packed_sequence_indices``): a block-diagonal causal
  mask, so no token attends across samples. These kernels compute the full (masked) score matrix
  of a row, so the sequences go into a few rows of equal width, chosen by a FLOP model
  (``plan_layout``): one long row would trade padding for quadratic attention work.
* flash attention: one row ``[1, T]`` and the varlen kernel, given ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` explicitly (``modeling_flash_attention_utils._flash_attention_forward``,
  "padding free" case): only the diagonal blocks are computed, so every position is a real token.

Either way the decoder runs once per step, whatever the lengths: ZeRO-3 / FSDP gather the
parameters in every forward call, so every rank must make the same calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.utils.generic import is_flash_attention_requested


@dataclass(frozen=True)
class TextLayout:
    """Where each sample's tokens sit in a ``[rows, width]`` grid (``starts``: flat offsets)."""

    rows: int
    width: int
    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    @property
    def computed(self) -> int:
        """Token positions the decoder computes (real tokens plus the padding at row ends)."""
        return self.rows * self.width

    @property
    def real(self) -> int:
        return sum(self.lengths)

    def cost(self, break_even: float) -> float:
        """Linear work plus the masked attention work of the rows, in token-position units."""
        return self.computed * (1 + self.width / break_even)


def attention_break_even(config) -> float:
    """Keys per query at which a token's attention costs as much as its linear layers.

    Multiply-adds of a LLaMA layer per token (q, k, v, o projections and the gated MLP) over those
    per (query, key) pair (``QK^T`` and ``AV``): about ``2 h + 1.5 I`` keys (1280 for the tiny
    bench model, 24704 for LLaMA-7B).
    """
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = config.hidden_size
    linear = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * config.intermediate_size
    return linear / (2 * heads * head_dim)


def _first_fit_decreasing(lengths: list[int], width: int, max_rows: int) -> TextLayout | None:
    """The longest samples placed first, each in the first row with room; None past ``max_rows``."""
    fill: list[int] = []
    starts = [0] * len(lengths)
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, used in enumerate(fill) if used + lengths[index] <= width), len(fill))
        if row == len(fill):
            if row == max_rows:
                return None
            fill.append(0)
        starts[index] = row * width + fill[row]
        fill[row] += lengths[index]
    return TextLayout(len(fill), width, tuple(starts), tuple(lengths))


def _narrowest(lengths: list[int], rows: int) -> TextLayout:
    """The narrowest grid of at most ``rows`` rows that first fit decreasing fills (bisection)."""
    total, longest = sum(lengths), max(lengths)
    low, high = max(longest, math.ceil(total / rows)), math.ceil(total / rows) + longest
    # ``high`` always fits: a row that refuses a sample already holds more than total / rows
    best = _first_fit_decreasing(lengths, high, rows)
    while low < high:
        middle = (low + high) // 2
        layout = _first_fit_decreasing(lengths, middle, rows)
        if layout is None:
            low = middle + 1
        else:
            best, high = layout, middle
    return best


def plan_layout(lengths: list[int], *, single_row: bool, break_even: float) -> TextLayout:
    """The grid of the packed text pass.

    ``single_row`` (flash attention's varlen kernel): all samples in order in one row. Otherwise the
    cheapest (``TextLayout.cost``) of that row and of the narrowest grids of about
    ``total / longest`` rows (fewer rows are wider, so costlier in attention; more rows pad more).
    """
    total = sum(lengths)
    if total == 0:
        raise ValueError("the text passes of the alignment got no tokens (every merged answer is empty)")
    best = TextLayout(1, total, tuple(_exclusive_cumsum(lengths)), tuple(lengths))
    if single_row:
        return best
    fewest = math.ceil(total / max(lengths))
    for rows in range(max(2, fewest - 2), fewest + 2):
        layout = _narrowest(lengths, rows)
        if layout.cost(break_even) < best.cost(break_even):
            best = layout
    return best


def text_layout(lengths: list[int], config) -> TextLayout:
    """The layout the packed pass uses for ``config``'s decoder (its attention implementation)."""
    return plan_layout(lengths, single_row=is_flash_attention_requested(config),
                       break_even=attention_break_even(config))


def _exclusive_cumsum(lengths: list[int]) -> list[int]:
    starts, running = [], 0
    for length in lengths:
        starts.append(running)
        running += length
    return starts


def pack_padded(text_ids: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[N, L]`` right-padded ids and mask to the packed form: ids ``[1, T]`` and lengths ``[N]``."""
    lengths = text_mask.sum(dim=1)
    columns = torch.arange(text_mask.shape[1], device=text_mask.device)
    if not bool(((columns < lengths[:, None]) == text_mask.bool()).all()):
        raise ValueError("mga_text_mask must be right-padded (ones, then zeros) to be packed; "
                         "the exgra_med template builds it so")
    return text_ids[text_mask.bool()].unsqueeze(0), lengths


def packed_text_nodes(decoder: nn.Module, text_ids: Tensor, text_lengths: Tensor, *, after_de: bool,
                      position_rows: int = 0) -> Tensor:
    """Per-sample mean states ``[N, hidden]`` of sequences packed back to back in ``text_ids``.

    ``decoder`` is a language model (``embed_tokens`` + ``forward(inputs_embeds, position_ids)``,
    e.g. LLaMA, or a VLM's ``language_model``); ``after_de`` false pools the token embeddings
    without running it. ``position_rows`` 0: 2-D position ids. M-RoPE decoders (Qwen2/2.5/3-VL
    text models) take ``[4, rows, width]``: the text positions (from which they build the
    block-diagonal mask) then the temporal/height/width positions, all equal for text tokens.
    """
    lengths = [int(n) for n in text_lengths.tolist()]
    flat = text_ids.reshape(-1)
    if flat.numel() != sum(lengths):
        raise ValueError(f"mga_text_ids has {flat.numel()} tokens but mga_text_lengths sums to {sum(lengths)}")
    device = flat.device
    lengths_t = torch.tensor(lengths, device=device)
    sample = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths_t)
    first = torch.tensor(_exclusive_cumsum(lengths), device=device)
    offset = torch.arange(flat.numel(), device=device) - first[sample]  # position inside the sample
    # [1, T] like every other call of the embedding: hooks on it (NEFTune) expect a batch dimension.
    states = decoder.embed_tokens(flat[None])[0]
    if after_de:
        states = _run_packed(decoder, states, sample, offset, lengths, position_rows)
    return mean_per_sample(states, sample, lengths_t)


def mean_per_sample(states: Tensor, sample: Tensor, lengths: Tensor) -> Tensor:
    """Mean of the token states ``[T, hidden]`` of each sample (``sample[t]``: its sample), in ``states``' dtype.

    Summed in a float32 buffer (float64 for float64 states): CUDA's ``index_add`` on a bf16 / fp16 buffer
    adds through atomics that round every partial sum to 8 / 11 bits (1-19 % node error at 100-1,600
    tokens, emulated), and an fp16 sum overflows past 65,504. The padded path's ``sum`` accumulates in
    float32 as well and rounds once.
    """
    accumulate = torch.promote_types(states.dtype, torch.float32)
    sums = torch.zeros(len(lengths), states.shape[-1], dtype=accumulate, device=states.device)
    sums = sums.index_add(0, sample, states.to(accumulate))
    return (sums / lengths.clamp_min(1).to(accumulate)[:, None]).to(states.dtype)


def _run_packed(decoder: nn.Module, embeds: Tensor, sample: Tensor, offset: Tensor, lengths: list[int],
                position_rows: int) -> Tensor:
    """Final-norm states ``[T, hidden]`` of the packed tokens, attention kept inside each sample."""
    flash = is_flash_attention_requested(decoder.config)
    layout = text_layout(lengths, decoder.config)
    total, hidden = embeds.shape
    if layout.rows == 1 and layout.width == total:  # in order: the grid is the flat sequence itself
        grid, positions, destination = embeds, offset, None
    else:
        destination = torch.tensor(layout.starts, device=embeds.device)[sample] + offset
        grid = embeds.new_zeros(layout.computed, hidden).index_copy(0, destination, embeds)
        # padding at a row's end sits at position 0, one single-token "sample" per slot: isolated
        positions = offset.new_zeros(layout.computed).index_copy(0, destination, offset)
    kwargs = {}
    if flash:
        real = [n for n in lengths if n > 0]
        cu_seqlens = torch.tensor([0, *_exclusive_cumsum(real)[1:], total], dtype=torch.int32, device=embeds.device)
        kwargs = dict(cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=max(real),
                      max_length_k=max(real))
    positions = positions.view(layout.rows, layout.width)
    if position_rows:
        positions = positions[None].expand(position_rows, -1, -1)
    out = decoder(inputs_embeds=grid.view(layout.rows, layout.width, hidden), position_ids=positions,
                  use_cache=False, **kwargs)
    states = out.last_hidden_state.reshape(-1, hidden)
    return states if destination is None else states.index_select(0, destination)
