"""Pairwise alignment baselines beside MGA: InfoNCE (CLIP) and SigLIP between image and text nodes.

The paper compares MGA with these "simple" alignment losses (docs/method.md §7.2: InfoNCE 68.48,
SigLIP 67.47 on VQA-RAD at 10 %). The original code removed them from the forward path (§3), so
these are written from their papers, not from the ExGra-Med repository:

* InfoNCE (Oord et al. 2018 / CLIP, Radford et al. 2021): symmetric cross-entropy over the
  cosine-similarity matrix divided by a temperature; learnable ``log(1/τ)`` initialised to
  ``log(1/0.07)`` and clamped to ``log(100)`` as in CLIP.
* SigLIP (Zhai et al. 2023): ``-1/B Σ_ij log σ(z_ij (t cos_ij + b))`` with ``z_ii = 1`` and
  ``z_ij = -1`` otherwise; learnable ``log t`` initialised to ``log 10`` and bias ``b = -10``.

They take the **same nodes as MGA** (image = mean projector output, text = pooled LLM states of the
merged answers / extended answers, docs/method.md §3.2). With ``use_extended=True`` (the default) the
loss is ``½ [L(image, answers) + L(image, extended answers)]``, so a baseline sees exactly the text
MGA sees; ``use_extended=False`` aligns image with the original answers only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .losses import MultiGraphAlignmentOutput, skipped_output

__all__ = ["CONTRASTIVE_OBJECTIVES", "ContrastiveAlignment", "infonce_loss", "siglip_loss", "retrieval_accuracy"]

CONTRASTIVE_OBJECTIVES = ("infonce", "siglip")
INFONCE_INIT_TEMPERATURE = 0.07
INFONCE_MAX_LOGIT_SCALE = 100.0
SIGLIP_INIT_T = 10.0
SIGLIP_INIT_BIAS = -10.0


def _cosine(z_image: Tensor, z_text: Tensor) -> Tensor:
    """``[B, B]`` cosine similarities in float32 (row = image i, column = text j)."""
    if z_image.shape != z_text.shape or z_image.dim() != 2:
        raise ValueError(f"expected two [B, d] tensors of equal shape, got {tuple(z_image.shape)} and "
                         f"{tuple(z_text.shape)}")
    return F.normalize(z_image.float(), dim=-1) @ F.normalize(z_text.float(), dim=-1).T


def infonce_loss(z_image: Tensor, z_text: Tensor, temperature: float | Tensor = INFONCE_INIT_TEMPERATURE) -> Tensor:
    """Symmetric InfoNCE: ``½ [CE(S/τ, I) + CE(Sᵀ/τ, I)]`` with ``S`` the cosine matrix, sample i ↔ i."""
    logits = _cosine(z_image, z_text) / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def siglip_loss(z_image: Tensor, z_text: Tensor, t: float | Tensor = SIGLIP_INIT_T,
                bias: float | Tensor = SIGLIP_INIT_BIAS) -> Tensor:
    """Sigmoid loss ``-1/B Σ_ij log σ(z_ij (t cos_ij + b))``, ``z`` = +1 on the diagonal, -1 off it."""
    logits = _cosine(z_image, z_text) * t + bias
    labels = 2.0 * torch.eye(logits.shape[0], device=logits.device) - 1.0
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def retrieval_accuracy(z_image: Tensor, z_text: Tensor) -> Tensor:
    """Fraction of images whose most similar text is their own (ties resolved to the lowest index)."""
    similarity = _cosine(z_image.detach(), z_text.detach())
    return (similarity.argmax(dim=1) == torch.arange(similarity.shape[0], device=similarity.device)).float().mean()


class ContrastiveAlignment(nn.Module):
    """Drop-in replacement for :class:`MultiGraphAlignment` with a pairwise contrastive objective.

    Same call signature and output type as MGA, so the alignment head (head/head.py) and the
    ``exgra_mga`` loss work unchanged: ``hamming`` is empty, ``matching_accuracy`` is the image →
    answer top-1 retrieval accuracy, and ``extras`` holds the current temperature / bias. The
    temperature (and SigLIP bias) are parameters trained with the model unless ``learnable=False``.
    """

    def __init__(self, objective: str = "infonce", use_extended: bool = True, learnable: bool = True) -> None:
        super().__init__()
        if objective not in CONTRASTIVE_OBJECTIVES:
            raise ValueError(f"objective must be one of {CONTRASTIVE_OBJECTIVES}, got {objective!r}")
        self.objective = objective
        self.use_extended = use_extended
        for name, value in self.initial_values().items():
            setattr(self, name, nn.Parameter(torch.tensor([value]), requires_grad=learnable))

    def initial_values(self) -> dict[str, float]:
        """Initial value of each parameter: the owning model's ``_init_weights`` sets missing ones from it."""
        if self.objective == "infonce":
            return {"logit_scale": math.log(1.0 / INFONCE_INIT_TEMPERATURE)}
        return {"logit_scale": math.log(SIGLIP_INIT_T), "logit_bias": SIGLIP_INIT_BIAS}

    def extra_repr(self) -> str:
        return f"objective={self.objective!r}, use_extended={self.use_extended}"

    def _pair_loss(self, z_image: Tensor, z_text: Tensor) -> Tensor:
        if self.objective == "infonce":
            scale = self.logit_scale.float().clamp(max=math.log(INFONCE_MAX_LOGIT_SCALE)).exp()
            return infonce_loss(z_image, z_text, temperature=1.0 / scale)
        return siglip_loss(z_image, z_text, t=self.logit_scale.float().exp(), bias=self.logit_bias.float())

    def forward(self, z_image: Tensor, z_text: Tensor, z_extended: Tensor, generator: torch.Generator | None = None,
                loss_scale: object = None, split: object = None) -> MultiGraphAlignmentOutput:
        """Alignment loss of one batch ``[B, d]`` per modality; ``generator``/``loss_scale``/``split`` are unused."""
        del generator, loss_scale, split  # no noise, no black-box backward and no matching problems here
        num_nodes = z_image.shape[0]
        if num_nodes < 2:  # a contrastive loss needs negatives; zero with a gradient path, as MGA's skip
            return skipped_output({"image": z_image, "text": z_text, "extended": z_extended}, self.parameters(),
                                  f"batch of {num_nodes} sample")
        loss = self._pair_loss(z_image, z_text)
        if self.use_extended:
            loss = 0.5 * (loss + self._pair_loss(z_image, z_extended))
        extras = {"logit_scale": self.logit_scale.detach()[0].exp()}
        if self.objective == "siglip":
            extras["logit_bias"] = self.logit_bias.detach()[0]
        return MultiGraphAlignmentOutput(loss=loss, hamming={}, matching_accuracy=retrieval_accuracy(z_image, z_text),
                                         num_nodes=num_nodes, extras=extras)
