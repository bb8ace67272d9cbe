"""``--loss_type exgra_mga`` full training on swift's other built-in VLMs (Qwen3-VL, InternVL3-hf, llava-1.5-hf,
Gemma 3) through the real launchers: two ``swift sft`` steps, stock checkpoint keys with the graph network in its
side file, then ``swift infer`` on the saved checkpoint. Two swift invocations per family, to keep the suite short."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import DATA_TEMPLATES
from test_builtin_cli import REGISTER, TRAIN, answers, swift, train_logs

pytestmark = pytest.mark.slow
# model type -> (session fixture of its tiny checkpoint, swift template)
FAMILIES = {
    "qwen3_vl": ("tiny_qwen3_vl", "qwen3_vl"),
    "internvl": ("tiny_internvl", "internvl_hf"),
    "llava1_5_hf": ("tiny_llava1_5_hf", "llava1_5_hf"),
    "gemma3_vision": ("tiny_gemma3_vision", "gemma3_vision"),
}
LOGGED = ("lm_loss", "align_loss", "matching_accuracy", "hamming_image_to_bary", "hamming_bary_to_text")


def weight_keys(folder: Path) -> set[str]:
    """The tensor names of a folder's weights: ``model.safetensors``, or the shards its index names."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    keys: set[str] = set()
    for name in files:
        with safe_open(str(folder / name), framework="pt") as handle:
            keys |= set(handle.keys())
    return keys


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_full_training_then_infer(model_type, request, tmp_path):
    fixture, template = FAMILIES[model_type]
    tiny: Path = request.getfixturevalue(fixture)
    output_dir = tmp_path / "full"
    swift(["sft", "--external_plugins", REGISTER, "--model", str(tiny), "--model_type", model_type,
           "--template", template, *TRAIN, "--tuner_type", "full", "--max_steps", "2", "--save_steps", "2",
           "--output_dir", str(output_dir)], cwd=tmp_path)
    runs = sorted(output_dir.glob("v*-*"))
    assert runs, f"no run under {output_dir}"
    run = runs[-1]

    logs = train_logs(run)
    assert len(logs) == 2, logs
    for row in logs:
        for key in LOGGED:
            assert row[key] == row[key] and abs(row[key]) < 1e6, (key, row)
        assert row["mga_graph_nodes"] == 3, row

    checkpoint = run / "checkpoint-2"
    saved = weight_keys(checkpoint)
    assert saved == weight_keys(tiny), (sorted(saved ^ weight_keys(tiny))[:20])  # the stock class's keys only
    assert not [key for key in saved if key.startswith("mga.") or ".mga." in key]
    assert (checkpoint / "mga_head.safetensors").is_file()
    stock = json.loads((tiny / "config.json").read_text())["architectures"]
    assert json.loads((checkpoint / "config.json").read_text())["architectures"] == stock

    rows = answers(["--model", str(checkpoint)], tmp_path)  # swift infer ignores the side file
    questions = json.loads((DATA_TEMPLATES / "vqa.json").read_text())
    assert [r["id"] for r in rows] == [str(q["id"]) for q in questions]
    assert all(isinstance(r["response"], str) for r in rows)
