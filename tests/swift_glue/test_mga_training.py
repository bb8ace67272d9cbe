"""Training with multi-graph alignment: settings, template ids, model nodes, loss scaling, CLI runs."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import DATA_TEMPLATES, REPO_ROOT, free_port
from exgramed_plugin.alignment import PROBLEM_NAMES
from exgramed_plugin.data.conversation import merge_answers
from exgramed_plugin.modeling.configuration import ExGraMedConfig
from exgramed_plugin.settings import MGASettings, apply_mga_to_config, parse_settings

SWIFT = str(Path(sys.executable).parent / "swift")
REGISTER = str(REPO_ROOT / "exgramed_plugin" / "register.py")


# ------------------------------------------------------------------------------------------------
# settings and text merging

def test_merge_answers_like_the_original():
    # §3.1: "\n" and image tokens removed (not replaced), joined with ". " (so "." + ". " gives "..")
    assert merge_answers(["A CT scan.", "The\nliver<im_patch>."]) == "A CT scan.. Theliver."
    assert merge_answers(["yes"]) == "yes"


def test_settings_from_environment_and_loss_type():
    config = ExGraMedConfig()
    settings = parse_settings({"MGA_ALPHA": "0.5", "MGA_K": "3", "MGA_POOLING": "padded", "MGA_FIDELITY": "true"},
                              loss_type="exgra_mga")
    apply_mga_to_config(config, settings)
    assert (config.mga_alpha, config.mga_k, config.mga_pooling, config.mga_fidelity) == (0.5, 3, "padded", True)
    assert config.mga_enabled
    apply_mga_to_config(config, parse_settings({"MGA_ALPHA": "0"}, loss_type="exgra_mga"))
    assert not config.mga_enabled  # α = 0: plain LLaVA-Med training, no module, no extra forward
    apply_mga_to_config(config, parse_settings({}, loss_type="cross_entropy"))
    assert not config.mga_enabled
    with pytest.raises(ValueError, match="MGA_K"):
        parse_settings({"MGA_K": "five"})


# ------------------------------------------------------------------------------------------------
# template and model

@pytest.fixture(scope="module")
def mga_setup(registered, tiny_checkpoint):
    from swift.model import get_processor
    from swift.template import get_template

    from exgramed_plugin.modeling.modeling import ExGraMedForCausalLM
    config = ExGraMedConfig.from_pretrained(tiny_checkpoint)
    config.mga_enabled = True
    torch.manual_seed(0)
    model = ExGraMedForCausalLM.from_pretrained(tiny_checkpoint, config=config).train()
    template = get_template(get_processor(str(tiny_checkpoint)))
    template.config = config
    template.config = model.config
    return model, template, model.config


def _rows():
    from exgramed_plugin.data.formats import row_to_standard
    source = DATA_TEMPLATES / "llava_med_instruct.json"
    return [row_to_standard(r, str(source)) for r in json.loads(source.read_text())]


def test_template_emits_alignment_ids_only_in_training(mga_setup):
    model, template, config = mga_setup
    rows = _rows()
    template.set_mode("train")
    encoded = template.encode(rows[0])
    tok = template.tokenizer
    answers = [m["content"] for m in rows[0]["messages"] if m["role"] == "assistant"]
    expected = [tok.bos_token_id] + tok.encode(merge_answers(answers), add_special_tokens=False)
    assert encoded["merged_answer_ids"] == expected
    assert encoded["extended_answer_ids"][0] == tok.bos_token_id
    batch = template.data_collator([template.encode(r) for r in rows])
    lengths = batch["mga_text_lengths"].tolist()  # packed: answers then extended answers, back to back
    assert len(lengths) == 2 * len(rows) and lengths[0] == len(expected)
    assert batch["mga_text_ids"].shape == (1, sum(lengths)) and "mga_text_mask" not in batch
    assert batch["mga_text_ids"][0, :len(expected)].tolist() == expected
    template.set_mode("transformers")
    assert "merged_answer_ids" not in template.encode(rows[0])


def test_missing_extended_answers_is_an_error(mga_setup):
    _, template, _ = mga_setup
    row = dict(_rows()[0], extended_answers=None, id="r9")
    template.set_mode("train")
    with pytest.raises(ValueError, match="r9"):
        template.encode(row)


def test_forward_returns_alignment_loss_with_gradients(mga_setup):
    model, template, _ = mga_setup
    template.set_mode("train")
    batch = template.data_collator([template.encode(r) for r in _rows()])
    model.zero_grad()
    out = model(**batch)
    assert torch.isfinite(out.align_loss) and out.align_loss.requires_grad
    assert {"matching_accuracy", "hamming_image_to_bary", "mga_graph_nodes"} <= set(out.align_terms)
    assert out.align_terms["mga_graph_nodes"] == 3
    out.align_loss.backward()
    assert model.model.mga.gnn.conv1.lin_rel.weight.grad.abs().sum() > 0
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # through the text passes


def test_training_batch_without_merged_answers_names_the_template(mga_setup):
    # exgra_med goes through the same head as the built-in models: no silent LM-only step
    model, template, _ = mga_setup
    template.set_mode("train")
    batch = template.data_collator([template.encode(r) for r in _rows()])
    stripped = {key: value for key, value in batch.items() if not key.startswith("mga_")}
    with pytest.raises(ValueError, match="without merged answers.*--template exgra_med"):
        model(**stripped)
    model.eval()
    try:
        with torch.no_grad():
            assert model(**stripped).align_loss is None  # evaluation / generation need none of it
    finally:
        model.train()


def test_text_node_pooling(mga_setup):
    model, _, config = mga_setup
    ids = torch.tensor([[2, 100, 200, 300], [2, 400, 32000, 32000]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        hidden = model.model(inputs_embeds=model.model.embed_tokens(ids), attention_mask=mask).last_hidden_state
        masked = model.alignment_head.text_nodes_of(model, ids, mask)
        torch.testing.assert_close(masked[1], hidden[1, :2].mean(0))
        config.mga_pooling = "padded"
        model.alignment_head.settings = MGASettings.from_config(config)  # the head reads its settings once
        torch.testing.assert_close(model.alignment_head.text_nodes_of(model, ids, mask)[1], hidden[1].mean(0))
        config.mga_after_de = False
        model.alignment_head.settings = MGASettings.from_config(config)
        torch.testing.assert_close(model.alignment_head.text_nodes_of(model, ids, mask)[0], model.model.embed_tokens(ids[0]).mean(0))
    config.mga_pooling, config.mga_after_de = "masked", True
    model.alignment_head.settings = MGASettings.from_config(config)


def test_batch_of_one_gives_zero_loss_and_warns_once(mga_setup, caplog):
    model, template, _ = mga_setup
    template.set_mode("train")
    batch = template.data_collator([template.encode(_rows()[0])])
    model.alignment_head.warned_small_batch = False
    with caplog.at_level(logging.WARNING):
        first = model(**batch)
        model(**batch)
    assert float(first.align_loss.detach()) == 0.0 and first.align_loss.requires_grad
    assert sum("alignment loss is zero" in r.message for r in caplog.records) == 1


# ------------------------------------------------------------------------------------------------
# loss scaling (a fake trainer: the numbers are worked out by hand)

class _Metric:
    def __init__(self):
        self.values = []

    def update(self, value):
        self.values.append(float(value))


def _loss_fn(model, *, accumulation=1, processes=1, accepts=True, scale=None):
    from collections import defaultdict

    from exgramed_plugin.swift_glue.loss import ExGraMedAlignmentLoss
    scaler = None if scale is None else SimpleNamespace(is_enabled=lambda: True, get_scale=lambda: scale)
    trainer = SimpleNamespace(model=model, current_gradient_accumulation_steps=accumulation,
                              model_accepts_loss_kwargs=accepts,
                              accelerator=SimpleNamespace(num_processes=processes, scaler=scaler),
                              custom_metrics={"train": defaultdict(_Metric), "eval": defaultdict(_Metric)})
    args = SimpleNamespace(gradient_accumulation_steps=accumulation, average_tokens_across_devices=True)
    return ExGraMedAlignmentLoss(args, trainer), trainer


def _fake_outputs(model, vocab=8):
    """A training step's outputs as the head hands them to the loss (``AlignmentHead.run``)."""
    from exgramed_plugin.head.head import StepLossScale
    logits = torch.zeros(1, 3, vocab)  # uniform: per-token CE = log(vocab)
    return SimpleNamespace(logits=logits, align_loss=torch.tensor(0.6),
                           align_terms={"matching_accuracy": torch.tensor(0.25)},
                           align_settings=model.alignment_head.settings, align_loss_scale=StepLossScale()
                           ), torch.tensor([[-100, 1, 2]])


@pytest.mark.parametrize("accumulation, processes, global_graph, divisor", [
    (1, 1, False, 1), (2, 1, False, 2), (2, 2, False, 4), (2, 2, True, 2)])
def test_alignment_term_is_scaled_like_swift_scales_the_lm_term(mga_setup, accumulation, processes, global_graph,
                                                                 divisor):
    model, _, config = mga_setup
    config.mga_global_graph = global_graph
    model.alignment_head.settings = MGASettings.from_config(config)  # the head reads its settings once
    loss_fn, trainer = _loss_fn(model, accumulation=accumulation, processes=processes)
    outputs, labels = _fake_outputs(model)
    lm = torch.log(torch.tensor(8.0))
    total = loss_fn(outputs, labels, num_items_in_batch=torch.tensor(4))
    config.mga_global_graph = False
    model.alignment_head.settings = MGASettings.from_config(config)
    # 2 local tokens of 4 in the whole step; alpha = 1
    torch.testing.assert_close(total, 2 * lm / 4 + 0.6 / divisor)
    metrics = trainer.custom_metrics["train"]
    assert metrics["lm_loss"].values == pytest.approx([float(lm)])
    assert metrics["align_loss"].values == pytest.approx([0.6])
    assert metrics["matching_accuracy"].values == pytest.approx([0.25])


def test_fp16_loss_scale_reaches_the_blackbox(mga_setup):
    model, _, _ = mga_setup
    loss_fn, _ = _loss_fn(model, scale=1024.0)
    outputs, labels = _fake_outputs(model)
    loss_fn(outputs, labels, num_items_in_batch=torch.tensor(2))
    assert outputs.align_loss_scale() == 1024.0  # the step's slot the black-box backward reads
    loss_fn, _ = _loss_fn(model)
    loss_fn(outputs, labels)
    assert outputs.align_loss_scale() == 1.0


def test_the_first_micro_batch_backward_divides_the_loss_scale_out(mga_setup):
    # The loss hands the head the scale's source during micro-batch 1, after its forward; the black-box
    # backward must still see it (it once read it at forward time: scale 1 for the first micro-batch).
    model, template, _ = mga_setup
    template.set_mode("train")
    batch = template.data_collator([template.encode(row) for row in _rows()])
    weight = model.model.mga.gnn.conv1.lin_rel.weight
    gradients = {}
    for scale in (1.0, 2.0 ** 16):
        model.alignment_head.calls = 0  # a fresh run, the same noise
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the graph network's dropout
        outputs = model(**batch)
        loss_fn, _ = _loss_fn(model, scale=None if scale == 1.0 else scale)
        loss_fn(outputs, batch["labels"])
        (outputs.align_loss * scale).backward()  # what the GradScaler's scaled loss sends back
        gradients[scale] = weight.grad / scale
    model.zero_grad(set_to_none=True)
    assert gradients[1.0].abs().sum() > 0
    torch.testing.assert_close(gradients[2.0 ** 16], gradients[1.0])


# ------------------------------------------------------------------------------------------------
# every rank calls the same modules the same number of times (ZeRO-3 gathers weights in each call)

def _module_calls(run, modules: dict) -> dict[str, int]:
    counts = dict.fromkeys(modules, 0)
    handles = [module.register_forward_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, module in modules.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


def test_a_text_only_rank_calls_the_modules_an_image_rank_calls(mga_setup, monkeypatch):
    # Emulated in one process: any_rank answers as it does when another rank has images.
    from exgramed_plugin.head import head
    from exgramed_plugin.modeling import modeling
    model, template, _ = mga_setup
    monkeypatch.setattr(modeling, "any_rank", lambda flag, device: True)  # the model's embedding step
    monkeypatch.setattr(head, "any_rank", lambda flag, device: True)  # the head's zero-image node
    template.set_mode("train")
    image_rows = [row for row in _rows() if row.get("images")][:2]
    text_rows = [dict(row, images=[], messages=[dict(m, content=m["content"].replace("<image>\n", "").replace(
        "<image>", "")) for m in row["messages"]]) for row in image_rows]
    modules = {"vision_tower": model.model.vision_tower, "mm_projector": model.model.mm_projector,
               **{f"mga.{name}": module for name, module in model.model.mga.named_modules() if name}}
    calls = {}
    for kind, rows in (("images", image_rows), ("text", text_rows)):
        batch = template.data_collator([template.encode(row) for row in rows])
        calls[kind] = _module_calls(lambda: model(**batch), modules)
    assert calls["text"] == calls["images"] and calls["text"]["vision_tower"] == 2


def test_a_one_sample_rank_calls_the_graph_network_as_the_others():
    # --packing / an uneven last batch: a rank with one sample skips the matching, not the network
    from exgramed_plugin.alignment import MultiGraphAlignment
    mga = MultiGraphAlignment(in_features=8)
    modules = {name or "gnn": module for name, module in mga.gnn.named_modules()}
    one = _module_calls(lambda: mga(*[torch.randn(1, 8) for _ in range(3)]), modules)
    three = _module_calls(lambda: mga(*[torch.randn(3, 8) for _ in range(3)]), modules)
    assert one == three and one["gnn"] == 1


# ------------------------------------------------------------------------------------------------
# global graph across two processes (gloo)

def _global_graph_worker(rank: int, port: int, result_dir: str) -> None:
    import torch.distributed as dist

    from exgramed_plugin.head.head import gather_with_local_grad
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    local = torch.full((3 if rank == 0 else 2, 4), float(rank + 1), requires_grad=True)
    gathered = gather_with_local_grad(local)
    (gathered * torch.arange(gathered.shape[0], dtype=torch.float32)[:, None]).sum().backward()
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(
        {"rows": gathered.shape[0], "first_col": gathered[:, 0].tolist(), "grad": local.grad[:, 0].tolist()}))
    dist.destroy_process_group()


@pytest.mark.distributed
def test_global_graph_gathers_all_nodes_with_local_gradients(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_global_graph_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["rows"] == r1["rows"] == 5  # 3 + 2 nodes: one graph over the global batch
    assert r0["first_col"] == r1["first_col"] == [1, 1, 1, 2, 2]
    assert r0["grad"] == [0, 1, 2] and r1["grad"] == [3, 4]  # each rank: gradient of its own rows only


# ------------------------------------------------------------------------------------------------
# through swift's CLI

COMMON = ["--tuner_type", "full", "--torch_dtype", "float32", "--learning_rate", "1e-4", "--logging_steps", "1",
          "--max_length", "512", "--dataloader_num_workers", "0", "--check_model", "false", "--report_to", "none",
          "--strict", "true", "--seed", "7"]


def _sft(args, cwd, env_extra=None, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **(env_extra or {})}
    result = subprocess.run([SWIFT, "sft", "--custom_register_path", REGISTER, *COMMON, *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"swift sft failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _logs(output_dir: Path) -> list[dict]:
    path = sorted(output_dir.glob("v*-*/logging.jsonl"))[-1]
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from exgramed_plugin.data.demo_data import make_demo_data
    return make_demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def mga_run(tiny_checkpoint, demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mga_run")
    # Settings through two channels: the environment (what a recipe's ENV: block sets) and --model_kwargs.
    _sft(["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type", "exgra_mga",
          "--per_device_train_batch_size", "4", "--max_steps", "3", "--save_steps", "3", "--output_dir", str(out),
          "--model_kwargs", json.dumps({"mga_lambda": 40})], cwd=out, env_extra={"MGA_K": "3"})
    return out


@pytest.mark.slow
def test_settings_of_both_channels_are_saved_with_the_checkpoint(mga_run):
    config = json.loads((sorted(mga_run.glob("v*-*/checkpoint-3"))[-1] / "config.json").read_text())
    assert (config["mga_k"], config["mga_lambda"], config["mga_enabled"]) == (3, 40.0, True)
    assert config["mga_gumbel_scale"] == 0.05  # untouched knobs keep their defaults


@pytest.mark.slow
def test_three_step_mga_run_logs_both_terms(mga_run):
    logs = _logs(mga_run)
    assert len(logs) == 3
    for row in logs:
        for key in ("loss", "lm_loss", "align_loss", "matching_accuracy", "hamming_text_to_bary"):
            assert key in row and row[key] == row[key] and abs(row[key]) < 1e6  # finite
        assert row["loss"] == pytest.approx(row["lm_loss"] + row["align_loss"], rel=0.05)


@pytest.mark.slow
def test_checkpoint_carries_the_gnn_and_loads_it_bit_for_bit(registered, mga_run, monkeypatch):
    checkpoint = sorted(mga_run.glob("v*-*/checkpoint-3"))[-1]
    stored = load_file(str(checkpoint / "model.safetensors"))
    gnn_keys = [k for k in stored if k.startswith("model.mga.gnn.")]
    assert "model.mga.gnn.conv1.lin_rel.weight" in gnn_keys and "model.mga.gnn.conv2.lin_root.weight" in gnn_keys
    monkeypatch.setenv("MGA_ENABLED", "1")
    from swift.model import get_model_processor
    model, _ = get_model_processor(str(checkpoint), torch_dtype=torch.float32)
    state = model.state_dict()
    assert all(torch.equal(state[k], stored[k]) for k in gnn_keys)


@pytest.mark.slow
def test_resume_from_checkpoint_continues(mga_run, tiny_checkpoint, demo_data, tmp_path):
    checkpoint = sorted(mga_run.glob("v*-*/checkpoint-3"))[-1]
    _sft(["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type", "exgra_mga",
          "--per_device_train_batch_size", "4", "--max_steps", "4", "--save_steps", "4",
          "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "resumed")], cwd=tmp_path)
    logs = _logs(tmp_path / "resumed")
    assert [r["global_step/max_steps"] for r in logs] == ["4/4"]
    assert "align_loss" in logs[0]
    # Neither MGA_K nor mga_lambda was given again: the resumed run used the checkpoint's saved settings.
    resumed = json.loads((sorted((tmp_path / "resumed").glob("v*-*/checkpoint-4"))[-1] / "config.json").read_text())
    assert (resumed["mga_k"], resumed["mga_lambda"]) == (3, 40.0)


@pytest.mark.slow
def test_resume_with_different_settings_is_refused(mga_run, tiny_checkpoint, demo_data, tmp_path):
    checkpoint = sorted(mga_run.glob("v*-*/checkpoint-3"))[-1]
    result = _sft(["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type",
                   "exgra_mga", "--per_device_train_batch_size", "4", "--max_steps", "4",
                   "--resume_from_checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "r")], cwd=tmp_path,
                  env_extra={"MGA_K": "4"}, check=False)
    assert result.returncode != 0
    assert "MGA_K=4 (saved: 3)" in result.stderr.strip().splitlines()[-1]


def _check_against_hand_derived_values(row: dict, nodes: int, micro_batches: int) -> None:
    """What a logged step must satisfy by hand (docs/method.md §3.4, §3.11), whatever the nodes were.

    The graph has the micro-batch's ``nodes`` samples. Each of the six terms is (wrong entries) / n,
    averaged over the step's micro-batches: a multiple of 1 / (nodes x micro_batches) (1/4 for both
    runs here); the loss is their mean. Per problem with d rows on the diagonal and o matched off it
    (o <= n - d), the term is (o + n - d) / n, so 1 - accuracy <= loss <= 2 (1 - accuracy).
    """
    assert row["mga_graph_nodes"] == nodes
    terms = [row[f"hamming_{name}"] for name in PROBLEM_NAMES]
    assert row["align_loss"] == pytest.approx(sum(terms) / 6, abs=1e-4)
    grid = nodes * micro_batches
    for value in (*terms, row["align_loss"] * 6):
        assert value * grid == pytest.approx(round(value * grid), abs=1e-3)
    missed = 1.0 - row["matching_accuracy"]
    assert missed - 1e-4 <= row["align_loss"] <= 2 * missed + 1e-4


@pytest.mark.slow
def test_gradient_accumulation_matches_a_larger_batch(tiny_checkpoint, demo_data, tmp_path):
    common = ["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type",
              "exgra_mga", "--max_steps", "1", "--save_strategy", "no", "--dataset_shuffle", "false",
              "--train_dataloader_shuffle", "false"]
    _sft(common + ["--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1",
                   "--output_dir", str(tmp_path / "ga1")], cwd=tmp_path)
    _sft(common + ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                   "--output_dir", str(tmp_path / "ga2")], cwd=tmp_path)
    one, two = _logs(tmp_path / "ga1")[0], _logs(tmp_path / "ga2")[0]
    # same samples, same weights: the LM term agrees closely; the alignment term is a per-graph
    # Hamming fraction (graphs of 4 vs 2 nodes), so it agrees only in scale.
    assert two["lm_loss"] == pytest.approx(one["lm_loss"], rel=0.02)
    _check_against_hand_derived_values(one, nodes=4, micro_batches=1)
    _check_against_hand_derived_values(two, nodes=2, micro_batches=2)
    assert two["loss"] - two["lm_loss"] == pytest.approx(two["align_loss"], abs=0.05)
    assert one["loss"] - one["lm_loss"] == pytest.approx(one["align_loss"], abs=0.05)


@pytest.mark.slow
def test_alpha_zero_is_plain_training_without_the_module(tiny_checkpoint, demo_data, tmp_path):
    _sft(["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type", "exgra_mga",
          "--per_device_train_batch_size", "4", "--max_steps", "1", "--save_steps", "1",
          "--output_dir", str(tmp_path / "a0")], cwd=tmp_path, env_extra={"MGA_ALPHA": "0"})
    logs = _logs(tmp_path / "a0")
    assert "lm_loss" in logs[0] and "align_loss" not in logs[0]
    stored = load_file(str(sorted((tmp_path / "a0").glob("v*-*/checkpoint-1"))[-1] / "model.safetensors"))
    assert not any(k.startswith("model.mga.") for k in stored)


@pytest.mark.distributed
def test_two_process_cpu_run(tiny_checkpoint, demo_data, tmp_path):
    result = _sft(["--model", str(tiny_checkpoint), "--dataset", str(demo_data.alignment_train), "--loss_type",
                   "exgra_mga", "--per_device_train_batch_size", "3", "--max_steps", "2", "--save_strategy", "no",
                   "--ddp_backend", "gloo", "--output_dir", str(tmp_path / "ddp")], cwd=tmp_path,
                  env_extra={"NPROC_PER_NODE": "2", "MASTER_PORT": "29641"}, check=False)
    logs = _logs(tmp_path / "ddp")
    assert len(logs) == 2, result.stderr[-3000:]
    # swift all-gathers the metric names of every rank before logging: both ranks logged these keys
    assert {"lm_loss", "align_loss", "matching_accuracy"} <= set(logs[-1])
    assert "world_size: 2" in result.stdout + result.stderr


def test_lora_keeps_the_gnn_trainable_with_modules_to_save(registered, tiny_checkpoint, monkeypatch):
    from swift.arguments import SftArguments
    from swift.pipelines.train.tuner import TunerMixin
    monkeypatch.setenv("MGA_ENABLED", "1")
    args = SftArguments(model=str(tiny_checkpoint), dataset=[str(DATA_TEMPLATES / "llava_med_instruct.json")],
                        check_model=False, torch_dtype="float32", output_dir="/tmp/exgramed-unused",
                        tuner_type="lora", target_modules=["all-linear"], modules_to_save=["mga"],
                        per_device_train_batch_size=2)
    model, _ = args.get_model_processor()
    model = TunerMixin.prepare_model(args, model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".mga." in n and "conv1.lin_rel" in n for n in trainable)
    assert any("lora_" in n for n in trainable)


def test_bf16_forward_and_backward_with_mga(mga_setup):
    model, template, _ = mga_setup
    template.set_mode("train")
    batch = template.data_collator([template.encode(r) for r in _rows()])
    model_bf16 = model.to(torch.bfloat16)
    try:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
        out = model_bf16(**batch)
        assert out.align_loss is not None and torch.isfinite(out.align_loss.float())
        (out.loss + out.align_loss).backward()
        assert model_bf16.model.mga.gnn.conv1.lin_rel.weight.grad is not None
    finally:
        model.to(torch.float32)
        model.zero_grad(set_to_none=True)
