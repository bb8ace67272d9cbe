"""Acceptance: MGA on swift's built-in Qwen2.5-VL under DeepSpeed ZeRO-3, two CPU processes (gloo).

LoRA with ``--modules_to_save mga``, ``--freeze_aligner false``, the global graph, images of
different sizes, a row with two images, a text-only row that lands on one rank only, an uneven last
batch. The run must end (every rank runs the same modules the same number of times per step, or
ZeRO-3's parameter gathers hang); the step-1 nodes of each rank equal independent per-sample
references; the merged export has the stock keys and the side file; ``swift infer`` answers.
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
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import REPO_ROOT, free_port

pytestmark = [pytest.mark.distributed, pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                                          reason="deepspeed is not installed")]
SWIFT = str(Path(sys.executable).parent / "swift")
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")
DUMP_PLUGIN = str(Path(__file__).parents[1] / "head" / "node_dump_plugin.py")
ATOL = 1e-5
SIZES = [(56, 56), None, [(56, 84), (112, 56)], (84, 84), (56, 112), (56, 56), (112, 112), (84, 56), (56, 56)]


def _rows(folder: Path) -> list[dict]:
    """Nine LLaVA-Med instruct rows (9 = 2 ranks x 2 x 2 + 1: the last step is uneven)."""
    rows = []
    for index, sizes in enumerate(SIZES):
        shapes = [] if sizes is None else sizes if isinstance(sizes, list) else [sizes]
        images = []
        for number, (width, height) in enumerate(shapes):
            path = folder / f"img{index}_{number}.png"
            Image.new("RGB", (width, height), (40 * index % 255, 90, 200 - 20 * number)).save(path)
            images.append(path.name)
        tags = "".join("<image>\n" for _ in images)
        answer = f"Finding number {index} is {'absent' if index % 2 else 'present'}."
        long = f"{answer} The report of study {index} describes it in more words than the short answer."
        row = {"id": f"row-{index}",
               "conversations": [{"from": "human", "value": f"{tags}What is finding {index}?"},
                                 {"from": "gpt", "value": answer}],
               "conversations_long": [{"from": "human", "value": f"{tags}What is finding {index}?"},
                                      {"from": "gpt", "value": long}]}
        if images:
            row["image"] = images if len(images) > 1 else images[0]
        rows.append(row)
    return rows


def _references(checkpoint: Path, rows: list[dict], folder: Path):
    """Per row: the image node (get_image_features per image, mean, mean over images; a black image
    for the text-only row) and the text nodes (the language model on that sample alone)."""
    from swift.model import get_model_processor
    from swift.template import get_template

    from exgramed_plugin.data.conversation import merge_answers
    model, processor = get_model_processor(str(checkpoint), model_type="qwen2_5_vl", torch_dtype=torch.float32,
                                           device_map="cpu")
    template = get_template(processor, template_type="qwen2_5_vl")
    template.set_mode("transformers")

    def features(pixel_values, grid):
        with torch.no_grad():
            output = model.model.get_image_features(pixel_values, grid)
        output = output.pooler_output if hasattr(output, "pooler_output") else output
        return torch.cat(list(output)) if isinstance(output, (list, tuple)) else output

    def text(texts):
        ids = processor.tokenizer.encode(merge_answers(texts), add_special_tokens=False)
        with torch.no_grad():
            return ids, model.model.language_model(input_ids=torch.tensor([ids])).last_hidden_state[0].mean(dim=0)

    black = processor.image_processor(images=[Image.new("RGB", (32, 32))], return_tensors="pt")
    zero = features(black["pixel_values"], black["image_grid_thw"]).mean(dim=0)
    references = {}
    for row in rows:
        images = row.get("image", [])
        images = images if isinstance(images, list) else [images]
        nodes = []
        for name in images:
            encoded = template.encode({"messages": [{"role": "user", "content": "<image>x"}],
                                       "images": [str(folder / name)]})
            nodes.append(features(encoded["pixel_values"], encoded["image_grid_thw"]).mean(dim=0))
        answer_ids, answer_node = text([row["conversations"][1]["value"]])
        _, extended_node = text([row["conversations_long"][1]["value"]])
        references[tuple(answer_ids)] = {"image": torch.stack(nodes).mean(dim=0) if nodes else zero,
                                         "text": answer_node, "extended": extended_node, "images": len(images)}
    return references


def test_zero3_lora_global_graph_on_qwen2_5_vl(tiny_qwen2_5_vl, tmp_path):
    import swift
    data_folder = tmp_path / "data"
    data_folder.mkdir()
    rows = _rows(data_folder)
    data = data_folder / "train.json"
    data.write_text(json.dumps(rows))
    preset = json.loads((Path(swift.__file__).parent / "config" / "zero3.json").read_text())
    preset.pop("train_batch_size")  # CPU artefact: HF's world size is 1 for a gloo launch (test_distributed_cpu.py)
    config_file = tmp_path / "zero3_cpu.json"
    config_file.write_text(json.dumps(preset))
    dump = tmp_path / "nodes"
    dump.mkdir()
    output_dir = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "NPROC_PER_NODE": "2",
           "MASTER_PORT": str(free_port()), "MGA_GLOBAL_GRAPH": "1", "ALIGNMENT_TEST_NODE_DUMP": str(dump)}
    result = subprocess.run(
        [SWIFT, "sft", "--external_plugins", REGISTER, DUMP_PLUGIN, "--model", str(tiny_qwen2_5_vl),
         "--model_type", "qwen2_5_vl", "--template", "qwen2_5_vl", "--dataset", str(data), "--loss_type", "exgra_mga",
         "--tuner_type", "lora", "--modules_to_save", "mga", "--freeze_aligner", "false", "--torch_dtype", "float32",
         "--fp16", "false", "--bf16", "false", "--deepspeed", str(config_file), "--per_device_train_batch_size", "2",
         "--gradient_accumulation_steps", "1", "--max_steps", "3", "--save_steps", "3", "--learning_rate", "1e-3",
         "--logging_steps", "1", "--max_length", "512", "--dataloader_num_workers", "0", "--check_model", "false",
         "--report_to", "none", "--seed", "7", "--dataset_shuffle", "false", "--train_dataloader_shuffle", "false",
         "--ddp_backend", "gloo", "--output_dir", str(output_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420)
    tail = f"rc={result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    output = result.stdout + result.stderr
    if result.returncode != 0 and "not supported on your device" in output:
        pytest.skip("DeepSpeed's CPU accelerator refused the run: " + output[-500:])
    assert result.returncode == 0, tail
    assert "'stage': 3" in output and "world_size: 2" in output, tail
    assert "terminate called" not in result.stderr, tail
    run = sorted(output_dir.glob("v*-*"))[-1]
    logs = [r for r in map(json.loads, (run / "logging.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(logs) == 3, tail
    for row in logs:
        for key in ("lm_loss", "align_loss", "matching_accuracy", "hamming_image_to_bary"):
            assert row[key] == row[key] and abs(row[key]) < 1e6, (key, row)
    assert logs[0]["mga_graph_nodes"] == 4  # one graph over both ranks' samples

    # step-1 nodes of each rank against the per-sample references
    references = _references(tiny_qwen2_5_vl, rows, data_folder)
    text_only_ranks, seen = [], 0
    for rank in (0, 1):
        nodes = torch.load(dump / f"rank{rank}.pt")
        lengths = nodes["mga_text_lengths"].tolist()
        samples = len(lengths) // 2
        ids = nodes["mga_text_ids"][0].tolist()
        starts = [sum(lengths[:i]) for i in range(len(lengths))]
        for index in range(samples):
            reference = references[tuple(ids[starts[index]:starts[index] + lengths[index]])]
            for name in ("image", "text", "extended"):
                torch.testing.assert_close(nodes[name][index], reference[name], atol=ATOL, rtol=0)
            if reference["images"] == 0:
                text_only_ranks.append(rank)
            seen += 1
    assert seen == 4 and len(text_only_ranks) == 1  # the text-only row was on one rank only

    checkpoint = run / "checkpoint-3"
    merged = tmp_path / "merged"
    subprocess.run([SWIFT, "export", "--adapters", str(checkpoint), "--merge_lora", "true", "--output_dir",
                    str(merged)], cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True,
                   capture_output=True, text=True, timeout=300)

    def keys(folder: Path) -> set[str]:
        with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
            return set(handle.keys())

    assert keys(merged) == keys(tiny_qwen2_5_vl)
    assert json.loads((merged / "config.json").read_text())["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    adapter = load_file(str(checkpoint / "adapter_model.safetensors"))
    side = load_file(str(merged / "mga_head.safetensors"))
    trained = {key.split("mga.", 1)[1]: value for key, value in adapter.items() if ".mga." in key}
    assert set(side) == set(trained) and all(torch.equal(side[k], trained[k]) for k in trained)
    answers = tmp_path / "answers.jsonl"
    subprocess.run([SWIFT, "infer", "--adapters", str(checkpoint), "--val_dataset", str(data), "--result_path",
                    str(answers), "--max_new_tokens", "4", "--temperature", "0"], cwd=tmp_path,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True, capture_output=True, text=True, timeout=300)
    assert len(answers.read_text().splitlines()) == len(rows)
