"""A model as swift's ``swift sft`` prepares it (loader, head, tuner, freeze flags), in-process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import DATA_TEMPLATES

# The tiny checkpoint fixture of each model type (tests/conftest.py).
TINY_FIXTURES = {"exgra_med": "tiny_checkpoint", "qwen2_5_vl": "tiny_qwen2_5_vl", "qwen3_vl": "tiny_qwen3_vl",
                 "internvl": "tiny_internvl", "llava1_5_hf": "tiny_llava1_5_hf", "gemma3_vision": "tiny_gemma3_vision"}
# What a CPU test run changes in a recipe: no GPU precision or attention, no DeepSpeed / FSDP, local data.
CPU_OVERRIDES = {"torch_dtype": "float32", "attn_impl": "sdpa", "deepspeed": None, "fsdp": "", "report_to": ["none"],
                 "gradient_checkpointing": False, "dataloader_num_workers": 0, "check_model": False,
                 "dataset": [str(DATA_TEMPLATES / "llava_med_instruct.json")]}


def prepared_model(arguments: dict[str, Any], model_dir: Path, output_dir: Path):
    """``swift sft``'s model for ``arguments`` (a recipe's keys, ENV already applied), on ``model_dir``."""
    from swift.arguments import SftArguments
    from swift.pipelines.train.tuner import TunerMixin
    values = {key: value for key, value in arguments.items() if key not in ("custom_register_path", "external_plugins")}
    values.update(CPU_OVERRIDES, model=str(model_dir), output_dir=str(output_dir))
    args = SftArguments(**values)
    model, _ = args.get_model_processor()
    return TunerMixin.prepare_model(args, model)
