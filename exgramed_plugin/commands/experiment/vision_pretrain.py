"""Stage 0 of the miniature: pre-train the tiny CLIP vision tower, then keep it frozen.

The paper's models start from a pre-trained CLIP (LLaVA-Med from LLaVA); a random tower gives the
language model features it cannot learn to read in a few hundred steps (the first miniature's
models never looked at the image). Stage 0 trains the tower the checkpoint will carry (the same
``CLIPVisionConfig``, the same ``CLIPImageProcessor`` preprocessing) as a shape (3-way) + colour
(8-way) classifier on easy-vqa **train images that are neither downstream nor pre-training images**
(labels read off their questions, :func:`.easy_vqa_data.image_labels`; no stage-2 or VQA row uses
these images, :func:`.easy_vqa_data.partition_train_images`).
The classifier heads sit on what the language model is given: the mean over patches of
``hidden_states[mm_vision_select_layer]`` (CLS dropped), so the features the projector sees are the
trained ones. The heads are then dropped; every arm and seed gets the same frozen tower
(``--freeze_vit true``).

Reported: a **linear probe** (multinomial logistic regression on the frozen mean-pooled features,
fitted on the stage-0 training images) scored on held-out images: stage-0 images kept out of the
tower's training, and the easy-vqa test images. For reference the same probe on the random tower.

Plain torch, no swift; cached: :func:`pretrain_vision_tower` reuses ``stage0.json`` +
``vision_tower.safetensors`` when their settings match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...common.jsonio import read_json, write_json
from ...tiny_checkpoints.exgra_med import tiny_vision_config
from ...modeling.clip_common import build_clip_image_processor
from .easy_vqa_data import COLORS, SHAPES, _image, image_labels, partition_train_images

logger = logging.getLogger(__name__)
STAGE0_FILE = "stage0.json"
TOWER_FILE = "vision_tower.safetensors"


@dataclass(frozen=True)
class Stage0Settings:
    """Everything the stage-0 tower depends on (the cache key)."""

    image_size: int = 64
    patch_size: int = 16
    vision_hidden_size: int = 64
    vision_layers: int = 3
    select_layer: int = -2
    downstream_images: int = 100
    universe_images: int = 1200
    data_seed: int = 0
    heldout_images: int = 500
    max_train_images: int | None = None
    max_test_images: int | None = None
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0


def _pixels(split: str, image_ids: list[int], processor) -> torch.Tensor:
    from PIL import Image
    images = []
    for image_id in image_ids:
        with Image.open(_image(split, image_id)) as image:
            images.append(image.convert("RGB"))
    return processor(images, return_tensors="pt")["pixel_values"]


def build_tower(settings: Stage0Settings):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    config = CLIPVisionConfig(**tiny_vision_config(settings.image_size, settings.patch_size,
                                                   settings.vision_hidden_size, settings.vision_layers))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return CLIPVisionModel(config)


def pooled_features(tower, pixels: torch.Tensor, select_layer: int, batch_size: int = 256) -> torch.Tensor:
    """Mean over patches (CLS dropped) of ``hidden_states[select_layer]``: what the projector is given, pooled."""
    chunks = []
    for start in range(0, len(pixels), batch_size):
        hidden = tower(pixels[start:start + batch_size], output_hidden_states=True).hidden_states
        chunks.append(hidden[select_layer][:, 1:].mean(1))
    return torch.cat(chunks)


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, *, steps: int = 300, weight_decay: float = 1e-3) -> dict[str, float]:
    """Multinomial logistic regression (standardised features, L-BFGS, small L2); accuracies in percent."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    layer = nn.Linear(xs.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(layer(xs), train_y) + weight_decay * layer.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return {"train": 100.0 * (layer(xs).argmax(1) == train_y).float().mean().item(),
                "heldout": 100.0 * (layer(xt).argmax(1) == test_y).float().mean().item()}


def settings_key(settings: Stage0Settings) -> str:
    """A short digest of the settings: the cache key of a tower."""
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:16]


def _probe_all(tower, settings: Stage0Settings, data: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
               ) -> dict[str, dict[str, float]]:
    """Probe accuracies for shape and colour: held-out stage-0 images and the easy-vqa test images."""
    with torch.no_grad():
        feats = {name: pooled_features(tower, pixels, settings.select_layer) for name, (pixels, _, _) in data.items()}
    result: dict[str, dict[str, float]] = {}
    for target, column, classes in (("shape", 1, len(SHAPES)), ("colour", 2, len(COLORS))):
        train_y = data["train"][column]
        for split in ("heldout", "test"):
            probe = linear_probe(feats["train"], train_y, feats[split], data[split][column], classes)
            result.setdefault(target, {})["train"] = probe["train"]
            result[target][split] = probe["heldout"]
    return result


def pretrain_vision_tower(out_dir: str | Path, settings: Stage0Settings = Stage0Settings(), *,
                          force: bool = False) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the stage-0 tower; returns ``(vision_tower.safetensors, report)``."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    report_path, tower_path = out_dir / STAGE0_FILE, out_dir / TOWER_FILE
    key = settings_key(settings)
    if not force and report_path.is_file() and tower_path.is_file():
        report = read_json(report_path)
        if report.get("key") == key:
            logger.info("stage 0: reusing the vision tower in %s", out_dir)
            return tower_path, report
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = image_labels("train")
    rest = partition_train_images(settings.downstream_images, settings.universe_images, settings.data_seed).rest
    candidates = [i for i in rest if i in labels]
    rng = np.random.default_rng(settings.seed)
    candidates = [candidates[i] for i in rng.permutation(len(candidates))]
    heldout_ids = sorted(candidates[:settings.heldout_images])
    train_ids = sorted(candidates[settings.heldout_images:])[:settings.max_train_images]
    test_labels = image_labels("test")
    test_ids = sorted(test_labels)[:settings.max_test_images]
    processor = build_clip_image_processor(settings.image_size)

    def encode(split: str, ids: list[int], table: dict[int, tuple[str, str]]):
        shapes = torch.tensor([SHAPES.index(table[i][0]) for i in ids])
        colours = torch.tensor([COLORS.index(table[i][1]) for i in ids])
        return _pixels(split, ids, processor), shapes, colours

    data = {"train": encode("train", train_ids, labels), "heldout": encode("train", heldout_ids, labels),
            "test": encode("test", test_ids, test_labels)}
    prepared_s = time.perf_counter() - start

    tower = build_tower(settings)
    random_probe = _probe_all(tower.eval(), settings, data)
    width = settings.vision_hidden_size
    heads = nn.ModuleDict({"shape": nn.Linear(width, len(SHAPES)), "colour": nn.Linear(width, len(COLORS))})
    parameters = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.01)
    pixels, shapes, colours = data["train"]
    steps_per_epoch = max(1, len(pixels) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.learning_rate, total_steps=total,
                                                   pct_start=0.1)
    generator = torch.Generator().manual_seed(settings.seed)
    tower.train()
    losses = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(pixels), generator=generator)
        for step in range(steps_per_epoch):
            batch = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            hidden = tower(pixels[batch], output_hidden_states=True).hidden_states
            pooled = hidden[settings.select_layer][:, 1:].mean(1)
            loss = (nn.functional.cross_entropy(heads["shape"](pooled), shapes[batch])
                    + nn.functional.cross_entropy(heads["colour"](pooled), colours[batch]))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
    tower.eval()
    probe = _probe_all(tower, settings, data)
    save_file({name: tensor.contiguous() for name, tensor in tower.state_dict().items()}, str(tower_path))
    report = {"key": key, "settings": asdict(settings), "images": {name: len(d[0]) for name, d in data.items()},
              "steps": total, "first_loss": losses[0], "last_loss": float(np.mean(losses[-steps_per_epoch:])),
              "linear_probe": probe, "linear_probe_random_tower": random_probe,
              "prepare_s": prepared_s, "wall_s": time.perf_counter() - start}
    write_json(report_path, report, indent=1)
    logger.info("stage 0: linear probe on held-out images: shape %.1f %%, colour %.1f %% (random tower %.1f / "
                "%.1f); %.0f s", probe["shape"]["heldout"], probe["colour"]["heldout"],
                random_probe["shape"]["heldout"], random_probe["colour"]["heldout"], report["wall_s"])
    return tower_path, report
