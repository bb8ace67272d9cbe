"""Bad input and silent degradation through swift's real launchers: every case stops, naming itself.

Each test reproduces a case that, before the fix, trained with exit 0 or failed with an error that
named neither the file nor the setting (issue: reliability).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import DATA_TEMPLATES, REPO_ROOT

pytestmark = pytest.mark.slow
SWIFT = str(Path(sys.executable).parent / "swift")
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")
# No --strict and no --check_model: the plugin must be safe without them.
COMMON = ["--custom_register_path", REGISTER, "--tuner_type", "full", "--torch_dtype", "float32",
          "--learning_rate", "1e-4", "--logging_steps", "1", "--max_length", "512", "--dataloader_num_workers", "0",
          "--report_to", "none", "--seed", "7"]


def swift(args, cwd, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([SWIFT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def last_line(result) -> str:
    """The last line of stderr that is not a progress bar (tqdm flushes its bar after the error)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "it/s]" not in line]
    return lines[-1] if lines else ""


def trained_steps(output_dir: Path) -> int:
    logs = sorted(output_dir.glob("v*-*/logging.jsonl"))
    if not logs:
        return 0
    return sum(1 for line in logs[-1].read_text().splitlines() if '"loss"' in line)


def instruct_copy(tmp_path: Path) -> tuple[Path, list[dict]]:
    rows = json.loads((DATA_TEMPLATES / "llava_med_instruct.json").read_text())
    (tmp_path / "images").symlink_to(DATA_TEMPLATES / "images")
    return tmp_path / "train.json", rows


def test_mga_row_without_extended_answers_stops_before_training(tiny_checkpoint, tmp_path):
    data, rows = instruct_copy(tmp_path)
    del rows[1]["conversations_long"]
    data.write_text(json.dumps(rows))
    result = swift(["sft", *COMMON, "--model", str(tiny_checkpoint), "--dataset", str(data), "--loss_type",
                    "exgra_mga", "--per_device_train_batch_size", "2", "--max_steps", "2", "--output_dir",
                    str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode != 0
    assert f"{data}, row id={rows[1]['id']!r}, field 'conversations_long': missing" in result.stderr
    assert trained_steps(tmp_path / "out") == 0


def test_mga_with_one_sample_per_step_is_refused_at_start_up(tiny_checkpoint, tmp_path):
    result = swift(["sft", *COMMON, "--model", str(tiny_checkpoint), "--dataset",
                    str(DATA_TEMPLATES / "llava_med_instruct.json"), "--loss_type", "exgra_mga",
                    "--per_device_train_batch_size", "1", "--max_steps", "2", "--output_dir", str(tmp_path / "out")],
                   cwd=tmp_path)
    assert result.returncode != 0
    assert "--per_device_train_batch_size is 1 on 1 process(es)" in last_line(result)
    assert not (tmp_path / "out").exists() or trained_steps(tmp_path / "out") == 0


def test_unknown_and_malformed_settings_are_refused_at_start_up(tiny_checkpoint, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"ENV:\n  MGA_SOLVER: nonsense\nmodel: {tiny_checkpoint}\nloss_type: exgra_mga\n"
                      f"dataset: {DATA_TEMPLATES / 'llava_med_instruct.json'}\nexternal_plugins: {REGISTER}\n")
    result = swift(["sft", str(recipe), "--output_dir", str(tmp_path / "a")], cwd=tmp_path)
    assert result.returncode != 0
    assert "MGA_SOLVER='nonsense': expected one of" in last_line(result)

    result = swift(["sft", *COMMON, "--model", str(tiny_checkpoint), "--dataset",
                    str(DATA_TEMPLATES / "llava_med_instruct.json"), "--model_kwargs", '{"mga_alhpa": 0.5}',
                    "--output_dir", str(tmp_path / "b")], cwd=tmp_path)
    assert result.returncode != 0
    assert "unknown setting 'mga_alhpa'" in last_line(result)


def test_non_finite_lm_loss_stops_at_the_first_step(tiny_checkpoint, tmp_path):
    broken = tmp_path / "nan-projector"
    shutil.copytree(tiny_checkpoint, broken)
    state = load_file(str(broken / "model.safetensors"))
    key = next(k for k in state if k.startswith("model.mm_projector.") and k.endswith("weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    result = swift(["sft", *COMMON, "--model", str(broken), "--dataset", str(DATA_TEMPLATES / "vqa.json"),
                    "--per_device_train_batch_size", "2", "--max_steps", "3", "--output_dir", str(tmp_path / "out")],
                   cwd=tmp_path)
    assert result.returncode != 0
    assert "NonFiniteLossError: step 1: the lm loss is" in last_line(result)


def test_truncated_safetensors_is_named(tiny_checkpoint, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = swift(["sft", *COMMON, "--model", str(broken), "--dataset", str(DATA_TEMPLATES / "vqa.json"),
                    "--max_steps", "1", "--output_dir", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode != 0
    assert f"{weights}: truncated safetensors file" in last_line(result)


def test_lora_mga_merge_keeps_the_trained_graph_network(tiny_checkpoint, tmp_path):
    out = tmp_path / "lora"
    lora = [a if a != "full" else "lora" for a in COMMON] + ["--target_modules", "all-linear", "--modules_to_save",
                                                             "mga", "--learning_rate", "1e-2"]
    result = swift(["sft", *lora, "--model", str(tiny_checkpoint), "--dataset", str(DATA_TEMPLATES / "llava_med_instruct.json"),
                    "--loss_type", "exgra_mga", "--per_device_train_batch_size", "3", "--max_steps", "2",
                    "--save_steps", "2", "--output_dir", str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    adapter = sorted(out.glob("v*-*/checkpoint-2"))[-1]
    adapter_state = load_file(str(adapter / "adapter_model.safetensors"))
    trained = {k.split("mga.", 1)[1]: v for k, v in adapter_state.items() if ".mga." in k and "lora_" not in k}
    assert "gnn.conv1.lin_rel.weight" in trained, sorted(adapter_state)[:20]

    result = swift(["export", "--adapters", str(adapter), "--merge_lora", "true"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    merged = Path(f"{adapter}-merged")
    merged_state = load_file(str(merged / "model.safetensors"))
    for name, value in trained.items():
        assert torch.equal(merged_state[f"model.mga.{name}"], value), name
    initial = load_file(str(tiny_checkpoint / "model.safetensors"))
    assert not any(k.startswith("model.mga.") for k in initial)  # the GNN came from training, not the base

    answers = tmp_path / "answers.jsonl"
    result = swift(["infer", "--model", str(merged), "--val_dataset", str(DATA_TEMPLATES / "vqa.json"),
                    "--result_path", str(answers), "--max_new_tokens", "4", "--temperature", "0"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in answers.read_text().split("\n") if line]
    assert len(rows) == len(json.loads((DATA_TEMPLATES / "vqa.json").read_text()))
    assert all(isinstance(r["response"], str) for r in rows)


def test_an_uneven_last_batch_trains_and_is_counted(tiny_checkpoint, tmp_path):
    # 5 rows, 2 per step: the third step holds one sample (align_loss 0), and the end of training says so.
    data, rows = instruct_copy(tmp_path)
    rows = [dict(row, id=f"{row['id']}-{copy}") for copy in range(2) for row in rows][:5]
    data.write_text(json.dumps(rows))
    result = swift(["sft", *COMMON, "--model", str(tiny_checkpoint), "--dataset", str(data), "--loss_type",
                    "exgra_mga", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                    "--num_train_epochs", "1", "--save_strategy",
                    "no", "--split_dataset_ratio", "0", "--output_dir", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert "'global_step/max_steps': '3/3'" in output
    assert "multi-graph alignment: 1 of 3 training micro-batch(es) had fewer than 2 samples" in output
