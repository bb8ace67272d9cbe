"""Dense connector: which vision-tower layers feed the projector (docs/method.md §1.4).

``hidden_states`` is the tuple a CLIP vision tower returns with ``output_hidden_states=True``:
``L + 1`` tensors ``[B, 1 + P, D]`` (index 0 = embeddings, index k = output of layer k). The CLS
token is dropped everywhere. The layer indices of the original (7/15 for ``sci``, 0..11/12..23
for ``dci``, written for the 24-layer CLIP-L) are expressed as fractions of ``L`` so that the same
code serves the tiny towers of the tests; for ``L = 24`` they are exactly the original indices.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

STI_POOL = 8


def sci_layers(num_layers: int) -> tuple[int, int]:
    """Intermediate layers concatenated by ``sci``/``sti``: (7, 15) for a 24-layer tower."""
    return max(num_layers // 3 - 1, 0), max(2 * num_layers // 3 - 1, 0)


def select_vision_features(hidden_states: Sequence[Tensor], select_layer: int, connector: str) -> Tensor:
    """Patch features ``[B, T, D']`` handed to the projector.

    ``none``: ``H[select_layer]`` (D' = D). ``sci``: ``[F | H[7] | H[15]]`` along features
    (D' = 3D). ``dci``: ``[F | mean(H[0..11]) | mean(H[12..23])]`` along features (the last layer
    ``H[24]`` is never used, as in the original). ``sti``: ``[F ; pool(H[7]) ; pool(H[15])]`` along
    tokens, with 8x average pooling (T = P + 2 P / 8).
    """
    features = hidden_states[select_layer][:, 1:]
    if connector == "none":
        return features
    num_layers = len(hidden_states) - 1
    if connector == "sci":
        low, high = sci_layers(num_layers)
        return torch.cat([features, hidden_states[low][:, 1:], hidden_states[high][:, 1:]], dim=-1)
    if connector == "dci":
        half = max(num_layers // 2, 1)
        first = torch.stack([h[:, 1:] for h in hidden_states[:half]]).mean(0)
        second = torch.stack([h[:, 1:] for h in hidden_states[half:2 * half]]).mean(0)
        return torch.cat([features, first.to(features.dtype), second.to(features.dtype)], dim=-1)
    if connector == "sti":
        num_patches = features.shape[1]
        if num_patches < STI_POOL:
            raise ValueError(f"dense connector 'sti' pools {STI_POOL} patches into one but the vision tower "
                             f"yields only {num_patches} patches per image")
        low, high = sci_layers(num_layers)
        pooled = [F.avg_pool1d(hidden_states[i][:, 1:].transpose(1, 2), STI_POOL, STI_POOL).transpose(1, 2)
                  for i in (low, high)]
        return torch.cat([features, *pooled], dim=1)
    raise ValueError(f"unknown dense connector {connector!r}")
