"""swift's own distributed engines with MGA on, on the CPU (gloo): DDP with the global graph,
DeepSpeed ZeRO-3 (model built under ``zero.Init``), and the static requirements of ZeRO-3 / FSDP2.

Two processes on a 2-core machine, tiny model, 2 steps each. The runs go through ``swift sft`` in a
subprocess exactly as a user launches them (``NPROC_PER_NODE=2``).

CPU-only artefacts worked around here, not needed on GPUs:
* HF's ``TrainingArguments.world_size`` is 1 for a CPU/gloo launch (README §5.3 of the swift notes),
  so DeepSpeed's ``"train_batch_size": "auto"`` would be filled with the single-process value and
  fail DeepSpeed's check ``train_batch == micro x GA x world``; the test's config leaves the key
  out and DeepSpeed computes it.
* ``--torch_dtype float32`` makes swift turn on fp16 AMP, which DeepSpeed refuses on the CPU
  accelerator ("Type fp16 is not supported on your device"): the runs pass ``--fp16 false``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.distributed
SWIFT = str(Path(sys.executable).parent / "swift")
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")
BATCH = 3
COMMON = ["--tuner_type", "full", "--torch_dtype", "float32", "--learning_rate", "1e-4", "--logging_steps", "1",
          "--max_length", "512", "--dataloader_num_workers", "0", "--check_model", "false", "--report_to", "none",
          "--strict", "true", "--seed", "7", "--loss_type", "exgra_mga", "--per_device_train_batch_size", str(BATCH),
          "--gradient_accumulation_steps", "1", "--max_steps", "2", "--save_strategy", "no", "--ddp_backend", "gloo"]


def _two_process_sft(args: list[str], cwd: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NPROC_PER_NODE": "2",
           "MASTER_PORT": str(free_port()), "MGA_GLOBAL_GRAPH": "1", **env_extra}
    return subprocess.run([SWIFT, "sft", "--custom_register_path", REGISTER, *COMMON, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=400)


def _train_logs(output_dir: Path) -> list[dict]:
    paths = sorted(output_dir.glob("v*-*/logging.jsonl"))
    if not paths:
        return []
    return [r for r in map(json.loads, paths[-1].read_text().splitlines()) if "loss" in r]


def _check_global_graph_run(result: subprocess.CompletedProcess, output_dir: Path) -> list[dict]:
    tail = f"rc={result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    logs = _train_logs(output_dir)
    assert len(logs) == 2, tail
    for row in logs:
        # one graph over the global batch: 2 processes x per-device batch nodes, on every rank
        assert row["mga_graph_nodes"] == 2 * BATCH, row
        assert all(row[k] == row[k] and abs(row[k]) < 1e6 for k in ("loss", "lm_loss", "align_loss"))
    assert "world_size: 2" in result.stdout + result.stderr
    # the run ends cleanly: no abort of a gloo thread at interpreter teardown
    assert "terminate called" not in result.stderr, tail
    assert result.returncode == 0, tail
    return logs


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    from exgramed_plugin.data.demo_data import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("dist_data")).alignment_train


@pytest.fixture(scope="module")
def text_rank_data_file(data_file) -> Path:
    """The same rows with every odd row text-only: unshuffled, rank 1 gets rows 1, 3, 5, ... (only text)."""
    rows = json.loads(data_file.read_text())
    for row in rows[1::2]:
        row.pop("image", None)
        for turns in (row["conversations"], row.get("conversations_long", [])):
            for turn in turns:
                turn["value"] = turn["value"].replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "")
    path = data_file.with_name("text_rank_" + data_file.name)
    path.write_text(json.dumps(rows))
    return path


# ------------------------------------------------------------------------------------------------
# static requirements (no processes)

def test_model_meets_zero3_and_fsdp2_requirements(registered, tiny_checkpoint):
    from accelerate.utils.dataclasses import get_module_class_from_name

    from exgramed_plugin.modeling.configuration import ExGraMedConfig
    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled = True
    # DeepSpeed's "auto" bucket sizes read config.hidden_size (HfConfigFactory.compat_zero3)
    assert config.to_dict()["hidden_size"] == config.hidden_size == 64
    # No weight reads in __init__: the whole model (MGA included) builds on the meta device,
    # the proxy for deepspeed.zero.Init, which partitions each parameter as soon as it is created.
    with torch.device("meta"):
        model = ExGraMedForCausalLM(config)
    assert all(p.device.type == "meta" for p in model.parameters())
    assert any(name.startswith("model.mga.") for name, _ in model.named_parameters())
    # FSDP2 TRANSFORMER_BASED_WRAP: the declared _no_split_modules resolve to classes in the model.
    # transformers 5 unions the submodels' lists on the instance, which adds CLIPVisionModel's
    # CLIPTextEmbeddings (absent here: accelerate would stop with "Could not find the transformer
    # layer class"), so the FSDP2 recipe names the wrap classes explicitly.
    declared = type(model)._no_split_modules
    wrap_classes = {name: get_module_class_from_name(model, name) for name in declared}
    assert all(cls is not None for cls in wrap_classes.values()), wrap_classes
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "stage2_exgramed_fsdp2.yaml").read_text())
    assert recipe["fsdp"]["fsdp_config"]["transformer_layer_cls_to_wrap"] == declared
    assert recipe["fsdp"]["fsdp_config"]["fsdp_version"] == 2
    assert sum(isinstance(m, wrap_classes["LlamaDecoderLayer"]) for m in model.modules()) == config.num_hidden_layers
    assert sum(isinstance(m, wrap_classes["CLIPEncoderLayer"]) for m in model.modules()) == \
        config.vision_config.num_hidden_layers
    assert model.supports_gradient_checkpointing


# ------------------------------------------------------------------------------------------------
# swift's DDP with the global graph

def test_two_process_ddp_global_graph(tiny_checkpoint, data_file, tmp_path):
    # --use_cpu true: accelerate sets up MULTI_CPU (real DDP over gloo, HF world_size 2)
    result = _two_process_sft(["--model", str(tiny_checkpoint), "--dataset", str(data_file), "--use_cpu", "true",
                               "--fp16", "false", "--output_dir", str(tmp_path / "ddp_global")],
                              cwd=tmp_path, env_extra={})
    _check_global_graph_run(result, tmp_path / "ddp_global")


# ------------------------------------------------------------------------------------------------
# swift's FSDP2 (fully_shard on the _no_split_modules classes)

PROBE_PLUGIN = '''
"""Test-only swift plugin: after each step, record how the trainer's model is wrapped."""
import os
from pathlib import Path

from swift.callbacks import TrainerCallback, callbacks_map


class WrapProbe(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        from torch.distributed.fsdp import FSDPModule
        model = self.trainer.model_wrapped if self.trainer.model_wrapped is not None else self.trainer.model
        sharded = sorted({type(m).__name__ for m in self.trainer.model.modules() if isinstance(m, FSDPModule)})
        Path(os.environ["WRAP_PROBE_DIR"], "probe_rank" + os.environ.get("RANK", "0") + ".txt").write_text(
            "\\n".join([type(model).__name__, *sharded]))


callbacks_map["wrap_probe"] = WrapProbe
'''
FSDP_ON_CPU = ("FSDP2 cannot run on the CPU through swift: accelerate 1.15 switches to DistributedType.FSDP only for "
               "GPU-like distributed types; with --use_cpu (MULTI_CPU) the FSDP plugin is ignored and the model is "
               "wrapped in DistributedDataParallel, and without it HF stops with 'Using fsdp only works in "
               "distributed training.' Needs 2 CUDA devices.")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=FSDP_ON_CPU)
def test_two_process_fsdp2_global_graph(tiny_checkpoint, data_file, tmp_path):
    probe = tmp_path / "wrap_probe.py"
    probe.write_text(PROBE_PLUGIN)
    fsdp = tmp_path / "fsdp2.json"  # the FSDP2 recipe's settings (explicit wrap classes)
    recipe = yaml.safe_load((REPO_ROOT / "recipes" / "stage2_exgramed_fsdp2.yaml").read_text())
    fsdp.write_text(json.dumps(recipe["fsdp"]))
    result = _two_process_sft(["--model", str(tiny_checkpoint), "--dataset", str(data_file), "--fsdp", str(fsdp),
                               "--ddp_backend", "nccl", "--external_plugins", str(probe), "--callbacks", "wrap_probe",
                               "--output_dir", str(tmp_path / "fsdp2")],
                              cwd=tmp_path, env_extra={"WRAP_PROBE_DIR": str(tmp_path)})
    _check_global_graph_run(result, tmp_path / "fsdp2")
    for rank in (0, 1):
        sharded = (tmp_path / f"probe_rank{rank}.txt").read_text().splitlines()[1:]
        # fully_shard swaps each wrapped module's class for FSDP<name>
        assert {"FSDPLlamaDecoderLayer", "FSDPCLIPEncoderLayer"} <= set(sharded), sharded


# ------------------------------------------------------------------------------------------------
# swift's DeepSpeed ZeRO-3 (the model is built under deepspeed.zero.Init)

def _deepspeed_skip_reason() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "deepspeed is not installed (pip install 'exgramed-plugin[gpu]' or DS_BUILD_OPS=0 pip install deepspeed)"
    return None


def _cpu_deepspeed_config(stage: int, folder: Path) -> Path:
    """swift's ZeRO preset of ``stage`` without ``train_batch_size`` (CPU artefact, see the module docstring)."""
    import swift
    preset = json.loads((Path(swift.__file__).parent / "config" / f"zero{stage}.json").read_text())
    assert preset["zero_optimization"]["stage"] == stage
    preset.pop("train_batch_size")
    config_file = folder / f"zero{stage}_cpu.json"
    config_file.write_text(json.dumps(preset))
    return config_file


@pytest.mark.skipif(_deepspeed_skip_reason() is not None, reason=_deepspeed_skip_reason() or "")
def test_two_process_zero2_with_non_reentrant_checkpointing(tiny_checkpoint, data_file, tmp_path):
    # The shipped recipes' setting. With reentrant checkpointing (swift's default under DeepSpeed) the text pass's
    # second run of the checkpointed layers stops ZeRO-2 ("Gradient computed twice for this partition"), and DDP
    # ("Expected to mark a variable ready only once"): the plugin refuses those at start-up (test_run_settings.py).
    config_file = _cpu_deepspeed_config(2, tmp_path)
    result = _two_process_sft(["--model", str(tiny_checkpoint), "--dataset", str(data_file), "--deepspeed",
                               str(config_file), "--fp16", "false", "--bf16", "false", "--gradient_checkpointing",
                               "true", "--gradient_checkpointing_kwargs", '{"use_reentrant": false}',
                               "--output_dir", str(tmp_path / "zero2")], cwd=tmp_path, env_extra={})
    _check_global_graph_run(result, tmp_path / "zero2")
    assert "use_reentrant: False" in result.stdout + result.stderr


@pytest.mark.skipif(_deepspeed_skip_reason() is not None, reason=_deepspeed_skip_reason() or "")
def test_two_process_zero3_global_graph(tiny_checkpoint, text_rank_data_file, tmp_path):
    # rank 1's batches hold no image: it must still call the vision tower as often as rank 0 (else ZeRO-3 hangs)
    config_file = _cpu_deepspeed_config(3, tmp_path)
    result = _two_process_sft(["--model", str(tiny_checkpoint), "--dataset", str(text_rank_data_file), "--deepspeed",
                               str(config_file), "--fp16", "false", "--bf16", "false", "--dataset_shuffle", "false",
                               "--train_dataloader_shuffle", "false", "--output_dir", str(tmp_path / "zero3")],
                              cwd=tmp_path, env_extra={"TRANSFORMERS_VERBOSITY": "info"})
    output = result.stdout + result.stderr
    if result.returncode != 0 and "not supported on your device" in output:
        pytest.skip("DeepSpeed's CPU accelerator refused the run: " + output[-500:])
    _check_global_graph_run(result, tmp_path / "zero3")
    assert "activating zero.init() for this model" in output  # transformers built it under zero.Init
    assert "'stage': 3" in output
