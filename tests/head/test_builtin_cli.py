"""``--loss_type exgra_mga`` on swift's built-in Qwen2.5-VL through the real launchers: full training
with stock checkpoint keys, the graph network in its side file and a bit-exact resume.

LoRA with ``--modules_to_save mga``, ``swift infer --adapters`` and ``swift export --merge_lora`` run
in the 2-process ZeRO-3 acceptance test (tests/distributed/test_zero3_builtin.py); ``swift infer`` of
a full checkpoint in test_builtin_cli_families.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import DATA_TEMPLATES, REPO_ROOT

pytestmark = pytest.mark.slow
SWIFT = str(Path(sys.executable).parent / "swift")
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")
TRAIN = ["--loss_type", "exgra_mga", "--freeze_aligner", "false", "--torch_dtype", "float32",
         "--per_device_train_batch_size", "3", "--learning_rate", "1e-3", "--logging_steps", "1",
         "--max_length", "512", "--dataloader_num_workers", "0", "--check_model", "false", "--report_to", "none",
         "--seed", "7", "--dataset", str(DATA_TEMPLATES / "llava_med_instruct.json")]


def swift(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([SWIFT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise AssertionError(f"swift {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def sft(model: Path, output_dir: Path, *extra: str) -> Path:
    swift(["sft", "--external_plugins", REGISTER, "--model", str(model), "--model_type", "qwen2_5_vl",
           "--template", "qwen2_5_vl", *TRAIN, "--output_dir", str(output_dir), *extra], cwd=output_dir.parent)
    runs = sorted(output_dir.glob("v*-*"))
    assert runs, f"no run under {output_dir}"
    return runs[-1]


def train_logs(run: Path) -> list[dict]:
    return [row for row in map(json.loads, (run / "logging.jsonl").read_text().splitlines()) if "loss" in row]


def weight_keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def answers(model_args: list[str], cwd: Path) -> list[dict]:
    result_path = cwd / "answers.jsonl"
    swift(["infer", *model_args, "--val_dataset", str(DATA_TEMPLATES / "vqa.json"), "--result_path",
           str(result_path), "--max_new_tokens", "4", "--temperature", "0"], cwd=cwd)
    return [json.loads(line) for line in result_path.read_text().splitlines()]


def test_full_training_saves_stock_keys_and_resumes_bit_exact(tiny_qwen2_5_vl, tmp_path):
    steps = ["--tuner_type", "full", "--max_steps", "3", "--save_steps", "1"]
    straight = sft(tiny_qwen2_5_vl, tmp_path / "straight", *steps)
    first = straight / "checkpoint-1"
    assert weight_keys(first) == weight_keys(tiny_qwen2_5_vl)
    assert (first / "mga_head.safetensors").is_file()
    resumed = sft(tiny_qwen2_5_vl, tmp_path / "resumed", *steps, "--resume_from_checkpoint", str(first))
    for name in ("model.safetensors", "mga_head.safetensors"):
        expected = load_file(str(straight / "checkpoint-3" / name))
        got = load_file(str(resumed / "checkpoint-3" / name))
        assert set(got) == set(expected)
        for key in expected:
            assert torch.equal(got[key], expected[key]), (name, key)
    assert [r["loss"] for r in train_logs(resumed)] == [r["loss"] for r in train_logs(straight)][1:]
