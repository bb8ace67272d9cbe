"""The in-process loop against ``swift sft``: 20 MGA steps on the same batches (same AdamW, schedule,
clipping, masks, ``mga_gumbel_scale 0``) give per-step losses and final weights within 1e-4."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
pytest.importorskip("easy_vqa")

STEPS, BATCH, SEED, LR = 20, 4, 7, 2e-3
ARM = {"mga_alpha": 1.0, "mga_gumbel_scale": 0}


@pytest.fixture(scope="module")
def checkpoint_and_rows(tmp_path_factory):
    """A small experiment checkpoint that already holds a graph network (so neither run draws one),
    and 80 pre-training rows, in batch order."""
    from exgramed_plugin.tiny_checkpoints.exgra_med import make_tiny_checkpoint
    from exgramed_plugin.commands.experiment.easy_vqa_data import partition_train_images, write_pretraining_rows
    from exgramed_plugin.commands.experiment.tokenizer import build_experiment_tokenizer
    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM

    root = tmp_path_factory.mktemp("loop")
    checkpoint = make_tiny_checkpoint(root / "ckpt", tokenizer=build_experiment_tokenizer(), image_size=64,
                                      patch_size=16, vision_hidden_size=32, vision_layers=1, hidden_size=32,
                                      num_layers=1, seed=3)
    config = ExGraMedConfig.from_pretrained(checkpoint)
    config.mga_enabled = True
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = ExGraMedForCausalLM.from_pretrained(checkpoint, config=config)
    model.config.mga_enabled = False
    model.save_pretrained(checkpoint)
    write_pretraining_rows(root / "rows.json", partition_train_images(20, 100).universe[:STEPS * BATCH])
    return checkpoint, root / "rows.json"


def test_twenty_steps_match_swift_sft(checkpoint_and_rows, tmp_path):
    from safetensors.torch import load_file

    from exgramed_plugin.commands.experiment.cell import standard_rows
    from exgramed_plugin.commands.experiment.loop import Recipe, load_stage, train

    checkpoint, rows_file = checkpoint_and_rows
    command = [str(Path(sys.executable).parent / "swift"), "sft",
               "--custom_register_path", str(REPO_ROOT / "exgramed_plugin" / "register.py"),
               "--model", str(checkpoint), "--model_type", "exgra_med", "--template", "exgra_med",
               "--tuner_type", "full", "--freeze_vit", "true", "--freeze_aligner", "false", "--torch_dtype", "float32",
               "--fp16", "false", "--bf16", "false", "--gradient_accumulation_steps", "1",
               "--learning_rate", str(LR), "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.03",
               "--weight_decay", "0.0", "--max_grad_norm", "1.0", "--max_length", "512",
               "--dataloader_num_workers", "0", "--dataset_num_proc", "1", "--check_model", "false", "--strict", "true",
               "--save_only_model", "true", "--report_to", "none", "--seed", str(SEED), "--data_seed", str(SEED),
               "--logging_steps", "1", "--dataset", str(rows_file), "--dataset_shuffle", "false",
               "--train_dataloader_shuffle", "false", "--split_dataset_ratio", "0", "--loss_type", "exgra_mga",
               "--model_kwargs", json.dumps(ARM), "--max_steps", str(STEPS), "--save_steps", str(STEPS),
               "--per_device_train_batch_size", str(BATCH), "--output_dir", str(tmp_path / "swift")]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    logged = [json.loads(line) for path in (tmp_path / "swift").glob("**/logging.jsonl") for line in open(path)]
    swift_losses = [row["loss"] for row in logged if "loss" in row and "global_step/max_steps" in row]
    swift_weights = load_file(str(next((tmp_path / "swift").glob(f"**/checkpoint-{STEPS}/model.safetensors"))))

    stage = load_stage(checkpoint, ARM, seed=SEED)
    rows = standard_rows(str(rows_file))
    log = train(stage, [rows[i * BATCH:(i + 1) * BATCH] for i in range(STEPS)], Recipe(LR), seed=SEED)

    assert len(swift_losses) == len(log) == STEPS
    assert all(entry["align_loss"] > 0 for entry in log[:3])  # the alignment term is in the losses compared
    assert [entry["loss"] for entry in log] == pytest.approx(swift_losses, abs=1e-4)
    ours = stage.model.state_dict()
    assert set(swift_weights) <= set(ours) and any(name.startswith("model.mga.") for name in swift_weights)
    initial = load_file(str(checkpoint / "model.safetensors"))
    moved = max((swift_weights[name] - initial[name]).abs().max().item() for name in swift_weights)
    assert moved > 1e-3  # the runs trained
    worst = max((swift_weights[name] - ours[name]).abs().max().item() for name in swift_weights)
    assert worst < 1e-4
