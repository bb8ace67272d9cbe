"""What a template adds to a training row and batch for the alignment head (every model type).

Per row (``_encode``): the token ids of the merged answers and merged extended answers
(docs/method.md §3.1, the model's own tokenizer, its BOS first when it has one) and, for swift's built-in models,
the token count of each image in the encoded ids. Per batch (``_data_collator``): the text passes
of the step (packed by default) and the image bookkeeping the head splits the image positions by.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.conversation import merge_answers

MERGED_KEYS = ("merged_answer_ids", "extended_answer_ids")


def row_context(inputs: Any) -> str:
    """``id=..., source_file=...`` of a template input row, for error messages."""
    extra = getattr(inputs, "extra_kwargs", None) or {}
    parts = [f"{key}={extra[key]!r}" for key in ("id", "source_file") if extra.get(key) is not None]
    return ", ".join(parts) or "row without id"


def merged_answer_ids(tokenizer, answers: Sequence[str], extended: Sequence[str] | None, *, max_length: int | None,
                      context: str) -> dict[str, list[int]]:
    """Token ids of the merged answers and merged extended answers of one row, BOS first."""
    if not extended:
        raise ValueError(f"multi-graph alignment needs extended answers (conversations_long or "
                         f"extended_answers) for every training row ({context})")
    if len(extended) != len(answers):
        raise ValueError(f"{len(extended)} extended answers for {len(answers)} answers ({context})")
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    limit = max_length or 2048

    def encode(text: str) -> list[int]:
        return (bos + tokenizer.encode(text, add_special_tokens=False))[:limit]

    return {"merged_answer_ids": encode(merge_answers(answers)), "extended_answer_ids": encode(merge_answers(extended))}


def image_token_counts(input_ids: Sequence[int], image_token_id: int, num_images: int, *, context: str) -> list[int]:
    """The image-token count of each image of an encoded row, in order.

    Each image is one run of ``image_token_id`` (the models wrap images in start/end tokens, or
    separate them by text); a run holding several images of a fixed token count (adjacent
    ``<image>`` tags of llava-hf) is split evenly.
    """
    runs: list[int] = []
    previous = None
    for token in input_ids:
        if token == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    if len(runs) == num_images:
        return runs
    total = sum(runs)
    if num_images and runs and total % num_images == 0 and all(run % (total // num_images) == 0 for run in runs):
        return [total // num_images] * num_images
    raise ValueError(f"the row has {num_images} image(s) but its encoded ids hold {len(runs)} run(s) of image "
                     f"tokens (id {image_token_id}) of lengths {runs}: cannot tell the images apart ({context})")


def collate_alignment_inputs(batch: list[dict[str, Any]], *, packed: bool, pad_token_id: int | None
                             ) -> dict[str, torch.Tensor]:
    """The step's text passes: merged answers then merged extended answers of every sample.

    ``packed``: ``mga_text_ids`` ``[1, T]`` back to back and ``mga_text_lengths`` ``[2B]``, no
    padding (laid out by head/text_packing.py). Otherwise one right-padded ``[2B, L]``
    ``mga_text_ids`` with ``mga_text_mask`` (``mga_pooling=padded``, the original's mean over
    padding, needs it). With per-image token counts in the rows (built-in models), also
    ``mga_image_tokens`` (every image of the batch, in order) and ``mga_images_per_sample`` ``[B]``.
    """
    result: dict[str, torch.Tensor] = {}
    sequences = [b["merged_answer_ids"] for b in batch] + [b["extended_answer_ids"] for b in batch]
    if packed:
        result["mga_text_ids"] = torch.tensor([[t for s in sequences for t in s]], dtype=torch.long)
        result["mga_text_lengths"] = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    else:
        length = max(len(s) for s in sequences)
        pad = 0 if pad_token_id is None else pad_token_id
        result["mga_text_ids"] = torch.tensor([s + [pad] * (length - len(s)) for s in sequences], dtype=torch.long)
        result["mga_text_mask"] = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences],
                                               dtype=torch.long)
    if "mga_image_tokens" in batch[0]:
        result["mga_image_tokens"] = torch.tensor([n for b in batch for n in b["mga_image_tokens"]], dtype=torch.long)
        result["mga_images_per_sample"] = torch.tensor([len(b["mga_image_tokens"]) for b in batch], dtype=torch.long)
    return result
