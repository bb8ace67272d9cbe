"""InfoNCE / SigLIP baselines against hand computations (plain Python math, no torch formulas)."""

from __future__ import annotations

import math

import pytest
import torch

from exgramed_plugin.alignment.contrastive import ContrastiveAlignment, infonce_loss, retrieval_accuracy, siglip_loss

# Unit vectors chosen so that the cosine matrix is easy to write down by hand:
# image 0 = (1, 0), image 1 = (0, 1); text 0 = (1, 0), text 1 = (0.6, 0.8)
# cos = [[1, 0.6], [0, 0.8]]
IMAGE = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # norms do not matter
TEXT = torch.tensor([[5.0, 0.0], [0.6, 0.8]])
COS = [[1.0, 0.6], [0.0, 0.8]]


def _log_softmax(row: list[float], index: int) -> float:
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_infonce_matches_hand_computation() -> None:
    tau = 0.5
    logits = [[c / tau for c in row] for row in COS]
    image_to_text = -(_log_softmax(logits[0], 0) + _log_softmax(logits[1], 1)) / 2
    columns = [[logits[0][j], logits[1][j]] for j in range(2)]
    text_to_image = -(_log_softmax(columns[0], 0) + _log_softmax(columns[1], 1)) / 2
    expected = (image_to_text + text_to_image) / 2
    assert infonce_loss(IMAGE, TEXT, temperature=tau).item() == pytest.approx(expected, rel=1e-6)


def test_siglip_matches_hand_computation() -> None:
    t, b = 10.0, -5.0

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    total = 0.0
    for i in range(2):
        for j in range(2):
            z = 1.0 if i == j else -1.0
            total += log_sigmoid(z * (t * COS[i][j] + b))
    expected = -total / 2
    assert siglip_loss(IMAGE, TEXT, t=t, bias=b).item() == pytest.approx(expected, rel=1e-6)


def test_retrieval_accuracy() -> None:
    # image 1 = (0, 1) is closest to text 1 (0.8 > 0.0); image 0 to text 0 (1 > 0.6)
    assert retrieval_accuracy(IMAGE, TEXT).item() == 1.0
    assert retrieval_accuracy(IMAGE, TEXT.flip(0)).item() == 0.0


@pytest.mark.parametrize("objective", ["infonce", "siglip"])
def test_module_averages_answer_and_extended_pairs(objective: str) -> None:
    module = ContrastiveAlignment(objective)
    extended = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    out = module(IMAGE, TEXT, extended)
    if objective == "infonce":
        tau = 0.07
        pair = lambda text: infonce_loss(IMAGE, text, temperature=tau)  # noqa: E731
    else:
        pair = lambda text: siglip_loss(IMAGE, text, t=10.0, bias=-10.0)  # noqa: E731
    expected = 0.5 * (pair(TEXT) + pair(extended))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.hamming == {} and out.num_nodes == 2 and out.skipped_reason is None
    answers_only = ContrastiveAlignment(objective, use_extended=False)(IMAGE, TEXT, extended)
    assert answers_only.loss.item() == pytest.approx(pair(TEXT).item(), rel=1e-5)


def test_gradients_reach_nodes_and_temperature() -> None:
    module = ContrastiveAlignment("siglip")
    image = IMAGE.clone().requires_grad_(True)
    text = TEXT.clone().requires_grad_(True)
    module(image, text, text).loss.backward()
    assert image.grad is not None and text.grad is not None
    assert module.logit_scale.grad is not None and module.logit_bias.grad is not None


def test_batch_of_one_is_skipped_with_zero_loss() -> None:
    module = ContrastiveAlignment("infonce")
    image = torch.ones(1, 2, requires_grad=True)
    out = module(image, torch.ones(1, 2), torch.ones(1, 2))
    assert out.loss.item() == 0.0 and out.skipped_reason
    out.loss.backward()
    assert image.grad is not None


def test_unknown_objective() -> None:
    with pytest.raises(ValueError, match="objective"):
        ContrastiveAlignment("clip")
