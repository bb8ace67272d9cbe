"""The guarantees ``exgra_med`` runs have, on swift's built-in VLMs too, through the real launchers (a new
user's probes on Qwen2.5-VL): a NaN checkpoint stops at step 1, and a GPU recipe on a CPU lists every
setting to change in one message, from any directory (``exgramed sft``). The start-up checks (wrong
``--model_type``, truncated weights, empty data file) run in-process: test_builtin_guarantees.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DATA_TEMPLATES, REPO_ROOT, last_summary

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")
QWEN = ["--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl"]
TRAIN = ["--external_plugins", REGISTER, "--tuner_type", "full", "--torch_dtype", "float32", "--logging_steps", "1",
         "--max_length", "512", "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "7",
         "--per_device_train_batch_size", "2", "--max_steps", "2"]
INSTRUCT = str(DATA_TEMPLATES / "llava_med_instruct.json")


def run(command: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=600)


def last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip() and "it/s]" not in line]
    return lines[-1] if lines else ""


def test_nan_built_in_checkpoint_stops_at_step_1_with_alpha_0(tiny_qwen2_5_vl, tmp_path):
    broken = tmp_path / "nan-merger"
    shutil.copytree(tiny_qwen2_5_vl, broken)
    state = load_file(str(broken / "model.safetensors"))
    key = next(k for k in state if "merger" in k and k.endswith("weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    # --loss_type exgra_mga with alpha 0 (the LLaVA-Med baseline on Qwen): swift alone would log loss 0, exit 0
    result = run("swift", ["sft", *TRAIN, *QWEN, "--model", str(broken), "--dataset", INSTRUCT, "--loss_type",
                           "exgra_mga", "--output_dir", str(tmp_path / "out")], tmp_path, MGA_ALPHA="0")
    assert result.returncode != 0
    assert "NonFiniteLossError: step 1: the lm loss is non-finite (lm = nan)" in last_line(result)
    assert not list((tmp_path / "out").glob("v*-*/checkpoint-*"))
    assert "--check_model turned off for the local checkpoint" in result.stderr  # no ModelScope retries


def test_a_gpu_recipe_runs_from_any_directory_and_a_cpu_gets_one_message(tiny_qwen2_5_vl, tmp_path):
    recipe = REPO_ROOT / "recipes" / "stage2_qwen2_5_vl_exgramed.yaml"  # bf16 + flash attention
    common = ["--model", str(tiny_qwen2_5_vl), "--dataset", INSTRUCT, "--output_dir", str(tmp_path / "out"),
              "--report_to", "none", "--dataloader_num_workers", "0"]
    refused = run("exgramed", ["sft", str(recipe), *common], tmp_path)
    assert refused.returncode != 0
    message = [line for line in refused.stderr.splitlines() if "SettingsError" in line][-1]
    assert "--torch_dtype float32" in message and "--attn_impl sdpa" in message
    assert last_summary(refused.stdout, ok=False)["command"] == "sft"
    done = run("exgramed", ["sft", str(recipe), *common, "--torch_dtype", "float32", "--attn_impl", "sdpa",
                            "--max_steps", "1", "--per_device_train_batch_size", "2",
                            "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert last_summary(done.stdout)["recipe"] == str(recipe)
    assert list((tmp_path / "out").glob("v*-*/checkpoint-1/adapter_model.safetensors"))
