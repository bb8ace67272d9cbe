"""Start-up checks of every swift run that loads the plugin, through swift's own arguments and dataset
loader in-process (what ``swift sft`` calls first): for built-in VLMs as for ``exgra_med``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import DATA_TEMPLATES

INSTRUCT = str(DATA_TEMPLATES / "llava_med_instruct.json")


def sft_arguments(tmp_path: Path, **values):
    from swift.arguments import SftArguments
    defaults = dict(dataset=[INSTRUCT], torch_dtype="float32", output_dir=str(tmp_path / "out"),
                    per_device_train_batch_size=2, report_to=["none"])
    return SftArguments(**{**defaults, **values})


def truncated_copy(folder: Path, tmp_path: Path, name: str = "model.safetensors") -> tuple[Path, Path]:
    broken = tmp_path / folder.name
    shutil.copytree(folder, broken)
    weights = broken / name
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return broken, weights


def test_a_model_type_that_does_not_fit_names_the_ones_that_do(registered, tiny_qwen2_5_vl, tmp_path):
    from exgramed_plugin.settings import SettingsError
    with pytest.raises(SettingsError) as error:  # before swift's loader fails on the config ('embed_dim')
        sft_arguments(tmp_path, model=str(tiny_qwen2_5_vl), model_type="qwen2_vl", template="qwen2_vl",
                      loss_type="exgra_mga")
    assert "--model_type qwen2_vl does not fit" in str(error.value)
    assert "config.json has model_type 'qwen2_5_vl'" in str(error.value)
    assert "use --model_type qwen2_5_vl --template qwen2_5_vl" in str(error.value)


@pytest.mark.parametrize("fixture", ["tiny_qwen2_5_vl", "tiny_gemma3_vision", "tiny_checkpoint"])
def test_truncated_weights_are_named_for_every_model_type(registered, request, fixture, tmp_path):
    from exgramed_plugin.common.weight_files import CheckpointError
    broken, weights = truncated_copy(request.getfixturevalue(fixture), tmp_path)
    with pytest.raises(CheckpointError, match=f"{weights}: truncated safetensors file"):
        sft_arguments(tmp_path, model=str(broken))


def test_a_truncated_checkpoint_to_resume_from_is_named(registered, tiny_qwen2_5_vl, tmp_path):
    from exgramed_plugin.common.weight_files import CheckpointError
    checkpoint = tmp_path / "run" / "checkpoint-2"
    shutil.copytree(tiny_qwen2_5_vl, checkpoint)
    (checkpoint / "optimizer.pt").write_bytes(b"PK\x03\x04" + b"\0" * 64)  # a torch zip cut after its header
    with pytest.raises(CheckpointError, match=f"{checkpoint / 'optimizer.pt'}: truncated or corrupt"):
        sft_arguments(tmp_path, model=str(tiny_qwen2_5_vl), model_type="qwen2_5_vl", template="qwen2_5_vl",
                      resume_from_checkpoint=str(checkpoint))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\0\0\0\0\0\0\0{}")  # header announces 16 bytes
    with pytest.raises(CheckpointError, match=f"{adapter / 'adapter_model.safetensors'}: truncated"):
        sft_arguments(tmp_path, model=str(tiny_qwen2_5_vl), model_type="qwen2_5_vl", template="qwen2_5_vl",
                      resume_from_checkpoint=str(adapter))


@pytest.mark.parametrize("content", ["[]\n", "", "\n  \n"])
def test_an_empty_data_file_is_named(registered, content, tmp_path):
    from swift.dataset import load_dataset

    from exgramed_plugin.data.formats import DataFormatError
    empty = tmp_path / ("extended.json" if content.startswith("[") else "extended.jsonl")
    empty.write_text(content)  # e.g. what extend-captions writes when every reply was malformed
    with pytest.raises(DataFormatError, match=f"{empty}: the data file holds no rows"):
        load_dataset([str(empty)])
    load_dataset([INSTRUCT])  # a file with rows loads


def test_a_gpu_recipe_on_a_cpu_lists_every_setting_to_change():
    from exgramed_plugin.swift_glue.run_checks import machine_problems
    recipe = SimpleNamespace(torch_dtype="bfloat16", attn_impl="flash_attn", deepspeed="zero2", use_cpu=False)
    cpu = machine_problems(recipe, accelerator=False, flash_attn_installed=False, deepspeed_installed=False)
    assert [problem.split(" (")[0] for problem in cpu] == ["--torch_dtype float32", "--attn_impl sdpa",
                                                           "no --deepspeed"]
    gpu = machine_problems(recipe, accelerator=True, flash_attn_installed=False, deepspeed_installed=True)
    assert gpu == ["--attn_impl sdpa (not flash_attn: the flash-attn package is not installed (pip install -e "
                   "'.[gpu]'))"]
    assert machine_problems(recipe, accelerator=True, flash_attn_installed=True, deepspeed_installed=True) == []
    cpu_bf16 = SimpleNamespace(torch_dtype="bfloat16", attn_impl="sdpa", deepspeed=None, use_cpu=True)
    assert machine_problems(cpu_bf16, accelerator=False, flash_attn_installed=False, deepspeed_installed=True) == []
