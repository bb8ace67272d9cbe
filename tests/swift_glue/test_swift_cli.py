"""The plugin through swift's real launchers (subprocesses), as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATA_TEMPLATES, REPO_ROOT

SWIFT = str(Path(sys.executable).parent / "swift")
COMMON = ["--tuner_type", "full", "--torch_dtype", "float32", "--per_device_train_batch_size", "2",
          "--learning_rate", "1e-4", "--logging_steps", "1", "--max_length", "512", "--dataloader_num_workers", "0",
          "--check_model", "false", "--report_to", "none", "--strict", "true", "--save_only_model", "true"]


def run(args, cwd, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([SWIFT, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"swift {args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def checkpoint_in(output_dir: Path) -> Path:
    found = sorted(output_dir.glob("v*-*/checkpoint-*"))
    assert found, f"no checkpoint under {output_dir}"
    return found[-1]


@pytest.fixture(scope="module")
def trained(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    run(["sft", "--custom_register_path", "exgramed_plugin/register.py", "--model", str(tiny_checkpoint),
         "--dataset", str(DATA_TEMPLATES / "vqa.json"), str(DATA_TEMPLATES / "llava_med_instruct.json"),
         "--max_steps", "2", "--save_steps", "2", "--output_dir", str(out), *COMMON], cwd=REPO_ROOT)
    return checkpoint_in(out)


@pytest.mark.slow
def test_sft_two_steps_with_relative_plugin_path(trained):
    args = json.loads((trained / "args.json").read_text())
    assert args["model_type"] == "exgra_med" and args["template"] == "exgra_med"
    register = str(REPO_ROOT / "exgramed_plugin" / "register.py")
    assert register in args["external_plugins"]  # made absolute, so later commands work anywhere
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and all("loss" in h for h in state["log_history"][:2])


@pytest.mark.slow
def test_infer_from_another_directory_loads_the_plugin_from_args_json(trained, tmp_path):
    result_path = tmp_path / "answers.jsonl"
    run(["infer", "--model", str(trained), "--val_dataset", str(DATA_TEMPLATES / "vqa.json"),
         "--result_path", str(result_path), "--max_new_tokens", "4", "--temperature", "0"], cwd=tmp_path)
    rows = [json.loads(line) for line in result_path.read_text().splitlines()]
    questions = json.loads((DATA_TEMPLATES / "vqa.json").read_text())
    assert [r["id"] for r in rows] == [str(q["id"]) for q in questions]
    assert [r["answer_type"] for r in rows] == [q["answer_type"] for q in questions]
    assert all(isinstance(r["response"], str) and "###" not in r["response"] for r in rows)


@pytest.mark.slow
def test_missing_image_stops_training_naming_file_row_and_field(tiny_checkpoint, tmp_path):
    rows = json.loads((DATA_TEMPLATES / "vqa.json").read_text())
    rows[1]["image"] = "images/does_not_exist.png"
    data = tmp_path / "broken.json"
    data.write_text(json.dumps(rows))
    (tmp_path / "images").symlink_to(DATA_TEMPLATES / "images")
    result = run(["sft", "--custom_register_path", str(REPO_ROOT / "exgramed_plugin" / "register.py"), "--model",
                  str(tiny_checkpoint), "--dataset", str(data), "--max_steps", "1", "--output_dir",
                  str(tmp_path / "out"), *COMMON], cwd=tmp_path, check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"{data}, row id={rows[1]['id']!r}, field 'images': image not found" in output


@pytest.mark.slow
def test_recipe_runs_through_swift_sft_yaml(tiny_checkpoint, tmp_path):
    # demo_cpu.yaml trains with --loss_type exgra_mga: it needs extended answers
    run(["sft", "recipes/demo_cpu.yaml", "--model", str(tiny_checkpoint), "--dataset",
         str(DATA_TEMPLATES / "llava_med_instruct.json"), "--max_steps", "1", "--save_steps", "1", "--output_dir",
         str(tmp_path / "out"), "--report_to", "none"], cwd=REPO_ROOT)
    assert (checkpoint_in(tmp_path / "out") / "model.safetensors").is_file()


def _trainable(registered, checkpoint, **kwargs):
    from swift.arguments import SftArguments
    from swift.pipelines.train.tuner import TunerMixin
    args = SftArguments(model=str(checkpoint), dataset=[str(DATA_TEMPLATES / "vqa.json")], check_model=False,
                        torch_dtype="float32", output_dir="/tmp/exgramed-unused", **kwargs)
    model, _ = args.get_model_processor()
    model = TunerMixin.prepare_model(args, model)
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _groups(names):
    prefixes = ("model.vision_tower", "model.mm_projector", "model.layers", "model.embed_tokens", "lm_head")
    return {p for p in prefixes for n in names if n.startswith(p)}


@pytest.mark.parametrize("flags, expected", [
    (dict(freeze_vit=True, freeze_aligner=True, freeze_llm=False),
     {"model.layers", "model.embed_tokens", "lm_head"}),
    (dict(freeze_vit=True, freeze_aligner=False, freeze_llm=True), {"model.mm_projector"}),
    (dict(freeze_vit=False, freeze_aligner=False, freeze_llm=True), {"model.mm_projector", "model.vision_tower"}),
])
def test_freeze_flags_select_trainable_parameters(registered, tiny_checkpoint, flags, expected):
    assert _groups(_trainable(registered, tiny_checkpoint, tuner_type="full", **flags)) == expected


def test_lora_all_linear_targets_the_language_model_only(registered, tiny_checkpoint):
    names = _trainable(registered, tiny_checkpoint, tuner_type="lora", target_modules=["all-linear"])
    assert names and all("lora_" in n for n in names)
    assert all(".layers." in n for n in names)
    assert any("q_proj" in n for n in names) and any("down_proj" in n for n in names)


def test_make_tiny_dci_loads_through_swift(registered, tmp_path):
    from exgramed_plugin.commands.cli import main
    assert main(["make-tiny", str(tmp_path / "dci"), "--dense-connector", "dci"]) == 0
    from swift.model import get_model_processor
    model, processor = get_model_processor(str(tmp_path / "dci"), torch_dtype=torch.float32)
    assert model.config.mm_dense_connector_type == "dci"
    assert model.model.mm_projector[0].in_features == 3 * model.config.vision_config.hidden_size
